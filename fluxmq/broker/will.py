"""Will messages and their delay.

A will is published when a connection ends for any reason other than a DISCONNECT with reason
0x00 (socket drop, keep-alive timeout, protocol error, DISCONNECT 0x04, takeover that ends the
session, server shutdown). With a Will Delay Interval it waits for the earlier of the delay and
the end of the session, and is cancelled if the client reconnects to the session first
[MQTT-3.1.3-9].
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from fluxmq._speedups.message import Message


@dataclass(slots=True)
class Will:
    """A session's will: the message, its delay in seconds, and its Message Expiry Interval
    (which starts when the will is published)."""

    message: Message
    delay: int = 0
    expiry: int | None = None

    def to_message(self) -> Message:
        """The message to publish now."""
        msg = self.message.copy()
        msg.timestamp = time.time()
        if self.expiry is not None:
            msg.expires_at = msg.timestamp + self.expiry
        return msg


class WillScheduler:
    """Pending wills by client id; `publish` is the broker's publish entry point."""

    def __init__(
        self, publish: Callable[[Message], object], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._publish = publish
        self._loop = loop
        self._pending: dict[str, tuple[Will, asyncio.TimerHandle]] = {}
        self.published = 0
        self.on_fired: Callable[[str], None] | None = None  # storage forgets a sent will

    def schedule(
        self, client_id: str, will: Will, session_ends_in: float | None, delay: float | None = None
    ) -> float:
        """Start the will's clock. `session_ends_in`: seconds until the session expires
        (None = never); the will goes at the earlier of that and its own delay (or `delay`,
        what is left of it after a restart). Returns the seconds until it goes (0: sent)."""
        self.cancel(client_id)
        if delay is None:
            delay = float(will.delay)
        if session_ends_in is not None:
            delay = min(delay, session_ends_in)
        if delay <= 0:
            self._fire(client_id, will)
            return 0.0
        handle = self._loop.call_later(delay, self._due, client_id)
        self._pending[client_id] = (will, handle)
        return delay

    def cancel(self, client_id: str) -> bool:
        """The client came back: its will is not sent. True if one was pending."""
        entry = self._pending.pop(client_id, None)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def fire_now(self, client_id: str) -> None:
        """The session ended before the delay passed: send the will now."""
        entry = self._pending.pop(client_id, None)
        if entry is not None:
            entry[1].cancel()
            self._fire(client_id, entry[0])

    def fire_all(self) -> None:
        """Shutdown: every pending will goes now."""
        for client_id in list(self._pending):
            self.fire_now(client_id)

    def pending(self, client_id: str) -> Will | None:
        entry = self._pending.get(client_id)
        return None if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self._pending)

    def _due(self, client_id: str) -> None:
        entry = self._pending.pop(client_id, None)
        if entry is not None:
            self._fire(client_id, entry[0])

    def _fire(self, client_id: str, will: Will) -> None:
        self.published += 1
        self._publish(will.to_message())
        if self.on_fired is not None:
            self.on_fired(client_id)
