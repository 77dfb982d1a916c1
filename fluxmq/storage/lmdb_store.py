"""Durable broker state in LMDB (`storage.type: lmdb`).

Every change a loop turn makes (a message queued, sent, acknowledged; a subscription; a
session; a retained message; a will) is appended to the turn's journal, and the turn's journal is
committed as one LMDB record by the flusher's barrier at the end of the turn, before the turn's
output is written (deliveries of QoS 0/1 messages, which acknowledge nothing, go before it: see
fluxmq/_speedups/bufpool.pyx). The changes also gather in memory, where a key inserted and deleted
again before the next compaction (a message acknowledged within a second, the usual case)
cancels out; every second the survivors are applied to the main databases in small chunks and
the journal records they cover are deleted. A start replays any journal records left over.
Turn commits:

- `fsync: interval` and `never`: the commit runs in the loop (LMDB without fsync: ~10 us plus
  ~1 us a change); with `interval`, `env.sync()` runs in a worker thread every
  `storage.fsync_interval` (an fsync after a second of writes can take 100 ms, which must not
  stall the loop).
- `fsync: always`: a writer thread commits and fsyncs each turn's changes (one group commit for
  every client of the turn), and the turn's output, which carries the PUBACKs, PUBRECs, SUBACKs
  and CONNACKs acknowledging those changes, is written only once that commit is on disk.

A message body delivered to several persistent sessions is stored once (`msgs`) and referenced
by each entry; its reference counts are kept in memory and rebuilt from the entries at start.
A body delivered to one session is stored inside that session's entry.

The map grows by itself. When the disk is full, the failed changes are kept for a retry, the
connections whose acknowledgements depended on them are closed without those acknowledgements,
and new persistent work is refused (`storage_full`) until a commit succeeds again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from fluxmq._speedups.message import Message
from fluxmq._speedups.records import Journal, replay
from fluxmq._speedups.session import Inflight, Session, Subscription
from fluxmq._speedups.storecore import StoreCore
from fluxmq.storage import records as R
from fluxmq.storage.base import StorageError

log = logging.getLogger("fluxmq.storage")

# Database indexes.
META, SESSIONS, WILLS, SUBS, QUEUE, INFLIGHT, REL, MSGS, RETAINED, J0, J1 = range(11)
_NAMES = (
    b"meta",
    b"sessions",
    b"wills",
    b"subs",
    b"queue",
    b"inflight",
    b"rel",
    b"msgs",
    b"retained",
    b"journal0",
    b"journal1",
)
# Journal records live in `journal0` or `journal1` under u64 id + u32 part (in order). Each
# compaction's snapshot switches new records to the other database, so once the snapshot is
# applied, the database it covers holds only redundant records and is emptied with one
# `drop` (C walking the pages) instead of a delete per record: deleting a second's records one
# by one in Python stalled the loop for ~18 ms. Format 1 kept them in `meta` under b"j" + id.
_J = b"j"
_COMPACT_EVERY = 1.0  # seconds between compactions of the journal into the main databases
_COMPACT_AT = 50000  # ... or once this many keys changed
_COMPACT_BYTES = 8 << 20  # ... or once the changes hold this many bytes
_CHUNK = 1000  # changes applied to the main databases per commit while compacting (a larger
# chunk makes that loop turn, and so every client's round trip, longer)
# A turn's journal record is written in parts of at most one LMDB overflow page (4 KB pages,
# minus the page header): LMDB allocates a single page in O(1), while a run of contiguous pages
# is searched for through its whole free list, which the deleted journal records make long
# (measured: that search was ~100 ns per persistent message on the stream, 8 us per commit).
_JPART = 4096 - 16
_PART = [part.to_bytes(4, "big") for part in range(64)]
_INITIAL_MAP = 64 << 20
_RETRY_FULL = 5.0  # seconds between retries while the disk is full


@dataclass
class LoadedSession:
    """A session as read back at start."""

    session: Session
    subscriptions: list[Subscription] = field(default_factory=list)
    will: object = None  # Will or None
    will_deadline: float = 0.0
    was_connected: bool = False


@dataclass
class Loaded:
    sessions: list[LoadedSession]
    retained: list[Message]


class LMDBStore(StoreCore):
    """The LMDB store; one per broker process and data directory."""

    durable = True

    def __init__(self, path: str, fsync: str = "interval", fsync_interval: float = 1.0) -> None:
        super().__init__()  # the per-message state (StoreCore): _acc, _new, _journal, _refs
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.env: lmdb.Environment | None = None
        self.dbs: list = []
        self._format = R.FORMAT_VERSION  # of the database opened (an older one is converted)
        self._lock_file = None
        self._next_journal = 1
        self._last_journal = 0
        # The snapshot being applied, in chunks: per database, its changes as (key, value or
        # None) pairs; _snap_pos of the first part's are applied. (Whole lists from
        # dict.items(), not a tuple per change: compaction is per persistent message too.)
        self._snap: list[tuple[int, list[tuple[bytes, bytes | None]]]] = []
        self._snap_pos = 0
        self._snap_upto = 0  # journals up to this id are redundant once _snap is applied
        self._last_compact = time.monotonic()
        self._kept: list[tuple[int, bytes, int]] = []  # journals not written (the disk is full)
        self._jdb = J0  # the journal database new records go to
        self.loop: asyncio.AbstractEventLoop | None = None
        self.full = False
        self.on_full: Callable[[bool], None] | None = None
        self._writer: _Writer | None = None
        self._sync_task: asyncio.Task | None = None
        self._dirty_since_sync = False
        self.commits = 0
        # Called at the start of every end_turn (durable queues write their appends there);
        # each returns None or a function that must run, in the writer thread with `always`,
        # before the turn's output is released. A hook raising OSError withholds the output.
        self.turn_hooks: list[Callable[[], Callable[[], None] | None]] = []
        self._last_full_log = 0.0

    # -- opening and closing -------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; errors name the path and never delete data."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage.path {self.path}: cannot create directory: {e.strerror}")
        self._lock()
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=_INITIAL_MAP,
                max_dbs=len(_NAMES) + 2,
                subdir=True,
                sync=self.fsync == "always",
                metasync=self.fsync == "always",
                lock=True,
                readahead=False,
            )
            if self.env.info()["map_size"] < _INITIAL_MAP:
                self.env.set_mapsize(_INITIAL_MAP)
            self.dbs = [self.env.open_db(name) for name in _NAMES]
            self._check_format()
            self._recover()
        except lmdb.Error as e:
            self._unlock()
            raise StorageError(
                f"storage.path {self.path}: not a usable FluxMQ database ({e}); "
                "FluxMQ does not delete or repair data by itself: move the directory away to "
                "start empty"
            ) from None

    def _lock(self) -> None:
        lock_path = self.path / "fluxmq.lock"
        try:
            f = open(lock_path, "a+")  # noqa: SIM115 - held for the life of the store
        except OSError as e:
            raise StorageError(f"storage.path {self.path}: cannot open {lock_path}: {e.strerror}")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StorageError(
                f"storage.path {self.path} is in use by another FluxMQ process (pid {holder}); "
                "two brokers cannot share a data directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _check_format(self) -> None:
        with self.env.begin(write=True) as txn:
            have = txn.get(b"format", db=self.dbs[META])
            if have is None:
                if txn.stat(self.dbs[SESSIONS])["entries"] or txn.stat(self.dbs[QUEUE])["entries"]:
                    raise StorageError(f"storage.path {self.path}: database has no format marker")
                txn.put(b"format", R.u32(R.FORMAT_VERSION), db=self.dbs[META])
                return
            if len(have) == 4 and R.read_u32(have) in R.READABLE_FORMATS:
                self._format = R.read_u32(have)  # an older one is converted by the first load
                return
            found = R.read_u32(have) if len(have) == 4 else have
            readable = " or ".join(str(f) for f in R.READABLE_FORMATS)
            raise StorageError(
                f"storage.path {self.path}: database format {found} is not a format this "
                f"FluxMQ reads ({readable}); FluxMQ does not convert or delete it"
            )

    def _recover(self) -> None:
        """Apply the journal records left by a broker that stopped before compacting them (in
        `journal0`/`journal1`, and a format 1 broker's in `meta`), in the order of their ids."""
        meta = self.dbs[META]
        parts: list[tuple[int, bytes, bytes, int]] = []  # (id, key, part, database)
        with self.env.begin() as txn:
            cur = txn.cursor(meta)
            if cur.set_range(_J):
                for key, val in cur:
                    if not key.startswith(_J):
                        break
                    parts.append((R.read_u64(key[1:9]), bytes(key), bytes(val), META))
            for jdb in (J0, J1):
                for key, val in txn.cursor(self.dbs[jdb]):
                    parts.append((R.read_u64(key[:8]), bytes(key), bytes(val), jdb))
        if not parts:
            return  # nothing to recover: the database is not touched
        parts.sort(key=lambda p: (p[0], p[1]))
        records: dict[int, list[bytes]] = {}  # journal id -> its parts, in order
        for jid, _key, val, _db in parts:
            records.setdefault(jid, []).append(val)
        with self.env.begin(write=True) as txn:
            for jid, vals in records.items():
                try:
                    changes = replay(b"".join(vals))
                except R.RecordError as e:
                    raise StorageError(
                        f"storage.path {self.path}: damaged journal record {jid}: {e}"
                    ) from None
                for db, k, v in changes:
                    if db >= J0:
                        raise StorageError(f"storage.path {self.path}: journal names database {db}")
                    if v is None:
                        txn.delete(k, db=self.dbs[db])
                    elif type(v) is tuple:  # an entry sent: its state and packet id
                        old = txn.get(k, db=self.dbs[db])
                        if old is not None:
                            txn.put(k, R.patch_entry(old, *v), db=self.dbs[db])
                    else:
                        txn.put(k, v, db=self.dbs[db])
            for _jid, key, _val, db in parts:
                if db == META:
                    txn.delete(key, db=meta)
            for jdb in (J0, J1):
                txn.drop(self.dbs[jdb], delete=False)
        log.info("storage journal recovered", extra={"records": len(records)})

    def attach(self, loop: asyncio.AbstractEventLoop, flusher) -> None:
        """Start committing at the end of every loop turn through `flusher`."""
        self.loop = loop
        self.flusher = flusher
        flusher.barrier = self.end_turn
        if self.fsync == "always":
            self._writer = _Writer(self)
        elif self.fsync == "interval":
            self._sync_task = loop.create_task(self._sync_every())

    def close(self) -> None:
        """Commit everything, fsync, release the directory."""
        if self.env is None:
            return
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        with contextlib.suppress(lmdb.Error, StorageError):
            self._commit_now()
        with contextlib.suppress(lmdb.Error):
            self.env.sync(True)
        self.env.close()
        self.env = None
        self._unlock()

    # -- loading at start ----------------------------------------------------------------------------

    def load(self, make_session: Callable[[str, int], Session]) -> Loaded:
        """Read every session with its subscriptions, in-flight, queued and inbound QoS 2 state,
        its will, and the retained messages. Message bodies are shared between entries."""
        try:
            return self._load(make_session)
        except (lmdb.Error, R.RecordError) as e:
            self._reset_changes()  # a start that fails writes nothing (e.g. orphan bodies stay)
            raise StorageError(f"storage.path {self.path}: damaged database: {e}") from None

    def _load(self, make_session) -> Loaded:
        sessions: dict[str, LoadedSession] = {}
        bodies: dict[int, Message] = {}
        d = self.dbs
        with self.env.begin() as txn:

            def body(msg_id: int) -> Message:
                m = bodies.get(msg_id)
                if m is None:
                    raw = txn.get(R.u64(msg_id), db=d[MSGS])
                    if raw is None:
                        raise R.RecordError(f"missing message body {msg_id}")
                    m = bodies[msg_id] = R.decode_message(raw)
                    m.store_id = msg_id
                return m

            for key, val in txn.cursor(d[SESSIONS]):
                cid = bytes(key).decode()
                expiry, disconnected_at = R.decode_session(val)
                s = make_session(cid, expiry)
                s.store = self
                s.disconnected_at = disconnected_at
                sessions[cid] = LoadedSession(s, was_connected=disconnected_at == 0.0)
            for key, val in txn.cursor(d[WILLS]):
                ls = sessions.get(bytes(key).decode())
                if ls is not None:
                    ls.will, ls.will_deadline = R.decode_will(val)
            for key, val in txn.cursor(d[SUBS]):
                ls = sessions.get(R.key_client(key))
                if ls is not None:
                    full = R.key_tail(key).decode()
                    ls.subscriptions.append(R.decode_subscription(ls.session, full, val))
            legacy = []  # format 1: in-flight entries under client id NUL packet id
            for key, val in txn.cursor(d[INFLIGHT]):
                ls = sessions.get(R.key_client(key))
                if ls is None:
                    continue
                e, msg_id = R.decode_entry(val, body)
                if msg_id:
                    self._refs[msg_id] = self._refs.get(msg_id, 0) + 1
                legacy.append((ls.session, R.read_u16(R.key_tail(key)), e, msg_id, bytes(key)))
            counts: dict[str, int] = {}
            for key, val in txn.cursor(d[QUEUE]):
                cid = R.key_client(key)
                ls = sessions.get(cid)
                seq = R.read_u64(R.key_tail(key))
                self._next_seq = max(self._next_seq, seq + 1)
                if ls is None:
                    continue
                if val[1] != 0:  # the state: PUBLISH or PUBREL sent, in send order
                    e, msg_id = R.decode_entry(val, body)
                    self.adopt(e, cid, seq, msg_id != 0)
                    ls.session.restore_inflight(e.pid, e)
                else:
                    n = counts.get(cid, 0)
                    counts[cid] = n + 1
                    if n < 1000:  # the rest stays on disk (spilled) until the queue drains
                        e, msg_id = R.decode_entry(val, body)
                        self.adopt(e, cid, seq, msg_id != 0)
                        ls.session.restore_queued(e)
                    else:
                        e, msg_id = R.decode_entry(val, lambda _i: None)
                        ls.session.spilled += 1
                if msg_id:
                    self._refs[msg_id] = self._refs.get(msg_id, 0) + 1
            for session, pid, e, msg_id, key in legacy:  # moved into `queue` (format 2)
                self._delete(INFLIGHT, key)
                e.pid = pid
                self.adopt(e, session.client_id, 0, msg_id != 0)  # a new key, written
                session.restore_inflight(pid, e)
            if self._format != R.FORMAT_VERSION:
                self._put(META, b"format", R.u32(R.FORMAT_VERSION))
                self._format = R.FORMAT_VERSION
            for key, _ in txn.cursor(d[REL]):
                ls = sessions.get(R.key_client(key))
                if ls is not None:
                    ls.session.awaiting_rel.add(R.read_u16(R.key_tail(key)))
            cur = txn.cursor(d[MSGS])
            if cur.last():
                self._next_msg = R.read_u64(cur.key()) + 1
            for key in list(txn.cursor(d[MSGS]).iternext(values=False)):
                msg_id = R.read_u64(key)
                if msg_id not in self._refs:
                    self._delete(MSGS, bytes(key))  # an orphan body: nothing refers to it
            retained = [R.decode_message(v) for _, v in txn.cursor(d[RETAINED])]
        return Loaded(list(sessions.values()), retained)

    # -- changes (called during a turn) ------------------------------------------------------------

    def _reset_changes(self) -> None:
        self.take_changes()
        self._journal = Journal()

    # The per-message hooks (queued, moved, unqueued, inflight, released, acked, rel_added,
    # rel_removed) and _insert/_put/_delete are StoreCore's (fluxmq/_speedups/storecore.pyx).

    def load_spilled(self, session: Session, n: int, after: int = 0) -> list[Inflight]:
        """The oldest `n` queued entries of a session that are on disk only: those after
        sequence number `after` (the newest entry the session has in memory; spilled entries
        are always newer than those)."""
        self._commit_now()
        out: list[Inflight] = []
        prefix = R.client_prefix(session.client_id)
        start = R.seq_key(session.client_id, after + 1)
        bodies: dict[int, Message] = {}
        with self.env.begin() as txn:

            def body(msg_id: int) -> Message:
                m = bodies.get(msg_id)
                if m is None:
                    m = bodies[msg_id] = R.decode_message(txn.get(R.u64(msg_id), db=self.dbs[MSGS]))
                    m.store_id = msg_id
                return m

            cur = txn.cursor(self.dbs[QUEUE])
            if cur.set_range(start):
                for key, val in cur:
                    if not key.startswith(prefix) or len(out) >= n:
                        break
                    if val[1] != 0:  # in flight: the session has it in memory
                        continue
                    e, msg_id = R.decode_entry(val, body)
                    self.adopt(e, session.client_id, R.read_u64(R.key_tail(key)), msg_id != 0)
                    out.append(e)
        return out

    def drop_oldest_spilled(self, session: Session) -> None:
        entries = self.load_spilled(session, 1)
        if entries:
            self.unqueued(session, entries[0])

    # Broker hooks.
    def session_saved(self, session: Session) -> None:
        self._put(SESSIONS, session.client_id.encode(), R.encode_session(session))

    def session_removed(self, session: Session) -> None:
        """Forget a session and everything it held (its in-memory state is still intact)."""
        cid = session.client_id
        if session.spilled:
            after = max((e.seq for e in session.queued_items()), default=0)
            for e in self.load_spilled(session, session.spilled, after):
                self.unqueued(session, e)
        for e in session.queued_items():
            self.unqueued(session, e)
        for pid, e in session.inflight_items():
            self.acked(session, pid, e)
        for pid in session.awaiting_rel:
            self._delete(REL, R.pid_key(cid, pid))
        for full in session.subscriptions:
            self._delete(SUBS, R.client_prefix(cid) + full.encode())
        self._delete(WILLS, cid.encode())
        self._delete(SESSIONS, cid.encode())

    def will_saved(self, client_id: str, will, deadline: float) -> None:
        self._put(WILLS, client_id.encode(), R.encode_will(will, deadline))

    def will_removed(self, client_id: str) -> None:
        self._delete(WILLS, client_id.encode())

    def sub_added(self, session: Session, sub: Subscription) -> None:
        key = R.client_prefix(session.client_id) + sub.full_filter.encode()
        self._put(SUBS, key, R.encode_subscription(sub))

    def sub_removed(self, session: Session, full_filter: str) -> None:
        self._delete(SUBS, R.client_prefix(session.client_id) + full_filter.encode())

    def retained_set(self, msg: Message) -> None:
        self._put(RETAINED, msg.topic.encode(), R.encode_message(msg))

    def retained_clear(self, topic: str) -> None:
        self._delete(RETAINED, topic.encode())

    # -- committing ------------------------------------------------------------------------------
    #
    # Every turn's changes are written as one journal record (one put). The changes also gather
    # in StoreCore (`_acc`, `_new`); every _COMPACT_EVERY seconds (or _COMPACT_AT keys) they
    # become a snapshot (`take_changes`) that is applied to the main databases, _CHUNK changes
    # per commit, after which the journal records it covers are deleted. Main databases + journal records in order = the state.

    def _maybe_snapshot(self) -> None:
        if self._snap or self.full:
            return
        nkeys = self.pending()
        if not nkeys:
            return
        if (
            nkeys < _COMPACT_AT
            and self._acc_bytes < _COMPACT_BYTES
            and time.monotonic() - self._last_compact < _COMPACT_EVERY
        ):
            return
        self._snap = self.take_changes()
        self._snap_pos = 0
        self._snap_upto = self._last_journal
        self._last_compact = time.monotonic()
        self._jdb = J1 if self._jdb == J0 else J0  # records after the snapshot: the other one

    def _make_batch(self, everything: bool = False) -> _Batch | None:
        """This turn's journal record and the next chunk of compaction (all of it, with
        `everything`: for reading the main databases, and at close)."""
        b = _Batch()
        if self._journal.count:
            jid = self._next_journal
            self._next_journal += 1
            self._last_journal = jid
            b.journals.append((jid, self._journal.take(), self._jdb))
        if everything:
            b.chunk = self._take_chunk(None) + self.take_changes()
            b.upto = self._last_journal
            self._last_compact = time.monotonic()
        else:
            self._maybe_snapshot()
            if self._snap:
                b.chunk = self._take_chunk(_CHUNK)
                if not self._snap:
                    b.upto = self._snap_upto
                elif self.flusher is not None:
                    self.flusher.request()  # the rest of the snapshot in the next turns
        return b if (b.journals or b.chunk or b.upto) else None

    def _take_chunk(self, n: int | None) -> list[tuple[int, list]]:
        """The next `n` changes of the snapshot (all of them with None), as (database, pairs)
        parts, taken off the snapshot."""
        parts = []
        while self._snap and (n is None or n > 0):
            db, items = self._snap[0]
            start = self._snap_pos
            end = len(items) if n is None else min(len(items), start + n)
            parts.append((db, items if start == 0 and end == len(items) else items[start:end]))
            if n is not None:
                n -= end - start
            if end >= len(items):
                self._snap.pop(0)
                self._snap_pos = 0
            else:
                self._snap_pos = end
        return parts

    def write(self, b: _Batch) -> None:
        """One transaction: journal records, a chunk of compaction, redundant journals deleted.
        The map grows when it is full. The turn hooks' functions run first."""
        for sync in b.syncs:
            sync()
        dbs = self.dbs
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for jid, data, jdb in b.journals:
                        key = R.u64(jid)
                        for part, at in enumerate(range(0, len(data), _JPART)):
                            tail = _PART[part] if part < 64 else part.to_bytes(4, "big")
                            txn.put(key + tail, data[at : at + _JPART], db=dbs[jdb])
                    for db, items in b.chunk or ():
                        puts, dels = StoreCore.split_changes(items)
                        for k in dels:  # a key appears once in a chunk: order is free
                            txn.delete(k, db=dbs[db])
                        if puts:
                            txn.cursor(dbs[db]).putmulti(puts)
                    if b.upto:
                        for jdb in (J0, J1):
                            _drop_journals(txn, dbs[jdb], b.upto)
                self.commits += 1
                return
            except lmdb.MapFullError:
                size = self.env.info()["map_size"] * 2
                log.info("growing the LMDB map", extra={"map_size": size})
                self.env.set_mapsize(size)

    def _commit_now(self) -> None:
        """Write and compact everything now, so the main databases hold the whole state (for
        reading spilled queues, and at close)."""
        if self._writer is not None:
            self._writer.drain()
        if self.full:
            raise StorageError(f"storage.path {self.path}: the disk is full")
        b = self._make_batch(everything=True)
        if b is None:
            return
        try:
            self.write(b)
            self._dirty_since_sync = True
        except lmdb.Error as e:
            self._failed(b, e)
            raise StorageError(f"storage.path {self.path}: {e}") from None

    def end_turn(self, dirty: list) -> list:
        """The flusher's barrier: write this turn's changes; return the buffers that may be
        written now (with `always`, their output waits for the commit instead)."""
        syncs = []
        for hook in self.turn_hooks:
            try:
                sync = hook()
            except OSError:  # it could not write: this turn's acknowledgements may not go out
                for buf in dirty:
                    buf.abort()
                dirty = []
                continue
            if sync is not None:
                syncs.append(sync)
        if self.full:
            try:
                for sync in syncs:
                    sync()
            except OSError:
                for buf in dirty:
                    buf.abort()
                dirty = []
            return self._end_turn_full(dirty)
        b = self._make_batch()
        if syncs:
            if b is None:
                b = _Batch()
            b.syncs = syncs
        if self._writer is not None:
            if b is None and not self._writer.holding:
                return dirty
            self._writer.submit(b, [(buf, buf.take_held()) for buf in dirty])
            return []
        if b is not None:
            try:
                self.write(b)
                self._dirty_since_sync = True
            except lmdb.Error as e:
                self._failed(b, e)
                for buf in dirty:  # their acknowledgements may not go out
                    buf.abort()
                return []
        return dirty

    def _end_turn_full(self, dirty: list) -> list:
        """While the disk is full, the journals of failed commits wait for the retry timer. A
        turn that changed nothing writes its output (QoS 0, non-persistent sessions, refusals);
        a turn that changed something tries to write everything and fails with it."""
        if not self._journal.count:
            if self._writer is None or not self._writer.holding:
                return dirty
            self._writer.submit(None, [(buf, buf.take_held()) for buf in dirty])
            return []
        b = _Batch()
        b.journals = [*self._kept, (self._next_journal, self._journal.take(), self._jdb)]
        self._last_journal = self._next_journal
        self._next_journal += 1
        self._kept = []
        if self._writer is not None:
            self._writer.submit(b, [(buf, buf.take_held()) for buf in dirty])
            return []
        try:
            self.write(b)
            self._set_full(False)
        except lmdb.Error as e:
            self._failed(b, e)
            for buf in dirty:
                buf.abort()
            return []
        return dirty

    def committed(self, held: list, error: Exception | None, b: _Batch | None) -> None:
        """In the loop, after the writer committed (or failed) a batch."""
        if error is not None:
            self._failed(b, error)
            for buf, _data in held:
                buf.held -= 1
                buf.abort()
            return
        if self.full and b is not None and b.journals:
            self._set_full(False)
        for buf, data in held:
            buf.write_held(data)

    def _failed(self, b: _Batch | None, error: Exception) -> None:
        """Keep what the batch should have written for a retry; refuse new persistent work."""
        if b is not None:
            self._kept = b.journals + self._kept
            if b.chunk:  # compaction resumes with this chunk once writes succeed again
                if self._snap and self._snap_pos:
                    db, items = self._snap[0]
                    self._snap[0] = (db, items[self._snap_pos :])
                self._snap = b.chunk + self._snap
                self._snap_pos = 0
            if b.upto:
                self._snap_upto = max(self._snap_upto, b.upto)
        now = time.monotonic()
        if now - self._last_full_log > 10:
            self._last_full_log = now
            log.error(
                "storage write failed, refusing new persistent work: %s",
                error,
                extra={"path": str(self.path)},
            )
        if not self.full:
            self._set_full(True)
            if self.loop is not None:
                self.loop.call_later(_RETRY_FULL, self._retry)

    def _retry(self) -> None:
        """Every _RETRY_FULL seconds while full: write the kept journals, with no output
        waiting for the result (the acknowledgements that did were not sent)."""
        if not self.full:
            return
        if self._kept:
            b = _Batch()
            b.journals, self._kept = self._kept, []
            if self._writer is not None:
                self._writer.submit(b, [])
            else:
                try:
                    self.write(b)
                    self._dirty_since_sync = True
                    self._set_full(False)
                except lmdb.Error as e:
                    self._failed(b, e)
        else:
            self._set_full(False)
        if self.full:
            self.loop.call_later(_RETRY_FULL, self._retry)

    def _set_full(self, full: bool) -> None:
        was = self.full
        self.full = full
        if was and not full:
            log.warning("storage writable again", extra={"path": str(self.path)})
            if self._snap and self.flusher is not None:
                self.flusher.request()
        if self.on_full is not None:
            self.on_full(full)

    async def _sync_every(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.fsync_interval)
            if self._dirty_since_sync and self.env is not None:
                self._dirty_since_sync = False
                await loop.run_in_executor(None, self.env.sync, True)

    def stats(self) -> dict:
        info = self.env.info() if self.env is not None else {}
        return {
            "commits": self.commits,
            "map_size": info.get("map_size", 0),
            "shared_bodies": len(self._refs),
            "full": self.full,
            "pending_keys": self.pending()
            + sum(len(items) for _, items in self._snap)
            - self._snap_pos,
        }


def _drop_journals(txn, db, upto: int) -> None:
    """Remove the journal records with ids up to `upto` from one journal database: all of
    them with one `drop` when its newest is (the usual case: see J0/J1), else one by one."""
    cur = txn.cursor(db)
    if not cur.last():
        return
    if R.read_u64(cur.key()[:8]) <= upto:
        txn.drop(db, delete=False)
        return
    cur.first()
    while R.read_u64(cur.key()[:8]) <= upto and cur.delete():
        pass


class _Batch:
    """What one commit writes: journal records, a chunk of compaction, and the id up to which
    journal records became redundant."""

    __slots__ = ("chunk", "journals", "syncs", "upto")

    def __init__(self) -> None:
        self.journals: list[tuple[int, bytes]] = []
        self.chunk: list[tuple[int, list[tuple[bytes, bytes | None]]]] | None = None
        self.upto = 0
        self.syncs: list = []  # the turn hooks' functions (durable queues: fsyncs)


class _Writer:
    """The commit-and-fsync thread of `fsync: always`, fed through a bounded queue.

    Results come back in submission order through a deque; the loop processes them when the
    thread wakes it, or at once in `drain()` (which waits for the thread, not for the loop)."""

    def __init__(self, store: LMDBStore) -> None:
        self.store = store
        self.queue: queue.Queue = queue.Queue(maxsize=64)
        self.results: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.submitted = 0
        self.applied = 0
        self.outstanding = 0  # submitted and not yet processed in the loop
        self.thread = threading.Thread(target=self._run, name="fluxmq-lmdb-writer", daemon=True)
        self.thread.start()

    @property
    def holding(self) -> bool:
        """Output is still waiting for an earlier commit: later output must queue behind it."""
        return self.outstanding > 0

    def submit(self, batch: _Batch | None, held) -> None:
        self.outstanding += 1
        self.submitted += 1
        self.queue.put((batch, held))

    def _run(self) -> None:
        loop = self.store.loop
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch, held = item
            error = None
            try:
                if batch is not None:
                    self.store.write(batch)
            except (lmdb.Error, OSError) as e:
                error = e
            self.results.append((held, error, batch))
            with self.cond:
                self.applied += 1
                self.cond.notify_all()
            loop.call_soon_threadsafe(self.process)

    def process(self) -> None:
        """In the loop: hand finished batches to the store, in order."""
        while self.results:
            held, error, batch = self.results.popleft()
            self.outstanding -= 1
            self.store.committed(held, error, batch)

    def drain(self) -> None:
        """Block until every submitted batch is committed, then process the results."""
        with self.cond:
            self.cond.wait_for(lambda: self.applied >= self.submitted, timeout=60)
        self.process()

    def stop(self) -> None:
        self.drain()
        self.queue.put(None)
        self.thread.join(10)
