# One client's session state (the domain): subscriptions, in-flight and queued messages.
# It delivers through an Outlet, which the protocol layer implements.

from fluxmq._speedups.message cimport Message


cdef class Outlet:
    cdef int send_publish(self, Message msg, int qos, int packet_id, bint dup, bint retain,
                          object sub_ids) except -1
    cdef int send_pubrel(self, int packet_id) except -1


cdef class CallbackOutlet(Outlet):
    cdef public object on_publish         # (msg, qos, packet_id, dup, retain, sub_ids) -> bool
    cdef public object on_pubrel          # (packet_id) -> None, or None


cdef class DeliveryToken:
    # Inflight.group of a delivery that something outside the session tracks (a durable
    # queue's): the client's PUBACK calls puback(); durable storage does not keep it.
    cpdef int puback(self) except -1


cdef class Subscription:
    cdef public str topic_filter          # without any $share/<group>/ prefix
    cdef public str share_group           # None unless a shared subscription
    cdef public int qos
    cdef public bint no_local
    cdef public bint retain_as_published
    cdef public int retain_handling
    cdef public object identifier         # subscription identifier, or None
    cdef public Session session


cdef class Inflight:
    cdef public Message msg
    cdef public int qos
    cdef public bint retain
    cdef public object sub_ids
    cdef public int state                 # 0 queued, 1 PUBLISH sent, 2 PUBREL sent
    cdef public double sent_at
    cdef public object group              # the SharedGroup it was chosen through, or None
    # Durable storage's (fluxmq._speedups.storecore): the entry is kept under the key
    # `owner` NUL `seq` (seq 0: not kept), its record carries `pid` (the packet id it was sent
    # with); `sflags` and the links place it in the store's list of entries changed since the
    # last compaction.
    cdef public unsigned long long seq
    cdef public int pid
    cdef public str owner
    cdef public int sflags
    cdef Inflight dprev
    cdef Inflight dnext


cdef class Session


cdef class StoreHooks:
    # What a persistent session tells its durable store about its QoS 1/2 messages. The
    # store (fluxmq._speedups.storecore.StoreCore) implements these; the session calls them
    # as C methods, so this costs no attribute look-up per message.
    cpdef queued(self, Session session, Inflight e)
    cpdef moved(self, Session session, int packet_id, Inflight e)
    cpdef unqueued(self, Session session, Inflight e)
    cpdef inflight(self, Session session, int packet_id, Inflight e)
    cpdef released(self, Session session, int packet_id, Inflight e)
    cpdef acked(self, Session session, int packet_id, Inflight e)
    cpdef rel_added(self, Session session, int packet_id)
    cpdef rel_removed(self, Session session, int packet_id)


cdef class Session:
    cdef public str client_id
    cdef public Outlet outlet             # the connection it is attached to; None when offline
    cdef public dict subscriptions        # filter as subscribed (with $share/...) -> Subscription
    cdef public unsigned long expiry_interval   # seconds after disconnect; 0xFFFFFFFF = never
    cdef public int window                # outbound QoS>0 in flight at most
    cdef public int max_queue
    cdef public bint drop_new             # policy when full: True rejects the new message
    cdef public object will               # the will (a domain Will) or None
    cdef public set awaiting_rel          # inbound QoS 2 packet ids awaiting PUBREL
    cdef public double disconnected_at    # wall-clock time it went offline; 0 while online
    cdef public unsigned long long dropped
    cdef public StoreHooks store          # durable storage (None for the memory store)
    cdef public object expiry_handle      # the broker's timer for expiry while offline
    cdef public Py_ssize_t spilled        # queued entries kept on disk only (newest ones)
    cdef public list blocked              # publishers paused until this queue drains (or None)
    cdef public Py_ssize_t high_water     # online queue length that pauses publishers
    cdef dict inflight                    # packet id -> Inflight, in send order
    cdef object queue                     # deque of Inflight not yet sent
    cdef int next_pid

    cdef int deliver(self, Message msg, int qos, bint retain, object sub_ids,
                     object group) except -1
    cdef int _enqueue(self, Inflight e) except -1
    cdef int _drop_oldest(self) except -1
    cdef object _q(self)
    cdef Py_ssize_t _qlen(self)
    cdef int _send(self, Inflight e, bint dup, bint queued=*) except -1
    cdef int _alloc_pid(self) except -1
    cdef int _release_blocked(self) except -1
    cpdef int add_rel(self, int packet_id) except -1
    cpdef int remove_rel(self, int packet_id) except -1
    cdef int _refill(self) except -1
    cpdef int on_puback(self, int packet_id) except -1
    cpdef int on_pubrec(self, int packet_id, int reason) except -1
    cpdef int on_pubcomp(self, int packet_id) except -1
    cpdef int pump(self) except -1
    cpdef int resume(self, Outlet outlet) except -1
    cpdef int retry_due(self, double now, double interval) except -1


cdef list take_congested()
