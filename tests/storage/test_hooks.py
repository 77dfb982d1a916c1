"""The per-message storage hooks a persistent session calls (StoreCore through StoreHooks),
driven directly on a real LMDB store and read back from its databases."""

from __future__ import annotations

import struct

import lmdb
import pytest
from fluxmq._speedups.message import Message
from fluxmq._speedups.records import Journal
from fluxmq._speedups.session import Inflight, Session, StoreHooks

from fluxmq.storage import records as R
from fluxmq.storage.lmdb_store import INFLIGHT, J0, J1, META, MSGS, QUEUE, SESSIONS, LMDBStore


def _contents(store: LMDBStore, db: int) -> dict[bytes, bytes]:
    store._commit_now()
    with store.env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(store.dbs[db])}


def _entry(payload: bytes) -> Inflight:
    e = Inflight()
    e.msg = Message("t/1", payload, 1, False)
    e.qos = 1
    return e


def _send(store: LMDBStore, s: Session, pid: int, e: Inflight) -> None:
    """What Session._send does for a queued entry."""
    e.state = 1
    store.moved(s, pid, e)


def _crash(store: LMDBStore) -> None:
    """Commit this turn's journal record, then stop the way a killed broker does: nothing
    compacted, nothing closed cleanly (only the lock and the environment are released)."""
    b = store._make_batch()
    if b is not None:
        store.write(b)
    store.env.close()
    store.env = None
    store._unlock()


def _persistent_session(path) -> tuple[LMDBStore, Session]:
    """A store opened at `path` (`fsync: never`) and a saved persistent session "c" on it."""
    store = LMDBStore(str(path), fsync="never")
    store.open()
    s = Session("c", 300)
    s.store = store
    store.session_saved(s)
    return store, s


def _reopen(path) -> tuple[LMDBStore, dict[str, Session]]:
    store = LMDBStore(str(path), fsync="never")
    store.open()
    loaded = store.load(lambda cid, expiry: Session(cid, expiry))
    return store, {ls.session.client_id: ls.session for ls in loaded.sessions}


def test_queued_then_sent_then_acked(store):
    s = Session("c\u00e9", 60)
    s.store = store
    e = _entry(b"hello")
    store.queued(s, e)
    queue = _contents(store, QUEUE)
    key = R.seq_key("c\u00e9", 1)
    assert list(queue) == [key]
    queued_raw = queue[key]
    assert queued_raw[1] == 0  # state: queued
    back, _ = R.decode_entry(queued_raw, lambda _i: None)
    assert back.pid == 0

    _send(store, s, 7, e)
    raw = _contents(store, QUEUE)[key]  # one keyspace: the same key, the state and id patched
    assert raw == R.patch_entry(queued_raw, 1, 7)
    assert raw[:1] + raw[2:11] + raw[13:] == queued_raw[:1] + queued_raw[2:11] + queued_raw[13:]
    back, msg_id = R.decode_entry(raw, lambda _i: None)
    assert (back.state, back.pid, back.msg.payload, msg_id) == (1, 7, b"hello", 0)
    assert _contents(store, INFLIGHT) == {}

    store.acked(s, 7, e)
    assert _contents(store, QUEUE) == {}


def test_changes_that_cancel_never_reach_the_database(store):
    """Queued, sent and acknowledged between two compactions: the entry leaves the list of
    changed entries and compaction writes nothing for it; one that lasts is written."""
    s = Session("c", 60)
    s.store = store
    gone, kept = _entry(b"gone"), _entry(b"kept")
    store.queued(s, gone)
    store.queued(s, kept)
    _send(store, s, 1, gone)
    assert store._dcount == 2
    store.acked(s, 1, gone)
    assert store._dcount == 1
    changes = dict(store.take_changes())
    assert [k for k, _ in changes[QUEUE]] == [R.seq_key("c", 2)]
    assert store._dcount == 0
    # kept is in the database now: its removal has to be written by the next compaction
    store.acked(s, 0, kept)
    changes = dict(store.take_changes())
    assert changes[QUEUE] == [(R.seq_key("c", 2), None)]


def test_send_of_a_compacted_entry_is_written_again(store):
    s = Session("c", 60)
    s.store = store
    e = _entry(b"x")
    store.queued(s, e)
    assert _contents(store, QUEUE)[R.seq_key("c", 1)][1] == 0  # compacted while queued
    _send(store, s, 9, e)
    raw = _contents(store, QUEUE)[R.seq_key("c", 1)]
    assert (raw[1], R.decode_entry(raw, lambda _i: None)[0].pid) == (1, 9)


def test_journal_patch_is_replayed_after_a_crash(tmp_path):
    """An entry compacted while queued, then sent: after a crash only the journal's patch
    says so; the start replays it and the entry is in flight under its packet id."""
    path = tmp_path / "data"
    store, s = _persistent_session(path)
    first, second = _entry(b"first"), _entry(b"second")
    store.queued(s, first)
    store.queued(s, second)
    store._commit_now()
    _send(store, s, 5, first)
    _crash(store)

    store, sessions = _reopen(path)
    try:
        back = sessions["c"]
        assert [(pid, e.state, e.msg.payload) for pid, e in back.inflight_items()] == [
            (5, 1, b"first")
        ]
        assert [e.msg.payload for e in back.queued_items()] == [b"second"]
        back.store = store
        e = dict(back.inflight_items())[5]
        store.acked(back, 5, e)  # the loaded entry keeps its key
        assert list(_contents(store, QUEUE)) == [R.seq_key("c", 2)]
    finally:
        store.close()


def test_released_entry_survives_a_crash(tmp_path):
    """QoS 2, PUBREL sent: the record drops the message and keeps the packet id."""
    path = tmp_path / "data"
    store, s = _persistent_session(path)
    e = _entry(b"two")
    e.qos = 2
    e.state = 1
    store.inflight(s, 3, e)
    store._commit_now()
    e.state = 2
    store.released(s, 3, e)
    _crash(store)

    store, sessions = _reopen(path)
    try:
        [(pid, back)] = sessions["c"].inflight_items()
        assert (pid, back.state, back.qos, back.msg) == (3, 2, 2, None)
    finally:
        store.close()


def _format1_database(path) -> None:
    """A database as format 1 wrote it: an in-flight entry under client id NUL packet id in
    `inflight` (record without a packet id), a queued one in `queue`."""
    env = lmdb.open(str(path), max_dbs=16, map_size=16 << 20, subdir=True)
    entry = struct.pack(">BBBQB", 1, 1, 2, 0, 0) + R.encode_message(Message("t", b"old", 1, False))
    queued = struct.pack(">BBBQB", 1, 0, 2, 0, 0) + R.encode_message(Message("t", b"q", 1, False))
    with env.begin(write=True) as txn:
        txn.put(b"format", R.u32(1), db=env.open_db(b"meta", txn=txn))
        session = struct.pack(">BIdd", 1, 300, 1.0, 0.0)
        txn.put(b"c", session, db=env.open_db(b"sessions", txn=txn))
        txn.put(R.pid_key("c", 12), entry, db=env.open_db(b"inflight", txn=txn))
        txn.put(R.seq_key("c", 4), queued, db=env.open_db(b"queue", txn=txn))
    env.close()


def test_format_1_database_is_converted(tmp_path):
    path = tmp_path / "data"
    _format1_database(path)
    store, sessions = _reopen(path)
    try:
        s = sessions["c"]
        assert [(pid, e.state, e.msg.payload) for pid, e in s.inflight_items()] == [(12, 1, b"old")]
        assert [e.msg.payload for e in s.queued_items()] == [b"q"]
        assert _contents(store, INFLIGHT) == {}
        queue = _contents(store, QUEUE)
        assert list(queue) == [R.seq_key("c", 4), R.seq_key("c", 5)]
        moved, _ = R.decode_entry(queue[R.seq_key("c", 5)], lambda _i: None)
        assert (moved.state, moved.pid, moved.msg.payload) == (1, 12, b"old")
        assert _contents(store, META)[b"format"] == R.u32(R.FORMAT_VERSION)
        assert list(_contents(store, SESSIONS)) == [b"c"]
    finally:
        store.close()
    store, sessions = _reopen(path)  # and it reads back in the new format
    try:
        assert [(pid, e.msg.payload) for pid, e in sessions["c"].inflight_items()] == [(12, b"old")]
    finally:
        store.close()


def test_a_session_store_must_be_a_store():
    s = Session("c", 60)
    with pytest.raises(TypeError):
        s.store = object()
    s.store = None


def test_the_base_hooks_are_not_a_store():
    with pytest.raises(TypeError, match="not a durable store: it has no queued hook"):
        StoreHooks().queued(Session("c", 60), _entry(b"x"))


def test_removed_session_with_spilled_entries_leaves_nothing(store):
    """Past SPILL_AT queued entries the newest stay on disk only; forgetting the session
    deletes both kinds, each once, and its shared bodies with them."""
    from fluxmq._speedups.dispatch import Dispatcher

    s = Session("c", 300, max_queue=5000)
    s.store = store
    other = Session("d", 300, max_queue=5000)
    other.store = store
    store.session_saved(s)
    disp = Dispatcher()
    for i in range(1200):
        msg = Message("t", b"%d" % i, 1, False)
        if i % 100 == 0:  # delivered to two sessions: one shared body
            msg.fanout = 2
            disp.publish_to(other, msg, 1, False, None)
        disp.publish_to(s, msg, 1, False, None)
    assert s.spilled == 200 and len(s.queued_items()) == 1000
    store.session_removed(s)
    queue = _contents(store, QUEUE)
    assert {R.key_client(k) for k in queue} == {"d"} and len(queue) == 12
    assert len(_contents(store, MSGS)) == 12  # the shared bodies "d" still refers to
    assert all(n == 1 for n in store._refs.values())


def test_journal_record_in_parts_is_joined_at_recovery(tmp_path):
    """A turn's journal record longer than one LMDB page is written in parts (one overflow
    page each); after a crash the start joins them back in order."""
    from fluxmq.storage.lmdb_store import _JPART

    path = tmp_path / "data"
    store, s = _persistent_session(path)
    payloads = [bytes([65 + i]) * 3000 for i in range(5)]  # ~15 KB: 4 parts
    for p in payloads:
        store.queued(s, _entry(p))
    store.write(store._make_batch())
    parts = _journal_parts(store)
    assert len(parts) == 4 and len({k[:8] for k in parts}) == 1
    assert all(len(v) <= _JPART for v in parts.values())
    _crash(store)

    store, sessions = _reopen(path)
    try:
        assert [e.msg.payload for e in sessions["c"].queued_items()] == payloads
        assert _journal_parts(store) == {}  # recovered: the records are gone
    finally:
        store.close()


def _journal_parts(store: LMDBStore) -> dict[bytes, bytes]:
    return {**_contents_now(store, J0), **_contents_now(store, J1)}


def _contents_now(store: LMDBStore, db: int) -> dict[bytes, bytes]:
    with store.env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(store.dbs[db])}


def test_journal_records_switch_databases_and_go_with_one_drop(store):
    """Each compaction's snapshot sends later records to the other journal database; once
    the snapshot is applied, the database it covers is emptied whole; a record of a later turn
    (in the other one) stays until the next compaction."""
    s = Session("c", 300)
    s.store = store
    store.session_saved(s)
    store.write(store._make_batch())
    first = store._jdb
    assert _contents_now(store, first) and not _contents_now(store, J0 + J1 - first)
    store._last_compact = 0.0  # a compaction is due: the next turn takes the snapshot
    store.queued(s, _entry(b"x"))
    store.write(store._make_batch())  # its record (in `first`), the snapshot, its only chunk
    assert store._jdb != first
    assert not _contents_now(store, first)
    store.queued(s, _entry(b"y"))
    store.write(store._make_batch())
    assert len(_contents_now(store, store._jdb)) == 1
    store._commit_now()  # everything compacted: both empty
    assert _journal_parts(store) == {}


def test_journal_records_of_a_format_1_broker_are_replayed(tmp_path):
    """A format 1 broker kept its journal records in `meta` under b"j" + id: a start replays
    them before reading anything, and removes them."""
    path = tmp_path / "data"
    _format1_database(path)
    record = Journal()
    record.put(QUEUE, R.seq_key("c", 9), struct.pack(">BBBQB", 1, 0, 2, 0, 0)
               + R.encode_message(Message("t", b"from-journal", 1, False)))  # fmt: skip
    env = lmdb.open(str(path), max_dbs=16, map_size=16 << 20, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"j" + R.u64(1), record.take(), db=env.open_db(b"meta", txn=txn))
    env.close()
    store, sessions = _reopen(path)
    try:
        assert [e.msg.payload for e in sessions["c"].queued_items()] == [b"q", b"from-journal"]
        assert list(_contents(store, META)) == [b"format"]
    finally:
        store.close()


def test_connected_session_keeps_its_queue_in_memory_longer(store):
    """An offline session keeps 1,000 queued entries in memory and the rest on disk only; a
    connected one, whose publishers are paused at 1,000, keeps up to 4,000 (the overshoot of
    their windows) in memory: reading a spilled queue back costs a compaction per 500 entries,
    which a live stream cannot afford."""
    from fluxmq._speedups.dispatch import Dispatcher
    from fluxmq._speedups.session import CallbackOutlet

    disp = Dispatcher()
    online = Session("on", 300, window=1, max_queue=25_000)
    offline = Session("off", 300, window=1, max_queue=25_000)
    for s in (online, offline):
        s.store = store
    online.resume(CallbackOutlet(lambda *a: True))
    for i in range(4500):
        for s in (online, offline):
            disp.publish_to(s, Message("t", b"%d" % i, 1, False), 1, False, None)
    assert (len(offline.queued_items()), offline.spilled) == (1000, 3500)
    assert (len(online.queued_items()), online.spilled) == (4000, 499)  # one in flight
