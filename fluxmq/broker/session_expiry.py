"""Session expiry: a disconnected session is discarded `expiry_interval` seconds after its
connection ended, unless the client comes back first (Session Expiry Interval in MQTT 5,
`session.default_expiry_interval` for MQTT 3.1.1 sessions with clean session 0)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SessionExpiry:
    """One timer per disconnected persistent session."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[str], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def schedule(self, client_id: str, seconds: float) -> None:
        self.cancel(client_id)
        self._timers[client_id] = self._loop.call_later(seconds, self._due, client_id)

    def cancel(self, client_id: str) -> None:
        handle = self._timers.pop(client_id, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def __len__(self) -> int:
        return len(self._timers)

    def _due(self, client_id: str) -> None:
        self._timers.pop(client_id, None)
        self._expire(client_id)
