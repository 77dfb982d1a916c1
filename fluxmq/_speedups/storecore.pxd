# The per-message part of durable storage (see storecore.pyx).

from fluxmq._speedups.message cimport Message
from fluxmq._speedups.records cimport Journal
from fluxmq._speedups.session cimport Inflight, Session, StoreHooks

cdef class StoreCore(StoreHooks):
    cdef public list _acc                 # per database: key of the database -> value, None = delete
    cdef public list _new                 # per database: key inserted since the last snapshot -> value
    cdef public Py_ssize_t _acc_bytes
    cdef public Journal _journal          # this turn's changes, in order
    cdef public dict _refs                # shared body id -> entries referring to it
    cdef public unsigned long long _next_seq
    cdef public unsigned long long _next_msg
    cdef public object flusher
    cdef Inflight _dhead                  # entries changed since the last compaction, in order
    cdef Inflight _dtail
    cdef public Py_ssize_t _dcount

    cpdef _insert(self, int db, bytes key, bytes value)
    cdef int _insert_new(self, int db, bytes key, bytes value) except -1
    cpdef _put(self, int db, bytes key, bytes value)
    cpdef _delete(self, int db, bytes key)
    cpdef list take_changes(self)
    cpdef Py_ssize_t pending(self)
    cdef int _touch(self) except -1
    cdef list _take_entries(self)
    cdef int _link(self, Inflight e) except -1
    cdef int _unlink(self, Inflight e) except -1
    cdef unsigned long long _body_id(self, Inflight e)
    cdef Py_ssize_t _held_bytes(self, Inflight e)
    cdef int _keep(self, Session session, Inflight e) except -1
    cdef int _write_new(self, str client_id, Inflight e) except -1
    cdef int _drop(self, Inflight e) except -1
    cpdef _unref(self, Message msg)
    cpdef adopt(self, Inflight e, str client_id, unsigned long long seq, bint shared)
    # The session hooks (queued, moved, ...) are declared in session.pxd's StoreHooks.
