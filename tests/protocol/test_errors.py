"""Malformed Packets and Protocol Errors (MQTT 5.0 4.13, 1.2 Terminology; MQTT 3.1.1 4.8).

5.0: "When a Server detects a Malformed Packet or Protocol Error ... it MUST close the Network
Connection [MQTT-4.13.1-1] ... In the case of an error in any other packet [than CONNECT] it
SHOULD send a DISCONNECT packet containing the Reason Code before closing ... Use Reason Code
0x81 (Malformed Packet) or 0x82 (Protocol Error) unless a more specific Reason Code has been
defined ... There are no consequences for other Sessions." 3.1.1 has no server DISCONNECT: the
connection is just closed.

Each case is run three ways: the v5 connection is closed (at most one DISCONNECT before it) -
on both brokers; the v5 DISCONNECT carries the reason code the spec names - `fluxmq_only` where
Mosquitto 2.0.11 closes silently or uses another code; the 3.1.1 connection is closed with
nothing sent. Every time an unrelated client keeps working and the broker process lives.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.brokerproc import BrokerProc
from tests.protocol import rawmqtt as r
from tests.protocol.conftest import assert_disconnect, assert_only_disconnect
from tests.protocol.rawmqtt import RC, V5, V311, PacketType, Prop, RawClient

MALFORMED = {RC.MALFORMED_PACKET}
PROTOCOL = {RC.PROTOCOL_ERROR}
EITHER = {RC.MALFORMED_PACKET, RC.PROTOCOL_ERROR}  # the spec does not classify these

RawConnect = Callable[..., RawClient]
Bystander = Callable[[BrokerProc], Callable[[], None]]


@dataclass(frozen=True)
class Case:
    """One bad packet, sent right after a successful CONNECT."""

    data: bytes
    codes: set[int]  # acceptable v5 DISCONNECT reason codes
    # Mosquitto 2.0.11: "reason" = sends a DISCONNECT with a code in `codes`; "silent" = closes
    # without DISCONNECT (or with another code); "ignores" = does not close at all
    mosquitto: str = "reason"


V5_CASES: dict[str, Case] = {
    # [MQTT-1.5.5]/2.1.4: a Variable Byte Integer has at most four bytes
    "remaining-length-5-bytes": Case(b"\x30\xff\xff\xff\xff\x01", MALFORMED, "silent"),
    # 2.1.4 + 3.3.2.1: the topic length runs past the Remaining Length
    "truncated-topic": Case(b"\x30\x05\x00\x10abc", MALFORMED),
    # 2.2.2.1: the Property Length runs past the packet
    "property-length-overrun": Case(b"\x30\x08\x00\x03a/b\x09\x01\x02", MALFORMED),
    # [MQTT-1.5.4-1]: ill-formed UTF-8 is a Malformed Packet
    "invalid-utf8-topic": Case(r.publish(b"t/\xff\xfe", b"x"), MALFORMED),
    "utf16-surrogate-in-topic": Case(r.publish(b"t/\xed\xa0\x80", b"x"), MALFORMED),
    "overlong-utf8-in-topic": Case(r.publish(b"t/\xc0\xaf", b"x"), MALFORMED),
    # [MQTT-1.5.4-2] [MQTT-4.7.3-2]: U+0000 is a Malformed Packet
    "nul-in-topic": Case(r.publish(b"t/\x00x", b"x"), MALFORMED),
    # [MQTT-1.5.7-1]: both strings of a User Property must be valid UTF-8
    "invalid-utf8-user-property": Case(
        r.publish("t/x", b"x", properties=[(Prop.USER_PROPERTY, (b"\xff", "v"))]),
        MALFORMED,
        "silent",
    ),
    # [MQTT-3.3.1-4]: both QoS bits set is a Malformed Packet
    "publish-qos-3": Case(r.publish("t/x", b"x", qos=3, packet_id=5), MALFORMED),
    # [MQTT-2.2.1-3]: a QoS > 0 PUBLISH needs a non-zero Packet Identifier
    "publish-packet-id-0": Case(r.publish("t/x", b"x", qos=1, packet_id=0), EITHER),
    # [MQTT-3.3.2-2] [MQTT-4.7.0-1]: no wildcards in a Topic Name
    "publish-topic-with-plus": Case(r.publish("t/+/x", b"x"), EITHER),
    "publish-topic-with-hash": Case(r.publish("t/#", b"x"), EITHER),
    # 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no Topic Alias"
    "publish-empty-topic-without-alias": Case(r.publish("", b"x"), PROTOCOL),
    # 3.3.2.3.9: "It is a Protocol Error to include the Content Type more than once"
    "duplicate-property": Case(
        r.publish("t/x", b"x", properties=[(Prop.CONTENT_TYPE, "a"), (Prop.CONTENT_TYPE, "b")]),
        PROTOCOL,
        "silent",
    ),
    # 2.2.2.2: an Identifier not valid for the packet type (or unknown) is a Malformed Packet
    "unknown-property-id": Case(r.publish("t/x", b"x", properties=[(0x7F, b"\x01")]), MALFORMED),
    "property-not-for-publish": Case(
        r.publish("t/x", b"x", properties={Prop.SESSION_EXPIRY_INTERVAL: 5}), MALFORMED
    ),
    # [MQTT-2.1.3-1]: invalid fixed-header flags are a Malformed Packet
    "subscribe-reserved-flags": Case(r.subscribe(1, "t/x", flags=0x00), MALFORMED),
    "unsubscribe-reserved-flags": Case(r.unsubscribe(1, "t/x", flags=0x00), MALFORMED),
    "pubrel-reserved-flags": Case(
        r.raw_packet(PacketType.PUBREL, 0x00, b"\x00\x01"), MALFORMED, "silent"
    ),
    "pingreq-reserved-flags": Case(b"\xc1\x00", MALFORMED, "ignores"),
    "puback-reserved-flags": Case(b"\x41\x02\x00\x01", MALFORMED, "ignores"),
    # [MQTT-3.8.3-5]: reserved bits of the Subscription Options are a Malformed Packet
    "subscribe-reserved-option-bits": Case(r.subscribe(1, [("t/x", 0xC0)]), MALFORMED),
    # [MQTT-3.8.3-1] [MQTT-1.5.4-2]: a Topic Filter with U+0000 / bad UTF-8
    "subscribe-filter-nul": Case(r.subscribe(1, [(b"t/\x00", 0)]), MALFORMED),
    "subscribe-filter-invalid-utf8": Case(r.subscribe(1, [(b"t/\xc3", 0)]), MALFORMED),
    # [MQTT-3.8.3-2]: "A SUBSCRIBE packet with no Payload is a Protocol Error"
    "subscribe-without-filters": Case(r.raw_packet(8, 2, b"\x00\x01\x00"), PROTOCOL, "silent"),
    # 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
    "subscribe-qos-3": Case(r.subscribe(1, [("t/x", 3)]), PROTOCOL, "silent"),
    # 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3"
    "subscribe-retain-handling-3": Case(r.subscribe(1, [("t/x", 0x30)]), PROTOCOL, "silent"),
    # [MQTT-3.8.3-4]: No Local on a Shared Subscription is a Protocol Error
    "subscribe-shared-no-local": Case(
        r.subscribe(1, [("$share/g/t/x", 0x04)]), PROTOCOL, "ignores"
    ),
    # 3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a value of 0"
    "subscription-identifier-0": Case(
        r.subscribe(1, "t/x", properties={Prop.SUBSCRIPTION_IDENTIFIER: 0}), PROTOCOL, "silent"
    ),
    # [MQTT-3.10.3-2]: "An UNSUBSCRIBE packet with no Payload is a Protocol Error"
    "unsubscribe-without-filters": Case(r.raw_packet(10, 2, b"\x00\x01\x00"), PROTOCOL, "silent"),
    # 3.15: AUTH without an Authentication Method in CONNECT is a Protocol Error
    "auth-without-authentication-method": Case(r.auth(0x19), PROTOCOL, "silent"),
    # 2.1.2: packet type 0 is "Reserved / Forbidden"
    "reserved-packet-type-0": Case(b"\x00\x00", EITHER),
}

V311_CASES: dict[str, bytes] = {
    "remaining-length-5-bytes": b"\x30\xff\xff\xff\xff\x01",  # 2.2.3
    "truncated-topic": b"\x30\x05\x00\x10abc",  # 2.2.3 / 3.3.2.1
    "invalid-utf8-topic": r.publish(b"t/\xff\xfe", b"x", version=V311),  # [MQTT-1.5.3-1]
    "nul-in-topic": r.publish(b"t/\x00x", b"x", version=V311),  # [MQTT-1.5.3-2]
    "publish-qos-3": r.publish("t/x", b"x", qos=3, packet_id=5, version=V311),  # [MQTT-3.3.1-4]
    "publish-packet-id-0": r.publish(
        "t/x", b"x", qos=1, packet_id=0, version=V311
    ),  # [MQTT-2.3.1-1]
    "publish-topic-with-wildcard": r.publish("t/+/x", b"x", version=V311),  # [MQTT-3.3.2-2]
    "publish-empty-topic": r.publish("", b"x", version=V311),  # [MQTT-4.7.3-1]
    "subscribe-reserved-flags": r.subscribe(1, "t/x", flags=0, version=V311),  # [MQTT-3.8.1-1]
    "unsubscribe-reserved-flags": r.unsubscribe(1, "t/x", flags=0, version=V311),  # [MQTT-3.10.1-1]
    "pubrel-reserved-flags": r.raw_packet(PacketType.PUBREL, 0, b"\x00\x01"),  # [MQTT-2.2.2-2]
    "subscribe-qos-3": r.subscribe(1, [("t/x", 3)], version=V311),  # [MQTT-3-8.3-4]
    "subscribe-reserved-option-bits": r.subscribe(
        1, [("t/x", 0x40)], version=V311
    ),  # [MQTT-3-8.3-4]
    "subscribe-without-filters": r.raw_packet(8, 2, b"\x00\x01"),  # [MQTT-3.8.3-3]
    "unsubscribe-without-filters": r.raw_packet(10, 2, b"\x00\x01"),  # [MQTT-3.10.3-2]
    "reserved-packet-type-0": b"\x00\x00",  # 2.2.1 "Reserved / Forbidden"
    "reserved-packet-type-15": b"\xf0\x00",  # 2.2.1 "Reserved / Forbidden" in 3.1.1
}
V311_MOSQUITTO_IGNORES = {"pingreq-reserved-flags": b"\xc1\x00"}  # [MQTT-2.2.2-2]


def _params(names: dict, skip_on_mosquitto: Callable[[str], bool]) -> list:
    return [
        pytest.param(n, id=n, marks=[pytest.mark.fluxmq_only] if skip_on_mosquitto(n) else [])
        for n in names
    ]


def _bad_client(broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int) -> RawClient:
    c = raw_connect(broker, f"{uid}bad", version=version)
    assert c.ping().type == PacketType.PINGRESP
    return c


@pytest.mark.parametrize("name", _params(V5_CASES, lambda n: V5_CASES[n].mosquitto == "ignores"))
def test_v5_error_closes_connection(
    module_broker: BrokerProc, raw_connect: RawConnect, bystander: Bystander, uid: str, name: str
) -> None:
    """5.0 [MQTT-4.13.1-1]: the connection that sent the bad packet is closed, with at most one
    DISCONNECT before the close; other clients and the broker are unaffected."""
    check = bystander(module_broker)
    c = _bad_client(module_broker, raw_connect, uid, V5)
    c.send(V5_CASES[name].data)
    assert_only_disconnect(c.wait_closed())
    check()


@pytest.mark.parametrize("name", _params(V5_CASES, lambda n: V5_CASES[n].mosquitto != "reason"))
def test_v5_error_disconnect_reason_code(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, name: str
) -> None:
    """5.0 4.13.1: before closing, the server sends DISCONNECT with 0x81 (Malformed Packet) or
    0x82 (Protocol Error) as the spec classifies the error (see the case table)."""
    c = _bad_client(module_broker, raw_connect, uid, V5)
    c.send(V5_CASES[name].data)
    assert_disconnect(c.wait_closed(), V5_CASES[name].codes)


@pytest.mark.parametrize(
    "name", _params({**V311_CASES, **V311_MOSQUITTO_IGNORES}, lambda n: n in V311_MOSQUITTO_IGNORES)
)
def test_v311_error_closes_connection(
    module_broker: BrokerProc, raw_connect: RawConnect, bystander: Bystander, uid: str, name: str
) -> None:
    """3.1.1 4.8 / the statement cited in the case table: the server closes the connection of a
    client that sent a malformed packet or violated the protocol, sending nothing (3.1.1 has no
    server DISCONNECT); other clients and the broker are unaffected."""
    check = bystander(module_broker)
    c = _bad_client(module_broker, raw_connect, uid, V311)
    c.send({**V311_CASES, **V311_MOSQUITTO_IGNORES}[name])
    assert c.wait_closed() == []
    check()


# -- limits -----------------------------------------------------------------------------------


def test_packet_too_large(
    broker_factory: Callable[..., BrokerProc], bystander: Bystander, uid: str
) -> None:
    """5.0 3.2.2.3.6: the server advertises `broker.max_message_size` as Maximum Packet Size in
    CONNACK; a bigger packet is answered with DISCONNECT 0x95 (Packet too large) and the close
    [MQTT-3.2.2-15] context; a packet at the limit is accepted; a 3.1.1 client is just closed."""
    limit = 2048  # FluxMQ accepts sizes from 1024
    b = broker_factory({"broker": {"max_message_size": limit}})
    check = bystander(b)
    c = RawClient.connected(b, f"{uid}a")
    assert c.connack is not None
    assert c.connack.properties.get(Prop.MAXIMUM_PACKET_SIZE) == limit
    fits = r.publish(f"t/{uid}", b"", qos=1, packet_id=1)
    fits = r.publish(f"t/{uid}", b"x" * (limit - len(fits) - 1), qos=1, packet_id=1)
    assert len(fits) == limit
    c.send(fits)
    assert c.expect(PacketType.PUBACK).packet_id == 1
    c.send(r.publish(f"t/{uid}", b"x" * limit, qos=1, packet_id=2))
    assert_disconnect(c.wait_closed(), {RC.PACKET_TOO_LARGE})
    v3 = RawClient.connected(b, f"{uid}b", version=V311)
    v3.send(r.publish(f"t/{uid}", b"x" * limit, qos=1, packet_id=2, version=V311))
    assert v3.wait_closed() == []
    check()


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 answers PUBREC 0x97 (Quota exceeded) instead
def test_receive_maximum_exceeded(
    broker_factory: Callable[..., BrokerProc], bystander: Bystander, uid: str
) -> None:
    """5.0 3.2.2.3.3 + 3.3.4: the server advertises `broker.receive_maximum` as Receive Maximum;
    a client with more unacknowledged QoS 2 PUBLISHes than that (no PUBREL sent) gets DISCONNECT
    0x93 (Receive Maximum exceeded) and is closed."""
    b = broker_factory({"broker": {"receive_maximum": 2}})
    check = bystander(b)
    c = RawClient.connected(b, uid)
    assert c.connack is not None and c.connack.properties.get(Prop.RECEIVE_MAXIMUM) == 2
    for pid in (1, 2):
        c.send(r.publish(f"t/{uid}", b"x", qos=2, packet_id=pid))
        rec = c.expect(PacketType.PUBREC)
        assert rec.packet_id == pid and (rec.reason_code or 0) < 0x80
    c.send(r.publish(f"t/{uid}", b"x", qos=2, packet_id=3))
    assert_disconnect(c.wait_closed(), {RC.RECEIVE_MAXIMUM_EXCEEDED})
    check()


# -- robustness -------------------------------------------------------------------------------


def test_garbage_after_connect_never_hurts_others(
    module_broker: BrokerProc, bystander: Bystander, uid: str
) -> None:
    """4.13.1 "There are no consequences for other Sessions": whatever bytes a client sends after
    CONNECT, the broker stays up and an unrelated client still gets a publish/subscribe round
    trip. (The bad connection itself may be closed or wait for more bytes; a 3.1.1 server never
    sends DISCONNECT.)"""
    check = bystander(module_broker)
    counter = itertools.count()

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        version=st.sampled_from([V5, V311]),
        garbage=st.one_of(
            st.binary(min_size=1, max_size=64),
            # a plausible fixed header followed by random bytes
            st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(
                lambda t: bytes([t[0], len(t[1])]) + t[1]
            ),
        ),
    )
    def one(version: int, garbage: bytes) -> None:
        c = RawClient.connected(module_broker, f"{uid}g{next(counter)}", version=version)
        try:
            c.send(garbage)
            got = c.wait_closed(0.3)
            if version == V311:
                assert all(p.type != PacketType.DISCONNECT for p in got), got
        except (AssertionError, r.ConnectionClosed, r.MalformedError):
            pass  # still open (e.g. waiting for the rest of a packet) or closed mid-send
        finally:
            c.close()
        assert module_broker.alive, f"broker died after {garbage!r}"

    one()
    check()
