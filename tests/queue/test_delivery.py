"""Ordering across partitions and rebalances, redelivery, retries and dead letters, replay."""

from __future__ import annotations

import datetime
import threading
import time

from tests.queue.conftest import qconfig, wait_for


def test_per_key_order_with_concurrent_consumers_and_rebalances(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "orders", "partitions": 4, "visibility_timeout": "5s"}]))
    log: list[tuple[str, int, str]] = []  # (key, seq, consumer) in processing order
    lock = threading.Lock()

    def work(cl, rec):
        key = rec["props"]["partition-key"]
        seq = int(rec["payload"])
        with lock:
            log.append((key, seq, cl.c._client_id.decode()))
        time.sleep(0.003)  # a little work, so deliveries are in flight during a rebalance
        cl.settle("ack", rec, qos=0)

    def consumer(name):
        c = clients(b.port, name, receive_maximum=5)
        c.on_message_cb = work
        c.subscribe("$queue/orders", consumer_group="shipping")
        return c

    a = consumer("a")
    bb = consumer("b")
    pub = clients(b.port, "pub")
    keys = [f"k{i}" for i in range(8)]
    total = 0
    for phase in range(3):
        for seq in range(phase * 150, (phase + 1) * 150):
            key = keys[seq % len(keys)]
            pub.publish("$queue/orders/o", str(seq).encode(), wait=False, partition_key=key)
            total += 1
        if phase == 0:
            c3 = consumer("c")  # a join: partitions move to it
        elif phase == 1:
            a.close()  # a leave: its partitions (and what it held) move on
    wait_for(lambda: len({s for _, s, _ in log}) == total, timeout=20, what="every message")
    by_key: dict[str, list[int]] = {}
    for key, seq, _ in log:
        seen = by_key.setdefault(key, [])
        if seq not in seen:
            seen.append(seq)
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"{key} out of order: {seqs}"
    assert {who for _, _, who in log} == {"a", "b", "c"}
    # one owner per partition at a time: every key is handled by one consumer between moves
    assert c3.got() and bb.got()


def test_ordering_none_spreads_one_partition_over_consumers(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "work", "ordering": "none"}]))
    cs = []
    for i in range(3):
        c = clients(b.port, f"w{i}", receive_maximum=2)
        c.subscribe("$queue/work", consumer_group="pool")
        cs.append(c)
    pub = clients(b.port, "pub")
    for i in range(6):
        pub.publish("$queue/work/x", str(i).encode())
    # nobody acknowledges: each consumer holds at most its window (2) and all three take some
    wait_for(lambda: sum(len(c.got()) for c in cs) == 6)
    assert [len(c.got()) for c in cs] == [2, 2, 2]


def test_visibility_timeout_redelivers_and_so_does_a_disconnect(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "jobs", "visibility_timeout": "700ms"}]))
    slow = clients(b.port, "slow")
    slow.subscribe("$queue/jobs", consumer_group="g")
    pub = clients(b.port, "pub")
    pub.publish("$queue/jobs/a", b"j1")
    wait_for(lambda: len(slow.got()) == 1)
    t0 = slow.got()[0]["t"]
    wait_for(lambda: len(slow.got()) == 2, what="a redelivery after the visibility timeout")
    m = slow.got()[1]
    assert m["payload"] == b"j1" and m["props"]["delivery-count"] == "2"
    assert 0.5 < m["t"] - t0 < 2.0
    # the consumer goes away holding it: another consumer of the group gets it at once
    other = clients(b.port, "other")
    other.subscribe("$queue/jobs", consumer_group="g")
    slow.close()
    wait_for(lambda: len(other.got()) == 1, what="a redelivery after the disconnect")
    m = other.got()[0]
    assert m["payload"] == b"j1" and m["props"]["delivery-count"] == "3"
    assert other.settle("ack", m) == (0, None)


def test_dead_letter_after_max_retries(broker_factory, clients):
    b = broker_factory(qconfig([{
        "name": "jobs",
        "retry": {"max_retries": 2, "initial_backoff": "50ms", "multiplier": 2.0},
        "dlq": {"topic": "$queue/failed/jobs"},
    }]))  # fmt: skip
    con = clients(b.port, "c")
    con.on_message_cb = lambda cl, rec: cl.settle("nack", rec, qos=0)
    con.subscribe("$queue/jobs", consumer_group="g")
    dead = clients(b.port, "d")
    dead.subscribe("$queue/failed", cursor="earliest")
    pub = clients(b.port, "pub")
    pub.publish("$queue/jobs/x", b"poison", content="1")
    wait_for(lambda: len(dead.got()) == 1, what="the dead letter")
    assert [m["props"]["delivery-count"] for m in con.got()] == ["1", "2", "3"]
    d = dead.got()[0]["props"]
    assert d["dlq-delivery-count"] == "3" and "retry.max_retries 2" in d["dlq-failure-reason"]
    assert d["dlq-original-queue"] == "jobs" and d["content"] == "1"
    time.sleep(0.4)
    assert len(con.got()) == 3


def test_replay_from_earliest_and_from_a_time(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "audit", "partitions": 2}]))
    pub = clients(b.port, "pub")
    for i in range(6):
        pub.publish("$queue/audit/a", f"old{i}".encode())
    time.sleep(0.3)
    t = datetime.datetime.now(datetime.UTC)
    time.sleep(0.05)
    for i in range(4):
        pub.publish("$queue/audit/a", f"new{i}".encode())
    everything = clients(b.port, "e")
    everything.subscribe("$queue/audit", consumer_group="e", cursor="earliest")
    since = clients(b.port, "s")
    since.subscribe("$queue/audit", consumer_group="s", cursor=t.isoformat().replace("+00:00", "Z"))
    latest = clients(b.port, "l")
    latest.subscribe("$queue/audit", consumer_group="l")
    wait_for(lambda: len(everything.got()) == 10 and len(since.got()) == 4)
    assert sorted(everything.payloads()) == sorted(
        [f"old{i}".encode() for i in range(6)] + [f"new{i}".encode() for i in range(4)]
    )
    assert sorted(since.payloads()) == [f"new{i}".encode() for i in range(4)]
    assert latest.got() == []
    pub.publish("$queue/audit/a", b"later")
    wait_for(lambda: latest.payloads() == [b"later"])
    # a bad cursor is refused with a reason
    codes, why = clients(b.port, "x").subscribe("$queue/audit", consumer_group="x", cursor="soon")
    assert codes == [0x83] and "cursor" in why


def test_a_moved_partition_waits_until_its_previous_owner_settles(broker_factory, clients):
    from fluxmq.queue.partition import for_key

    b = broker_factory(qconfig([{"name": "q", "partitions": 2}]))
    keys = {for_key(k, 2): k for k in ("a", "b", "c", "d", "e")}  # a key for each partition
    first = clients(b.port, "first")
    first.subscribe("$queue/q", consumer_group="g")
    pub = clients(b.port, "pub")
    for p in (0, 1):
        pub.publish("$queue/q/x", f"p{p}-0".encode(), partition_key=keys[p])
    wait_for(lambda: len(first.got()) == 2)
    # A second consumer joins: one partition moves to it, but `first` still holds a message of
    # that partition, so the newcomer gets nothing of it yet.
    second = clients(b.port, "second")
    second.subscribe("$queue/q", consumer_group="g")
    for p in (0, 1):
        pub.publish("$queue/q/x", f"p{p}-1".encode(), partition_key=keys[p])
    time.sleep(0.5)
    assert second.got() == []
    wait_for(lambda: len(first.got()) == 3)  # the partition it kept goes on
    kept = [m["props"]["partition"] for m in first.got() if m["payload"].endswith(b"-1")]
    moved = "1" if kept == ["0"] else "0"
    held = next(m for m in first.got() if m["props"]["partition"] == moved)
    first.settle("ack", held)
    wait_for(lambda: second.payloads() == [f"p{moved}-1".encode()], what="the handover")
