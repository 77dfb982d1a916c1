"""Topic Aliases (MQTT 5.0 3.3.2.3.4, 3.1.2.11.5, 3.2.2.3.8): inbound aliases up to the server's
Topic Alias Maximum (`broker.max_topic_alias: 5`), the errors for bad aliases, and outbound
aliases only within what the client allowed."""

from __future__ import annotations

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    RC_PROTOCOL_ERROR,
    RC_TOPIC_ALIAS_INVALID,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    PahoClient,
    RawClient,
    broker_fixture,
    build_publish,
    unique_topic,
)

abroker = broker_fixture({"broker": {"max_topic_alias": 5}})


def test_server_topic_alias_maximum_advertised(abroker: BrokerProc) -> None:
    """3.2.2.3.8: the CONNACK carries Topic Alias Maximum = `broker.max_topic_alias` (5)."""
    with RawClient(abroker) as c:
        assert c.connect().props.get(TOPIC_ALIAS_MAXIMUM) == 5


def test_inbound_alias_established_reused_and_remapped(abroker: BrokerProc) -> None:
    """[MQTT-3.3.2-12] the server accepts aliases 1..Topic Alias Maximum: a PUBLISH with a topic
    and alias sets the mapping, a PUBLISH with an empty topic and the alias uses it, a new topic
    with the same alias remaps it; the subscriber (paho) always sees the full topic name."""
    root = unique_topic("ta")
    with PahoClient(abroker) as sub, RawClient(abroker) as pub:
        sub.subscribe(f"{root}/#", qos=1)
        pub.connect()
        sends = [
            (f"{root}/one", 1, b"a"),
            ("", 1, b"b"),
            (f"{root}/five", 5, b"c"),
            ("", 5, b"d"),
            ("", 1, b"e"),
            (f"{root}/two", 1, b"f"),
            ("", 1, b"g"),
            ("", 5, b"h"),
        ]
        for topic, alias, payload in sends:
            ack = pub.publish(topic, payload, qos=1, props=[(TOPIC_ALIAS, alias)])
            assert ack is not None and ack.rc is not None and ack.rc < 0x80
        got = [(m.topic, m.payload) for m in sub.get_n(len(sends))]
        assert got == [
            (f"{root}/one", b"a"),
            (f"{root}/one", b"b"),
            (f"{root}/five", b"c"),
            (f"{root}/five", b"d"),
            (f"{root}/one", b"e"),
            (f"{root}/two", b"f"),
            (f"{root}/two", b"g"),
            (f"{root}/five", b"h"),
        ]


def test_alias_mappings_are_per_connection(abroker: BrokerProc) -> None:
    """3.3.2.3.4: alias mappings belong to one Network Connection: two publishers may map the same
    alias number to different topics."""
    root = unique_topic("tap")
    with RawClient(abroker) as sub, RawClient(abroker) as p1, RawClient(abroker) as p2:
        sub.connect()
        sub.subscribe(f"{root}/#", qos=1)
        p1.connect()
        p2.connect()
        p1.publish(f"{root}/p1", b"1", qos=1, props=[(TOPIC_ALIAS, 2)])
        p2.publish(f"{root}/p2", b"2", qos=1, props=[(TOPIC_ALIAS, 2)])
        p1.publish("", b"3", qos=1, props=[(TOPIC_ALIAS, 2)])
        p2.publish("", b"4", qos=1, props=[(TOPIC_ALIAS, 2)])
        got = [(p.topic, p.payload) for p in sub.publishes(4)]
        assert got == [
            (f"{root}/p1", b"1"),
            (f"{root}/p2", b"2"),
            (f"{root}/p1", b"3"),
            (f"{root}/p2", b"4"),
        ]


def test_alias_above_maximum_disconnects_0x94(abroker: BrokerProc) -> None:
    """[MQTT-3.3.2-9] a client must not exceed the server's Topic Alias Maximum; 3.3.2.3.4: if it
    does, the server sends DISCONNECT 0x94 (Topic Alias invalid) and closes; the broker keeps
    serving other clients."""
    with RawClient(abroker) as c:
        c.connect()
        c.send(build_publish(unique_topic("big"), b"x", props=[(TOPIC_ALIAS, 6)]))
        c.expect_disconnect(RC_TOPIC_ALIAS_INVALID)
    with RawClient(abroker) as other:
        other.connect()
        other.ping()


def test_alias_zero_closes_connection(abroker: BrokerProc) -> None:
    """[MQTT-3.3.2-8] a Topic Alias of 0 is not permitted: the server closes the connection with a
    DISCONNECT carrying an error reason code (>= 0x80)."""
    with RawClient(abroker) as c:
        c.connect()
        c.send(build_publish(unique_topic("zero"), b"x", props=[(TOPIC_ALIAS, 0)]))
        got = c.wait_closed()
        assert got and got[-1].rc is not None and got[-1].rc >= 0x80, got


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 answers with 0x81 (Malformed Packet)
def test_alias_zero_disconnects_0x94(abroker: BrokerProc) -> None:
    """[MQTT-3.3.2-8] Topic Alias 0 is invalid; FluxMQ reports it as 0x94 (Topic Alias invalid),
    the reason code 4.13 defines for a bad Topic Alias."""
    with RawClient(abroker) as c:
        c.connect()
        c.send(build_publish(unique_topic("zero"), b"x", props=[(TOPIC_ALIAS, 0)]))
        c.expect_disconnect(RC_TOPIC_ALIAS_INVALID)


def test_unknown_alias_with_empty_topic_is_protocol_error(abroker: BrokerProc) -> None:
    """3.3.2.3.4: a PUBLISH with an empty Topic Name and an alias that has no mapping on this
    connection is a Protocol Error: DISCONNECT 0x82."""
    with RawClient(abroker) as c:
        c.connect()
        c.send(build_publish("", b"x", props=[(TOPIC_ALIAS, 3)]))
        c.expect_disconnect(RC_PROTOCOL_ERROR)


def test_alias_not_carried_to_next_connection(abroker: BrokerProc) -> None:
    """[MQTT-3.3.2-7] Topic Alias mappings do not survive the Network Connection: the same client
    id reconnecting and using the alias with an empty topic gets DISCONNECT 0x82."""
    topic = unique_topic("carry")
    with RawClient(abroker) as c:
        c.connect(client_id="tacarry" + topic[-8:])
        c.publish(topic, b"x", qos=1, props=[(TOPIC_ALIAS, 4)])
        c.disconnect()
    with RawClient(abroker) as c:
        c.connect(client_id="tacarry" + topic[-8:])
        c.send(build_publish("", b"y", props=[(TOPIC_ALIAS, 4)]))
        c.expect_disconnect(RC_PROTOCOL_ERROR)


def test_no_outbound_aliases_when_client_maximum_absent(abroker: BrokerProc) -> None:
    """[MQTT-3.1.2-27] a client that sent no Topic Alias Maximum (or 0) never gets a Topic Alias:
    every PUBLISH carries the full Topic Name."""
    topic = unique_topic("noalias")
    with RawClient(abroker) as absent, RawClient(abroker) as zero, RawClient(abroker) as pub:
        absent.connect()
        zero.connect(props=[(TOPIC_ALIAS_MAXIMUM, 0)])
        for c in (absent, zero):
            c.subscribe(topic, qos=1)
        pub.connect()
        for i in range(5):
            pub.publish(topic, b"%d" % i, qos=1)
        for c in (absent, zero):
            got = c.publishes(5)
            assert all(p.topic == topic and not p.props.has(TOPIC_ALIAS) for p in got), got


@pytest.mark.parametrize("client_max", [1, 3])
def test_outbound_aliases_within_client_maximum(abroker: BrokerProc, client_max: int) -> None:
    """[MQTT-3.1.2-26]/[MQTT-3.3.2-11] a server that uses Topic Aliases toward a client uses only
    1..the client's Topic Alias Maximum and only after setting the mapping; resolving the aliases
    as a client must yields exactly the published topics in order. (paho-mqtt 2.2 does not
    resolve inbound aliases, so the subscriber here is the raw client.)"""
    root = unique_topic("out")
    topics = [f"{root}/{n}" for n in ("a", "b", "c", "d")]
    sequence = [topics[i % 4] for i in range(12)] + [topics[0]] * 4
    with RawClient(abroker) as sub, RawClient(abroker) as pub:
        sub.connect(props=[(TOPIC_ALIAS_MAXIMUM, client_max)])
        sub.subscribe(f"{root}/#", qos=1)
        pub.connect()
        for i, t in enumerate(sequence):
            pub.publish(t, b"%d" % i, qos=1)
        got = sub.publishes(len(sequence))
        resolved = [sub.resolve_topic(p, client_max) for p in got]
        assert resolved == sequence
        assert [int(p.payload) for p in got] == list(range(len(sequence)))
