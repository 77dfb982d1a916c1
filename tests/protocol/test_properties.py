"""MQTT 5 PUBLISH properties forwarded to subscribers (3.3.2.3), Message Expiry (3.3.2.3.3),
Payload Format Indicator validation (3.3.2.3.2) and Request Problem Information (3.1.2.11.7)."""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    DISCONNECT,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    PUBACK,
    PUBCOMP,
    PUBREL,
    RC_PAYLOAD_FORMAT_INVALID,
    RC_TOPIC_FILTER_INVALID,
    REASON_STRING,
    REQUEST_PROBLEM_INFORMATION,
    RESPONSE_TOPIC,
    SESSION_EXPIRY_INTERVAL,
    USER_PROPERTY,
    ConnectionClosed,
    Packet,
    PahoClient,
    RawClient,
    broker_fixture,
    build_ack,
    unique_id,
    unique_topic,
    user_props,
    v5props,
)

mbroker = broker_fixture()

USER = [("k", "1"), ("a", "x"), ("k", "2"), ("ünï", "cödé"), ("k", "1"), ("", "")]


def test_publish_properties_forwarded_unaltered_raw(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-20] Content Type, [MQTT-3.3.2-15]
    Response Topic, [MQTT-3.3.2-16] Correlation Data and [MQTT-3.3.2-17]/[MQTT-3.3.2-18] all
    User Properties (repeated keys, empty strings, non-ASCII) reach the subscriber unaltered and
    in their order; byte-exact on the wire."""
    topic = unique_topic("props")
    props = [
        (PAYLOAD_FORMAT_INDICATOR, 1),
        (CONTENT_TYPE, "application/json; charset=utf-8"),
        (RESPONSE_TOPIC, f"{topic}/reply"),
        (CORRELATION_DATA, b"\x00\x01\xfe\xff corr"),
        *[(USER_PROPERTY, kv) for kv in USER],
    ]
    with RawClient(mbroker) as sub, RawClient(mbroker) as pub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        pub.publish(topic, b'{"t": 21.5}', qos=1, props=props)
        msg = sub.expect_publish()
        assert msg.payload == b'{"t": 21.5}'
        assert msg.props.get(PAYLOAD_FORMAT_INDICATOR) == 1
        assert msg.props.get(CONTENT_TYPE) == "application/json; charset=utf-8"
        assert msg.props.get(RESPONSE_TOPIC) == f"{topic}/reply"
        assert msg.props.get(CORRELATION_DATA) == b"\x00\x01\xfe\xff corr"
        assert msg.props.all(USER_PROPERTY) == USER
        assert not msg.props.has(MESSAGE_EXPIRY_INTERVAL)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_properties_forwarded_paho(mbroker: BrokerProc, qos: int) -> None:
    """The same properties between two paho-mqtt clients at each QoS ([MQTT-3.3.2-4],
    [MQTT-3.3.2-15..18], [MQTT-3.3.2-20]); Payload Format Indicator 0 is forwarded too."""
    topic = unique_topic("pprops")
    with PahoClient(mbroker) as sub, PahoClient(mbroker) as pub:
        sub.subscribe(topic, qos=2)
        props = v5props(
            PacketTypes.PUBLISH,
            PayloadFormatIndicator=0,
            ContentType="application/octet-stream",
            ResponseTopic=f"{topic}/r",
            CorrelationData=b"\x10\x20",
            UserProperty=list(USER),
        )
        pub.publish(topic, b"\x00\xff", qos=qos, props=props)
        msg = sub.get()
        p = msg.properties
        assert msg.payload == b"\x00\xff"
        assert getattr(p, "PayloadFormatIndicator", None) == 0
        assert p.ContentType == "application/octet-stream"
        assert p.ResponseTopic == f"{topic}/r"
        assert p.CorrelationData == b"\x10\x20"
        assert user_props(msg) == USER


def test_message_expiry_forwarded_live(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.2-6] a message delivered at once carries the Message Expiry Interval minus the
    (negligible) time it waited: 10 -> 9..10."""
    topic = unique_topic("mei")
    with RawClient(mbroker) as sub, RawClient(mbroker) as pub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        pub.publish(topic, b"x", qos=1, props=[(MESSAGE_EXPIRY_INTERVAL, 10)])
        assert 9 <= sub.expect_publish().props.get(MESSAGE_EXPIRY_INTERVAL) <= 10


def _offline_subscriber(broker: BrokerProc, topic: str) -> str:
    """Create a persistent session subscribed to `topic` (QoS 1) and disconnect it."""
    cid = unique_id("exp")
    with RawClient(broker) as sub:
        sub.connect(client_id=cid, props=[(SESSION_EXPIRY_INTERVAL, 60)])
        sub.subscribe(topic, qos=1)
        sub.disconnect()
    return cid


def test_message_expiry_while_queued(mbroker: BrokerProc) -> None:
    """For an offline persistent session, ~2.2 s after publishing:
    [MQTT-3.3.2-6] a message published with Message Expiry Interval 10 is delivered with 10 minus
    the time it waited (<= 8); [MQTT-3.3.2-5] one published with interval 1 has expired and is
    not delivered at all; one without expiry is delivered without the property; order kept."""
    topic = unique_topic("exp")
    cid = _offline_subscriber(mbroker, topic)
    with RawClient(mbroker) as pub:
        pub.connect()
        pub.publish(topic, b"ten", qos=1, props=[(MESSAGE_EXPIRY_INTERVAL, 10)])
        pub.publish(topic, b"expires", qos=1, props=[(MESSAGE_EXPIRY_INTERVAL, 1)])
        pub.publish(topic, b"stays", qos=1)
    time.sleep(2.2)  # > 2 s: brokers may count expiry in whole seconds
    with RawClient(mbroker) as sub:
        ack = sub.connect(client_id=cid, clean=False, props=[(SESSION_EXPIRY_INTERVAL, 0)])
        assert ack.session_present
        got = sub.quiet(0.5)
        assert [p.payload for p in got] == [b"ten", b"stays"]
        assert 5 <= got[0].props.get(MESSAGE_EXPIRY_INTERVAL) <= 8
        assert not got[1].props.has(MESSAGE_EXPIRY_INTERVAL)


def test_valid_utf8_with_payload_format_indicator_accepted(mbroker: BrokerProc) -> None:
    """3.3.2.3.2: Payload Format Indicator 1 with a valid UTF-8 payload is accepted (PUBACK
    < 0x80) and forwarded with the indicator ([MQTT-3.3.2-4])."""
    topic = unique_topic("pfi")
    with RawClient(mbroker) as sub, RawClient(mbroker) as pub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        ack = pub.publish(topic, "grüße ✓".encode(), qos=1, props=[(PAYLOAD_FORMAT_INDICATOR, 1)])
        assert ack is not None and ack.rc is not None and ack.rc < 0x80
        msg = sub.expect_publish()
        assert (msg.payload.decode(), msg.props.get(PAYLOAD_FORMAT_INDICATOR)) == ("grüße ✓", 1)


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 does not check the payload format (a MAY)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_invalid_utf8_with_payload_format_indicator_refused(mbroker: BrokerProc, qos: int) -> None:
    """3.3.2.3.2: a receiver MAY validate a payload marked UTF-8 (Payload Format Indicator 1);
    FluxMQ does: QoS 1 gets PUBACK 0x99, QoS 2 PUBREC 0x99 (Payload format invalid), QoS 0 is
    dropped (or, as the spec also allows, answered with DISCONNECT 0x99); in no case is the message
    forwarded."""
    topic = unique_topic("bad")
    with RawClient(mbroker) as sub, RawClient(mbroker) as pub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        ack = pub.publish(topic, b"\xff\xfe\xc3(", qos=qos, props=[(PAYLOAD_FORMAT_INDICATOR, 1)])
        if qos:
            assert ack is not None and ack.rc == RC_PAYLOAD_FORMAT_INVALID, ack
            pub.ping()
        else:
            try:
                pub.ping()
            except ConnectionClosed:
                discs = [p for p in pub.pending if p.ptype == DISCONNECT]
                assert discs and discs[-1].rc == RC_PAYLOAD_FORMAT_INVALID, pub.pending
        sub.expect_nothing()


def test_request_problem_information_0_portable(mbroker: BrokerProc) -> None:
    """[MQTT-3.1.2-29] with Request Problem Information 0 the server sends no Reason String and no
    User Property on packets other than PUBLISH, CONNACK and DISCONNECT: checked on SUBACK,
    UNSUBACK 0x11, PUBACK, PUBREC, PUBCOMP (including PUBCOMP for an unknown Packet
    Identifier)."""
    topic = unique_topic("rpi")
    with RawClient(mbroker) as c:
        c.connect(props=[(REQUEST_PROBLEM_INFORMATION, 0)])
        acks = [c.subscribe(topic, qos=2), c.unsubscribe([topic + "/none"])]
        acks.append(c.publish(topic + "/x", b"x", qos=1))
        acks.append(c.publish(topic + "/x", b"x", qos=2))
        c.send(build_ack(PUBREL, 31337))
        acks.append(c.expect(PUBCOMP))
        for a in acks:
            assert a is not None
            assert not a.props.has(REASON_STRING) and not a.props.has(USER_PROPERTY), a


@pytest.mark.fluxmq_only  # needs FluxMQ's per-filter 0x8F, PUBACK 0x99 and PUBCOMP 0x92
def test_request_problem_information_0_suppresses_reason_strings(mbroker: BrokerProc) -> None:
    """[MQTT-3.1.2-29]: the failure acknowledgements that carry a Reason String by default (see
    the next test) carry none when the client sent Request Problem Information 0."""
    with RawClient(mbroker) as c:
        c.connect(props=[(REQUEST_PROBLEM_INFORMATION, 0)])
        for a in _error_acks(c):
            assert not a.props.has(REASON_STRING) and not a.props.has(USER_PROPERTY), a


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 sends no Reason Strings
def test_reason_string_on_error_acks(mbroker: BrokerProc) -> None:
    """3.9.2.1.1/3.4.2.2.2/3.7.2.2.2: FluxMQ explains failure acknowledgements with a Reason String
    (a human-readable UTF-8 string) when the client did not ask otherwise."""
    with RawClient(mbroker) as c:
        c.connect()
        for a in _error_acks(c):
            reason = a.props.get(REASON_STRING)
            assert isinstance(reason, str) and reason, f"no Reason String on {a}"


def _error_acks(c: RawClient) -> list[Packet]:
    """Provoke SUBACK 0x8F, PUBACK 0x99 and PUBCOMP 0x92 on `c`."""
    topic = unique_topic("err")
    suback = c.subscribe([(f"{topic}/#/x", 1)])
    assert suback.codes == [RC_TOPIC_FILTER_INVALID]
    puback = c.publish(topic, b"\xff", qos=1, props=[(PAYLOAD_FORMAT_INDICATOR, 1)])
    assert puback is not None and puback.ptype == PUBACK and puback.rc == RC_PAYLOAD_FORMAT_INVALID
    c.send(build_ack(PUBREL, 4711))
    pubcomp = c.expect(PUBCOMP)
    assert pubcomp.rc == 0x92
    return [suback, puback, pubcomp]
