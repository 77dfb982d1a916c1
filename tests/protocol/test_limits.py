"""Server limits: Maximum QoS (`broker.max_qos`, MQTT 5.0 3.2.2.3.4) and Maximum Packet Size in both
directions (`broker.max_message_size`, 3.2.2.3.6; the client's own, 3.1.2.11.4)."""

from __future__ import annotations

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    MAXIMUM_PACKET_SIZE,
    MAXIMUM_QOS,
    PUBACK,
    RC_PACKET_TOO_LARGE,
    RC_QOS_NOT_SUPPORTED,
    PahoClient,
    RawClient,
    broker_fixture,
    build_publish,
    unique_topic,
)

qos1_broker = broker_fixture({"broker": {"max_qos": 1}})
MAX_SIZE = 2048  # FluxMQ accepts 1024 and up
size_broker = broker_fixture({"broker": {"max_message_size": MAX_SIZE}})
mbroker = broker_fixture()

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def _publish_of_size(topic: str, size: int, qos: int = 1, pid: int = 1, version: int = 5) -> bytes:
    """A PUBLISH packet of exactly `size` bytes in total (fixed header included)."""
    payload_len = size - len(build_publish(topic, b"", qos=qos, pid=pid, version=version))
    for _ in range(3):  # the Remaining Length field may grow by a byte or two
        pkt = build_publish(topic, b"p" * payload_len, qos=qos, pid=pid, version=version)
        payload_len -= len(pkt) - size
    assert len(pkt) == size
    return pkt


# -- Maximum QoS ---------------------------------------------------------------------------------
def test_max_qos_advertised(qos1_broker: BrokerProc) -> None:
    """[MQTT-3.2.2-9] a server that does not support QoS 2 sends Maximum QoS (1) in CONNACK."""
    with RawClient(qos1_broker) as c:
        assert c.connect().props.all(MAXIMUM_QOS) == [1]


@pytest.mark.parametrize("version", VERSIONS)
def test_max_qos_caps_granted_qos(qos1_broker: BrokerProc, version: int) -> None:
    """[MQTT-3.2.2-10] SUBSCRIBE with Requested QoS 0/1/2 is still accepted, [MQTT-3.8.4-7] the
    SUBACK shows the granted QoS (at most 1), and QoS 1 messages arrive at QoS 1."""
    root = unique_topic("mq")
    with RawClient(qos1_broker, version=version) as sub:
        sub.connect()
        ack = sub.subscribe([(f"{root}/0", 0), (f"{root}/1", 1), (f"{root}/2", 2)])
        assert ack.codes == [0, 1, 1]
        with RawClient(qos1_broker, version=version) as pub:
            pub.connect()
            pub.publish(f"{root}/2", b"x", qos=1)
        msg = sub.expect_publish()
        assert (msg.topic, msg.qos) == (f"{root}/2", 1)


def test_publish_above_max_qos_disconnects_0x9b(qos1_broker: BrokerProc) -> None:
    """[MQTT-3.2.2-11] a client must not publish above Maximum QoS; 3.2.2.3.4: a server receiving
    a QoS 2 PUBLISH after advertising Maximum QoS 1 sends DISCONNECT 0x9B (QoS not supported);
    the message is not forwarded and other clients are unaffected."""
    topic = unique_topic("q2")
    with RawClient(qos1_broker) as sub, RawClient(qos1_broker) as c:
        sub.connect()
        sub.subscribe(topic, qos=1)
        c.connect()
        c.send(build_publish(topic, b"too high", qos=2, pid=1))
        c.expect_disconnect(RC_QOS_NOT_SUPPORTED)
        sub.expect_nothing()
        sub.ping()


def test_publish_above_max_qos_v311_closes(qos1_broker: BrokerProc) -> None:
    """MQTT 3.1.1 has no Maximum QoS; a server that does not support QoS 2 closes the connection
    of a v3.1.1 client publishing at QoS 2 (4.8 protocol violation) without forwarding it."""
    topic = unique_topic("q2v3")
    with RawClient(qos1_broker) as sub, RawClient(qos1_broker, version=4) as c:
        sub.connect()
        sub.subscribe(topic, qos=1)
        c.connect()
        c.send(build_publish(topic, b"too high", qos=2, pid=1, version=4))
        c.wait_closed()
        sub.expect_nothing()


# -- Maximum Packet Size: inbound ------------------------------------------------------------------
def test_max_packet_size_advertised(size_broker: BrokerProc) -> None:
    """3.2.2.3.6: the CONNACK carries Maximum Packet Size = `broker.max_message_size`."""
    with RawClient(size_broker) as c:
        assert c.connect().props.get(MAXIMUM_PACKET_SIZE) == MAX_SIZE


def test_packet_of_exactly_max_size_accepted(size_broker: BrokerProc) -> None:
    """3.2.2.3.6: a PUBLISH of exactly Maximum Packet Size bytes (whole packet) is within the limit:
    acknowledged and forwarded."""
    topic = unique_topic("fit")
    with RawClient(size_broker) as sub, RawClient(size_broker) as pub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        pub.send(_publish_of_size(topic, MAX_SIZE))
        assert pub.expect(PUBACK).pid == 1
        assert sub.expect_publish().topic == topic


@pytest.mark.parametrize("version", VERSIONS)
def test_oversized_packet_rejected(size_broker: BrokerProc, version: int) -> None:
    """[MQTT-3.2.2-15] the client must not exceed the server's Maximum Packet Size; 3.2.2.3.6/4.13:
    a larger packet gets DISCONNECT 0x95 (Packet too large) on v5 and a closed connection on
    v3.1.1; it is not forwarded, and the broker keeps serving the other clients."""
    topic = unique_topic("big")
    with RawClient(size_broker) as sub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        with RawClient(size_broker, version=version) as c:
            c.connect()
            c.send(_publish_of_size(topic, MAX_SIZE + 100, version=version))
            if version == 5:
                c.expect_disconnect(RC_PACKET_TOO_LARGE)
            else:
                c.wait_closed()
        sub.expect_nothing()
        with RawClient(size_broker) as pub:
            pub.connect()
            pub.publish(topic, b"small", qos=1)
        assert sub.expect_publish().payload == b"small"


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 accepts up to 2 bytes more (ignores the length field)
def test_packet_one_byte_over_max_rejected(size_broker: BrokerProc) -> None:
    """3.1.2.11.4/3.2.2.3.6: the packet size is the total number of bytes of the control packet,
    fixed header included, so Maximum Packet Size + 1 bytes is too large: DISCONNECT 0x95."""
    with RawClient(size_broker) as c:
        c.connect()
        c.send(_publish_of_size(unique_topic("over"), MAX_SIZE + 1))
        c.expect_disconnect(RC_PACKET_TOO_LARGE)


# -- Maximum Packet Size: outbound ---------------------------------------------------------------
def _sizes_delivered(broker: BrokerProc, sizes: list[int], client_max: int) -> list[int]:
    """Publish QoS 1 PUBLISHes of the given total sizes; return the sizes a subscriber with
    Maximum Packet Size `client_max` received, after checking that a subscriber without a
    limit got all of them (the broker adds no properties, so sizes are unchanged)."""
    topic = unique_topic("mps")
    with RawClient(broker) as small, RawClient(broker) as normal, RawClient(broker) as pub:
        small.connect(props=[(MAXIMUM_PACKET_SIZE, client_max)])
        small.subscribe(topic, qos=1)
        normal.connect()
        normal.subscribe(topic, qos=1)
        pub.connect()
        for size in sizes:
            pub.send(_publish_of_size(topic, size))
            pub.expect(PUBACK)
        assert [p.size for p in normal.publishes(len(sizes))] == sizes
        got = [p.size for p in small.quiet(0.5)]
        assert all(size <= client_max for size in got), (
            f"sent {got} to a client allowing {client_max}"
        )
        return got


def test_client_maximum_packet_size_respected(mbroker: BrokerProc) -> None:
    """[MQTT-3.1.2-24] the server never sends a packet larger than the client's Maximum Packet
    Size (100); [MQTT-3.1.2-25] a message too large for it is skipped for that client only (as if
    sent: later messages still arrive), other subscribers get it; exactly 100 bytes is allowed."""
    assert _sizes_delivered(mbroker, [300, 100, 60, 1000, 99], 100) == [100, 60, 99]


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 sends a 101-byte packet to a client allowing 100
def test_client_maximum_packet_size_exact_boundary(mbroker: BrokerProc) -> None:
    """[MQTT-3.1.2-24]: the limit covers the whole packet including the fixed header, so 101 and
    102 byte packets are not sent to a client with Maximum Packet Size 100."""
    assert _sizes_delivered(mbroker, [101, 102, 100], 100) == [100]


def test_client_maximum_packet_size_paho(mbroker: BrokerProc) -> None:
    """[MQTT-3.1.2-24]/[MQTT-3.1.2-25] through paho-mqtt: a subscriber advertising Maximum Packet
    Size 200 gets the small messages and not the large one, QoS 0 and 1."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    topic = unique_topic("mpsp")
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = 200
    with PahoClient(mbroker, connect_props=props) as sub, PahoClient(mbroker) as pub:
        sub.subscribe(topic, qos=1)
        for qos in (0, 1):
            pub.publish(topic, b"L" * 500, qos=qos)
            pub.publish(topic, b"s%d" % qos, qos=qos)
        assert [m.payload for m in sub.drain(0.5)] == [b"s0", b"s1"]
