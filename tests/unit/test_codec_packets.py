"""Codec: every control packet of MQTT 3.1, 3.1.1 and 5.0 to and from bytes.

Expectations come from the specification, not from the codec: literal reference bytes written by
hand for a few packets of each type, and the reference encoder in `tests.unit` for the
table-driven MQTT 5 property tests (every property in every packet that allows it, 2.2.2.2).
Then: round trips for all three versions, incremental decoding over any chunking, and payloads.
"""

from __future__ import annotations

import random

import pytest
from fluxmq._speedups.codec import (
    TYPE_CONNECT,
    TYPE_DISCONNECT,
    TYPE_PUBACK,
    TYPE_PUBCOMP,
    TYPE_PUBLISH,
    TYPE_PUBREC,
    TYPE_PUBREL,
    Ack,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    decode_all,
    encode,
    encode_message,
)
from fluxmq._speedups.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxmq._speedups import codec
from tests.unit import (
    ALLOWED,
    CONTEXT_NAMES,
    PROPS,
    V5,
    V31,
    V311,
    VERSIONS,
    WILL,
    decode_ctx,
    decode_one,
    feed_chunks,
    frame,
    in_context,
    mstr,
    prop,
    props,
    u16,
    vbi,
)


def hx(text: str) -> bytes:
    """Bytes from spaced hex, for readable hand-written reference packets."""
    return bytes.fromhex(text)


def decoder_for(pkt: Packet, version: int) -> Decoder:
    """A decoder in the state the packet arrives in: CONNECT starts a connection."""
    return Decoder(0 if pkt.packet_type == TYPE_CONNECT else version)


def roundtrip(pkt: Packet, version: int) -> bytes:
    """Encode, decode, compare, and check that re-encoding the decoded packet is byte-identical."""
    data = encode(pkt, version)
    got = decoder_for(pkt, version).feed(data)
    assert got == [pkt]
    assert encode(got[0], version) == data
    return data


# ----------------------------------------------------------------------------------------------
# Hand-written reference packets (bytes computed from the specification, not by the codec)

REFERENCE: list[tuple[str, int, Packet, bytes]] = [
    # CONNECT (3.1): protocol name, level, flags, keep alive, [properties], payload
    (
        "connect-311-empty-id",  # 3.1.1 3.1.2.10 example: clean session, keep alive 60
        V311,
        Connect(""),
        hx("10 0c 0004 4d515454 04 02 003c 0000"),
    ),
    (
        "connect-31-mqisdp",
        V31,
        Connect("c1", protocol_name="MQIsdp", protocol_level=3, keepalive=10),
        hx("10 10 0006 4d5149736470 03 02 000a 0002 6331"),
    ),
    (
        "connect-311-will-user-password",  # flags 0xEC: user, password, will retain, will QoS 1
        V311,
        Connect(
            "c",
            protocol_level=4,
            clean_start=False,
            keepalive=0x0102,
            username="u",
            password=b"\x00\xff",
            will=Will("w", b"x", qos=1, retain=True),
        ),
        hx("10 1a 0004 4d515454 04 ec 0102 000163 000177 000178 000175 000200ff"),
    ),
    (
        "connect-5-session-expiry",
        V5,
        Connect(
            "c", protocol_level=5, keepalive=30, properties=Properties(session_expiry_interval=60)
        ),
        hx("10 13 0004 4d515454 05 02 001e 05 11 0000003c 000163"),
    ),
    (
        "connect-5-will-props-password-only",  # MQTT 5 allows a password without a user name
        V5,
        Connect(
            "c",
            protocol_level=5,
            password=b"pw",
            will=Will("w", b"", properties=Properties(will_delay_interval=10)),
        ),
        hx("10 1d 0004 4d515454 05 46 003c 00 000163 05 18 0000000a 000177 0000 00027077"),
    ),
    # CONNACK (3.2)
    ("connack-311", V311, Connack(0), hx("20 02 00 00")),
    ("connack-311-session-present", V311, Connack(0, True), hx("20 02 01 00")),
    ("connack-311-not-authorized", V311, Connack(5), hx("20 02 00 05")),
    ("connack-31", V31, Connack(2), hx("20 02 00 02")),
    ("connack-5", V5, Connack(0), hx("20 03 00 00 00")),
    (
        "connack-5-refused-with-props",
        V5,
        Connack(0x86, False, Properties(receive_maximum=10)),
        hx("20 06 00 86 03 21000a"),
    ),
    # PUBLISH (3.3)
    ("publish-311-qos0", V311, Publish("a/b", b"hi"), hx("30 07 0003 612f62 6869")),
    (
        "publish-311-qos1-retain",
        V311,
        Publish("a/b", b"hi", 1, retain=True, packet_id=10),
        hx("33 09 0003 612f62 000a 6869"),
    ),
    (
        "publish-311-qos2-dup",
        V311,
        Publish("a/b", b"hi", 2, dup=True, packet_id=0x1234),
        hx("3c 09 0003 612f62 1234 6869"),
    ),
    ("publish-31-qos0-empty-payload", V31, Publish("a/b"), hx("30 05 0003 612f62")),
    ("publish-5-qos0", V5, Publish("a/b", b"hi"), hx("30 08 0003 612f62 00 6869")),
    (
        "publish-5-qos1-props",
        V5,
        Publish(
            "a/b",
            b"hi",
            1,
            packet_id=1,
            properties=Properties(content_type="t", user_properties=[("a", "b")]),
        ),
        hx("32 15 0003 612f62 0001 0b 03000174 260001610001 62 6869"),
    ),
    # PUBACK, PUBREC, PUBREL (flags 0010), PUBCOMP (3.4-3.7)
    ("puback-311", V311, Ack(TYPE_PUBACK, 10), hx("40 02 000a")),
    ("pubrec-311", V311, Ack(TYPE_PUBREC, 10), hx("50 02 000a")),
    ("pubrel-311", V311, Ack(TYPE_PUBREL, 10), hx("62 02 000a")),
    ("pubcomp-311", V311, Ack(TYPE_PUBCOMP, 10), hx("70 02 000a")),
    ("pubrel-31", V31, Ack(TYPE_PUBREL, 0xFFFF), hx("62 02 ffff")),
    # 3.4.2.1: reason code 0 and no properties: the Reason Code may be omitted
    ("puback-5-success-short", V5, Ack(TYPE_PUBACK, 10), hx("40 02 000a")),
    ("puback-5-no-subscribers", V5, Ack(TYPE_PUBACK, 10, 0x10), hx("40 03 000a 10")),
    (
        "pubrec-5-reason-string",
        V5,
        Ack(TYPE_PUBREC, 10, 0x80, Properties(reason_string="x")),
        hx("50 08 000a 80 04 1f000178"),
    ),
    ("pubrel-5-not-found", V5, Ack(TYPE_PUBREL, 10, 0x92), hx("62 03 000a 92")),
    ("pubcomp-5", V5, Ack(TYPE_PUBCOMP, 10), hx("70 02 000a")),
    # SUBSCRIBE (3.8): flags 0010
    (
        "subscribe-311",
        V311,
        Subscribe(1, [SubscriptionRequest("a/b", 1)]),
        hx("82 08 0001 0003612f62 01"),
    ),
    (
        "subscribe-311-two-filters",
        V311,
        Subscribe(2, [SubscriptionRequest("a/b", 0), SubscriptionRequest("c/#", 2)]),
        hx("82 0e 0002 0003612f62 00 0003632f23 02"),
    ),
    (
        "subscribe-5-options-and-id",  # options 0x2D: QoS 1, No Local, RAP, Retain Handling 2
        V5,
        Subscribe(
            1,
            [SubscriptionRequest("a/b", 1, True, True, 2)],
            Properties(subscription_identifiers=[5]),
        ),
        hx("82 0b 0001 02 0b05 0003612f62 2d"),
    ),
    # SUBACK (3.9)
    ("suback-311", V311, Suback(1, [0, 0x80]), hx("90 04 0001 00 80")),
    ("suback-5", V5, Suback(1, [1, 0x87]), hx("90 05 0001 00 01 87")),
    # UNSUBSCRIBE (3.10): flags 0010
    ("unsubscribe-311", V311, Unsubscribe(2, ["a/b"]), hx("a2 07 0002 0003612f62")),
    ("unsubscribe-5", V5, Unsubscribe(2, ["a/b"]), hx("a2 08 0002 00 0003612f62")),
    # UNSUBACK (3.11): MQTT 3.1.1 has no payload
    ("unsuback-311", V311, Unsuback(2), hx("b0 02 0002")),
    ("unsuback-5", V5, Unsuback(2, [0, 0x11]), hx("b0 05 0002 00 00 11")),
    # PINGREQ, PINGRESP (3.12, 3.13)
    ("pingreq", V311, Pingreq(), hx("c0 00")),
    ("pingresp", V5, Pingresp(), hx("d0 00")),
    # DISCONNECT (3.14): 3.14.2.1 reason 0 and no properties may be omitted
    ("disconnect-311", V311, Disconnect(), hx("e0 00")),
    ("disconnect-5-normal", V5, Disconnect(), hx("e0 00")),
    ("disconnect-5-with-will", V5, Disconnect(0x04), hx("e0 01 04")),
    (
        "disconnect-5-session-expiry",
        V5,
        Disconnect(0, Properties(session_expiry_interval=60)),
        hx("e0 07 00 05 110000003c"),
    ),
    # AUTH (3.15)
    ("auth-5-success-short", V5, Auth(), hx("f0 00")),
    (
        "auth-5-continue",
        V5,
        Auth(0x18, Properties(authentication_method="m")),
        hx("f0 06 18 04 150001 6d"),
    ),
]


@pytest.mark.parametrize(
    ("version", "pkt", "wire"), [r[1:] for r in REFERENCE], ids=[r[0] for r in REFERENCE]
)
def test_encode_matches_reference_bytes(version: int, pkt: Packet, wire: bytes) -> None:
    """encode() produces exactly the hand-written bytes (shortest forms where the spec allows)."""
    assert encode(pkt, version) == wire


@pytest.mark.parametrize(
    ("version", "pkt", "wire"), [r[1:] for r in REFERENCE], ids=[r[0] for r in REFERENCE]
)
def test_decode_reference_bytes(version: int, pkt: Packet, wire: bytes) -> None:
    """The hand-written bytes decode to the packet, field for field."""
    got = decode_one(wire, 0 if pkt.packet_type == TYPE_CONNECT else version)
    assert got == pkt
    assert type(got) is type(pkt)
    assert got.packet_type == pkt.packet_type


def test_reference_covers_all_15_packet_types() -> None:
    """The reference table has all 15 packet types, and both a 3.1.1 and a 5.0 form of every
    type whose encoding differs between them (3.1 is covered by the round trips below)."""
    seen = {(r[2].packet_type, r[1]) for r in REFERENCE}
    assert {t for t, _ in seen} == set(range(1, 16))
    for ptype in range(1, 12):
        assert (ptype, V311) in seen and (ptype, V5) in seen, ptype
    assert (TYPE_DISCONNECT, V311) in seen and (TYPE_DISCONNECT, V5) in seen


def test_decoded_connect_sets_decoder_version() -> None:
    """A server-side decoder starts at 0 and takes the protocol level of the CONNECT."""
    for version, name in ((V31, "MQIsdp"), (V311, "MQTT"), (V5, "MQTT")):
        d = Decoder()
        assert d.version == 0
        (c,) = d.feed(encode(Connect("x", protocol_name=name, protocol_level=version)))
        assert c.protocol_level == version and c.protocol_name == name
        assert d.version == version


# ----------------------------------------------------------------------------------------------
# Round trips of every packet type in every version


def _packets_for(version: int) -> list[tuple[str, Packet]]:
    """A varied set of packets of every type valid for `version`."""
    v5 = version == V5
    P = Properties if v5 else (lambda **_: None)  # properties exist only in MQTT 5
    name = "MQIsdp" if version == V31 else "MQTT"
    out: list[tuple[str, Packet]] = [
        ("connect-minimal", Connect("client-1", protocol_name=name, protocol_level=version)),
        (
            "connect-full",
            Connect(
                "ü-client",
                protocol_name=name,
                protocol_level=version,
                clean_start=False,
                keepalive=65535,
                username="user",
                password=b"\x00\x01\xfe\xff",
                will=Will("will/topic", b"\x00gone", 2, True, P(will_delay_interval=5)),
                properties=P(session_expiry_interval=0xFFFFFFFF, receive_maximum=1),
            ),
        ),
        (
            "connect-will-qos1",
            Connect(
                "c",
                protocol_name=name,
                protocol_level=version,
                keepalive=0,
                will=Will("w/t", b"", 1),
            ),
        ),
        ("connack-accepted", Connack(0, True, P(assigned_client_identifier="auto"))),
        ("connack-refused", Connack(0x85 if v5 else 2)),
        ("publish-qos0", Publish("sport/tennis/player1", b"score")),
        ("publish-qos0-retain-empty", Publish("a", b"", 0, retain=True)),
        ("publish-qos1", Publish("a/b", bytes(range(256)), 1, packet_id=1)),
        ("publish-qos2-dup", Publish("$SYS/x", b"\x00" * 300, 2, dup=True, packet_id=65535)),
        ("publish-unicode-topic", Publish("ça/va/€/😀", b"ok", 1, packet_id=7)),
        ("puback", Ack(TYPE_PUBACK, 1)),
        ("pubrec", Ack(TYPE_PUBREC, 2)),
        ("pubrel", Ack(TYPE_PUBREL, 3)),
        ("pubcomp", Ack(TYPE_PUBCOMP, 65535)),
        (
            "subscribe",
            Subscribe(
                9,
                [
                    SubscriptionRequest("a/+/c", 0),
                    SubscriptionRequest("#", 1),
                    SubscriptionRequest("$share/g/x/#", 2),
                ],
            ),
        ),
        ("suback", Suback(9, [0, 1, 2, 0x80])),
        ("unsubscribe", Unsubscribe(10, ["a/+/c", "#", "$share/g/x/#"])),
        ("unsuback", Unsuback(10, [0, 0x11, 0x80] if v5 else [])),
        ("pingreq", Pingreq()),
        ("pingresp", Pingresp()),
        ("disconnect", Disconnect()),
    ]
    if v5:
        out += [
            ("puback-reason", Ack(TYPE_PUBACK, 4, 0x10)),
            ("pubrec-reason-props", Ack(TYPE_PUBREC, 5, 0x80, P(reason_string="no"))),
            ("pubrel-reason", Ack(TYPE_PUBREL, 6, 0x92)),
            ("pubcomp-user-props", Ack(TYPE_PUBCOMP, 7, 0, P(user_properties=[("a", "1")]))),
            (
                "subscribe-options",
                Subscribe(
                    11,
                    [
                        SubscriptionRequest("a", 2, True, False, 0),
                        SubscriptionRequest("b", 1, False, True, 1),
                        SubscriptionRequest("c", 0, True, True, 2),
                    ],
                    P(subscription_identifiers=[268435455], user_properties=[("k", "v")]),
                ),
            ),
            ("unsubscribe-props", Unsubscribe(12, ["a"], P(user_properties=[("k", "")]))),
            ("disconnect-reason", Disconnect(0x8E)),
            ("disconnect-props", Disconnect(0, P(session_expiry_interval=0, reason_string="r"))),
            ("auth", Auth()),
            (
                "auth-props",
                Auth(0x19, P(authentication_method="SCRAM", authentication_data=b"\x01")),
            ),
            (
                "publish-props",
                Publish(
                    "a/b",
                    b"{}",
                    1,
                    packet_id=2,
                    properties=P(
                        payload_format_indicator=1,
                        content_type="application/json",
                        response_topic="reply/here",
                        correlation_data=b"\x00\xff",
                        subscription_identifiers=[1, 127, 128, 16384],
                        topic_alias=3,
                        user_properties=[("k", "v"), ("k", "v"), ("", "")],
                    ),
                ),
            ),
        ]
    return out


ROUNDTRIP_CASES = [
    pytest.param(version, pkt, id=f"v{version}-{name}")
    for version in VERSIONS
    for name, pkt in _packets_for(version)
]


@pytest.mark.parametrize(("version", "pkt"), ROUNDTRIP_CASES)
def test_roundtrip(version: int, pkt: Packet) -> None:
    """decode(encode(p)) == p, and re-encoding the decoded packet gives the same bytes."""
    roundtrip(pkt, version)


def test_unsuback_reason_codes_are_not_sent_in_311() -> None:
    """UNSUBACK has no payload before MQTT 5 (3.1.1 3.11.3): reason codes are left out."""
    assert encode(Unsuback(3, [0x11]), V311) == hx("b0 02 0003")


def test_disconnect_properties_are_not_sent_in_311() -> None:
    """DISCONNECT has no variable header before MQTT 5 (3.1.1 3.14.2)."""
    assert encode(Disconnect(0x8E, Properties(reason_string="x")), V311) == hx("e0 00")


def test_auth_cannot_be_encoded_before_mqtt5() -> None:
    """AUTH exists only in MQTT 5 (3.15): asking for it in 3.1.1 is an error, not bytes."""
    with pytest.raises(ValueError):
        encode(Auth(), V311)


@pytest.mark.parametrize(
    "rl", [0, 127, 128, 16383, 16384, 2_097_151, 2_097_152], ids=lambda n: f"rl{n}"
)
def test_remaining_length_encoding_boundaries(rl: int) -> None:
    """The Remaining Length uses the shortest Variable Byte Integer at every size boundary
    [MQTT-1.5.5-1] (1, 2, 3 and 4 bytes), and decodes back (3.1.1 2.2.3 table 2.4)."""
    if rl == 0:
        pkt: Packet = Pingreq()
        wire = hx("c0 00")
    else:
        pkt = Publish("t", b"\xab" * (rl - 3))  # topic "t" takes 3 bytes
        wire = b"\x30" + vbi(rl) + mstr("t") + b"\xab" * (rl - 3)
    assert encode(pkt, V311) == wire
    assert decode_one(wire, V311) == pkt


def test_maximum_remaining_length_header_is_accepted_and_waits() -> None:
    """0xFF 0xFF 0xFF 0x7F is the largest Remaining Length (268,435,455): valid, so the decoder
    waits for the body rather than failing (3.1.1 2.2.3)."""
    d = Decoder(V311)
    assert d.feed(hx("30 ff ff ff 7f 00")) == []
    assert d.pending == 6


# ----------------------------------------------------------------------------------------------
# MQTT 5 properties, table-driven: every property in every packet that allows it (2.2.2.2)

ALLOWED_PAIRS = [
    pytest.param(ctx, pid, id=f"{CONTEXT_NAMES[ctx]}-{PROPS[pid][0]}")
    for ctx, pids in ALLOWED.items()
    for pid in sorted(pids)
]


@pytest.mark.parametrize(("ctx", "pid"), ALLOWED_PAIRS)
def test_property_allowed_in_packet(ctx: object, pid: int) -> None:
    """Each property the spec allows in a packet decodes to its attribute, and encoding the
    packet gives exactly the reference bytes (2.2.2.2; value types of 1.5)."""
    attr, value, encoded = PROPS[pid]
    wire, pkt = in_context(ctx, props(prop(pid, encoded)), Properties(**{attr: value}))
    got = decode_ctx(ctx, wire)
    assert got == pkt
    holder = got.will if ctx == WILL else got
    assert getattr(holder.properties, attr) == value
    assert encode(pkt, V5) == wire


@pytest.mark.parametrize("ctx", list(ALLOWED), ids=list(CONTEXT_NAMES.values()))
def test_all_allowed_properties_together(ctx: object) -> None:
    """A packet with every property it allows (user properties and, in PUBLISH, subscription
    identifiers repeated) decodes completely and re-encodes byte for byte (ascending ids)."""
    items = []
    values: dict[str, object] = {}
    for pid in sorted(ALLOWED[ctx]):
        attr, value, encoded = PROPS[pid]
        if pid == 0x26:
            items += [prop(pid, mstr("k") + mstr("v1")), prop(pid, mstr("k") + mstr("v2"))]
            values[attr] = [("k", "v1"), ("k", "v2")]
        elif pid == 0x0B and ctx == TYPE_PUBLISH:
            items += [prop(pid, vbi(1)), prop(pid, vbi(268_435_455))]
            values[attr] = [1, 268_435_455]
        else:
            items.append(prop(pid, encoded))
            values[attr] = value
    wire, pkt = in_context(ctx, props(*items), Properties(**values))
    got = decode_ctx(ctx, wire)
    assert got == pkt
    holder = got.will if ctx == WILL else got
    assert holder.properties.as_dict() == values
    assert encode(pkt, V5) == wire


def test_property_table_is_complete() -> None:
    """The property table knows every MQTT 5 property identifier the codec knows (2.2.2.2)."""
    assert set(PROPS) == set(codec.PROPERTY_NAMES)
    assert set().union(*ALLOWED.values()) == set(PROPS)


def test_properties_equality_ignores_absent_values() -> None:
    """An empty property block equals no block at all; present values are compared."""
    assert Properties() == Properties(user_properties=[])
    assert Connack(0, False, Properties()) == Connack(0)
    assert Properties(receive_maximum=1) != Properties(receive_maximum=2)
    assert Properties(user_properties=[("a", "b")]) != Properties(user_properties=[("b", "a")])


def test_user_property_order_and_duplicates_are_preserved() -> None:
    """User Properties keep their order and may repeat the same name [MQTT-3.3.2-18]."""
    pairs = [("b", "2"), ("a", "1"), ("b", "2"), ("b", "3")]
    pkt = Publish("t", b"", properties=Properties(user_properties=pairs))
    (got,) = decode_all(encode(pkt, V5), V5)
    assert got.properties.user_properties == pairs


def test_subscription_identifier_varint_sizes() -> None:
    """Subscription Identifiers are Variable Byte Integers of 1 to 4 bytes (3.3.2.3.8)."""
    for n in (1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 268_435_455):
        pkt = Subscribe(1, [SubscriptionRequest("a")], Properties(subscription_identifiers=[n]))
        wire = encode(pkt, V5)
        assert wire == frame(0x82, u16(1) + props(prop(0x0B, vbi(n))) + mstr("a") + b"\x00")
        assert decode_one(wire, V5) == pkt


def test_v5_empty_topic_with_alias_decodes() -> None:
    """3.3.2.3.4: with a Topic Alias the Topic Name may be empty; the codec reports both and
    leaves the alias mapping to the connection."""
    wire = frame(0x30, mstr("") + props(prop(0x23, u16(3))) + b"x")
    (got,) = decode_all(wire, V5)
    assert got.topic == "" and got.properties.topic_alias == 3 and got.payload == b"x"


# ----------------------------------------------------------------------------------------------
# Property-based round trips

topic_level = st.text(
    st.characters(exclude_characters="/+#\x00", exclude_categories=("Cs",)), max_size=8
)
topic_names = st.lists(topic_level, min_size=1, max_size=5).map("/".join).filter(bool)
utf8_text = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20
)


@st.composite
def publish_packets(draw: st.DrawFn, version: int) -> Publish:
    """Random valid PUBLISH packets for `version`."""
    qos = draw(st.integers(0, 2))
    p = None
    if version == V5 and draw(st.booleans()):
        p = Properties(
            payload_format_indicator=draw(st.none() | st.integers(0, 1)),
            message_expiry_interval=draw(st.none() | st.integers(0, 1_000_000)),
            content_type=draw(st.none() | utf8_text),
            response_topic=draw(st.none() | topic_names),
            correlation_data=draw(st.none() | st.binary(max_size=20)),
            subscription_identifiers=draw(
                st.none() | st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3)
            ),
            topic_alias=draw(st.none() | st.integers(1, 65535)),
            user_properties=draw(
                st.none() | st.lists(st.tuples(utf8_text, utf8_text), min_size=1, max_size=3)
            ),
        )
    return Publish(
        draw(topic_names),
        draw(st.binary(max_size=300)),
        qos,
        retain=draw(st.booleans()),
        dup=qos > 0 and draw(st.booleans()),
        packet_id=draw(st.integers(1, 65535)) if qos else 0,
        properties=p,
    )


@st.composite
def subscribe_packets(draw: st.DrawFn, version: int) -> Subscribe:
    """Random valid SUBSCRIBE packets for `version` (filters need not be valid filters)."""
    v5 = version == V5
    reqs = draw(
        st.lists(
            st.builds(
                SubscriptionRequest,
                utf8_text,
                st.integers(0, 2),
                st.booleans() if v5 else st.just(False),
                st.booleans() if v5 else st.just(False),
                st.integers(0, 2) if v5 else st.just(0),
            ),
            min_size=1,
            max_size=4,
        )
    )
    p = Properties(subscription_identifiers=[draw(st.integers(1, 268_435_455))]) if v5 else None
    return Subscribe(draw(st.integers(1, 65535)), reqs, p)


ROUNDTRIP_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@ROUNDTRIP_SETTINGS
@given(st.sampled_from(VERSIONS).flatmap(lambda v: st.tuples(st.just(v), publish_packets(v))))
def test_publish_roundtrip_property(case: tuple[int, Publish]) -> None:
    """Any valid PUBLISH round-trips in every version (expiry below 2**20 s, see the report on
    very large Message Expiry Intervals)."""
    version, pkt = case
    roundtrip(pkt, version)


@ROUNDTRIP_SETTINGS
@given(st.sampled_from(VERSIONS).flatmap(lambda v: st.tuples(st.just(v), subscribe_packets(v))))
def test_subscribe_roundtrip_property(case: tuple[int, Subscribe]) -> None:
    """Any valid SUBSCRIBE round-trips, options included (3.8.3.1)."""
    version, pkt = case
    roundtrip(pkt, version)


@ROUNDTRIP_SETTINGS
@given(
    version=st.sampled_from(VERSIONS),
    client_id=utf8_text,
    username=st.none() | utf8_text,
    password=st.none() | st.binary(max_size=20),
    will=st.none()
    | st.builds(Will, topic_names, st.binary(max_size=20), st.integers(0, 2), st.booleans()),
    clean=st.booleans(),
    keepalive=st.integers(0, 65535),
)
def test_connect_roundtrip_property(
    version: int,
    client_id: str,
    username: str | None,
    password: bytes | None,
    will: Will | None,
    clean: bool,
    keepalive: int,
) -> None:
    """Any valid CONNECT round-trips (a password needs a user name before MQTT 5 [MQTT-3.1.2-22])."""
    if version != V5 and password is not None and username is None:
        username = "u"
    pkt = Connect(
        client_id,
        protocol_name="MQIsdp" if version == V31 else "MQTT",
        protocol_level=version,
        clean_start=clean,
        keepalive=keepalive,
        username=username,
        password=password,
        will=will,
    )
    roundtrip(pkt, version)


# ----------------------------------------------------------------------------------------------
# Incremental decoding


def _stream(version: int) -> bytes:
    """A connection's worth of client packets: CONNECT, then one of each other kind."""
    name = "MQIsdp" if version == V31 else "MQTT"
    parts = [encode(Connect("stream", protocol_name=name, protocol_level=version))]
    parts += [encode(p, version) for n, p in _packets_for(version) if not n.startswith("connect")]
    parts.append(encode(Publish("big", bytes(range(256)) * 80, 1, packet_id=99), version))
    return b"".join(parts)


STREAMS = {v: _stream(v) for v in VERSIONS}
WHOLE = {v: Decoder().feed(STREAMS[v]) for v in VERSIONS}


@pytest.mark.parametrize("version", VERSIONS)
def test_stream_whole_vs_one_byte_at_a_time(version: int) -> None:
    """A stream fed one byte at a time decodes exactly like the stream fed whole; every call
    returns at most one packet and nothing is held over at the end."""
    data = STREAMS[version]
    d = Decoder()
    out: list[Packet] = []
    for i in range(len(data)):
        got = d.feed(data[i : i + 1])
        assert len(got) <= 1
        out += got
    assert out == WHOLE[version]
    assert len(out) == len(_packets_for(version)) - 3 + 2  # - 3 CONNECTs + CONNECT + big
    assert d.pending == 0


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(VERSIONS), data=st.data())
def test_stream_random_splits(version: int, data: st.DataObject) -> None:
    """Any split of the stream into chunks decodes identically (hypothesis)."""
    stream = STREAMS[version]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=40)))
    assert feed_chunks(Decoder(), stream, cuts) == WHOLE[version]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "memoryview-slice"])
def test_inputs_may_be_any_bytes_like(kind: str) -> None:
    """feed() takes bytes, bytearray and memoryview chunks (as transports may deliver them)."""
    stream = STREAMS[V5]
    if kind == "memoryview-slice":
        padded = b"\xee" * 7 + stream + b"\xee" * 3
        chunks = [memoryview(padded)[7 : 7 + 100], memoryview(padded)[107 : 7 + len(stream)]]
    else:
        wrap = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind]
        chunks = [wrap(stream[:100]), wrap(stream[100:])]
    d = Decoder()
    assert d.feed(chunks[0]) + d.feed(chunks[1]) == WHOLE[V5]


def test_partial_packet_is_carried_over() -> None:
    """The tail of a chunk that is not a whole packet waits for the next chunk; `pending`
    counts it, and it is back to 0 at a packet boundary."""
    a = encode(Publish("a/b", b"first", 1, packet_id=1), V311)
    b = encode(Publish("a/c", b"second" * 50, 2, packet_id=2), V311)
    d = Decoder(V311)
    assert d.feed(a + b[:1]) == [decode_one(a)]
    assert d.pending == 1  # a lone first byte: the header is not even complete
    assert d.feed(b[1:3]) == []
    assert d.pending == 3
    assert d.feed(b[3:-1]) == []
    assert d.pending == len(b) - 1
    assert d.feed(b[-1:] + a) == [decode_one(b), decode_one(a)]
    assert d.pending == 0


def test_empty_chunks_are_harmless() -> None:
    """An empty chunk neither yields packets nor loses a held-over tail."""
    a = encode(Pingreq(), V311)
    d = Decoder(V311)
    assert d.feed(b"") == []
    assert d.feed(a[:1]) == []
    assert d.feed(b"") == []
    assert d.pending == 1
    assert d.feed(a[1:]) == [Pingreq()]


def test_decode_all_rejects_a_trailing_partial_packet() -> None:
    """decode_all() is for whole streams: an incomplete packet at the end is malformed."""
    with pytest.raises(MalformedPacket):
        decode_all(encode(Pingreq(), V311)[:1], V311)


# ----------------------------------------------------------------------------------------------
# Payloads and Message


def test_decoded_payload_equals_input_and_owns_its_bytes() -> None:
    """The decoded payload is bytes equal to what was sent, and it does not change when the
    caller reuses its receive buffer afterwards."""
    payload = bytes(range(256)) * 3
    buf = bytearray(encode(Publish("t", payload, 1, packet_id=5), V311))
    (pub,) = Decoder(V311).feed(buf)
    buf[:] = b"\x00" * len(buf)
    assert type(pub.payload) is bytes
    assert pub.payload == payload


def test_payloads_of_packets_sharing_a_chunk_are_separate() -> None:
    """Payload views into one receive chunk are cut at the packet boundaries."""
    pubs = [Publish(f"t/{i}", bytes([i]) * (i * 10), 0) for i in range(20)]
    got = decode_all(b"".join(encode(p, V5) for p in pubs), V5)
    assert [p.payload for p in got] == [p.payload for p in pubs]


@pytest.mark.parametrize("chunk", [1 << 12, 1 << 16, 65537])
def test_one_mebibyte_payload_across_many_chunks(chunk: int) -> None:
    """A 1 MiB payload split over many chunks decodes to the same bytes, and the decoder holds
    exactly the bytes received so far while it waits."""
    payload = random.Random(7).randbytes(1 << 20)
    wire = encode(Publish("big/payload", payload, 1, packet_id=3), V5)
    d = Decoder(V5, max_packet_size=2 << 20)
    out: list[Packet] = []
    for pos in range(0, len(wire), chunk):
        out += d.feed(wire[pos : pos + chunk])
        if pos + chunk < len(wire):
            assert out == [] and d.pending == pos + chunk
    assert len(out) == 1 and out[0].payload == payload and d.pending == 0


def test_one_mebibyte_payload_one_byte_at_a_time() -> None:
    """Byte-by-byte delivery of a 1 MiB PUBLISH works and returns the payload intact."""
    payload = bytes(range(256)) * 4096
    wire = encode(Publish("b", payload, 0), V311)
    d = Decoder(V311)
    out: list[Packet] = []
    for i in range(len(wire)):
        out += d.feed(wire[i : i + 1])
    assert len(out) == 1 and out[0].payload == payload


def test_message_payload_from_any_bytes_like_is_detached() -> None:
    """Message copies a non-bytes payload once, so later changes to the source do not show."""
    for wrap in (bytearray, memoryview):
        src = bytearray(b"hello")
        m = Message("t", wrap(src), 1)
        src[0:1] = b"J"
        assert m.payload == b"hello"
        assert type(m.payload) is bytes and m.payload_size == 5


def test_message_freeze_copy_and_pickle_keep_the_payload() -> None:
    """freeze() (Python's detach()), copy() and pickling keep topic, payload and properties;
    copy() has its own encode cache and user property list."""
    import pickle

    m = Message(
        "a/b", b"data", 2, True, content_type="c", user_properties=[("k", "v")], origin="me"
    )
    assert m.freeze() is m and m.payload == b"data"
    c = m.copy()
    assert (c.topic, c.payload, c.qos, c.retain, c.origin) == ("a/b", b"data", 2, True, "me")
    assert c.user_properties == m.user_properties and c.user_properties is not m.user_properties
    assert c.wire_key == -1 and c.wire_bytes is None
    p = pickle.loads(pickle.dumps(m))
    assert (p.topic, p.payload, p.content_type, p.user_properties) == (
        "a/b",
        b"data",
        "c",
        [("k", "v")],
    )
    m.payload = memoryview(b"new")
    assert m.payload == b"new" and m.payload_size == 3


def test_message_expiry_arithmetic() -> None:
    """remaining_expiry() rounds up and is -1 without expiry; expired() is strict about the
    deadline (3.3.2.3.3: the interval sent on is the received one minus the time waited)."""
    m = Message("t", b"")
    assert m.remaining_expiry(1000.0) == -1 and not m.expired(1e12)
    m.expires_at = 1000.0
    assert m.remaining_expiry(990.5) == 10
    assert m.remaining_expiry(999.99) == 1
    assert m.remaining_expiry(1000.0) == 0 and m.expired(1000.0)
    assert not m.expired(999.0)


def test_remaining_expiry_never_exceeds_the_received_interval() -> None:
    """3.3.2.3.3: the interval sent on is the received one minus the time waited: never more,
    and never past the Four Byte Integer range. Deterministic: t is chosen so that
    t + 0xFFFFFFFF rounds up as a double (as time.time() + interval does ~0.2% of the time)."""
    t = 1_764_000_000.0 + 6 * 2**-22
    m = Message("t", b"x", 1, expires_at=t + 0xFFFFFFFF)
    left = m.remaining_expiry(t)
    assert left <= 0xFFFFFFFF
    (pub,) = decode_all(encode_message(m, V5, packet_id=1, expiry=left), V5)
    assert pub.properties.message_expiry_interval == 0xFFFFFFFF


def test_encode_message_matches_publish_encoding() -> None:
    """encode_message() (the delivery path) writes the same bytes as encoding a PUBLISH packet
    with the same fields, in 3.1.1 and in 5 with properties, and patches QoS/dup/retain."""
    m = Message(
        "a/b",
        b"payload",
        1,
        payload_format=1,
        content_type="text/plain",
        response_topic="r/t",
        correlation_data=b"\x01",
        user_properties=[("k", "v")],
    )
    assert encode_message(m, V311, packet_id=9) == encode(
        Publish("a/b", b"payload", 1, packet_id=9), V311
    )
    expected = Publish(
        "a/b",
        b"payload",
        2,
        retain=True,
        dup=True,
        packet_id=9,
        properties=Properties(
            payload_format_indicator=1,
            message_expiry_interval=30,
            content_type="text/plain",
            response_topic="r/t",
            correlation_data=b"\x01",
            subscription_identifiers=[4, 5],
            topic_alias=2,
            user_properties=[("k", "v")],
        ),
    )
    got = encode_message(
        m, V5, qos=2, retain=True, dup=True, packet_id=9, subscription_identifiers=[4, 5],
        topic_alias=2, expiry=30,
    )  # fmt: skip
    assert got == encode(expected, V5)
    # An alias already known to the client: empty topic name (3.3.2.3.4).
    short = encode_message(m, V5, qos=0, topic_alias=2, send_topic=False, expiry=-1)
    assert short[2:4] == b"\x00\x00"
    (dec,) = decode_all(short, V5)
    assert dec.topic == "" and dec.properties.topic_alias == 2 and dec.payload == b"payload"
