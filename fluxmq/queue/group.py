"""Consumer groups: who gets which message, what is owed, acknowledgements and redelivery.

A group reads each partition of its queue from a cursor (`next`). A message it hands to a
consumer becomes a pending delivery (offset, delivery count, deadline), kept in the queue state
until the consumer acknowledges it. `committed` is the lowest offset not yet acknowledged;
`end - committed` is the group's lag.

With `ordering: partition` every partition has one owner among the group's connected consumers
and is delivered in offset order. When a partition changes owner while its previous owner still
holds deliveries of it, the new owner gets nothing of that partition until those are settled
(acknowledged, nacked, timed out, or their consumer gone; then they are redelivered first), so
no message of a key overtakes an earlier one across a rebalance. With `ordering: none` any
consumer with room takes the next message of any partition.

A consumer has room while its unacknowledged deliveries are fewer than its window (its Receive
Maximum, capped by `broker.max_inflight`).
"""

from __future__ import annotations

import heapq
import time
from collections import deque

from fluxmq._speedups.session import DeliveryToken
from fluxmq.queue.partition import assign
from fluxmq.queue.topics import matcher

DELIVERED, WAITING, READY, DONE = 0, 1, 2, 3


class Pending:
    """A message of a group that is delivered and not yet acknowledged, or waiting for its
    redelivery."""

    __slots__ = ("attempt", "consumer", "count", "due", "entry", "gp", "offset", "state")

    def __init__(self, offset: int, gp: GroupPartition) -> None:
        self.offset = offset
        self.gp = gp
        self.count = 0  # deliveries so far
        self.attempt = 0
        self.state = READY
        self.due = 0.0  # monotonic: visibility deadline (DELIVERED) or retry time (WAITING)
        self.consumer: Consumer | None = None
        self.entry = None


class Delivery(DeliveryToken):
    """The session's token of one delivery: its PUBACK auto-acknowledges for consumers that do
    not acknowledge explicitly (MQTT 3.1.1)."""

    __slots__ = ("attempt", "consumer", "pending")

    def __init__(self, pending: Pending, consumer: Consumer) -> None:
        self.pending = pending
        self.attempt = pending.attempt
        self.consumer = consumer

    def puback(self) -> int:
        p = self.pending
        if (
            self.consumer.auto_ack
            and p.state == DELIVERED
            and p.attempt == self.attempt
            and p.consumer is self.consumer
        ):
            p.gp.group.ack(p)
        return 0


class Consumer:
    """One subscription `$queue/<queue>[/<pattern>]` of one session, in one group."""

    __slots__ = ("active", "auto_ack", "client_id", "group", "pattern", "qos", "session",
                 "unacked", "window")  # fmt: skip

    def __init__(self, session, group: Group, pattern: str, qos: int, auto_ack: bool) -> None:
        self.session = session
        self.client_id = session.client_id
        self.group = group
        self.pattern = pattern
        self.qos = qos
        self.auto_ack = auto_ack
        self.active = False
        self.unacked = 0
        self.window = 1

    def __repr__(self) -> str:
        return f"Consumer({self.client_id!r}, group={self.group.name!r}, active={self.active})"


class GroupPartition:
    """A group's position in one partition."""

    __slots__ = ("ahead", "committed", "foreign", "group", "index", "log", "next", "owner",
                 "pending", "ready")  # fmt: skip

    def __init__(self, group: Group, plog, index: int) -> None:
        self.group = group
        self.log = plog
        self.index = index
        self.next = plog.end
        self.committed = plog.end
        self.pending: dict[int, Pending] = {}
        self.ready: list[tuple[int, Pending]] = []  # heap by offset: to redeliver now
        self.owner: Consumer | None = None
        self.foreign = 0  # deliveries held by consumers other than the owner (handover)
        self.ahead: deque = deque()  # entries read ahead from the files

    @property
    def lag(self) -> int:
        return max(0, self.log.end - max(self.committed, self.log.start))


class GroupStats:
    __slots__ = ("acks", "dead_lettered", "delivered", "expired", "lost", "nacks",
                 "redeliveries", "rejects")  # fmt: skip

    def __init__(self) -> None:
        self.delivered = self.acks = self.nacks = self.rejects = 0
        self.redeliveries = self.dead_lettered = self.expired = self.lost = 0


class Group:
    """A consumer group of a queue."""

    def __init__(self, dq, name: str, pattern: str, created_at: float) -> None:
        self.queue = dq
        self.name = name
        self.pattern = pattern
        self.match = matcher(pattern)
        self.created_at = created_at
        self.ordered = dq.settings.ordering == "partition"
        self.parts = [GroupPartition(self, plog, i) for i, plog in enumerate(dq.logs)]
        self.consumers: list[Consumer] = []  # in joining order
        self.stats = GroupStats()
        self.next_due = float("inf")  # the earliest deadline among pending deliveries
        self._pumping = False
        self._again = False
        self._rr = 0
        self._rr_part = 0
        self._pfx = dq.state_prefix(name)

    # -- cursor ---------------------------------------------------------------------------------

    def start_at(self, cursor: str | int | float | None) -> None:
        """Position a new group: `earliest`, `latest` (default), an offset, or a time (epoch
        seconds, given as a float)."""
        for gp in self.parts:
            plog = gp.log
            if cursor == "earliest":
                off = plog.start
            elif cursor is None or cursor == "latest":
                off = plog.end
            elif isinstance(cursor, float):
                off = plog.offset_for_time(int(cursor * 1000))
            else:
                off = min(max(int(cursor), plog.start), plog.end)
            gp.next = gp.committed = off
            self.queue.cursor_moved(gp)

    def seek(self, partition: int | None, offset: int | None = None,
             ts: float | None = None) -> dict[int, int]:  # fmt: skip
        """Move the cursor (all partitions, or one) to an offset or a time; what was pending in
        them is forgotten. Returns partition -> new offset."""
        out = {}
        for gp in self.parts:
            if partition is not None and gp.index != partition:
                continue
            if ts is not None:
                off = gp.log.offset_for_time(int(ts * 1000))
            else:
                off = min(max(int(offset), gp.log.start), gp.log.end)
            for p in list(gp.pending.values()):
                self._drop(p)
            gp.ready.clear()
            gp.ahead.clear()
            gp.next = gp.committed = off
            self.queue.cursor_moved(gp)
            out[gp.index] = off
        self.pump()
        return out

    def _next(self, gp: GroupPartition):
        """The next entry this group has to deliver from a partition, or None."""
        plog = gp.log
        while True:
            o = gp.next
            if o < plog.start:
                o = gp.next = plog.start
                if gp.committed < o:
                    gp.committed = o
            if o >= plog.end:
                return None
            e = plog.cached(o)
            if e is None:
                ahead = gp.ahead
                while ahead and ahead[0].offset < o:
                    ahead.popleft()
                if not ahead:
                    ahead.extend(plog.read(o, 256))
                    if not ahead:
                        gp.next = plog.end  # unreadable: nothing more to give
                        self._advance(gp)
                        return None
                e = ahead.popleft()
            gp.next = e.offset + 1
            self.queue.cursor_moved(gp)
            if self.match is not None and not self.match(e.rkey):
                self._advance(gp)
                continue
            exp = e.msg.expires_at
            if exp and exp <= time.time():
                self.stats.expired += 1
                self._advance(gp)
                continue
            return e

    def _advance(self, gp: GroupPartition) -> None:
        """Move `committed` up past everything settled."""
        pend = gp.pending
        if not pend:
            gp.committed = gp.next
            return
        c = gp.committed
        n = gp.next
        if n - c > 64 and c not in pend:
            c = min(min(pend), n)
        while c < n and c not in pend:
            c += 1
        gp.committed = c

    # -- delivering ---------------------------------------------------------------------------------

    def deliver(self, c: Consumer, gp: GroupPartition, entry, p: Pending | None = None) -> None:
        q = self.queue
        now = q.clock()
        if p is None:
            p = Pending(entry.offset, gp)
            gp.pending[entry.offset] = p
        else:
            self.stats.redeliveries += 1
        p.count += 1
        p.attempt += 1
        p.state = DELIVERED
        p.consumer = c
        p.entry = entry
        p.due = now + q.settings.visibility_timeout
        if p.due < self.next_due:
            self.next_due = p.due
        c.unacked += 1
        self.stats.delivered += 1
        q.state.put_pending(self._pfx, gp.index, p.offset, p.count, DELIVERED, q.wall(p.due))
        msg = entry.msg.copy()
        msg.qos = 1
        msg.retain = False
        ups = msg.user_properties
        props = list(ups) if ups else []
        props += [
            ("message-id", f"{q.name}:{gp.index}:{p.offset}"),
            ("group-id", self.name),
            ("queue", q.name),
            ("partition", str(gp.index)),
            ("offset", str(p.offset)),
            ("delivery-count", str(p.count)),
        ]
        msg.user_properties = props
        token = Delivery(p, c)
        if c.qos == 0:
            c.session.deliver_tracked(msg, 0, token)
            self.ack(p)  # at most once: settled as it is sent
        else:
            c.session.deliver_tracked(msg, 1, token)

    def pump(self) -> None:
        """Deliver while consumers have room and messages are waiting."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                if self.ordered:
                    for gp in self.parts:
                        self._pump_owned(gp)
                else:
                    self._pump_shared()
                if not self._again:
                    break
        finally:
            self._pumping = False

    def offer(self, partition: int) -> None:
        """A message was appended to `partition`: deliver it if someone has room."""
        if not self.ordered:
            self.pump()
            return
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        self._again = False
        try:
            self._pump_owned(self.parts[partition])
        finally:
            self._pumping = False
        if self._again:
            self.pump()

    def _ready(self, gp: GroupPartition) -> Pending | None:
        while gp.ready:
            _, p = heapq.heappop(gp.ready)
            if p.state == READY and gp.pending.get(p.offset) is p:
                return p
        return None

    def _redeliver(self, c: Consumer, gp: GroupPartition, p: Pending) -> None:
        e = p.entry or gp.log.entry_at(p.offset)
        if e is None:
            self.stats.lost += 1  # removed by retention or compaction meanwhile
            self._drop(p)
            self._advance(gp)
            return
        self.deliver(c, gp, e, p)

    def _pump_owned(self, gp: GroupPartition) -> None:
        c = gp.owner
        if c is None or not c.active or gp.foreign:
            return
        while c.unacked < c.window:
            p = self._ready(gp)
            if p is not None:
                self._redeliver(c, gp, p)
                continue
            e = self._next(gp)
            if e is None:
                return
            self.deliver(c, gp, e)

    def _pump_shared(self) -> None:
        consumers = [c for c in self.consumers if c.active]
        if not consumers:
            return
        parts = self.parts
        n = len(parts)
        while True:
            c = None
            k = len(consumers)
            for i in range(k):
                cand = consumers[(self._rr + i) % k]
                if cand.unacked < cand.window:
                    c = cand
                    self._rr = (self._rr + i + 1) % k
                    break
            if c is None:
                return
            for j in range(n):
                gp = parts[(self._rr_part + j) % n]
                p = self._ready(gp)
                if p is not None:
                    self._redeliver(c, gp, p)
                    break
                e = self._next(gp)
                if e is not None:
                    self.deliver(c, gp, e)
                    break
            else:
                return
            self._rr_part = (self._rr_part + j + 1) % n

    # -- settling ----------------------------------------------------------------------------------

    def _undeliver(self, p: Pending) -> None:
        c = p.consumer
        if c is not None:
            c.unacked -= 1
            if self.ordered and c is not p.gp.owner:
                p.gp.foreign -= 1
        p.consumer = None

    def _drop(self, p: Pending) -> None:
        """Forget a pending delivery (acknowledged, dead-lettered, or lost)."""
        gp = p.gp
        if gp.pending.get(p.offset) is not p:
            return
        del gp.pending[p.offset]
        if p.state == DELIVERED:
            self._undeliver(p)
        p.state = DONE
        p.entry = None
        self.queue.state.delete_pending(self._pfx, gp.index, p.offset)

    def find(self, partition: int, offset: int) -> Pending | None:
        if not 0 <= partition < len(self.parts):
            return None
        return self.parts[partition].pending.get(offset)

    def ack(self, p: Pending) -> None:
        gp = p.gp
        self._drop(p)
        self._advance(gp)
        self.stats.acks += 1
        self.pump()

    def nack(self, p: Pending) -> None:
        """Redeliver after the retry backoff (or move to the dead-letter queue once the retries
        are used up)."""
        self.stats.nacks += 1
        client = p.consumer.client_id if p.consumer is not None else None
        if p.state == DELIVERED:
            self._undeliver(p)
        r = self.queue.settings.retry
        if p.count > r.max_retries:
            self.dead_letter(p, f"nacked after {p.count} deliveries (retry.max_retries "
                                f"{r.max_retries})", client)  # fmt: skip
        else:
            delay = min(r.initial_backoff * r.multiplier ** (p.count - 1), r.max_backoff)
            if delay <= 0:
                self._make_ready(p)
            else:
                p.state = WAITING
                p.due = self.queue.clock() + delay
                if p.due < self.next_due:
                    self.next_due = p.due
                self.queue.state.put_pending(self._pfx, p.gp.index, p.offset, p.count, WAITING,
                                             self.queue.wall(p.due))  # fmt: skip
        self.pump()

    def reject(self, p: Pending, reason: str | None) -> None:
        self.stats.rejects += 1
        client = p.consumer.client_id if p.consumer is not None else None
        self.dead_letter(p, reason or "rejected by the consumer", client)
        self.pump()

    def _make_ready(self, p: Pending) -> None:
        p.state = READY
        heapq.heappush(p.gp.ready, (p.offset, p))
        self.queue.state.put_pending(self._pfx, p.gp.index, p.offset, p.count, READY, 0.0)

    def dead_letter(self, p: Pending, reason: str, client: str | None) -> None:
        gp = p.gp
        e = p.entry or gp.log.entry_at(p.offset)
        count = p.count
        self._drop(p)
        self._advance(gp)
        if e is None:
            self.stats.lost += 1
            return
        self.stats.dead_lettered += 1
        self.queue.dead_letter(self, gp.index, e, reason, count, client)

    def _settle_failed(self, p: Pending, why: str, client: str | None) -> None:
        """A delivery that was not acknowledged (timed out, or its consumer left): redeliver, or
        dead-letter once the retries are used up."""
        r = self.queue.settings.retry
        if p.count > r.max_retries:
            self.dead_letter(p, f"{why} after {p.count} deliveries (retry.max_retries "
                                f"{r.max_retries})", client)  # fmt: skip
        else:
            self._make_ready(p)

    def expire_due(self, now: float) -> None:
        """Visibility timeouts and retry backoffs that are due (the manager's tick)."""
        if now < self.next_due:
            return
        nxt = float("inf")
        for gp in self.parts:
            for p in list(gp.pending.values()):
                if p.state == READY:
                    continue
                if p.due > now:
                    if p.due < nxt:
                        nxt = p.due
                    continue
                if p.state == DELIVERED:
                    client = p.consumer.client_id if p.consumer is not None else None
                    self._undeliver(p)
                    self._settle_failed(p, "not acknowledged within visibility_timeout", client)
                else:
                    self._make_ready(p)
        self.next_due = nxt
        self.pump()

    # -- consumers -------------------------------------------------------------------------------

    def join(self, c: Consumer) -> None:
        self.consumers.append(c)
        self.rebalance()

    def leave(self, c: Consumer) -> None:
        self.deactivate(c)
        if c in self.consumers:
            self.consumers.remove(c)
        self.rebalance()

    def activate(self, c: Consumer, window: int) -> None:
        if c.active:
            c.window = max(1, window)
            self.pump()
            return
        c.active = True
        c.unacked = 0
        c.window = max(1, window)
        self.rebalance()

    def deactivate(self, c: Consumer) -> None:
        """Its connection ended: what it held is redelivered (to others, or to it later)."""
        if not c.active:
            return
        c.active = False
        for gp in self.parts:
            for p in list(gp.pending.values()):
                if p.state == DELIVERED and p.consumer is c:
                    self._undeliver(p)
                    self._settle_failed(p, "its consumer left", c.client_id)
        self.rebalance()

    def rebalance(self) -> None:
        """Partition owners among the connected consumers (ordering: partition)."""
        if self.ordered:
            active = [c for c in self.consumers if c.active]
            owners = assign(len(self.parts), active, [gp.owner for gp in self.parts])
            for gp, o in zip(self.parts, owners, strict=True):
                if gp.owner is not o:
                    gp.owner = o
                    gp.foreign = sum(
                        1 for p in gp.pending.values()
                        if p.state == DELIVERED and p.consumer is not o
                    )  # fmt: skip
        self.pump()

    # -- start-up ------------------------------------------------------------------------------------

    def restore(self, partition: int, cursor: int | None, pending: list) -> None:
        """From the queue state: the cursor and the pending deliveries of one partition (every
        delivery of the previous run is redelivered; retries keep their backoff)."""
        if not 0 <= partition < len(self.parts):
            return
        gp = self.parts[partition]
        plog = gp.log
        if cursor is not None:
            gp.next = min(max(cursor, plog.start), plog.end)
        now_wall = time.time()
        for off, count, st, deadline in sorted(pending):
            if off < plog.start or off >= gp.next:
                self.queue.state.delete_pending(self._pfx, partition, off)
                continue
            p = Pending(off, gp)
            p.count = count
            gp.pending[off] = p
            if st == WAITING and deadline > now_wall:
                p.state = WAITING
                p.due = self.queue.clock() + (deadline - now_wall)
                self.next_due = min(self.next_due, p.due)
            else:
                p.state = READY
                heapq.heappush(gp.ready, (off, p))
        gp.committed = min(gp.pending) if gp.pending else gp.next

    # -- introspection -------------------------------------------------------------------------------

    @property
    def lag(self) -> int:
        return sum(gp.lag for gp in self.parts)

    def info(self) -> dict:
        return {
            "group": self.name,
            "pattern": self.pattern,
            "consumers": [
                {
                    "client_id": c.client_id,
                    "connected": c.active,
                    "unacked": c.unacked,
                    "window": c.window,
                    "partitions": [gp.index for gp in self.parts if gp.owner is c],
                }
                for c in self.consumers
            ],
            "lag": self.lag,
            "pending": sum(len(gp.pending) for gp in self.parts),
            "partitions": [
                {
                    "partition": gp.index,
                    "next": gp.next,
                    "committed": gp.committed,
                    "lag": gp.lag,
                    "pending": len(gp.pending),
                    "owner": gp.owner.client_id if gp.owner is not None else None,
                }
                for gp in self.parts
            ],
            "stats": {k: getattr(self.stats, k) for k in GroupStats.__slots__},
        }
