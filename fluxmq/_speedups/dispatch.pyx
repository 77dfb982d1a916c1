# cython: language_level=3
"""Routing: the one entry point every door publishes through.

`publish(msg)` stores retained messages (through the broker's hook), finds the matching
subscriptions in the topic trie, and hands each session one delivery: overlapping subscriptions
of a client collapse into a single delivery at the highest granted QoS carrying every matching
Subscription Identifier [MQTT-3.3.4-3/5]; No Local subscriptions skip the publisher; a shared
subscription group gets the message once, on the next connected member in round-robin order.

A `$queue/...` topic goes to the durable queues instead (`Dispatcher.queues`, set only when the
broker has them: without it the check costs nothing), which append it to a queue's log or take
it as an acknowledgement; a refusal leaves its reason in `refused` / `refused_why`.

The aggregated route of a topic is cached (the hot-topic cache): a publish on a known topic
costs one dict look-up plus the deliveries. Any subscription change clears the cache.
"""

from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR
from fluxmq._speedups.message cimport Message
from fluxmq._speedups.session cimport Session, Subscription, Inflight
from fluxmq._speedups.trie cimport TopicTrie

import time

cdef enum:
    CACHE_MAX_BYTES = 16777216   # topic characters the route cache may hold


# Upper bounds (seconds) of the latency histogram's buckets; the last one is +Inf.
LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                   0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
cdef double[17] _LAT_BOUNDS = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                               0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


cdef class Counters:
    """Broker-wide traffic counters ($SYS, metrics)."""

    cdef void observe_latency(self, double seconds) noexcept:
        cdef int i = 0
        while i < 17 and seconds > _LAT_BOUNDS[i]:
            i += 1
        self.lat_buckets[i] += 1
        self.lat_sum += seconds
        self.lat_count += 1

    def observe(self, double seconds):
        """Record one publish-to-deliver latency (doors other than the MQTT channel)."""
        self.observe_latency(seconds)

    def latency(self) -> tuple:
        """(bucket counts (not cumulative; the last is above every bound), sum, count)."""
        return [self.lat_buckets[i] for i in range(18)], self.lat_sum, self.lat_count

    def by_qos(self) -> dict:
        """PUBLISH packets and bytes by QoS: {"received": [n0, n1, n2], "received_bytes": ...,
        "sent": ..., "sent_bytes": ...}."""
        return {
            "received": [self.pub_in[i] for i in range(3)],
            "received_bytes": [self.pub_in_bytes[i] for i in range(3)],
            "sent": [self.pub_out[i] for i in range(3)],
            "sent_bytes": [self.pub_out_bytes[i] for i in range(3)],
        }

    def as_dict(self) -> dict:
        return {
            "messages_received": self.messages_received,
            "messages_sent": self.messages_sent,
            "publish_received": self.publish_received,
            "publish_sent": self.publish_sent,
            "publish_dropped": self.publish_dropped,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "dropped_rate_limited": self.dropped_rate_limited,
            "dropped_not_authorized": self.dropped_not_authorized,
            "dropped_slow": self.dropped_slow,
            "dropped_too_large": self.dropped_too_large,
        }


cdef class SharedGroup:
    """The members of `$share/<name>/<topic_filter>`."""

    def __init__(self, str name, str topic_filter):
        self.name = name
        self.topic_filter = topic_filter
        self.members = []
        self._next = 0

    cdef Subscription pick(self, int qos, Session avoid):
        """The next connected member (round robin); for QoS>0 with none connected, the next
        member whose session queues it (granted QoS > 0: a QoS 0 delivery to an offline member
        would be dropped). None when nobody can take it."""
        cdef Py_ssize_t n = len(self.members)
        cdef Py_ssize_t k, i
        cdef Subscription s
        if n == 0:
            return None
        for k in range(n):
            i = (self._next + k) % n
            s = <Subscription>self.members[i]
            if s.session.outlet is not None and s.session is not avoid:
                self._next = i + 1
                return s
        if qos == 0:
            return None
        for k in range(n):
            i = (self._next + k) % n
            s = <Subscription>self.members[i]
            if s.session is not avoid and s.qos > 0:
                self._next = i + 1
                return s
        return None

    def __repr__(self):
        return f"SharedGroup({self.name!r}, {self.topic_filter!r}, members={len(self.members)})"


cdef class Target:
    pass


cdef class Route:
    pass


cdef inline Target _target(Subscription sub):
    cdef Target t = Target.__new__(Target)
    t.session = sub.session
    t.qos = sub.qos
    t.sub_ids = None if sub.identifier is None else [sub.identifier]
    t.rap = sub.retain_as_published
    t.any_no_local = sub.no_local
    t.subs = [sub]
    return t


cdef inline int _merge(Target t, Subscription sub) except -1:
    if sub.qos > t.qos:
        t.qos = sub.qos
    if sub.identifier is not None:
        if t.sub_ids is None:
            t.sub_ids = [sub.identifier]
        else:
            t.sub_ids.append(sub.identifier)
    t.rap = t.rap or sub.retain_as_published
    t.any_no_local = t.any_no_local or sub.no_local
    t.subs.append(sub)
    return 0


cdef class Dispatcher:
    """Subscriptions of every session, and the publish path through them."""

    def __init__(self, Py_ssize_t cache_max=65536):
        self.trie = TopicTrie()
        self._cache = {}
        self._groups = {}
        self.counters = Counters()
        self.cache_max = cache_max

    # -- subscriptions -----------------------------------------------------------------------

    cpdef int subscribe(self, Subscription sub) except -1:
        """Add or replace sub (keyed by its session and filter). Returns 1 if it is new."""
        cdef SharedGroup g
        cdef Subscription old
        cdef Py_ssize_t i
        self._cache.clear()
        self._cache_bytes = 0
        if sub.share_group is None:
            return 1 if self.trie.insert(sub.topic_filter, sub.session.client_id, sub) else 0
        key = (sub.share_group, sub.topic_filter)
        g = self._groups.get(key)
        if g is None:
            g = SharedGroup(sub.share_group, sub.topic_filter)
            self._groups[key] = g
            self.trie.insert(sub.topic_filter, ("$share", sub.share_group), g)
        for i in range(len(g.members)):
            old = <Subscription>g.members[i]
            if old.session is sub.session:
                g.members[i] = sub
                return 0
        g.members.append(sub)
        return 1

    cpdef object unsubscribe(self, Session session, str topic_filter, str share_group=None):
        """Remove the session's subscription; returns it, or None if there was none."""
        cdef SharedGroup g
        cdef Subscription s
        cdef Py_ssize_t i
        self._cache.clear()
        self._cache_bytes = 0
        if share_group is None:
            s = self.trie.get(topic_filter, session.client_id)
            if s is None or s.session is not session:
                return None
            return self.trie.remove(topic_filter, session.client_id)
        key = (share_group, topic_filter)
        g = self._groups.get(key)
        if g is None:
            return None
        for i in range(len(g.members)):
            s = <Subscription>g.members[i]
            if s.session is session:
                del g.members[i]
                if not g.members:
                    del self._groups[key]
                    self.trie.remove(topic_filter, ("$share", share_group))
                return s
        return None

    def matching(self, str topic) -> list:
        """The subscriptions (and shared groups) matching topic, for tests and the admin API."""
        return self.trie.match(topic)

    def shared_group(self, str name, str topic_filter):
        return self._groups.get((name, topic_filter))

    @property
    def subscription_count(self) -> int:
        cdef SharedGroup g
        n = self.trie.count - len(self._groups)
        for g in self._groups.values():
            n += len(g.members)
        return n

    # -- publishing ----------------------------------------------------------------------------

    cdef Route route(self, str topic):
        cdef Route r = self._cache.get(topic)
        cdef list values
        cdef dict by_client
        cdef Subscription sub
        cdef Target t
        if r is not None:
            return r
        values = self.trie.match(topic)
        r = Route.__new__(Route)
        r.targets = []
        r.groups = []
        by_client = {}
        for v in values:
            if type(v) is SharedGroup:
                r.groups.append(v)
                continue
            sub = <Subscription>v
            if self.read_check is not None and not self.read_check(sub.session, topic):
                continue        # the ACL lets this client not read the topic
            t = by_client.get(sub.session.client_id)
            if t is None:
                t = _target(sub)
                by_client[sub.session.client_id] = t
                r.targets.append(t)
            else:
                _merge(t, sub)
        if not r.targets and not r.groups:
            return r            # nothing to cache: a miss costs as little as a hit would
        if len(self._cache) >= self.cache_max or self._cache_bytes > CACHE_MAX_BYTES:
            self._cache.clear()
            self._cache_bytes = 0
        self._cache[topic] = r
        self._cache_bytes += len(topic)
        return r

    cpdef int publish(self, Message msg) except -1:
        """Route msg to every matching session; returns the number of deliveries."""
        cdef Route r
        cdef Target t
        cdef Py_ssize_t i, n
        cdef int delivered = 0
        cdef str topic
        if self.queues is not None:
            self.refused = 0
            topic = msg.topic
            if (PyUnicode_GET_LENGTH(topic) >= 7 and PyUnicode_READ_CHAR(topic, 0) == 36
                    and topic.startswith("$queue/")):
                return self._queue_publish(msg)
        if msg.retain and self.on_retain is not None:
            self.on_retain(msg)
        if msg.expires_at != 0.0 and msg.expired(time.time()):
            return 0
        if self.on_publish is not None:
            self.on_publish(msg)
        r = self.route(msg.topic)
        n = len(r.targets)
        msg.fanout = n + len(r.groups)
        for i in range(n):
            delivered += self._deliver_target(<Target>r.targets[i], msg)
        for i in range(len(r.groups)):
            delivered += self._deliver_group(<SharedGroup>r.groups[i], msg, None)
        return delivered

    cdef int _queue_publish(self, Message msg) except -1:
        """A `$queue/` topic: the queues take it (1) or refuse it (0, reason in `refused`)."""
        r = self.queues.publish(msg)
        if r is None:
            return 1
        self.refused = r[0]
        self.refused_why = r[1]
        return 0

    cdef int _deliver_target(self, Target t, Message msg) except -1:
        cdef int qos = t.qos
        cdef object sub_ids = t.sub_ids
        cdef bint rap = t.rap
        cdef Subscription sub
        cdef bint any_sub
        if t.any_no_local and msg.origin is not None and msg.origin == t.session.client_id:
            # Recompute from the subscriptions that are not No Local [MQTT-3.8.3-3].
            qos = 0
            sub_ids = None
            rap = False
            any_sub = False
            for s in t.subs:
                sub = <Subscription>s
                if sub.no_local:
                    continue
                any_sub = True
                if sub.qos > qos:
                    qos = sub.qos
                if sub.identifier is not None:
                    sub_ids = [sub.identifier] if sub_ids is None else sub_ids + [sub.identifier]
                rap = rap or sub.retain_as_published
            if not any_sub:
                return 0
        if msg.qos < qos:
            qos = msg.qos
        if self.on_deliver is None:
            return t.session.deliver(msg, qos, msg.retain and rap, sub_ids, None)
        if t.session.deliver(msg, qos, msg.retain and rap, sub_ids, None):
            self.on_deliver(t.session, msg, qos)
            return 1
        return 0

    cdef int _deliver_group(self, SharedGroup g, Message msg, Session avoid) except -1:
        cdef Subscription sub = g.pick(msg.qos, avoid)
        cdef int qos
        cdef Py_ssize_t tries
        if self.read_check is not None:
            # Only a member allowed to read the topic may get it.
            tries = len(g.members)
            while sub is not None and not self.read_check(sub.session, msg.topic):
                tries -= 1
                sub = g.pick(msg.qos, avoid) if tries > 0 else None
        if sub is None:
            return 0
        qos = msg.qos if msg.qos < sub.qos else sub.qos
        if not sub.session.deliver(msg, qos, msg.retain and sub.retain_as_published,
                                   None if sub.identifier is None else [sub.identifier], g):
            return 0
        if self.on_deliver is not None:
            self.on_deliver(sub.session, msg, qos)
        return 1

    def redeliver_shared(self, Session gone, list entries) -> int:
        """Give a departed member's shared-subscription messages to other members."""
        cdef Inflight e
        cdef Subscription sub
        cdef int n = 0
        for e in entries:
            sub = (<SharedGroup>e.group).pick(e.qos, gone)
            if sub is None or sub.session.outlet is None:
                # Nobody else is connected: the original member keeps it for its return.
                gone.deliver(e.msg, e.qos, False, e.sub_ids, e.group)
                continue
            n += sub.session.deliver(e.msg, e.qos, False,
                                     None if sub.identifier is None else [sub.identifier],
                                     e.group)
        return n

    def publish_to(self, Session session, Message msg, int qos, bint retain, object sub_ids):
        """Deliver one message to one session (retained messages on subscribe, wills...)."""
        if self.read_check is not None and not self.read_check(session, msg.topic):
            return 0
        if not session.deliver(msg, qos, retain, sub_ids, None):
            return 0
        if self.on_deliver is not None:
            self.on_deliver(session, msg, qos)
        return 1

    def clear_cache(self):
        """Forget every cached route (the ACL changed: readers must be checked again)."""
        self._cache.clear()
        self._cache_bytes = 0
