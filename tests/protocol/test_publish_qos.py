"""QoS 0/1/2 delivery end to end: every publish QoS x subscription QoS, packet identifiers,
exactly-once for QoS 2, ordering, and acknowledgement handling (MQTT 3.1.1 and 5.0 sections 3.3-3.7,
4.3, 4.6)."""

from __future__ import annotations

import itertools

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RC_PACKET_ID_NOT_FOUND,
    RECEIVE_MAXIMUM,
    PahoClient,
    RawClient,
    broker_fixture,
    build_ack,
    build_publish,
    unique_topic,
)

mbroker = broker_fixture()

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("pub_qos", "sub_qos"),
    list(itertools.product((0, 1, 2), repeat=2)),
    ids=[f"pub{p}-sub{s}" for p, s in itertools.product((0, 1, 2), repeat=2)],
)
def test_delivered_qos_is_minimum_of_publish_and_granted(
    mbroker: BrokerProc, version: int, pub_qos: int, sub_qos: int
) -> None:
    """[MQTT-3.8.4-8] delivered QoS = min(publish QoS, granted QoS) for every combination;
    [MQTT-3.3.1-2]/[MQTT-2.2.1-2] QoS 0 deliveries carry DUP 0 and no packet identifier;
    [MQTT-2.2.1-4] QoS>0 deliveries carry a non-zero packet identifier;
    [MQTT-3.3.4-1] the broker answers our PUBLISH with the packet its QoS calls for."""
    topic = unique_topic("qos")
    with RawClient(mbroker, version=version) as sub, RawClient(mbroker, version=version) as pub:
        sub.connect()
        ack = sub.subscribe(topic, qos=sub_qos)
        assert ack.codes == [sub_qos]
        pub.connect()
        final = pub.publish(topic, b"payload-%d" % pub_qos, qos=pub_qos)
        if pub_qos == 1:
            assert final is not None and final.ptype == PUBACK
        elif pub_qos == 2:
            assert final is not None and final.ptype == PUBCOMP
        msg = sub.expect_publish()
        assert msg.topic == topic
        assert msg.payload == b"payload-%d" % pub_qos
        assert msg.qos == min(pub_qos, sub_qos)
        assert not msg.retain and not msg.dup
        if msg.qos == 0:
            assert msg.pid is None
        else:
            assert msg.pid is not None and msg.pid != 0
        sub.expect_nothing()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_publish_and_receive_each_qos(mbroker: BrokerProc, version: int, qos: int) -> None:
    """paho-mqtt both ways: the publisher's QoS flow completes ([MQTT-4.3.2-4], [MQTT-4.3.3-8],
    [MQTT-4.3.3-11]) and a subscriber granted QoS 2 gets the message at the published QoS
    ([MQTT-3.8.4-8])."""
    topic = unique_topic("paho")
    with PahoClient(mbroker, version=version) as sub, PahoClient(mbroker, version=version) as pub:
        assert sub.subscribe(topic, qos=2) == [2]
        pub.publish(topic, b"hello", qos=qos)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"hello", qos, False)
        sub.expect_nothing()


@pytest.mark.parametrize("version", VERSIONS)
def test_acks_echo_the_publish_packet_identifier(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-2.2.1-5] PUBACK/PUBREC/PUBCOMP carry the Packet Identifier of the PUBLISH, including
    the extreme values 1 and 65535; [MQTT-4.3.3-11] PUBCOMP answers PUBREL with the same id."""
    topic = unique_topic("pid")
    with RawClient(mbroker, version=version) as pub:
        pub.connect()
        for qos, pid in ((1, 1), (1, 65535), (2, 65535), (2, 1), (1, 0x1234), (2, 0x8001)):
            final = pub.publish(topic, b"x", qos=qos, pid=pid)
            assert final is not None and final.pid == pid
            assert final.ptype == (PUBACK if qos == 1 else PUBCOMP)


@pytest.mark.parametrize("version", VERSIONS)
def test_server_packet_ids_unique_while_in_flight(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-2.2.1-4] each QoS>0 PUBLISH the server sends uses a non-zero Packet Identifier not
    currently in use: unacknowledged deliveries never share an identifier."""
    topic = unique_topic("ids")
    props = [(RECEIVE_MAXIMUM, 10)] if version == 5 else None
    with RawClient(mbroker, version=version, auto_ack=False) as sub, RawClient(mbroker) as pub:
        sub.connect(props=props)
        sub.subscribe(topic, qos=2)
        pub.connect()
        for i in range(8):
            pub.publish(topic, b"%d" % i, qos=1 + i % 2)
        first = sub.quiet(0.6)
        assert len(first) >= 2, f"expected several in-flight deliveries, got {first}"
        pids = [p.pid for p in first]
        assert all(pids), pids
        assert len(set(pids)) == len(pids), f"duplicate in-flight packet ids {pids}"
        # acknowledge everything (QoS 2: PUBREC, then PUBCOMP for the PUBREL) and collect the rest
        seen = list(first)
        while len(seen) < 8:
            for p in first:
                sub.send(build_ack(PUBACK if p.qos == 1 else PUBREC, p.pid or 0, version=version))
            for p in first:
                if p.qos == 2:
                    rel = sub.expect(PUBREL)
                    sub.send(build_ack(PUBCOMP, rel.pid or 0, version=version))
            first = sub.quiet(0.6)
            assert first, f"delivery stalled after {len(seen)} messages"
            pids = [p.pid for p in first]
            assert all(pids) and len(set(pids)) == len(pids), pids
            seen += first
        assert sorted(int(p.payload) for p in seen) == list(range(8))


@pytest.mark.parametrize(
    ("version", "resends"),
    [
        pytest.param(4, 1, id="v311-1resend"),
        pytest.param(5, 1, id="v5-1resend"),
        # Mosquitto 2.0.11 closes the connection (v5: DISCONNECT 0x82) on the second re-sent
        # PUBLISH before PUBREL, against [MQTT-4.3.3-10] (v3.1.1 [MQTT-4.3.3-2]): "acknowledge
        # any subsequent PUBLISH packet with the same Packet Identifier by sending a PUBREC".
        pytest.param(4, 3, id="v311-3resends", marks=pytest.mark.fluxmq_only),
        pytest.param(5, 3, id="v5-3resends", marks=pytest.mark.fluxmq_only),
    ],
)
def test_qos2_resent_publish_before_pubrel_not_delivered_twice(
    mbroker: BrokerProc, version: int, resends: int
) -> None:
    """[MQTT-4.3.3-10] (v3.1.1: [MQTT-4.3.3-2]) until PUBREL arrives the receiver answers every
    re-sent PUBLISH (DUP=1, same Packet Identifier) with PUBREC and MUST NOT deliver the message
    twice onward; [MQTT-4.3.3-12] after PUBCOMP the same Packet Identifier starts a new
    message."""
    topic = unique_topic("eo")
    with RawClient(mbroker, version=version) as sub, RawClient(mbroker, version=version) as pub:
        sub.connect()
        sub.subscribe(topic, qos=2)
        pub.connect()
        pub.send(build_publish(topic, b"once", qos=2, pid=7, version=version))
        assert pub.expect(PUBREC).pid == 7
        for _ in range(resends):
            pub.send(build_publish(topic, b"once", qos=2, pid=7, dup=True, version=version))
            assert pub.expect(PUBREC).pid == 7
        pub.send(build_ack(PUBREL, 7, version=version))
        assert pub.expect(PUBCOMP).pid == 7
        got = sub.quiet(0.6)
        assert [p.payload for p in got] == [b"once"], got
        # the identifier is free again: a new PUBLISH with id 7 is a new message
        final = pub.publish(topic, b"again", qos=2, pid=7)
        assert final is not None and final.ptype == PUBCOMP
        assert sub.expect_publish().payload == b"again"
        sub.expect_nothing()


@pytest.mark.parametrize("version", VERSIONS)
def test_qos1_same_packet_id_after_puback_is_new_message(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-4.3.2-5] after sending PUBACK the receiver treats a PUBLISH with the same Packet
    Identifier as a new Application Message, whatever its DUP flag."""
    topic = unique_topic("q1")
    with RawClient(mbroker, version=version) as sub, RawClient(mbroker, version=version) as pub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        pub.publish(topic, b"first", qos=1, pid=9)
        pub.publish(topic, b"second", qos=1, pid=9, dup=True)
        got = sub.publishes(2)
        assert [p.payload for p in got] == [b"first", b"second"]


@pytest.mark.parametrize("version", VERSIONS)
def test_outgoing_dup_flag_set_independently(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.3.1-3] the DUP flag of an outgoing PUBLISH depends only on whether that PUBLISH is
    a retransmission: an incoming DUP=1 first delivery goes out with DUP=0."""
    topic = unique_topic("dup")
    with RawClient(mbroker, version=version) as sub, RawClient(mbroker, version=version) as pub:
        sub.connect()
        sub.subscribe(topic, qos=2)
        pub.connect()
        pub.publish(topic, b"d1", qos=1, dup=True)
        pub.publish(topic, b"d2", qos=2, dup=True)
        got = sub.publishes(2)
        assert [(p.payload, p.dup) for p in got] == [(b"d1", False), (b"d2", False)]


@pytest.mark.parametrize("version", VERSIONS)
def test_pubrel_for_unknown_packet_id_gets_pubcomp(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-4.3.3-11] the receiver responds to a PUBREL with a PUBCOMP carrying the same Packet
    Identifier, also when the identifier is unknown (e.g. a PUBREL re-sent after recovery); the
    connection stays usable."""
    with RawClient(mbroker, version=version) as c:
        c.connect()
        c.send(build_ack(PUBREL, 4242, version=version))
        comp = c.expect(PUBCOMP)
        assert comp.pid == 4242
        if version == 5:
            assert comp.rc in (0x00, RC_PACKET_ID_NOT_FOUND)
        c.ping()


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 answers an unknown PUBREL with PUBCOMP 0x00
def test_pubrel_for_unknown_packet_id_gets_pubcomp_0x92(mbroker: BrokerProc) -> None:
    """MQTT 5.0 3.7.2.1: PUBCOMP Reason Code 0x92 (Packet Identifier not found) is the answer to
    a PUBREL whose Packet Identifier the receiver does not know; FluxMQ uses it, while a
    PUBREL for a known id still gets 0x00."""
    topic = unique_topic("rel")
    with RawClient(mbroker) as c:
        c.connect()
        c.send(build_ack(PUBREL, 999))
        comp = c.expect(PUBCOMP)
        assert (comp.pid, comp.rc) == (999, RC_PACKET_ID_NOT_FOUND)
        final = c.publish(topic, b"x", qos=2, pid=999)
        assert final is not None and (final.pid, final.rc) == (999, 0x00)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_order_kept_per_publisher(mbroker: BrokerProc, version: int, qos: int) -> None:
    """[MQTT-4.6.0-5]/[MQTT-4.6.0-6] on a non-shared subscription messages from one publisher on
    one topic at one QoS are delivered in the order they were published."""
    topic = unique_topic("order")
    n = 60
    with PahoClient(mbroker, version=version) as sub, PahoClient(mbroker, version=version) as pub:
        sub.subscribe(topic, qos=2)
        infos = [pub.publish(topic, b"%03d" % i, qos=qos, wait=False) for i in range(n)]
        for info in infos:
            info.wait_for_publish(3)
        got = sub.get_n(n, timeout=5)
        assert [int(m.payload) for m in got] == list(range(n))
        assert {m.qos for m in got} == {qos}


@pytest.mark.parametrize("qos", [1, 2])
def test_out_of_order_acks_from_subscriber(mbroker: BrokerProc, qos: int) -> None:
    """A subscriber acknowledging in-flight QoS 1/2 messages in reverse order (allowed: 4.6 only
    orders the client's own PUBLISHes) does not break delivery: every message arrives exactly
    once and in order, the window refills (quota returns on PUBACK/PUBCOMP, 4.9) and the
    connection stays up. (The Receive Maximum bound itself is checked in test_flow_control.)"""
    topic = unique_topic("ooo")
    with RawClient(mbroker, auto_ack=False) as sub, RawClient(mbroker) as pub:
        sub.connect(props=[(RECEIVE_MAXIMUM, 4)])
        sub.subscribe(topic, qos=qos)
        pub.connect()
        for i in range(12):
            pub.publish(topic, b"%02d" % i, qos=qos)
        received: list[bytes] = []
        while len(received) < 12:
            batch = sub.quiet(0.5)
            assert batch, f"delivery stalled after {received}"
            received += [p.payload for p in batch]
            for p in reversed(batch):
                sub.send(build_ack(PUBACK if qos == 1 else PUBREC, p.pid or 0))
            if qos == 2:
                rels = [sub.expect(PUBREL) for _ in batch]
                for rel in reversed(rels):
                    sub.send(build_ack(PUBCOMP, rel.pid or 0))
        assert received == [b"%02d" % i for i in range(12)]
        sub.ping()
        assert not [p for p in sub.pending if p.ptype == PUBLISH]
