# cython: language_level=3
"""The per-message part of durable storage, in C.

A persistent session tells its store about every QoS 1/2 message it queues, sends, is
acknowledged for or releases (the hooks below, called from session.pyx). Each change is appended
to the turn's journal and gathered for compaction.

Queued and in-flight messages are entries of one database, `queue`, under the key client id NUL
sequence number; the record carries the state and the packet id. Their changes are journaled
straight from the entry (`Journal.put_entry`; sending a queued message is a three-byte patch of
its record) and gathered as the entries themselves, in an intrusive list (`Inflight.dprev` and
`dnext`) of the entries changed since the last compaction: an entry inserted and acknowledged
before the next compaction (the usual case) leaves the list in O(1) without a key, a record or
a hash-table operation ever made for it. Compaction writes each listed entry's current record, or
deletes its key, and only then builds the key.

The other databases' changes gather in dicts: changes of keys the database already has in
`_acc`, keys inserted since the last compaction in `_new`, where a delete cancels them.
`fluxmq.storage.lmdb_store.LMDBStore` extends this class with opening, loading, committing and
compaction, which are not per message.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from fluxmq._speedups.message cimport Message
from fluxmq._speedups.records cimport (
    Journal, encode_entry, encode_message, pid_key, seq_key, u64,
)
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

cdef enum:
    ENTRY_COST = 256   # bytes of memory a listed entry holds besides its payload (objects, topic)

# Inflight.sflags
cdef enum:
    S_LISTED = 1     # on the list of entries changed since the last compaction
    S_DB = 2         # its key is in the database (or will be once the snapshot taken is applied)
    S_GONE = 4       # removed: listed only so that compaction deletes its key
    S_SHARED = 8     # its record refers to the shared body msg.store_id (else the body is inline)


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
        self._dhead = None
        self._dtail = None
        self._dcount = 0

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
        cdef list entries
        cdef int db
        for db in range(NDB):
            if self._acc[db] or self._new[db]:
                out.append((db, list((<dict>self._acc[db]).items())
                            + list((<dict>self._new[db]).items())))
        self._acc = [{} for _ in range(NDB)]
        self._new = [{} for _ in range(NDB)]
        self._acc_bytes = 0
        if self._dhead is not None:
            entries = self._take_entries()
            for part in out:
                if (<tuple>part)[0] == QUEUE:
                    (<list>(<tuple>part)[1]).extend(entries)
                    break
            else:
                out.append((QUEUE, entries))
        return out

    cdef list _take_entries(self):
        """The listed entries' changes: each one's current record, or the delete of its key."""
        cdef list items = []
        cdef Inflight e = self._dhead
        cdef Inflight nxt
        while e is not None:
            nxt = e.dnext
            e.dprev = None
            e.dnext = None
            if e.sflags & S_GONE:
                items.append((seq_key(e.owner, e.seq), None))
                e.sflags = 0
            else:
                items.append((seq_key(e.owner, e.seq), encode_entry(e, self._body_id(e))))
                e.sflags = (e.sflags & S_SHARED) | S_DB
            e = nxt
        self._dhead = None
        self._dtail = None
        self._dcount = 0
        return items

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
        return n + self._dcount

    cdef int _touch(self) except -1:
        if self._journal.count == 1 and self.flusher is not None:
            self.flusher.request()
        return 0

    # -- the list of changed entries ---------------------------------------------------------

    cdef int _link(self, Inflight e) except -1:
        if e.sflags & S_LISTED:
            return 0
        e.sflags |= S_LISTED
        e.dprev = self._dtail
        e.dnext = None
        if self._dtail is None:
            self._dhead = e
        else:
            self._dtail.dnext = e
        self._dtail = e
        self._dcount += 1
        return 0

    cdef int _unlink(self, Inflight e) except -1:
        if e.dprev is None:
            self._dhead = e.dnext
        else:
            e.dprev.dnext = e.dnext
        if e.dnext is None:
            self._dtail = e.dprev
        else:
            e.dnext.dprev = e.dprev
        e.dprev = None
        e.dnext = None
        e.sflags &= ~S_LISTED
        self._dcount -= 1
        return 0

    # -- entries ---------------------------------------------------------------------------

    cdef unsigned long long _body_id(self, Inflight e):
        return (<Message>e.msg).store_id if e.sflags & S_SHARED and e.msg is not None else 0

    cdef Py_ssize_t _held_bytes(self, Inflight e):
        """What a listed entry keeps in memory: the list holds it, and so its message, until
        the next compaction (a spilled entry has no other holder); counts towards
        _COMPACT_BYTES."""
        return ENTRY_COST + ((<Message>e.msg)._plen if e.msg is not None else 0)

    cdef int _keep(self, Session session, Inflight e) except -1:
        """e is a new entry of the session's queue: a new key, its whole record journaled. A
        message delivered to several sessions gets a shared body, stored once."""
        cdef Message msg = e.msg
        e.sflags = 0
        if msg is not None and (msg.fanout > 1 or msg.store_id != 0):
            if msg.store_id == 0:
                msg.store_id = self._next_msg
                self._next_msg += 1
                self._insert_new(MSGS, u64(msg.store_id), encode_message(msg))
                self._refs[msg.store_id] = 0
            self._refs[msg.store_id] += 1
            e.sflags = S_SHARED
        self._write_new(session.client_id, e)
        self._acc_bytes += self._held_bytes(e)
        return 0

    cdef int _write_new(self, str client_id, Inflight e) except -1:
        """e gets a new key under client_id; its whole record is journaled."""
        e.seq = self._next_seq
        self._next_seq += 1
        e.owner = client_id
        self._journal.put_entry(QUEUE, client_id, e.seq, e, self._body_id(e))
        self._link(e)
        self._touch()
        return 0

    cdef int _drop(self, Inflight e) except -1:
        """e is no longer kept: its key is deleted, its shared body loses a reference."""
        if e.seq == 0:
            return 0
        self._journal.delete_entry(QUEUE, e.owner, e.seq)
        if e.sflags & S_DB:
            e.sflags |= S_GONE
            self._link(e)
        elif e.sflags & S_LISTED:
            self._unlink(e)  # inserted since the last compaction: the database never sees it
            self._acc_bytes -= self._held_bytes(e)
            if self._acc_bytes < 0:
                self._acc_bytes = 0
        self._touch()
        if e.sflags & S_SHARED:
            e.sflags &= ~S_SHARED
            self._unref(e.msg)
        return 0

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

    cpdef adopt(self, Inflight e, str client_id, unsigned long long seq, bint shared):
        """An entry read back from the database under client_id NUL seq, its shared body (if
        `shared`) already counted. Seq 0: an entry of an older layout, written under a new key
        (the caller deletes the old one)."""
        e.sflags = S_SHARED if shared else 0
        if seq == 0:
            self._write_new(client_id, e)
            return
        e.owner = client_id
        e.seq = seq
        e.sflags |= S_DB

    # -- session hooks (fluxmq._speedups.session) ----------------------------------------------

    cpdef queued(self, Session session, Inflight e):
        e.pid = 0
        self._keep(session, e)

    cpdef moved(self, Session session, int packet_id, Inflight e):
        """A queued entry was sent: its record's state and packet id change (a patch in the
        journal; compaction writes the whole record if it lasts that long)."""
        e.pid = packet_id
        if e.seq == 0:
            self._keep(session, e)
            return
        self._journal.patch_entry(QUEUE, e.owner, e.seq, e.state, packet_id)
        self._link(e)
        self._touch()

    cpdef unqueued(self, Session session, Inflight e):
        self._drop(e)

    cpdef inflight(self, Session session, int packet_id, Inflight e):
        e.pid = packet_id
        self._keep(session, e)

    cpdef released(self, Session session, int packet_id, Inflight e):
        """PUBREL sent: the record keeps the packet id and state 2, no longer the message."""
        if e.sflags & S_SHARED:
            e.sflags &= ~S_SHARED
            self._unref(e.msg)
        e.msg = None
        e.pid = packet_id
        if e.seq == 0:
            self._keep(session, e)
            return
        self._journal.put_entry(QUEUE, e.owner, e.seq, e, 0)
        self._link(e)
        self._touch()

    cpdef acked(self, Session session, int packet_id, Inflight e):
        self._drop(e)

    cpdef rel_added(self, Session session, int packet_id):
        self._insert(REL, pid_key(session.client_id, packet_id), b"")

    cpdef rel_removed(self, Session session, int packet_id):
        self._delete(REL, pid_key(session.client_id, packet_id))
