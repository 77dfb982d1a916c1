# cython: language_level=3
"""The per-message part of durable storage, in C.

A persistent session tells its store about every QoS 1/2 message it queues, sends, is
acknowledged for or releases (the hooks below, called from session.pyx). Each change is appended
to the turn's journal and gathered for compaction: changes of keys the database already has in
`_acc`, keys inserted since the last compaction in `_new`, where a delete cancels them.
`fluxmq.storage.lmdb_store.LMDBStore` extends this class with opening, loading, committing and
compaction, which are not per message.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from fluxmq._speedups.message cimport Message
from fluxmq._speedups.records cimport Journal, encode_entry, encode_message, seq_key, pid_key, u64
from fluxmq._speedups.session cimport Inflight, Session, StoreHooks

# Database indexes (as in fluxmq/storage/lmdb_store.py).
cdef enum:
    META = 0
    SESSIONS = 1
    WILLS = 2
    SUBS = 3
    QUEUE = 4
    INFLIGHT = 5
    REL = 6
    MSGS = 7
    RETAINED = 8
    NDB = 9


cdef class StoreCore(StoreHooks):
    def __init__(self):
        self._acc = [{} for _ in range(NDB)]
        self._new = [{} for _ in range(NDB)]
        self._acc_bytes = 0
        self._journal = Journal()
        self._refs = {}
        self._next_seq = 1
        self._next_msg = 1
        self.flusher = None

    # -- changes -----------------------------------------------------------------------------

    cpdef _insert(self, int db, bytes key, bytes value):
        """A key that is not in the database (queue and in-flight entries, bodies)."""
        cdef dict acc = <dict>self._acc[db]
        if key in acc:  # a key of the database, deleted since the last compaction
            acc[key] = value
        else:
            (<dict>self._new[db])[key] = value
        self._acc_bytes += len(value)
        self._journal.put(db, key, value)
        self._touch()

    cdef int _insert_new(self, int db, bytes key, bytes value) except -1:
        """`_insert` of a key never used before (a new queue sequence number or body id), so
        it cannot be waiting in `_acc` for a delete: one look-up less per queued message."""
        (<dict>self._new[db])[key] = value
        self._acc_bytes += len(value)
        self._journal.put(db, key, value)
        self._touch()
        return 0

    cpdef _put(self, int db, bytes key, bytes value):
        """Insert or replace."""
        cdef dict new = <dict>self._new[db]
        if key in new:
            new[key] = value
        else:
            (<dict>self._acc[db])[key] = value
        self._acc_bytes += len(value)
        self._journal.put(db, key, value)
        self._touch()

    cpdef _delete(self, int db, bytes key):
        cdef dict new = <dict>self._new[db]
        if key in new:  # inserted since the last compaction: it never reaches the B-tree
            del new[key]
        else:
            (<dict>self._acc[db])[key] = None
        self._journal.delete(db, key)
        self._touch()

    cpdef list take_changes(self):
        """The changes gathered since the last call, per database as (database, [(key, value
        or None), ...]) for the databases that have any; the gathering starts again."""
        cdef list out = []
        cdef int db
        for db in range(NDB):
            if self._acc[db] or self._new[db]:
                out.append((db, list((<dict>self._acc[db]).items())
                            + list((<dict>self._new[db]).items())))
        self._acc = [{} for _ in range(NDB)]
        self._new = [{} for _ in range(NDB)]
        self._acc_bytes = 0
        return out

    @staticmethod
    def split_changes(list items):
        """(puts, deletes) of a list of (key, value or None): the puts as pairs for
        `Cursor.putmulti` (`items` itself when nothing is deleted), the deleted keys. In C: it
        runs over every change compaction applies."""
        cdef Py_ssize_t i, n = len(items)
        cdef list puts, dels = []
        cdef tuple kv
        for i in range(n):
            if (<tuple>items[i])[1] is None:
                break
        else:
            return items, dels
        puts = items[:i]
        for i in range(i, n):
            kv = <tuple>items[i]
            if kv[1] is None:
                dels.append(kv[0])
            else:
                puts.append(kv)
        return puts, dels

    cpdef Py_ssize_t pending(self):
        """How many keys the changes gathered so far touch."""
        cdef Py_ssize_t n = 0
        cdef int db
        for db in range(NDB):
            n += len(<dict>self._acc[db]) + len(<dict>self._new[db])
        return n

    cdef int _touch(self) except -1:
        if self._journal.count == 1 and self.flusher is not None:
            self.flusher.request()
        return 0

    cdef bytes _entry(self, Inflight e):
        """The entry record; a message delivered to several sessions gets a shared body."""
        cdef Message msg = e.msg
        if msg is None or (msg.fanout <= 1 and msg.store_id == 0):
            return encode_entry(e, 0)
        if msg.store_id == 0:
            msg.store_id = self._next_msg
            self._next_msg += 1
            self._insert_new(MSGS, u64(msg.store_id), encode_message(msg))
            self._refs[msg.store_id] = 0
        self._refs[msg.store_id] += 1
        return encode_entry(e, msg.store_id)

    cpdef _unref(self, Message msg):
        cdef object n
        if msg is None or msg.store_id == 0:
            return
        n = self._refs.get(msg.store_id, 0) - 1
        if n <= 0:
            self._refs.pop(msg.store_id, None)
            self._delete(MSGS, u64(msg.store_id))
            msg.store_id = 0
        else:
            self._refs[msg.store_id] = n

    # -- session hooks (fluxmq._speedups.session) ----------------------------------------------

    cpdef queued(self, Session session, Inflight e):
        e.key = seq_key(session.client_id, self._next_seq)
        self._next_seq += 1
        e.stored = self._entry(e)
        self._insert_new(QUEUE, e.key, e.stored)

    cpdef moved(self, Session session, int packet_id, Inflight e):
        """A queued entry was sent: the same record, now in flight under its packet id (the
        message keeps its reference; only the state byte changes)."""
        cdef bytes raw = e.stored
        cdef Message msg = e.msg
        if e.key is not None:
            self._delete(QUEUE, e.key)
        e.stored = None
        e.key = pid_key(session.client_id, packet_id)
        if raw is None:  # same references as before: a shared body stays counted once
            raw = encode_entry(e, msg.store_id if msg is not None else 0)
            self._insert(INFLIGHT, e.key, raw)
        else:  # one copy of the record with its state byte set to 1 (sent)
            raw = PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
            PyBytes_AS_STRING(raw)[1] = 1
            self._insert(INFLIGHT, e.key, raw)

    cpdef unqueued(self, Session session, Inflight e):
        if e.key is not None:
            self._delete(QUEUE, e.key)
            e.key = None
        e.stored = None
        self._unref(e.msg)

    cpdef inflight(self, Session session, int packet_id, Inflight e):
        e.key = pid_key(session.client_id, packet_id)
        self._insert(INFLIGHT, e.key, self._entry(e))

    cpdef released(self, Session session, int packet_id, Inflight e):
        self._unref(e.msg)
        e.msg = None
        self._put(INFLIGHT, pid_key(session.client_id, packet_id), encode_entry(e, 0))

    cpdef acked(self, Session session, int packet_id, Inflight e):
        self._delete(INFLIGHT, pid_key(session.client_id, packet_id))
        self._unref(e.msg)

    cpdef rel_added(self, Session session, int packet_id):
        self._insert(REL, pid_key(session.client_id, packet_id), b"")

    cpdef rel_removed(self, Session session, int packet_id):
        self._delete(REL, pid_key(session.client_id, packet_id))
