"""Compaction: the changes gathered since the last one are applied to the main databases in
chunks, one per loop turn, and a failed chunk is applied again once writes succeed; at the end
the databases hold exactly the state and no journal record is left."""

from __future__ import annotations

import lmdb
import pytest

from fluxmq.storage import lmdb_store
from fluxmq.storage.lmdb_store import J0, J1, MSGS, QUEUE, LMDBStore


def _db(store: LMDBStore, db: int) -> dict[bytes, bytes]:
    with store.env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(store.dbs[db])}


def _journals(store: LMDBStore) -> list[bytes]:
    return [*_db(store, J0), *_db(store, J1)]


def test_chunks_and_a_failed_chunk_give_exactly_the_state(store, monkeypatch) -> None:
    old = {b"old%03d" % i: b"v%d" % i for i in range(10)}
    for k, v in old.items():
        store._insert(QUEUE, k, v)
    store._commit_now()
    assert _db(store, QUEUE) == old and _journals(store) == []

    expected_q = dict(old)
    for i in range(2500):  # new keys, across two databases
        k = b"new%05d" % i
        store._insert(QUEUE if i % 2 else MSGS, k, b"x%d" % i)
    for i in range(5):  # existing keys deleted
        store._delete(QUEUE, b"old%03d" % i)
        del expected_q[b"old%03d" % i]
    for i in range(5, 8):  # existing keys replaced
        store._put(QUEUE, b"old%03d" % i, b"replaced")
        expected_q[b"old%03d" % i] = b"replaced"
    store._insert(QUEUE, b"gone", b"inserted and deleted before compaction")
    store._delete(QUEUE, b"gone")
    expected_q.update({b"new%05d" % i: b"x%d" % i for i in range(1, 2500, 2)})
    expected_m = {b"new%05d" % i: b"x%d" % i for i in range(0, 2500, 2)}

    store._last_compact = 0.0  # due now
    assert store.end_turn([]) == []  # the journal record and the first chunk
    pending = store.stats()["pending_keys"]
    assert pending == 2500 + 5 + 3 - lmdb_store._CHUNK

    real_write = store.write
    calls = []

    def failing_write(b):
        calls.append(b)
        raise lmdb.DiskError("simulated")

    monkeypatch.setattr(store, "write", failing_write)
    store._insert(QUEUE, b"during", b"the failure")  # a turn with a change and a chunk
    expected_q[b"during"] = b"the failure"
    store.end_turn([])
    assert store.full and calls and calls[0].chunk
    assert store.stats()["pending_keys"] == pending + 1  # the chunk went back, + "during"

    monkeypatch.setattr(store, "write", real_write)
    store._retry()  # writes the kept journal record
    assert not store.full
    turns = 0
    while store._snap:
        store.end_turn([])
        turns += 1
    assert turns == -(-pending // lmdb_store._CHUNK)
    # The snapshot is applied; "during" came after it and is in the journal only.
    assert _db(store, QUEUE) == {k: v for k, v in expected_q.items() if k != b"during"}
    assert _db(store, MSGS) == expected_m
    store._commit_now()
    assert _journals(store) == []
    assert _db(store, QUEUE) == expected_q


@pytest.mark.parametrize(
    "items",
    [
        [],
        [(b"a", b"1"), (b"b", b"2")],
        [(b"a", None), (b"b", b"2")],
        [(b"a", b"1"), (b"b", None), (b"c", b"3"), (b"d", None)],
        [(b"a", b"1"), (b"b", b"")],
        [(b"a", None)],
    ],
)
def test_split_changes(items) -> None:
    puts, dels = LMDBStore.split_changes(items)
    assert puts == [kv for kv in items if kv[1] is not None]
    assert dels == [k for k, v in items if v is None]
    if not dels:
        assert puts is items  # no copy when nothing is deleted


def test_drop_journals_keeps_newer_records(store) -> None:
    """Records newer than the compaction covers stay (one by one); otherwise one drop."""
    from fluxmq.storage import records as R

    with store.env.begin(write=True) as txn:
        for jid in range(1, 6):
            for part in range(2):
                txn.put(R.u64(jid) + part.to_bytes(4, "big"), b"x", db=store.dbs[J0])
        lmdb_store._drop_journals(txn, store.dbs[J0], 3)
        lmdb_store._drop_journals(txn, store.dbs[J1], 3)  # empty: nothing to do
    assert sorted({R.read_u64(k[:8]) for k in _db(store, J0)}) == [4, 5]
    with store.env.begin(write=True) as txn:
        lmdb_store._drop_journals(txn, store.dbs[J0], 5)
    assert _db(store, J0) == {}
