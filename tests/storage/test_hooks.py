"""The per-message storage hooks a persistent session calls (StoreCore through StoreHooks),
driven directly on a real LMDB store and read back from its databases."""

from __future__ import annotations

import pytest
from fluxmq._speedups.message import Message
from fluxmq._speedups.session import Inflight, Session, StoreHooks

from fluxmq.storage import records as R
from fluxmq.storage.lmdb_store import INFLIGHT, QUEUE, LMDBStore


def _contents(store: LMDBStore, db: int) -> dict[bytes, bytes]:
    store._commit_now()
    with store.env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(store.dbs[db])}


def _entry(payload: bytes) -> Inflight:
    e = Inflight()
    e.msg = Message("t/1", payload, 1, False)
    e.qos = 1
    return e


def test_queued_then_sent_then_acked(store):
    s = Session("c\u00e9", 60)
    s.store = store
    e = _entry(b"hello")
    store.queued(s, e)
    queued_raw = e.stored
    queue = _contents(store, QUEUE)
    assert list(queue) == [R.seq_key("c\u00e9", 1)]
    assert queue[R.seq_key("c\u00e9", 1)][1] == 0  # state: queued

    store.moved(s, 7, e)
    assert queued_raw[1] == 0  # the queued record object was copied, not changed in place
    assert _contents(store, QUEUE) == {}
    inflight = _contents(store, INFLIGHT)
    raw = inflight[R.pid_key("c\u00e9", 7)]
    assert raw[1] == 1 and raw[:1] + raw[2:] == queued_raw[:1] + queued_raw[2:]
    back, msg_id = R.decode_entry(raw, lambda _i: None)
    assert (back.state, back.msg.payload, msg_id) == (1, b"hello", 0)

    store.acked(s, 7, e)
    assert _contents(store, INFLIGHT) == {}


def test_a_session_store_must_be_a_store():
    s = Session("c", 60)
    with pytest.raises(TypeError):
        s.store = object()
    s.store = None


def test_the_base_hooks_are_not_a_store():
    with pytest.raises(TypeError, match="not a durable store: it has no queued hook"):
        StoreHooks().queued(Session("c", 60), _entry(b"x"))
