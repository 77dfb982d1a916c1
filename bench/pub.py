"""Publishers: pre-encoded PUBLISH packets, batched writes, QoS 1/2 in-flight windows, pacing.

Unthrottled publishers write batches of ~32 KiB of packets per ``send``: for QoS 0 a batch is
one stamped packet repeated (``bytes * n``, all messages of a batch leave in the same system
call, so they carry the same timestamp); for QoS 1/2 each packet gets its own packet id and the
stamp in one ``struct.pack_into`` call, and the batch is bounded by the free in-flight window.
Throttled publishers (``interval``) send what is due at each wake-up, spread over the interval.
Over WebSocket a batch is one masked frame; a QoS 0 batch is masked a few packets at a time
(``bench.ws.RepeatFramer``), not byte by byte.
"""

from __future__ import annotations

import heapq
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import mqttwire as w
from bench import ws
from bench.client import CLOSED, READY, Client

if TYPE_CHECKING:
    from bench.worker import Worker

BATCH_BYTES = 32 * 1024
MAX_BATCH = 4096
# Unthrottled publishers outrun a saturated broker: a bounded socket send buffer keeps the
# backlog (and the age of the stamps waiting in it) small without limiting the rate on loopback.
SNDBUF = 256 * 1024
HORIZON_NS = 250_000  # throttled publishers: send what is due this soon in the same wake-up


@dataclass
class PubSpec:
    """What the publishers of a run do."""

    count: int = 1
    topic: str = "bench/%i"
    qos: int = 0
    size: int = 256
    interval_ms: float = 0.0  # per publisher; 0 = unthrottled
    limit: int = 0  # messages in total over all publishers; 0 = no limit
    inflight: int = 100  # QoS 1/2 window per publisher
    retain: bool = False


def expand(pattern: str, index: int, client_id: str) -> str:
    """Substitute ``%i`` (client index) and ``%c`` (client id) in a topic pattern."""
    return pattern.replace("%i", str(index)).replace("%c", client_id)


class Publisher(Client):
    """One publishing connection."""

    role = "pub"

    def __init__(
        self, worker: Worker, index: int, client_id: str, spec: PubSpec, limit: int
    ) -> None:
        super().__init__(worker, index, client_id)
        self.topic = expand(spec.topic, index, client_id)
        t = w.publish_template(self.topic, spec.size, spec.qos, worker.opts.version, spec.retain)
        self.tmpl = t
        self.packet = t.packet
        self.size = t.size
        self.qos = spec.qos
        self.window = max(1, spec.inflight)
        self.min_batch = max(1, self.window // 4)
        self.n_inflight = 0
        self.next_pid = 1
        self.inflight = bytearray(65536) if spec.qos else None
        self.limit = limit  # this publisher's own message limit; 0 = none
        self.sent = 0
        self.acked = 0
        self.finished = False  # no more messages to send (limit or deadline)
        self.batch_n = max(1, min(BATCH_BYTES // max(1, t.size), MAX_BATCH))
        so = t.stamp_offset
        self.stamped = so >= 0
        self.pre = t.packet[:so] if so >= 0 else t.packet
        self.post = t.packet[so + 8 :] if so >= 0 else b""
        self.next_due = 0
        self.scheduler: PubScheduler | None = None
        self.ws_framer = ws.RepeatFramer(t.size) if self.ws and not spec.qos else None

    def start(self, now: int) -> None:
        """Open the connection with a bounded send buffer (see ``SNDBUF``)."""
        super().start(now)
        if self.sock is not None and SNDBUF:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)

    def on_connack(self) -> None:
        """Honour the broker's Receive Maximum (MQTT 5) in the window."""
        self.window = max(1, min(self.window, self.broker_receive_max))
        self.min_batch = max(1, self.window // 4)
        self.set_ready()

    # -- building and sending --------------------------------------------------------------
    def room(self) -> int:
        """How many messages may be sent now (window and limit)."""
        if self.finished or self.state != READY:
            return 0
        n = self.batch_n
        if self.limit:
            left = self.limit - self.sent
            if left <= 0:
                self.finished = True
                return 0
            n = min(n, left)
        if self.qos:
            n = min(n, self.window - self.n_inflight)
        return n

    def build(self, n: int, now: int) -> bytes | bytearray:
        """``n`` packets stamped with ``now`` (QoS > 0: each with a fresh packet id)."""
        if not self.qos:
            if self.stamped:
                return (self.pre + now.to_bytes(8, "big") + self.post) * n
            return self.packet * n
        size = self.size
        ba = bytearray(self.packet * n)
        pack = self.tmpl.pid_stamp.pack_into  # type: ignore[union-attr]
        off = self.tmpl.pid_offset
        inflight = self.inflight
        assert inflight is not None
        pid = self.next_pid
        stamped = self.stamped
        for _ in range(n):
            while inflight[pid]:
                pid = pid + 1 if pid < 65535 else 1
            inflight[pid] = 1
            if stamped:
                pack(ba, off, pid, now)
            else:
                pack(ba, off, pid)
            off += size
            pid = pid + 1 if pid < 65535 else 1
        self.next_pid = pid
        self.n_inflight += n
        return ba

    def send_batch(self, n: int, now: int) -> None:
        """Build and write ``n`` messages."""
        self.sent += n
        self.worker.sent += n
        framer = self.ws_framer
        if framer is not None:  # WebSocket QoS 0: one packet repeated, framed and masked
            pkt = self.pre + now.to_bytes(8, "big") + self.post if self.stamped else self.packet
            self.send_raw(framer.frame(pkt, n))
            return
        self.write(self.build(n, now))

    def pump(self, now: int) -> bool:
        """Unthrottled: send one batch; True when the publisher can take another turn at once.

        QoS 1/2 publishers wait until a quarter of the window is free (or nothing is in flight)
        so that acks arriving one by one do not turn into one system call per message.
        """
        if self.out:
            return False
        n = self.room()
        if n <= 0:
            return False
        if (
            self.qos
            and n < self.min_batch
            and self.n_inflight
            and (not self.limit or n < self.limit - self.sent)
        ):
            return False
        self.send_batch(n, now)
        return not self.out and self.state == READY

    # -- feedback ------------------------------------------------------------------------------
    def on_acks(self, acked: int, errors: int, unexpected: int) -> None:
        """Free window slots; wake the publisher up if it was waiting for them."""
        if acked:
            self.n_inflight -= acked
            self.acked += acked
            self.worker.acked += acked
        if errors:
            self.worker.error("publish_refused", errors)
        if unexpected:
            self.worker.error("unexpected_ack", unexpected)
        if self.scheduler is not None:
            self.scheduler.wake(self)

    def on_drained(self) -> None:
        """The socket took the rest of a batch."""
        if self.scheduler is not None:
            self.scheduler.wake(self)

    def settled(self) -> bool:
        """Nothing more to send and nothing awaiting an acknowledgement."""
        return self.state == CLOSED or (self.finished and self.n_inflight == 0 and not self.out)


class PubScheduler:
    """Drives a worker's publishers: a ready set (unthrottled) or a due-time heap (throttled)."""

    def __init__(self, pubs: list[Publisher], interval_ms: float) -> None:
        self.pubs = pubs
        self.interval_ns = int(interval_ms * 1_000_000)
        self.active: set[Publisher] = set()
        self.heap: list[tuple[int, int, Publisher]] = []
        self.deadline = 0
        self.going = False
        self.stopped = False
        self.window_stalls = 0
        for p in pubs:
            p.scheduler = self

    def go(self, now: int, duration_ns: int) -> None:
        """Start publishing now for ``duration_ns``."""
        self.going = True
        self.deadline = now + duration_ns
        n = max(1, len(self.pubs))
        for i, p in enumerate(self.pubs):
            if p.state != READY:
                p.finished = True
                continue
            if self.interval_ns:
                p.next_due = now + self.interval_ns * i // n
                heapq.heappush(self.heap, (p.next_due, p.index, p))
            else:
                self.active.add(p)

    def wake(self, p: Publisher) -> None:
        """A publisher may be able to send again (ack received, output drained)."""
        if self.going and not self.stopped and not self.interval_ns and not p.finished:
            self.active.add(p)

    def stop(self) -> None:
        """No more messages (deadline or the parent's stop)."""
        self.stopped = True
        self.active.clear()
        self.heap.clear()
        for p in self.pubs:
            p.finished = True

    def tick(self, now: int) -> float:
        """Send what can or must be sent; return seconds until the next thing to do."""
        if not self.going or self.stopped:
            return 0.05
        if now >= self.deadline:
            self.stop()
            return 0.05
        active = self.active
        if active:
            for p in list(active):
                if not p.pump(now):
                    active.discard(p)
        heap = self.heap
        if heap:
            interval = self.interval_ns
            # Send what falls due within the horizon now: one wake-up serves many publishers
            # (the stamp is the real send time, so latency figures are unaffected).
            horizon = now + min(HORIZON_NS, interval // 10)
            while heap and heap[0][0] <= horizon:
                due, idx, p = heapq.heappop(heap)
                if p.state != READY or p.finished:
                    continue
                # Catch up with every message due by now (timer granularity), window allowing.
                due_n = 1 + max(0, now - due) // interval
                n = min(due_n, p.room())
                if n > 0:
                    p.send_batch(n, now)
                    p.next_due = due + n * interval
                else:
                    if not p.finished:
                        self.window_stalls += 1
                    p.next_due = due + interval
                if p.limit and p.sent >= p.limit:
                    p.finished = True
                    continue
                heapq.heappush(heap, (p.next_due, idx, p))
        if active:
            return 0.0
        if heap:
            return max(0.0, (heap[0][0] - now) / 1e9)
        return 0.05

    def finished(self) -> bool:
        """Every publisher is done sending (it may still await acknowledgements)."""
        return self.stopped or all(p.finished or p.state == CLOSED for p in self.pubs)

    def settled(self) -> bool:
        """Every publisher is done and has no message in flight."""
        return all(p.settled() for p in self.pubs)
