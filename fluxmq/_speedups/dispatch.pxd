# Publish -> match -> deliver: the broker's routing core (domain; no wire format).

from fluxmq._speedups.message cimport Message
from fluxmq._speedups.session cimport Session, Subscription
from fluxmq._speedups.trie cimport TopicTrie


cdef class Counters:
    cdef public unsigned long long messages_received    # every packet received
    cdef public unsigned long long messages_sent        # every packet sent
    cdef public unsigned long long publish_received
    cdef public unsigned long long publish_sent
    cdef public unsigned long long publish_dropped
    cdef public unsigned long long bytes_received
    cdef public unsigned long long bytes_sent
    # Drops by reason (publish_dropped counts them all, and other refusals).
    cdef public unsigned long long dropped_rate_limited
    cdef public unsigned long long dropped_not_authorized
    cdef public unsigned long long dropped_slow           # QoS 0 to a client not reading
    cdef public unsigned long long dropped_too_large      # over the client's Maximum Packet Size
    # PUBLISH packets and their bytes by QoS, received and sent.
    cdef unsigned long long pub_in[3]
    cdef unsigned long long pub_in_bytes[3]
    cdef unsigned long long pub_out[3]
    cdef unsigned long long pub_out_bytes[3]
    # Publish-to-deliver latency (sampled): bucket counts, sum and count.
    cdef unsigned long long lat_buckets[18]
    cdef public double lat_sum
    cdef public unsigned long long lat_count
    cdef unsigned int lat_tick

    cdef void observe_latency(self, double seconds) noexcept


cdef class SharedGroup:
    cdef public str name
    cdef public str topic_filter
    cdef public list members              # [Subscription], one per session
    cdef Py_ssize_t _next

    cdef Subscription pick(self, int qos, Session avoid)


cdef class Target:
    cdef Session session
    cdef int qos
    cdef object sub_ids
    cdef bint rap
    cdef bint any_no_local
    cdef list subs


cdef class Route:
    cdef list targets
    cdef list groups


cdef class Dispatcher:
    cdef TopicTrie trie
    cdef dict _cache
    cdef Py_ssize_t _cache_bytes
    cdef dict _groups                     # (group, filter) -> SharedGroup
    cdef public object on_retain          # callable(Message) for retained publishes
    cdef public Counters counters
    cdef public Py_ssize_t cache_max
    cdef public object read_check         # None, or (Session, topic) -> bool: may it receive it
    cdef public object on_publish         # None, or (Message) -> None: every routed publish
    cdef public object on_deliver         # None, or (Session, Message, qos) -> None
    cdef public object queues             # None, or durable queues: publish(msg) -> None (taken)
                                          # or (reason code, reason string) for `$queue/` topics
    cdef public int refused               # why `queues` refused this publish (0: it did not)
    cdef public str refused_why

    cpdef int subscribe(self, Subscription sub) except -1
    cpdef object unsubscribe(self, Session session, str topic_filter, str share_group=*)
    cdef Route route(self, str topic)
    cpdef int publish(self, Message msg) except -1
    cdef int _queue_publish(self, Message msg) except -1
    cdef int _deliver_target(self, Target t, Message msg) except -1
    cdef int _deliver_group(self, SharedGroup g, Message msg, Session avoid) except -1
