"""Flow control (MQTT 5.0 section 4.9, 3.3.4): the broker's outbound in-flight window is bounded by
the client's Receive Maximum and by `broker.max_inflight`; the broker's own Receive Maximum is
advertised in CONNACK and enforced with DISCONNECT 0x93."""

from __future__ import annotations

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    RC_RECEIVE_MAXIMUM_EXCEEDED,
    RECEIVE_MAXIMUM,
    Packet,
    RawClient,
    broker_fixture,
    build_ack,
    build_publish,
    unique_topic,
)

mbroker = broker_fixture()
#: `max_inflight` maps to Mosquitto's max_inflight_messages, which Mosquitto also advertises as
#: its CONNACK Receive Maximum; FluxMQ has a separate `receive_maximum`. Set both alike.
inflight_broker = broker_fixture({"broker": {"max_inflight": 3, "receive_maximum": 3}})


def _publish_n(broker: BrokerProc, topic: str, n: int, qos: int) -> None:
    with RawClient(broker) as pub:
        pub.connect()
        for i in range(n):
            pub.publish(topic, b"%d" % i, qos=qos)


def _ack_fully(sub: RawClient, p: Packet) -> None:
    """Complete the QoS flow of delivery `p` (PUBACK, or PUBREC + PUBCOMP for the PUBREL)."""
    if p.qos == 1:
        sub.send(build_ack(PUBACK, p.pid or 0, version=sub.version))
    else:
        sub.send(build_ack(PUBREC, p.pid or 0, version=sub.version))
        rel = sub.expect(PUBREL)
        assert rel.pid == p.pid
        sub.send(build_ack(PUBCOMP, rel.pid or 0, version=sub.version))


@pytest.mark.parametrize("qos", [1, 2])
def test_client_receive_maximum_bounds_server_inflight(mbroker: BrokerProc, qos: int) -> None:
    """[MQTT-3.3.4-9] the server sends no more than the client's Receive Maximum (2)
    unacknowledged QoS 1/2 PUBLISH packets: of 5 messages only 2 arrive until the client
    acknowledges; for QoS 2 a PUBREC alone does not free a slot (4.9: the quota returns on
    PUBCOMP); once acknowledged, the rest follows, nothing lost, in order."""
    topic = unique_topic("rm")
    with RawClient(mbroker, auto_ack=False) as sub:
        sub.connect(props=[(RECEIVE_MAXIMUM, 2)])
        sub.subscribe(topic, qos=qos)
        _publish_n(mbroker, topic, 5, qos)
        first = sub.quiet(0.5)
        assert [p.payload for p in first] == [b"0", b"1"], first
        if qos == 2:
            sub.send(build_ack(PUBREC, first[0].pid or 0))
            rel = sub.expect(PUBREL)
            assert rel.pid == first[0].pid
            sub.expect_nothing()  # PUBREC alone does not free the slot
            sub.send(build_ack(PUBCOMP, rel.pid or 0))
        else:
            sub.send(build_ack(PUBACK, first[0].pid or 0))
        delivered = [p.payload for p in first]
        unacked = [first[1]]
        while len(delivered) < 5:
            batch = sub.quiet(0.5)
            assert batch, f"delivery stalled after {delivered}"
            delivered += [p.payload for p in batch]
            for p in unacked + batch:
                _ack_fully(sub, p)
            unacked = []
        assert delivered == [b"0", b"1", b"2", b"3", b"4"]
        sub.expect_nothing(0.3)


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 exceeds the client's Receive Maximum here
@pytest.mark.parametrize("qos", [1, 2])
def test_client_receive_maximum_window_slides_one_per_ack(mbroker: BrokerProc, qos: int) -> None:
    """[MQTT-3.3.4-9] with Receive Maximum 2 and messages queued, completing one delivery lets
    exactly one more out, so never more than 2 are unacknowledged. (Mosquitto 2.0.11 sends two
    more after the first PUBACK/PUBCOMP, leaving 3 in flight: a deviation.)"""
    topic = unique_topic("slide")
    with RawClient(mbroker, auto_ack=False) as sub:
        sub.connect(props=[(RECEIVE_MAXIMUM, 2)])
        sub.subscribe(topic, qos=qos)
        _publish_n(mbroker, topic, 6, qos)
        window = sub.quiet(0.5)
        assert [p.payload for p in window] == [b"0", b"1"], window
        for expected in (b"2", b"3", b"4", b"5"):
            _ack_fully(sub, window.pop(0))
            nxt = sub.quiet(0.4)
            assert [p.payload for p in nxt] == [expected], nxt
            window += nxt
        for p in window:
            _ack_fully(sub, p)
        sub.expect_nothing(0.3)


def test_zero_quota_does_not_block_other_packets(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.4-10]/[MQTT-4.9.0-3] with its send quota at zero the server still answers
    SUBSCRIBE, UNSUBSCRIBE and PINGREQ."""
    topic = unique_topic("quota")
    with RawClient(mbroker, auto_ack=False) as sub:
        sub.connect(props=[(RECEIVE_MAXIMUM, 1)])
        sub.subscribe(topic, qos=1)
        _publish_n(mbroker, topic, 3, 1)
        assert len(sub.quiet(0.4)) == 1
        assert sub.subscribe(topic + "/other", qos=1).codes == [1]
        assert sub.unsubscribe([topic + "/other"]).pid is not None
        sub.ping()


@pytest.mark.parametrize("qos", [1, 2])
def test_max_inflight_bounds_v311_window(inflight_broker: BrokerProc, qos: int) -> None:
    """`broker.max_inflight: 3`: a v3.1.1 subscriber that does not acknowledge gets exactly 3 of
    6 QoS 1/2 messages (MQTT 3.1.1 has no Receive Maximum; the broker's own limit applies)."""
    topic = unique_topic("inf")
    with RawClient(inflight_broker, version=4, auto_ack=False) as sub:
        sub.connect()
        sub.subscribe(topic, qos=qos)
        _publish_n(inflight_broker, topic, 6, qos)
        got = sub.quiet(0.6)
        assert [p.payload for p in got] == [b"0", b"1", b"2"], got


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 releases every queued message after the first PUBACK
def test_max_inflight_window_slides_one_per_ack(inflight_broker: BrokerProc) -> None:
    """`broker.max_inflight: 3`: each PUBACK lets exactly one more queued message out, so at most
    3 are ever unacknowledged (the same rule as [MQTT-3.3.4-9] for the broker's own limit)."""
    topic = unique_topic("slide")
    with RawClient(inflight_broker, version=4, auto_ack=False) as sub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        _publish_n(inflight_broker, topic, 7, 1)
        window = sub.quiet(0.5)
        assert [p.payload for p in window] == [b"0", b"1", b"2"]
        for expected in (b"3", b"4", b"5", b"6"):
            oldest = window.pop(0)
            sub.send(build_ack(PUBACK, oldest.pid or 0, version=4))
            nxt = sub.quiet(0.4)
            assert [p.payload for p in nxt] == [expected], nxt
            window += nxt


@pytest.mark.fluxmq_only  # Mosquitto uses a v5 client's Receive Maximum instead of its own limit
def test_max_inflight_caps_v5_receive_maximum(inflight_broker: BrokerProc) -> None:
    """`broker.max_inflight: 3` also bounds a v5 client that allows 10 (the effective window is
    the smaller of the two; [MQTT-3.3.4-9] only sets the upper bound)."""
    topic = unique_topic("cap")
    with RawClient(inflight_broker, auto_ack=False) as sub:
        sub.connect(props=[(RECEIVE_MAXIMUM, 10)])
        sub.subscribe(topic, qos=1)
        _publish_n(inflight_broker, topic, 6, 1)
        got = sub.quiet(0.6)
        assert [p.payload for p in got] == [b"0", b"1", b"2"], got


def test_server_receive_maximum_advertised(inflight_broker: BrokerProc) -> None:
    """3.2.2.3.3: the CONNACK carries the server's Receive Maximum (`broker.receive_maximum: 3`),
    and that many QoS 2 PUBLISHes awaiting PUBREL are accepted (3.3.4: only more is an error)."""
    topic = unique_topic("srm")
    with RawClient(inflight_broker) as c:
        ack = c.connect()
        assert ack.props.get(RECEIVE_MAXIMUM) == 3
        for pid in (1, 2, 3):
            c.send(build_publish(topic, b"x", qos=2, pid=pid))
        recs = [c.expect(PUBREC) for _ in range(3)]
        assert [r.pid for r in recs] == [1, 2, 3]
        assert all(r.rc is not None and r.rc < 0x80 for r in recs), recs
        for pid in (1, 2, 3):
            c.send(build_ack(PUBREL, pid))
            assert c.expect(PUBCOMP).pid == pid
        c.ping()


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 answers the extra PUBLISH with PUBREC 0x97 instead
def test_server_receive_maximum_exceeded_disconnects_0x93(inflight_broker: BrokerProc) -> None:
    """3.3.4: a client sending more than the server's Receive Maximum (3) QoS 2 PUBLISHes that have
    not been completed gets DISCONNECT 0x93 (Receive Maximum exceeded) and the connection
    closes ([MQTT-4.13.1-1]); the broker keeps serving others."""
    topic = unique_topic("srmx")
    with RawClient(inflight_broker) as c:
        c.connect()
        for pid in (1, 2, 3, 4):
            c.send(build_publish(topic, b"x", qos=2, pid=pid))
        c.expect_disconnect(RC_RECEIVE_MAXIMUM_EXCEEDED)
    with RawClient(inflight_broker) as other:
        other.connect()
        other.ping()
