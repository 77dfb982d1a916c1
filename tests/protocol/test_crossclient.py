"""Across protocol versions and client implementations: v3.1.1 <-> v5 (properties dropped toward
v3.1.1), Debian's mosquitto_pub / mosquitto_sub <-> paho-mqtt."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    USER_PROPERTY,
    PahoClient,
    RawClient,
    broker_fixture,
    finish_mosquitto_sub,
    mosquitto_pub,
    start_mosquitto_sub,
    unique_topic,
    user_props,
    v5props,
)

mbroker = broker_fixture()

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_v311_publisher_to_v5_subscriber(mbroker: BrokerProc, qos: int) -> None:
    """A v3.1.1 PUBLISH reaches a v5 subscriber with the same topic, payload and QoS
    ([MQTT-3.8.4-8]) and without invented properties (no expiry, no user properties)."""
    topic = unique_topic("v3to5")
    with RawClient(mbroker) as sub, RawClient(mbroker, version=4) as pub:
        sub.connect()
        sub.subscribe(topic, qos=2)
        pub.connect()
        pub.publish(topic, b"from v3.1.1", qos=qos)
        msg = sub.expect_publish()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"from v3.1.1", qos, False)
        assert not msg.props.has(MESSAGE_EXPIRY_INTERVAL) and not msg.props.has(USER_PROPERTY)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_v5_publisher_to_v311_subscriber_properties_dropped(mbroker: BrokerProc, qos: int) -> None:
    """A v5 PUBLISH with properties reaches a v3.1.1 subscriber as a well-formed v3.1.1 PUBLISH:
    no property bytes (the payload is byte-identical), same topic and QoS; also as a retained
    message at subscribe time."""
    topic = unique_topic("v5to3")
    props = [
        (PAYLOAD_FORMAT_INDICATOR, 1),
        (MESSAGE_EXPIRY_INTERVAL, 100),
        (CONTENT_TYPE, "text/plain"),
        (RESPONSE_TOPIC, f"{topic}/r"),
        (CORRELATION_DATA, b"cd"),
        (USER_PROPERTY, ("k", "v")),
    ]
    with RawClient(mbroker, version=4) as sub, RawClient(mbroker) as pub:
        sub.connect()
        sub.subscribe(topic, qos=2)
        pub.connect()
        pub.publish(topic, b"from v5", qos=qos, props=props)
        msg = sub.expect_publish()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"from v5", qos)
        pub.publish(topic, b"retained v5", qos=qos, retain=True, props=props)
        assert sub.expect_publish().payload == b"retained v5"
    with RawClient(mbroker, version=4) as late:
        late.connect()
        late.subscribe(topic, qos=2)
        ret = late.expect_publish()
        assert (ret.payload, ret.retain, ret.qos) == (b"retained v5", True, qos)


def test_v5_paho_to_v311_paho(mbroker: BrokerProc) -> None:
    """paho-mqtt v5 publisher with User Properties to a paho-mqtt v3.1.1 subscriber: the message
    arrives intact (v3.1.1 has no properties to carry them)."""
    topic = unique_topic("p5p3")
    with PahoClient(mbroker, version=4) as sub, PahoClient(mbroker) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(
            topic, b"hi", qos=1, props=v5props(PacketTypes.PUBLISH, UserProperty=[("a", "b")])
        )
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"hi", 1)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_to_paho_subscriber(mbroker: BrokerProc, version: int, qos: int) -> None:
    """Debian's mosquitto_pub publishes, a paho-mqtt subscriber (same protocol version) receives
    topic, payload and QoS unchanged."""
    topic = unique_topic("mpub")
    with PahoClient(mbroker, version=version) as sub:
        sub.subscribe(topic, qos=2)
        mosquitto_pub(mbroker, topic, "hello from mosquitto_pub", qos=qos, version=version)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"hello from mosquitto_pub", qos)


def test_mosquitto_pub_properties_to_paho(mbroker: BrokerProc) -> None:
    """mosquitto_pub -D sets v5 PUBLISH properties; the paho-mqtt subscriber receives them
    unaltered ([MQTT-3.3.2-17]/[MQTT-3.3.2-18] user properties in order, [MQTT-3.3.2-20],
    [MQTT-3.3.2-15])."""
    topic = unique_topic("mprop")
    with PahoClient(mbroker) as sub:
        sub.subscribe(topic, qos=1)
        mosquitto_pub(
            mbroker,
            topic,
            "{}",
            qos=1,
            extra=[
                "-D",
                "publish",
                "user-property",
                "k",
                "v1",
                "-D",
                "publish",
                "user-property",
                "k",
                "v2",
                "-D",
                "publish",
                "content-type",
                "application/json",
                "-D",
                "publish",
                "response-topic",
                f"{topic}/reply",
            ],
        )
        msg = sub.get()
        assert user_props(msg) == [("k", "v1"), ("k", "v2")]
        assert msg.properties.ContentType == "application/json"
        assert msg.properties.ResponseTopic == f"{topic}/reply"


@pytest.mark.parametrize("version", VERSIONS)
def test_paho_to_mosquitto_sub(mbroker: BrokerProc, version: int) -> None:
    """A paho-mqtt publisher, Debian's mosquitto_sub receiving: every message, in order, at each
    QoS."""
    topic = unique_topic("msub")
    proc = start_mosquitto_sub(mbroker, topic, count=3, qos=2, version=version)
    with PahoClient(mbroker, version=version) as pub:
        for qos in (0, 1, 2):
            pub.publish(topic, f"msg-q{qos}", qos=qos)
    assert finish_mosquitto_sub(proc) == [f"{topic} msg-q{q}" for q in (0, 1, 2)]


def test_mosquitto_pub_retained_to_mosquitto_sub_and_paho(mbroker: BrokerProc) -> None:
    """A retained message set with mosquitto_pub -r is delivered to a later mosquitto_sub and a
    later paho-mqtt subscriber ([MQTT-3.3.1-9]), with the retain flag on paho's side."""
    topic = unique_topic("mret")
    mosquitto_pub(mbroker, topic, "kept", qos=1, retain=True)
    proc = start_mosquitto_sub(mbroker, topic, count=1, qos=1)
    assert finish_mosquitto_sub(proc) == [f"{topic} kept"]
    with PahoClient(mbroker, version=4) as sub:
        sub.subscribe(topic, qos=1)
        msg = sub.get()
        assert (msg.payload, msg.retain) == (b"kept", True)
