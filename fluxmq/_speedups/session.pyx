# cython: language_level=3
"""A client's session: what the broker owes it, whether or not it is connected.

The session owns packet identifiers and the outbound in-flight window (bounded by the client's
Receive Maximum and broker.max_inflight), the queue of messages waiting for the window or for
the client to come back (bounded by session.max_offline_queue_size, evicting the oldest or
rejecting the newest), and the inbound QoS 2 packet identifiers awaiting PUBREL. It delivers
through an `Outlet` (the protocol layer's connection) and never sees a wire format.

A persistent session has a `store` (durable storage) that it tells about every change. Its queue
keeps at most SPILL_AT entries in memory: newer ones live only on disk (`spilled`) and are read
back in order, SPILL_BATCH at a time, as the queue drains, so a long offline queue does not sit
in RAM.
"""

from collections import deque
import time

cdef enum:
    SPILL_AT = 1000        # queued entries kept in memory before newer ones stay on disk
    # ... for a connected session: its publishers are paused at HIGH_WATER_MAX, so only the
    # overshoot of their windows lies beyond; reading a spilled queue back costs a compaction
    # per SPILL_BATCH entries, which a live stream cannot afford (measured: a stream whose
    # queue passed 1,000 fell from ~380k to ~20k msg/s, and its queue overflowed).
    SPILL_ONLINE = 4000
    SPILL_BATCH = 500      # entries read back from disk at a time
    HIGH_WATER_MAX = 1000  # an online queue this long pauses the publishers feeding it

# Sessions whose online queue passed its high-water mark during the current publish: the
# publishing channel takes them (take_congested) and pauses its input until they drain.
cdef list _congested = []


cdef list take_congested():
    global _congested
    cdef list out = _congested
    _congested = []
    return out


def congested_count() -> int:
    return len(_congested)


def discard_congested() -> None:
    """Forget the sessions a publish made congested (doors that cannot pause their publisher:
    the HTTP and CoAP bridges, wills; only the MQTT channel pauses reading)."""
    global _congested
    if _congested:
        _congested = []


cdef class Outlet:
    """The protocol layer's end of a session (a connected client)."""

    cdef int send_publish(self, Message msg, int qos, int packet_id, bint dup, bint retain,
                          object sub_ids) except -1:
        """Send msg; 1 if sent, 0 if this client cannot take it (then it is dropped for it)."""
        raise TypeError(f"{type(self).__name__} is an abstract Outlet")

    cdef int send_pubrel(self, int packet_id) except -1:
        raise TypeError(f"{type(self).__name__} is an abstract Outlet")


cdef class CallbackOutlet(Outlet):
    """An Outlet for doors that are not MQTT connections (the CoAP bridge's observers, ...):
    each delivery calls `on_publish(msg, qos, packet_id, dup, retain, sub_ids)`, which returns
    True if the message was taken; the door acknowledges QoS 1/2 deliveries with
    `Session.on_puback(packet_id)` (or on_pubrec/on_pubcomp)."""

    def __init__(self, on_publish, on_pubrel=None):
        self.on_publish = on_publish
        self.on_pubrel = on_pubrel

    cdef int send_publish(self, Message msg, int qos, int packet_id, bint dup, bint retain,
                          object sub_ids) except -1:
        return 1 if self.on_publish(msg, qos, packet_id, dup, retain, sub_ids) else 0

    cdef int send_pubrel(self, int packet_id) except -1:
        if self.on_pubrel is not None:
            self.on_pubrel(packet_id)
        return 0


cdef class DeliveryToken:
    """Marks a delivery tracked outside the session (`Inflight.group`), such as a durable
    queue's: `puback()` runs when the client acknowledges it, and durable storage does not keep
    it (its owner keeps its own state). Subclass it and override `puback`."""

    cpdef int puback(self) except -1:
        return 0


cdef inline bint _kept(Inflight e):
    """Durable storage keeps this entry (it is not a tracked delivery)."""
    return e.group is None or not isinstance(e.group, DeliveryToken)


cdef class Subscription:
    """One subscription of one session, with its options."""

    def __init__(self, Session session, str topic_filter, int qos=0, *, str share_group=None,
                 bint no_local=False, bint retain_as_published=False, int retain_handling=0,
                 object identifier=None):
        self.session = session
        self.topic_filter = topic_filter
        self.share_group = share_group
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.identifier = identifier

    @property
    def full_filter(self) -> str:
        """The filter as the client wrote it ($share/<group>/<filter> when shared)."""
        if self.share_group is None:
            return self.topic_filter
        return f"$share/{self.share_group}/{self.topic_filter}"

    def __repr__(self):
        return (f"Subscription({self.session.client_id!r}, {self.full_filter!r}, qos={self.qos}, "
                f"id={self.identifier})")


cdef class Inflight:
    """An outbound QoS 1/2 delivery: queued, sent, or (QoS 2) released."""

    def __repr__(self):
        return f"Inflight({self.msg!r}, qos={self.qos}, state={self.state})"


cdef object _not_a_store(object obj, str hook):
    raise TypeError(f"{type(obj).__name__} is not a durable store: it has no {hook} hook")


cdef class StoreHooks:
    """The session's calls into durable storage, one per change of a kept QoS 1/2 message.
    `fluxmq._speedups.storecore.StoreCore` implements them all; this base only names them
    (calling one of its own is an error: the object is not a store)."""

    cpdef queued(self, Session session, Inflight e):
        _not_a_store(self, "queued")

    cpdef moved(self, Session session, int packet_id, Inflight e):
        _not_a_store(self, "moved")

    cpdef unqueued(self, Session session, Inflight e):
        _not_a_store(self, "unqueued")

    cpdef inflight(self, Session session, int packet_id, Inflight e):
        _not_a_store(self, "inflight")

    cpdef released(self, Session session, int packet_id, Inflight e):
        _not_a_store(self, "released")

    cpdef acked(self, Session session, int packet_id, Inflight e):
        _not_a_store(self, "acked")

    cpdef rel_added(self, Session session, int packet_id):
        _not_a_store(self, "rel_added")

    cpdef rel_removed(self, Session session, int packet_id):
        _not_a_store(self, "rel_removed")


cdef class Session:
    """A client's session state."""

    def __init__(self, str client_id, unsigned long expiry_interval=0, int window=65535,
                 int max_queue=1000, bint drop_new=False):
        self.client_id = client_id
        self.expiry_interval = expiry_interval
        self.window = window
        self.max_queue = max_queue
        self.drop_new = drop_new
        self.subscriptions = {}
        self.inflight = {}
        self.queue = None   # a deque once something waits (an empty deque costs 624 bytes)
        self.awaiting_rel = set()
        self.next_pid = 1
        self.high_water = max(1, min(max_queue // 2, HIGH_WATER_MAX))

    # -- delivery ------------------------------------------------------------------------------

    cdef int deliver(self, Message msg, int qos, bint retain, object sub_ids,
                     object group) except -1:
        """Deliver msg at `qos` (already downgraded to the subscription's). Returns 1 if sent
        or queued, 0 if dropped."""
        cdef Inflight e
        if qos == 0:
            if self.outlet is None:
                return 0          # QoS 0 is not queued for an offline session (as Mosquitto)
            return self.outlet.send_publish(msg, 0, 0, False, retain, sub_ids)
        msg.detach()
        e = Inflight.__new__(Inflight)
        e.msg = msg
        e.qos = qos
        e.retain = retain
        e.sub_ids = sub_ids
        e.group = group
        if self.outlet is not None and not self.queue and len(self.inflight) < self.window:
            return self._send(e, False)
        return self._enqueue(e)

    cdef int _enqueue(self, Inflight e) except -1:
        if self._qlen() + self.spilled >= self.max_queue:
            self.dropped += 1
            if self.drop_new:
                return 0
            self._drop_oldest()
        if self.store is not None and _kept(e) and (
                self.spilled or self._qlen() >= (SPILL_AT if self.outlet is None
                                                 else SPILL_ONLINE)):
            self.store.queued(self, e)          # newest entries stay on disk only
            self.spilled += 1
            return 1
        self._q().append(e)
        if self.store is not None and _kept(e):
            self.store.queued(self, e)
        if self.outlet is not None and self._qlen() >= self.high_water:
            # Back-pressure: the connected client is slower than its publishers. Rather than
            # evicting acknowledged messages, the publisher is paused until this queue drains.
            _congested.append(self)
        return 1

    cdef int _release_blocked(self) except -1:
        cdef list blocked = self.blocked
        self.blocked = None
        for w in blocked:
            w.release(self)
        return 0

    cdef inline object _q(self):
        if self.queue is None:
            self.queue = deque()
        return self.queue

    cdef inline Py_ssize_t _qlen(self):
        return 0 if self.queue is None else len(self.queue)

    cdef int _drop_oldest(self) except -1:
        cdef Inflight old
        if self.queue:
            old = <Inflight>self.queue.popleft()
            if self.store is not None and _kept(old):
                self.store.unqueued(self, old)
        elif self.spilled:
            (<object>self.store).drop_oldest_spilled(self)
            self.spilled -= 1
        return 0

    cdef int _refill(self) except -1:
        """Read the next spilled entries back from disk (0 if storage is busy right now)."""
        cdef list loaded
        if not self.spilled or self.store is None:
            return 0
        loaded = (<object>self.store).load_spilled(self, SPILL_BATCH)
        if loaded is None:
            return 0                            # storage will pump again when it can
        if not loaded:
            self.spilled = 0
            return 0
        self.spilled -= len(loaded)
        if self.spilled < 0:
            self.spilled = 0
        self._q().extend(loaded)
        return len(loaded)

    cdef int _alloc_pid(self) except -1:
        cdef int pid = self.next_pid
        cdef int tries = 0
        while pid in self.inflight:
            pid = pid + 1 if pid < 65535 else 1
            tries += 1
            if tries > 65535:
                raise RuntimeError("no free packet identifier")
        self.next_pid = pid + 1 if pid < 65535 else 1
        return pid

    cdef int _send(self, Inflight e, bint dup, bint queued=False) except -1:
        """Send e with a new packet id; `queued`: it comes from the queue (storage moves it)."""
        cdef int pid = self._alloc_pid()
        if not self.outlet.send_publish(e.msg, e.qos, pid, dup, e.retain, e.sub_ids):
            self.dropped += 1
            if queued and self.store is not None and _kept(e):
                self.store.unqueued(self, e)
            return 0
        e.state = 1
        e.sent_at = time.monotonic()
        self.inflight[pid] = e
        if self.store is not None and _kept(e):
            if queued:
                self.store.moved(self, pid, e)
            else:
                self.store.inflight(self, pid, e)
        return 1

    cpdef int pump(self) except -1:
        """Send queued messages while the window has room (expired ones are dropped)."""
        cdef Inflight e
        cdef double now = 0.0
        while self.outlet is not None and len(self.inflight) < self.window:
            if not self.queue and not self._refill():
                break
            e = <Inflight>self.queue.popleft()
            if e.msg.expires_at != 0.0:
                if now == 0.0:
                    now = time.time()
                if e.msg.expired(now):
                    if self.store is not None and _kept(e):
                        self.store.unqueued(self, e)
                    continue
            self._send(e, False, True)
        if self.queue is not None and not self.queue:
            self.queue = None       # drained: give the deque's block back
        if self.blocked is not None and self._qlen() <= self.high_water // 2:
            self._release_blocked()
        return 0

    cpdef int add_rel(self, int packet_id) except -1:
        """An inbound QoS 2 PUBLISH was taken: its packet id awaits PUBREL."""
        self.awaiting_rel.add(packet_id)
        if self.store is not None:
            self.store.rel_added(self, packet_id)
        return 0

    cpdef int remove_rel(self, int packet_id) except -1:
        """PUBREL arrived: 1 if the packet id was awaiting it."""
        if packet_id not in self.awaiting_rel:
            return 0
        self.awaiting_rel.discard(packet_id)
        if self.store is not None:
            self.store.rel_removed(self, packet_id)
        return 1

    # -- acknowledgements from the client --------------------------------------------------------

    cpdef int on_puback(self, int packet_id) except -1:
        """PUBACK (QoS 1 done). Returns 1 if the packet id was in flight."""
        cdef Inflight e = self.inflight.get(packet_id)
        if e is None or e.qos != 1:
            return 0
        del self.inflight[packet_id]
        if e.group is not None and isinstance(e.group, DeliveryToken):
            (<DeliveryToken>e.group).puback()
        elif self.store is not None:
            self.store.acked(self, packet_id, e)
        if self.queue or self.spilled:
            self.pump()
        return 1

    cpdef int on_pubrec(self, int packet_id, int reason) except -1:
        """PUBREC: release with PUBREL, or end the flow on an error reason. 1 if known."""
        cdef Inflight e = self.inflight.get(packet_id)
        if e is None or e.qos != 2:
            return 0
        if reason >= 0x80:
            del self.inflight[packet_id]
            if self.store is not None:
                self.store.acked(self, packet_id, e)
            if self.queue or self.spilled:
                self.pump()
            return 1
        e.state = 2
        if self.store is not None:
            self.store.released(self, packet_id, e)
        e.msg = None          # only the packet identifier matters from here on
        if self.outlet is not None:
            self.outlet.send_pubrel(packet_id)
        return 1

    cpdef int on_pubcomp(self, int packet_id) except -1:
        cdef Inflight e = self.inflight.get(packet_id)
        if e is None or e.state != 2:
            return 0
        del self.inflight[packet_id]
        if self.store is not None:
            self.store.acked(self, packet_id, e)
        if self.queue or self.spilled:
            self.pump()
        return 1

    # -- connection changes ----------------------------------------------------------------------

    cpdef int resume(self, Outlet outlet) except -1:
        """Attach to a new connection: re-send every unacknowledged PUBLISH (DUP) and PUBREL
        with its original packet identifier, in order [MQTT-4.4.0-1], then pump the queue."""
        cdef Inflight e
        self.outlet = outlet
        self.disconnected_at = 0.0
        for pid, e in list(self.inflight.items()):
            if self.outlet is None:
                break
            e.sent_at = time.monotonic()   # the retry clock restarts with this re-send
            if e.state == 2:
                outlet.send_pubrel(pid)
            elif not outlet.send_publish(e.msg, e.qos, pid, True, e.retain, e.sub_ids):
                del self.inflight[pid]
                self.dropped += 1
                if self.store is not None and _kept(e):
                    self.store.acked(self, pid, e)
        self.pump()
        return 0

    cpdef int retry_due(self, double now, double interval) except -1:
        """MQTT 3.1.1 only: re-send PUBLISH/PUBREL unacknowledged for `interval` seconds."""
        cdef Inflight e
        cdef int n = 0
        if self.outlet is None:
            return 0
        for pid, e in list(self.inflight.items()):
            if now - e.sent_at < interval:
                continue
            e.sent_at = now
            n += 1
            if e.state == 2:
                self.outlet.send_pubrel(pid)
            else:
                self.outlet.send_publish(e.msg, e.qos, pid, True, e.retain, e.sub_ids)
        return n

    def detach(self):
        """The connection went away; the session stays (or is discarded by the broker)."""
        self.outlet = None
        self.disconnected_at = time.time()
        if self.blocked is not None:
            self._release_blocked()

    def block(self, publisher):
        """`publisher` (its `release(session)` is called once this queue drains) waits."""
        if self.blocked is None:
            self.blocked = [publisher]
        elif publisher not in self.blocked:
            self.blocked.append(publisher)

    def unblock(self, publisher):
        if self.blocked is not None and publisher in self.blocked:
            self.blocked.remove(publisher)
            if not self.blocked:
                self.blocked = None

    def take_shared(self) -> list:
        """Remove and return the QoS>0 deliveries that came through shared subscriptions and
        are not yet acknowledged (queued or PUBLISH sent), so another member can have them."""
        cdef Inflight e
        out = []
        keep = deque()
        for e in self.queue or ():
            if e.group is not None and _kept(e):
                out.append(e)
                if self.store is not None:
                    self.store.unqueued(self, e)
            else:
                keep.append(e)
        self.queue = keep or None
        for pid, e in list(self.inflight.items()):
            if e.group is not None and e.state == 1 and _kept(e):
                del self.inflight[pid]
                if self.store is not None:
                    self.store.acked(self, pid, e)
                out.append(e)
        return out

    def take_tokens(self) -> list:
        """Remove the deliveries tracked outside the session (`DeliveryToken`s: queued, or
        PUBLISH sent and not acknowledged) and return their tokens: their owner redelivers them
        rather than this session re-sending them when the client comes back."""
        cdef Inflight e
        out = []
        if self.queue:
            keep = deque()
            for e in self.queue:
                if e.group is not None and not _kept(e):
                    out.append(e.group)
                else:
                    keep.append(e)
            self.queue = keep or None
        for pid, e in list(self.inflight.items()):
            if e.group is not None and not _kept(e):
                del self.inflight[pid]
                out.append(e.group)
        return out

    def deliver_tracked(self, Message msg, int qos, DeliveryToken token) -> int:
        """Deliver msg as a delivery that `token` tracks (see DeliveryToken): 1 if sent or
        queued, 0 if dropped."""
        return self.deliver(msg, qos, False, None, token)

    def clear(self):
        """Drop everything (clean start, or expiry); storage forgets the session separately."""
        self.inflight.clear()
        self.queue = None
        self.awaiting_rel.clear()
        self.spilled = 0

    # -- introspection (tests, $SYS, admin API, storage) ------------------------------------------

    @property
    def inflight_count(self) -> int:
        return len(self.inflight)

    @property
    def queued_count(self) -> int:
        """Messages waiting to be sent, in memory and on disk."""
        return self._qlen() + self.spilled

    def inflight_items(self) -> list:
        return list(self.inflight.items())

    def queued_items(self) -> list:
        return list(self.queue or ())

    def restore_inflight(self, int packet_id, Inflight e):
        """Storage: put back an in-flight entry read from disk."""
        self.inflight[packet_id] = e
        if packet_id >= self.next_pid:
            self.next_pid = packet_id + 1 if packet_id < 65535 else 1

    def restore_queued(self, Inflight e):
        self._q().append(e)

    @staticmethod
    def new_inflight(Message msg, int qos, bint retain, object sub_ids, int state):
        cdef Inflight e = Inflight.__new__(Inflight)
        e.msg = msg
        e.qos = qos
        e.retain = retain
        e.sub_ids = sub_ids
        e.state = state
        return e

    @property
    def online(self) -> bool:
        return self.outlet is not None

    def __repr__(self):
        return (f"Session({self.client_id!r}, online={self.outlet is not None}, "
                f"subs={len(self.subscriptions)}, inflight={len(self.inflight)}, "
                f"queued={self._qlen()})")
