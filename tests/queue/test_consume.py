"""Publishing to queues, consuming, acknowledging (MQTT 5 and 3.1.1), groups, capture."""

from __future__ import annotations

import time

from tests.queue.conftest import V311, qconfig, wait_for


def test_publish_consume_ack_nack_reject_over_mqtt5(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "jobs", "retry": {"initial_backoff": "200ms"}}]))
    con = clients(b.port, "worker-1")
    assert con.subscribe("$queue/jobs", consumer_group="workers") == ([1], None)
    dead = clients(b.port, "dlq-reader")
    assert dead.subscribe("$queue/dlq/jobs", cursor="earliest")[0] == [1]
    pub = clients(b.port, "pub")
    for i in range(3):
        assert pub.publish(f"$queue/jobs/img/{i}", f"job{i}".encode(), user="u1") == (0, None)
    wait_for(lambda: len(con.got()) == 3, what="3 deliveries")
    first = {m["payload"]: m for m in con.got()}
    m0 = first[b"job0"]
    assert m0["topic"] == "$queue/jobs/img/0" and m0["qos"] == 1
    p = m0["props"]
    assert p["user"] == "u1"  # the publisher's own properties travel with it
    assert p["group-id"] == "workers" and p["queue"] == "jobs" and p["partition"] == "0"
    assert p["offset"] == "0" and p["delivery-count"] == "1"
    assert p["message-id"] == "jobs:0:0"
    assert con.settle("ack", m0) == (0, None)
    assert con.settle("nack", first[b"job1"]) == (0, None)
    assert con.settle("reject", first[b"job2"], reason="bad image") == (0, None)
    # nack: redelivered after the backoff, counted
    wait_for(lambda: len(con.got()) == 4, what="the nacked message again")
    again = con.got()[3]
    assert again["payload"] == b"job1" and again["props"]["delivery-count"] == "2"
    assert con.settle("ack", again) == (0, None)
    # reject: to the dead-letter queue, saying where from and why
    wait_for(lambda: len(dead.got()) == 1, what="the dead letter")
    d = dead.got()[0]
    assert d["payload"] == b"job2" and d["topic"] == "$queue/jobs/img/2"
    dp = d["props"]
    assert dp["dlq-original-queue"] == "jobs" and dp["dlq-original-offset"] == "2"
    assert dp["dlq-failure-reason"] == "bad image" and dp["dlq-consumer-group"] == "workers"
    assert dp["dlq-consumer-id"] == "worker-1" and dp["dlq-delivery-count"] == "1"
    assert dp["queue"] == "dlq" and dp["user"] == "u1"
    # acknowledged messages do not come back
    time.sleep(0.5)
    assert len(con.got()) == 4


def test_bad_acks_get_a_reason_code_and_keep_the_connection(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "jobs"}]))
    con = clients(b.port, "w")
    con.subscribe("$queue/jobs", consumer_group="g")
    pub = clients(b.port, "pub")
    pub.publish("$queue/jobs/x", b"1")
    wait_for(lambda: len(con.got()) == 1)
    m = con.got()[0]
    assert con.settle("ack", m) == (0, None)
    code, why = con.settle("ack", m)  # twice
    assert code == 0x83 and "not pending" in why
    code, why = con.publish("$queue/jobs/$ack", b"")  # no properties
    assert code == 0x83 and "message-id and group-id" in why
    code, why = con.publish("$queue/jobs/$ack", b"", message_id="jobs:0:0", group_id="nope")
    assert code == 0x83 and "no consumer group 'nope'" in why
    code, why = con.publish("$queue/jobs/$nack", b"", message_id="garbage", group_id="g")
    assert code == 0x83 and "garbage" in why
    code, why = con.publish("$queue/nosuch/$ack", b"", message_id="nosuch:0:0", group_id="g")
    assert code == 0x90 and "nosuch" in why
    # still connected and served
    pub.publish("$queue/jobs/x", b"2")
    wait_for(lambda: len(con.got()) == 2, what="a delivery after the bad acks")


def test_mqtt311_consumer_is_acknowledged_by_its_puback(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "jobs", "visibility_timeout": "1s"}]))
    con = clients(b.port, "legacy", version=V311)
    assert con.subscribe("$queue/jobs")[0] == [1]
    pub = clients(b.port, "pub")
    for i in range(5):
        pub.publish("$queue/jobs/a", str(i).encode())
    wait_for(lambda: len(con.got()) == 5)
    assert [m["qos"] for m in con.got()] == [1] * 5
    # paho acknowledged them with PUBACK: no redelivery after the visibility timeout, and a
    # consumer of the same group (client id) after a reconnect gets nothing again
    time.sleep(1.5)
    assert len(con.got()) == 5
    con.close()
    again = clients(b.port, "legacy", version=V311)
    again.subscribe("$queue/jobs")
    time.sleep(0.5)
    assert again.got() == []
    pub.publish("$queue/jobs/a", b"next")
    wait_for(lambda: again.payloads() == [b"next"])


def test_two_groups_each_get_everything_once(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "events", "partitions": 3, "ordering": "none"}]))
    groups = {"billing": [], "audit": []}
    for g, members in groups.items():
        for i in range(2):
            c = clients(b.port, f"{g}-{i}")
            c.on_message_cb = lambda cl, rec: cl.settle("ack", rec, qos=0)
            c.subscribe("$queue/events", consumer_group=g)
            members.append(c)
    pub = clients(b.port, "pub")
    n = 200
    for i in range(n):
        pub.publish(f"$queue/events/e{i % 7}", str(i).encode(), wait=False)
    expected = sorted(str(i).encode() for i in range(n))
    for g, members in groups.items():
        wait_for(lambda members=members: sum(len(c.got()) for c in members) >= n,
                 what=f"every message in group {g}")  # fmt: skip
        got = sorted(p for c in members for p in c.payloads())
        assert got == expected, g  # each message once per group
        assert all(len(c.got()) > 0 for c in members), "both consumers of the group took some"


def test_queue_captures_ordinary_topics(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "orders", "topics": ["orders/#", "returns/+"]}]))
    plain = clients(b.port, "plain")
    plain.c.subscribe("orders/#", qos=1)
    time.sleep(0.2)
    pub = clients(b.port, "pub")
    pub.publish("orders/eu/1", b"o1")
    pub.publish("returns/7", b"r7")
    pub.publish("other/1", b"x")
    con = clients(b.port, "c")
    con.subscribe("$queue/orders", cursor="earliest")
    wait_for(lambda: len(con.got()) == 2)
    assert [(m["topic"], m["payload"]) for m in con.got()] == [
        ("orders/eu/1", b"o1"), ("returns/7", b"r7")
    ]  # fmt: skip
    wait_for(lambda: plain.payloads() == [b"o1"], what="the ordinary subscriber too")


def test_routing_key_pattern_filters_a_group(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "orders"}]))
    eu = clients(b.port, "eu")
    eu.subscribe("$queue/orders/eu/#", consumer_group="eu")
    pub = clients(b.port, "pub")
    for rk in ("eu/fr", "us/ny", "eu/de/berlin", "eu"):
        pub.publish(f"$queue/orders/{rk}", rk.encode())
    wait_for(lambda: len(eu.got()) == 3)
    assert eu.payloads() == [b"eu/fr", b"eu/de/berlin", b"eu"]


def test_auto_create_off_and_limits(broker_factory, clients):
    b = broker_factory(qconfig(
        [{"name": "small", "limits": {"max_depth": 3, "max_message_size": 100}}],
        auto_create=False,
    ))  # fmt: skip
    pub = clients(b.port, "pub")
    code, why = pub.publish("$queue/unknown/x", b"1")
    assert code == 0x90 and "unknown" in why
    con = clients(b.port, "c")
    codes, why = con.subscribe("$queue/unknown", consumer_group="g")
    assert codes == [0x80] and "unknown" in why
    code, why = pub.publish("$queue/small/x", b"x" * 101)
    assert code == 0x83 and "max_message_size" in why
    for i in range(3):
        assert pub.publish("$queue/small/x", str(i).encode()) == (0, None)
    code, why = pub.publish("$queue/small/x", b"4")
    assert code == 0x97 and "full" in why
    # a consumer acknowledging makes room
    con.on_message_cb = lambda cl, rec: cl.settle("ack", rec, qos=0)
    con.subscribe("$queue/small", consumer_group="g", cursor="earliest")
    wait_for(lambda: len(con.got()) == 3)
    wait_for(lambda: pub.publish("$queue/small/x", b"5") == (0, None), what="room again")


def test_mqtt311_publisher_to_a_full_queue_is_disconnected(broker_factory, clients):
    b = broker_factory(qconfig([{"name": "small", "limits": {"max_depth": 1}}]))
    pub = clients(b.port, "old-pub", version=V311)
    assert pub.publish("$queue/small/x", b"1")[0] == 0
    disconnected = []
    pub.c.on_disconnect = lambda *a: disconnected.append(a)
    pub.publish("$queue/small/x", b"2", wait=False)
    wait_for(lambda: disconnected, what="the disconnect of a 3.1.1 publisher")
