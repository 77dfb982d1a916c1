"""Codec: what the decoder must refuse, with the exact exception class and reason code.

MQTT 5.0 4.13 / 3.1.1 4.8: a Malformed Packet (0x81) is one that cannot be parsed according to
the specification; a Protocol Error (0x82) is one that parses but is not allowed; 0x95 (Packet
too large) exceeds the Maximum Packet Size; 0x84 refuses an unsupported protocol version. Every
case is checked twice: the packet fed whole, and fed one byte at a time to a fresh decoder (the
same error must come out, and no packet before it).
"""

from __future__ import annotations

import pytest
from fluxmq._speedups.codec import (
    TYPE_AUTH,
    TYPE_CONNACK,
    TYPE_CONNECT,
    TYPE_PUBLISH,
    TYPE_PUBREL,
    TYPE_SUBSCRIBE,
    TYPE_UNSUBSCRIBE,
    Ack,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    Pingreq,
    Pingresp,
    ProtocolError,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    UnsupportedProtocol,
    Will,
    encode,
)

from tests.unit import (
    ALLOWED,
    CONTEXT_NAMES,
    PROPS,
    V5,
    V31,
    V311,
    WILL,
    decode_ctx,
    decode_one,
    frame,
    in_context,
    mstr,
    prop,
    props,
    u16,
    u32,
    vbi,
)

MALFORMED = (MalformedPacket, 0x81)
PROTOCOL = (ProtocolError, 0x82)
CONNECT_V311 = encode(Connect("c", protocol_level=4))
CONNECT_V5 = encode(Connect("c", protocol_level=5))


def hx(text: str) -> bytes:
    """Bytes from spaced hex."""
    return bytes.fromhex(text)


def expect_error(
    data: bytes,
    version: int,
    expected: tuple[type[MQTTError], int],
    max_packet_size: int = 0,
    packets_before: int = 0,
) -> MQTTError:
    """Decoding `data` with a decoder at `version` raises exactly `expected` (class, reason code),
    both when fed whole and when fed one byte at a time (after `packets_before` good packets);
    returns the exception."""
    cls, code = expected
    with pytest.raises(MQTTError) as whole:
        Decoder(version, max_packet_size).feed(data)
    assert type(whole.value) is cls, whole.value
    assert whole.value.reason_code == code
    d = Decoder(version, max_packet_size)
    good = []
    with pytest.raises(MQTTError) as bytewise:
        for i in range(len(data)):
            good += d.feed(data[i : i + 1])
    assert type(bytewise.value) is cls and bytewise.value.reason_code == code
    assert len(good) == packets_before
    return whole.value


def test_error_classes_and_reason_codes() -> None:
    """The exception hierarchy: every decoding error is an MQTTError with its reason code."""
    assert issubclass(MalformedPacket, MQTTError) and MalformedPacket("x").reason_code == 0x81
    assert issubclass(ProtocolError, MQTTError) and ProtocolError("x").reason_code == 0x82
    assert issubclass(PacketTooLarge, MQTTError) and PacketTooLarge("x").reason_code == 0x95
    e = UnsupportedProtocol("x", 6)
    assert isinstance(e, MQTTError) and e.reason_code == 0x84 and e.protocol_level == 6
    assert ProtocolError("x", 0x94).reason_code == 0x94


# ----------------------------------------------------------------------------------------------
# Fixed header: Remaining Length (1.5.5 / 3.1.1 2.2.3), packet types, flags


@pytest.mark.parametrize(
    "data",
    [
        hx("30 ff ff ff ff 01 00"),  # five length bytes
        hx("30 80 80 80 80 00"),
        hx("30 ff ff ff ff"),  # the fourth byte still says "more": an error already
    ],
    ids=["five-bytes", "five-bytes-zero-value", "fourth-byte-continues"],
)
@pytest.mark.parametrize("version", [V311, V5])
def test_remaining_length_longer_than_four_bytes(data: bytes, version: int) -> None:
    """The Remaining Length is at most four bytes (5.0 1.5.5; 3.1.1 2.2.3): Malformed."""
    expect_error(data, version, MALFORMED)


@pytest.mark.parametrize(
    "data",
    [
        hx("c0 80 00"),  # 0 in two bytes
        hx("30 85 00 0003 612f62"),  # 5 in two bytes
        hx("30 80 80 00"),  # 0 in three bytes
        hx("30 ff ff 80 00"),  # 16383 in four bytes
    ],
    ids=["zero-2", "five-2", "zero-3", "16383-4"],
)
def test_remaining_length_not_minimal(data: bytes) -> None:
    """A Variable Byte Integer MUST use the minimum number of bytes [MQTT-1.5.5-1]."""
    expect_error(data, V5, MALFORMED)


@pytest.mark.parametrize("version", [0, V31, V311, V5])
def test_reserved_packet_type_0(version: int) -> None:
    """Packet type 0 is Reserved/Forbidden (5.0 2.1.2; 3.1.1 2.2.1): Malformed."""
    expect_error(hx("00 00"), version, MALFORMED)


@pytest.mark.parametrize("version", [V31, V311])
def test_auth_before_mqtt5_is_reserved_type_15(version: int) -> None:
    """Type 15 is AUTH only in MQTT 5; in 3.1/3.1.1 it is Reserved (3.1.1 2.2.1): Malformed."""
    expect_error(hx("f0 00"), version, MALFORMED)


def _valid_packets(version: int) -> dict[int, bytes]:
    """One valid encoding per packet type for `version` (CONNECT and AUTH as they exist)."""
    out = {
        TYPE_CONNECT: encode(Connect("c", protocol_level=version)),
        2: encode(Connack(0), version),
        3: encode(Publish("a", b"x"), version),
        4: encode(Ack(4, 1), version),
        5: encode(Ack(5, 1), version),
        6: encode(Ack(6, 1), version),
        7: encode(Ack(7, 1), version),
        8: encode(Subscribe(1, [SubscriptionRequest("a")]), version),
        9: encode(Suback(1, [0]), version),
        10: encode(Unsubscribe(1, ["a"]), version),
        11: encode(Unsuback(1, [0]), version),
        12: encode(Pingreq(), version),
        13: encode(Pingresp(), version),
        14: encode(Disconnect(), version),
    }
    if version == V5:
        out[TYPE_AUTH] = encode(Auth(), version)
    return out


REQUIRED_FLAGS = {t: 0 for t in range(1, 16)} | {
    TYPE_PUBREL: 2,
    TYPE_SUBSCRIBE: 2,
    TYPE_UNSUBSCRIBE: 2,
}


@pytest.mark.parametrize(
    ("ptype", "version"),
    [
        (t, v)
        for t in range(1, 16)
        for v in (V311, V5)
        if t != TYPE_PUBLISH and not (t == TYPE_AUTH and v != V5)
    ],
)
def test_reserved_fixed_header_flags(ptype: int, version: int) -> None:
    """Fixed-header flags other than those the spec fixes for the type (0010 for PUBREL,
    SUBSCRIBE, UNSUBSCRIBE; 0000 otherwise) are Malformed [MQTT-2.1.3-1] (3.1.1 [MQTT-2.2.2-2])."""
    good = _valid_packets(version)[ptype]
    dec_version = 0 if ptype == TYPE_CONNECT else version
    assert good[0] == (ptype << 4) | REQUIRED_FLAGS[ptype]
    assert len(Decoder(dec_version).feed(good)) == 1
    for flags in range(16):
        if flags != REQUIRED_FLAGS[ptype]:
            expect_error(bytes([(ptype << 4) | flags]) + good[1:], dec_version, MALFORMED)


@pytest.mark.parametrize("first", [0x36, 0x37, 0x3E, 0x3F])
@pytest.mark.parametrize("version", [V31, V311, V5])
def test_publish_qos_3(first: int, version: int) -> None:
    """Both QoS bits set is a Malformed Packet [MQTT-3.3.1-4]."""
    body = mstr("a/b") + u16(1) + (b"\x00" if version == V5 else b"") + b"x"
    expect_error(frame(first, body), version, MALFORMED)


@pytest.mark.parametrize("version", [V31, V311, V5])
def test_publish_dup_with_qos_0(version: int) -> None:
    """The DUP flag MUST be 0 for all QoS 0 messages [MQTT-3.3.1-2]."""
    body = mstr("a/b") + (b"\x00" if version == V5 else b"") + b"x"
    expect_error(frame(0x38, body), version, MALFORMED)
    expect_error(frame(0x39, body), version, MALFORMED)


# ----------------------------------------------------------------------------------------------
# Packet identifiers (5.0 2.2.1; 3.1.1 2.3.1)


@pytest.mark.parametrize("version", [V31, V311, V5])
@pytest.mark.parametrize(
    "kind",
    [
        "publish-qos1",
        "publish-qos2",
        "subscribe",
        "unsubscribe",
        "puback",
        "pubrec",
        "pubrel",
        "pubcomp",
    ],
)
def test_packet_identifier_zero(kind: str, version: int) -> None:
    """SUBSCRIBE, UNSUBSCRIBE and QoS>0 PUBLISH MUST carry a non-zero Packet Identifier
    [MQTT-2.2.1-3] (3.1.1 [MQTT-2.3.1-1]); acknowledgements echo one, so 0 is never valid:
    Protocol Error."""
    v5 = version == V5
    no_props = b"\x00" if v5 else b""
    data = {
        "publish-qos1": frame(0x32, mstr("a") + u16(0) + no_props + b"x"),
        "publish-qos2": frame(0x34, mstr("a") + u16(0) + no_props + b"x"),
        "subscribe": frame(0x82, u16(0) + no_props + mstr("a") + b"\x00"),
        "unsubscribe": frame(0xA2, u16(0) + no_props + mstr("a")),
        "puback": frame(0x40, u16(0)),
        "pubrec": frame(0x50, u16(0)),
        "pubrel": frame(0x62, u16(0)),
        "pubcomp": frame(0x70, u16(0)),
    }[kind]
    expect_error(data, version, PROTOCOL)


# ----------------------------------------------------------------------------------------------
# Truncated packets and packets longer than their contents (5.0 1.5, 2.1.4)


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (hx("30 05 0010 616263"), V311),  # topic length past the Remaining Length
        (hx("30 05 0010 616263"), V5),
        (hx("30 01 00"), V311),  # half a topic length
        (hx("32 05 0003 612f62"), V311),  # QoS 1 without a packet identifier
        (hx("30 05 0003 612f62"), V5),  # no Property Length
        (hx("30 08 0003 612f62 09 01 02"), V5),  # Property Length past the packet
        (hx("30 0b 0003 612f62 02 02 00000e10"), V5),  # a u32 property past the block
        (hx("30 0b 0003 612f62 03 03000174 78"), V5),  # a string property past the block
        (hx("30 0a 0003 612f62 04 26000161"), V5),  # user property without its value
        (hx("82 07 0001 0003 612f62"), V311),  # filter without its options byte
        (hx("82 05 0001 0010 61"), V311),  # filter length overrun
        (hx("a2 05 0001 0010 61"), V5),  # UNSUBSCRIBE filter overrun (v5 after props)
        (hx("a2 06 0001 00 0010 61"), V5),
        (hx("40 01 00"), V311),  # half a packet identifier
        (hx("40 01 00"), V5),
        (hx("20 01 00"), V311),  # CONNACK without return code
        (hx("90 01 00"), V311),
        (hx("b0 01 00"), V5),
        (hx("e0 02 00 05"), V5),  # DISCONNECT properties past the packet
        (hx("f0 03 18 05 15"), V5),  # AUTH properties past the packet
        (hx("40 04 000a 00 05"), V5),  # PUBACK properties past the packet
    ],
    ids=lambda x: x.hex() if isinstance(x, bytes) else f"v{x}",
)
def test_packet_shorter_than_its_contents(data: bytes, version: int) -> None:
    """A field that runs past the Remaining Length (or past its Property Length) is Malformed."""
    expect_error(data, version, MALFORMED)


CONNECTS = [
    Connect("client", protocol_name="MQIsdp", protocol_level=3, username="u", password=b"p"),
    Connect("client", protocol_level=4, will=Will("w/t", b"payload", 1, True), username="u"),
    Connect(
        "client",
        protocol_level=5,
        will=Will("w/t", b"bye"),
        username="user",
        password=b"pw",
    ),
]


@pytest.mark.parametrize("connect", CONNECTS, ids=["v31", "v311", "v5"])
def test_every_truncated_connect_is_malformed(connect: Connect) -> None:
    """CONNECT's flags say which fields follow, so every proper prefix of its body is
    Malformed (3.1.3: the payload fields MUST appear in order, as the flags declare)."""
    body = encode(connect)[2:]
    assert len(body) < 128
    for cut in range(len(body)):
        expect_error(frame(0x10, body[:cut]), 0, MALFORMED)


def test_truncated_publish_is_malformed_until_its_payload() -> None:
    """Cutting a v5 PUBLISH inside topic, packet identifier or properties is Malformed; cutting
    the payload leaves a valid, shorter PUBLISH (the payload is whatever remains, 3.3.3)."""
    pkt = Publish("a/b", b"payload", 1, packet_id=7)
    wire = encode(pkt, V5)
    body = wire[2:]
    header_len = 5 + 2 + 1  # topic, packet identifier, empty property block
    for cut in range(len(body)):
        data = frame(wire[0], body[:cut])
        if cut < header_len:
            expect_error(data, V5, MALFORMED)
        else:
            assert decode_one(data, V5).payload == b"payload"[: cut - header_len]


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (CONNECT_V311[:1] + bytes([CONNECT_V311[1] + 1]) + CONNECT_V311[2:] + b"\x00", 0),
        (CONNECT_V5[:1] + bytes([CONNECT_V5[1] + 1]) + CONNECT_V5[2:] + b"\x00", 0),
        (hx("20 03 00 00 00"), V311),  # CONNACK has two bytes in 3.1.1
        (hx("40 03 000a 00"), V311),  # no reason codes before MQTT 5
        (hx("62 03 000a 00"), V31),
        (hx("b0 03 0002 00"), V311),  # UNSUBACK has no payload in 3.1.1
        (hx("c0 01 00"), V311),  # PINGREQ has no body
        (hx("d0 01 00"), V5),
        (hx("e0 01 00"), V311),  # DISCONNECT has no body in 3.1.1
        (hx("40 05 000a 00 00 ff"), V5),  # a byte after the properties
        (hx("e0 03 00 00 ff"), V5),
        (hx("f0 03 18 00 ff"), V5),
        (hx("20 04 00 00 00 ff"), V5),
    ],
    ids=lambda x: x.hex() if isinstance(x, bytes) else f"v{x}",
)
def test_packet_longer_than_its_contents(data: bytes, version: int) -> None:
    """Bytes left over after the last field the packet can have are Malformed (2.1.4: the
    Remaining Length is the length of the variable header and payload)."""
    expect_error(data, version, MALFORMED)


# ----------------------------------------------------------------------------------------------
# Strings: UTF-8 (5.0 1.5.4; 3.1.1 1.5.3)

BAD_UTF8 = {
    "invalid-byte": b"\xff",
    "truncated-sequence": b"a\xc3",
    "lone-continuation": b"\x80",
    "overlong-slash": b"\xc0\xaf",
    "overlong-3-byte": b"\xe0\x80\xaf",
    "surrogate-d800": b"\xed\xa0\x80",  # UTF-16 surrogates encoded in UTF-8 [MQTT-1.5.4-1]
    "surrogate-dfff": b"\xed\xbf\xbf",
    "surrogate-pair-cesu": b"\xed\xa0\xbd\xed\xb8\x80",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "nul": b"\x00",  # U+0000 [MQTT-1.5.4-2]
    "nul-inside": b"a\x00b",
    "overlong-nul": b"\xc0\x80",  # "modified UTF-8" NUL
}


def _string_at(where: str, raw: bytes) -> tuple[bytes, int]:
    """A packet whose string field `where` holds the bytes `raw`, and the decoder version."""
    if where == "publish-topic-311":
        return frame(0x30, mstr(raw) + b"x"), V311
    if where == "publish-topic-5":
        return frame(0x30, mstr(raw) + b"\x00x"), V5
    if where == "subscribe-filter":
        return frame(0x82, u16(1) + mstr(raw) + b"\x00"), V311
    if where == "unsubscribe-filter-5":
        return frame(0xA2, u16(1) + b"\x00" + mstr(raw)), V5
    if where == "client-id":
        return frame(0x10, mstr("MQTT") + b"\x04\x02" + u16(0) + mstr(raw)), 0
    if where == "will-topic-5":
        body = mstr("MQTT") + b"\x05\x06" + u16(0) + b"\x00" + mstr("c") + b"\x00" + mstr(raw)
        return frame(0x10, body + mstr(b"")), 0
    if where == "username":
        return frame(0x10, mstr("MQTT") + b"\x04\x82" + u16(0) + mstr("c") + mstr(raw)), 0
    if where == "protocol-name":
        return frame(0x10, mstr(raw) + b"\x04\x02" + u16(0) + mstr("c")), 0
    if where == "user-property-name":
        return frame(0x30, mstr("t") + props(prop(0x26, mstr(raw) + mstr("v")))), V5
    if where == "user-property-value":
        return frame(0x30, mstr("t") + props(prop(0x26, mstr("n") + mstr(raw)))), V5
    if where == "content-type":
        return frame(0x30, mstr("t") + props(prop(0x03, mstr(raw)))), V5
    if where == "reason-string":
        return frame(0x40, u16(1) + b"\x80" + props(prop(0x1F, mstr(raw)))), V5
    assert where == "authentication-method"
    return frame(0xF0, b"\x18" + props(prop(0x15, mstr(raw)))), V5


STRING_FIELDS = [
    "publish-topic-311", "publish-topic-5", "subscribe-filter", "unsubscribe-filter-5",
    "client-id", "will-topic-5", "username", "protocol-name", "user-property-name",
    "user-property-value", "content-type", "reason-string", "authentication-method",
]  # fmt: skip


@pytest.mark.parametrize("where", STRING_FIELDS)
@pytest.mark.parametrize("raw", list(BAD_UTF8.values()), ids=list(BAD_UTF8))
def test_ill_formed_utf8_string(where: str, raw: bytes) -> None:
    """Ill-formed UTF-8 (including UTF-16 surrogates and code points above U+10FFFF) and U+0000
    are a Malformed Packet in every UTF-8 string field [MQTT-1.5.4-1] [MQTT-1.5.4-2]
    (3.1.1 [MQTT-1.5.3-1] [MQTT-1.5.3-2])."""
    data, version = _string_at(where, raw)
    expect_error(data, version, MALFORMED)


@pytest.mark.parametrize(
    "where", [w for w in STRING_FIELDS if w not in ("protocol-name", "authentication-method")]
)
@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("\ufeff", b"\xef\xbb\xbf"),  # BOM: kept, not stripped [MQTT-1.5.4-3]
        ("a\x01b", b"a\x01b"),  # control character: SHOULD NOT, not MUST NOT
        ("\uffff", b"\xef\xbf\xbf"),  # non-character: allowed
        ("é€😀", "é€😀".encode()),  # 2-, 3- and 4-byte sequences
    ],
    ids=["bom", "control", "non-character", "multibyte"],
)
def test_well_formed_edge_strings_are_kept(where: str, text: str, raw: bytes) -> None:
    """Well-formed UTF-8 that is merely unusual decodes unchanged: the BOM U+FEFF MUST NOT be
    skipped or stripped [MQTT-1.5.4-3]; control characters and non-characters are allowed."""
    data, version = _string_at(where, raw)
    pkt = decode_one(data, version)
    found = {
        "publish-topic-311": lambda: pkt.topic,
        "publish-topic-5": lambda: pkt.topic,
        "subscribe-filter": lambda: pkt.requests[0].topic_filter,
        "unsubscribe-filter-5": lambda: pkt.topic_filters[0],
        "client-id": lambda: pkt.client_id,
        "will-topic-5": lambda: pkt.will.topic,
        "username": lambda: pkt.username,
        "user-property-name": lambda: pkt.properties.user_properties[0][0],
        "user-property-value": lambda: pkt.properties.user_properties[0][1],
        "content-type": lambda: pkt.properties.content_type,
        "reason-string": lambda: pkt.properties.reason_string,
    }[where]()
    assert found == text


def test_binary_fields_are_not_utf8_checked() -> None:
    """Password, will payload, correlation and authentication data are Binary Data (1.5.6):
    any bytes, including ones that are not UTF-8."""
    junk = b"\xff\x00\xed\xa0\x80"
    c = decode_one(encode(Connect("c", protocol_level=5, password=junk, will=Will("w", junk))), 0)
    assert c.password == junk and c.will.payload == junk
    data = frame(0x30, mstr("t") + props(prop(0x09, mstr(junk))) + junk)
    p = decode_one(data, V5)
    assert p.properties.correlation_data == junk and p.payload == junk
    a = decode_one(frame(0xF0, b"\x18" + props(prop(0x16, mstr(junk)))), V5)
    assert a.properties.authentication_data == junk


# ----------------------------------------------------------------------------------------------
# Topic names in PUBLISH (4.7)


@pytest.mark.parametrize("topic", ["+", "#", "a/+", "a/#", "+/a", "a/b+", "a#", "#/a"])
@pytest.mark.parametrize("version", [V31, V311, V5])
def test_wildcards_in_publish_topic(topic: str, version: int) -> None:
    """The Topic Name in a PUBLISH MUST NOT contain wildcard characters [MQTT-3.3.2-2]:
    Protocol Error."""
    body = mstr(topic) + (b"\x00" if version == V5 else b"") + b"x"
    expect_error(frame(0x30, body), version, PROTOCOL)


@pytest.mark.parametrize("version", [V31, V311])
def test_empty_topic_before_mqtt5(version: int) -> None:
    """Topic Names MUST be at least one character long [MQTT-4.7.3-1]; only MQTT 5 has topic
    aliases that allow an empty name (3.3.2.1)."""
    expect_error(frame(0x30, mstr("") + b"x"), version, PROTOCOL)
    expect_error(frame(0x32, mstr("") + u16(1) + b"x"), version, PROTOCOL)


def test_response_topic_with_wildcard() -> None:
    """The Response Topic MUST NOT contain wildcard characters [MQTT-3.3.2-14]."""
    data = frame(0x30, mstr("t") + props(prop(0x08, mstr("reply/#"))))
    expect_error(data, V5, PROTOCOL)


@pytest.mark.parametrize("topic", ["", "w/+", "#"])
def test_will_topic_must_be_a_topic_name(topic: str) -> None:
    """The Will Topic is a Topic Name (3.1.3.3): not empty and without wildcards [MQTT-3.3.2-2]
    [MQTT-4.7.3-1]."""
    wire = encode(Connect("c", protocol_level=4, will=Will(topic, b"x")))
    expect_error(wire, 0, PROTOCOL)


# ----------------------------------------------------------------------------------------------
# MQTT 5 properties (2.2.2)


@pytest.mark.parametrize(
    "pid_bytes",
    [b"\x00", b"\x04", b"\x0a", b"\x2b", b"\x3f", b"\x7f", vbi(128), vbi(300)],
    ids=lambda b: b.hex(),
)
def test_unknown_property_identifier(pid_bytes: bytes) -> None:
    """An identifier that is not a property is Malformed (2.2.2.2)."""
    expect_error(frame(0x30, mstr("t") + props(pid_bytes + b"\x01")), V5, MALFORMED)


def test_property_identifier_not_minimal() -> None:
    """The identifier is a Variable Byte Integer and must be minimal [MQTT-1.5.5-1]:
    0x81 0x00 is not 0x01."""
    expect_error(frame(0x30, mstr("t") + props(b"\x81\x00\x01")), V5, MALFORMED)


@pytest.mark.parametrize(
    "block",
    [b"\x80\x00", b"\xff\xff\xff\xff\x01", b"\x02\x0b\x80\x00"],
    ids=["length-not-minimal", "length-five-bytes", "subscription-id-not-minimal"],
)
def test_variable_byte_integers_inside_properties(block: bytes) -> None:
    """Property Length and Subscription Identifier values are Variable Byte Integers: at most
    four bytes, minimal [MQTT-1.5.5-1]."""
    expect_error(frame(0x30, mstr("t") + block + b"\x00" * 8), V5, MALFORMED)


NOT_ALLOWED_PAIRS = [
    pytest.param(ctx, pid, id=f"{CONTEXT_NAMES[ctx]}-{PROPS[pid][0]}")
    for ctx, pids in ALLOWED.items()
    for pid in sorted(set(PROPS) - pids)
]


@pytest.mark.parametrize(("ctx", "pid"), NOT_ALLOWED_PAIRS)
def test_property_not_allowed_in_packet(ctx: object, pid: int) -> None:
    """A property the packet type does not allow is Malformed: 2.2.2.2 "A Control Packet which
    contains an Identifier which is not valid for its packet type ... is a Malformed Packet"."""
    _, _, encoded = PROPS[pid]
    data, _ = in_context(ctx, props(prop(pid, encoded)), None)
    expect_error(data, 0 if ctx in (TYPE_CONNECT, WILL) else V5, MALFORMED)


ALLOWED_PAIRS = [
    pytest.param(ctx, pid, id=f"{CONTEXT_NAMES[ctx]}-{PROPS[pid][0]}")
    for ctx, pids in ALLOWED.items()
    for pid in sorted(pids)
]


@pytest.mark.parametrize(("ctx", "pid"), ALLOWED_PAIRS)
def test_duplicate_property(ctx: object, pid: int) -> None:
    """Including a property twice is a Protocol Error (each property's section, e.g. 3.1.2.11.2
    "more than once"), except User Property (repeatable everywhere, [MQTT-3.3.2-18]) and
    Subscription Identifier in PUBLISH (one per matching subscription, 3.3.2.3.8)."""
    attr, value, encoded = PROPS[pid]
    data, _ = in_context(ctx, props(prop(pid, encoded), prop(pid, encoded)), None)
    version = 0 if ctx in (TYPE_CONNECT, WILL) else V5
    if pid == 0x26 or (pid == 0x0B and ctx == TYPE_PUBLISH):
        pkt = decode_ctx(ctx, data)
        holder = pkt.will if ctx == WILL else pkt
        assert getattr(holder.properties, attr) == value * 2  # both kept, in order
    else:
        expect_error(data, version, PROTOCOL)


FLAG_PROPS = [0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A]


@pytest.mark.parametrize("value", [2, 0xFF])
@pytest.mark.parametrize(
    ("ctx", "pid"),
    [
        pytest.param(ctx, pid, id=f"{CONTEXT_NAMES[ctx]}-{PROPS[pid][0]}")
        for ctx, pids in ALLOWED.items()
        for pid in FLAG_PROPS
        if pid in pids
    ],
)
def test_flag_property_other_than_0_or_1(ctx: object, pid: int, value: int) -> None:
    """Byte properties that are flags take only 0 or 1: "It is a Protocol Error to ... have a
    value other than 0 or 1" (Request Problem/Response Information 3.1.2.11.6-7, Maximum QoS,
    Retain/Wildcard/Subscription Identifier/Shared Subscription Available 3.2.2.3)."""
    data, _ = in_context(ctx, props(prop(pid, bytes([value]))), None)
    expect_error(data, 0 if ctx in (TYPE_CONNECT, WILL) else V5, PROTOCOL)


@pytest.mark.parametrize(
    ("ctx", "pid", "encoded", "reason"),
    [
        (TYPE_SUBSCRIBE, 0x0B, vbi(0), 0x82),  # 3.8.2.1.2
        (TYPE_PUBLISH, 0x0B, vbi(0), 0x82),  # 3.3.2.3.8: 1 to 268,435,455
        (TYPE_CONNECT, 0x21, u16(0), 0x82),  # 3.1.2.11.3
        (TYPE_CONNACK, 0x21, u16(0), 0x82),  # CONNACK 3.2.2.3.3
        (TYPE_CONNECT, 0x27, u32(0), 0x82),  # 3.1.2.11.4
        (TYPE_CONNACK, 0x27, u32(0), 0x82),  # CONNACK 3.2.2.3.6
        (TYPE_PUBLISH, 0x23, u16(0), 0x94),  # [MQTT-3.3.2-8], 3.3.2.3.4: 0x94
    ],
    ids=[
        "subscribe-subscription-id-0",
        "publish-subscription-id-0",
        "connect-receive-maximum-0",
        "connack-receive-maximum-0",
        "connect-maximum-packet-size-0",
        "connack-maximum-packet-size-0",
        "publish-topic-alias-0",
    ],
)
def test_property_value_zero_not_allowed(
    ctx: object, pid: int, encoded: bytes, reason: int
) -> None:
    """Properties whose value 0 is a Protocol Error: Subscription Identifier, Receive Maximum,
    Maximum Packet Size, and Topic Alias (reported as 0x94 Topic Alias invalid, 3.3.2.3.4)."""
    data, _ = in_context(ctx, props(prop(pid, encoded)), None)
    err = expect_error(data, 0 if ctx == TYPE_CONNECT else V5, (ProtocolError, reason))
    assert err.reason_code == reason


# ----------------------------------------------------------------------------------------------
# SUBSCRIBE and UNSUBSCRIBE payloads (3.8.3, 3.10.3)


@pytest.mark.parametrize("options", [0x40, 0x80, 0xC0, 0xC1])
def test_subscribe_reserved_option_bits_v5(options: int) -> None:
    """Bits 6 and 7 of the Subscription Options are reserved: Malformed [MQTT-3.8.3-5]."""
    data = frame(0x82, u16(1) + b"\x00" + mstr("a") + bytes([options]))
    expect_error(data, V5, MALFORMED)


@pytest.mark.parametrize("options", [0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFC])
@pytest.mark.parametrize("version", [V31, V311])
def test_subscribe_reserved_option_bits_before_mqtt5(options: int, version: int) -> None:
    """Before MQTT 5 only the QoS bits exist; any other bit is Malformed [MQTT-3-8.3-4]."""
    data = frame(0x82, u16(1) + mstr("a") + bytes([options | 1]))
    expect_error(data, version, MALFORMED)


def test_subscribe_requested_qos_3() -> None:
    """QoS 3 in a subscription: Protocol Error in MQTT 5 (3.8.3.1 "It is a Protocol Error if
    the Maximum QoS field has the value 3"), Malformed in 3.1.1 [MQTT-3-8.3-4]."""
    expect_error(frame(0x82, u16(1) + b"\x00" + mstr("a") + b"\x03"), V5, PROTOCOL)
    expect_error(frame(0x82, u16(1) + mstr("a") + b"\x03"), V311, MALFORMED)
    expect_error(frame(0x82, u16(1) + mstr("a") + b"\x03"), V31, MALFORMED)


def test_subscribe_retain_handling_3() -> None:
    """3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3"."""
    expect_error(frame(0x82, u16(1) + b"\x00" + mstr("a") + b"\x30"), V5, PROTOCOL)
    expect_error(
        frame(0x82, u16(1) + b"\x00" + mstr("a") + b"\x01" + mstr("b") + b"\x31"), V5, PROTOCOL
    )


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (frame(0x82, u16(1)), V311),  # [MQTT-3.8.3-3]
        (frame(0x82, u16(1)), V31),
        (frame(0x82, u16(1) + b"\x00"), V5),  # [MQTT-3.8.3-2]
        (frame(0x82, u16(1) + props(prop(0x0B, vbi(5)))), V5),
        (frame(0xA2, u16(1)), V311),  # [MQTT-3.10.3-2]
        (frame(0xA2, u16(1) + b"\x00"), V5),
    ],
    ids=[
        "subscribe-311",
        "subscribe-31",
        "subscribe-5",
        "subscribe-5-props",
        "unsubscribe-311",
        "unsubscribe-5",
    ],
)
def test_subscribe_and_unsubscribe_without_filters(data: bytes, version: int) -> None:
    """The payload MUST contain at least one topic filter: a SUBSCRIBE or UNSUBSCRIBE with no
    payload is a Protocol Error [MQTT-3.8.3-2] [MQTT-3.10.3-2] (3.1.1 [MQTT-3.8.3-3])."""
    expect_error(data, version, PROTOCOL)


# ----------------------------------------------------------------------------------------------
# CONNECT (3.1)


def _connect(flags: int, payload: bytes, level: int = 4, name: str = "MQTT") -> bytes:
    """A CONNECT with raw `flags` and `payload` (after the client identifier)."""
    body = mstr(name) + bytes([level, flags]) + u16(60)
    body += (b"\x00" if level == 5 else b"") + mstr("c") + payload
    return frame(0x10, body)


@pytest.mark.parametrize("level", [3, 4, 5])
def test_connect_reserved_flag(level: int) -> None:
    """The reserved Connect Flag (bit 0) MUST be 0; otherwise Malformed [MQTT-3.1.2-3]."""
    name = "MQIsdp" if level == 3 else "MQTT"
    expect_error(_connect(0x03, b"", level, name), 0, MALFORMED)


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("flags", [0x0A, 0x12, 0x1A, 0x22, 0x3A], ids=lambda f: f"flags{f:02x}")
def test_connect_will_qos_or_retain_without_will(flags: int, level: int) -> None:
    """Without the Will Flag, Will QoS and Will Retain MUST be 0 (5.0 [MQTT-3.1.2-11]
    [MQTT-3.1.2-13]; 3.1.1 [MQTT-3.1.2-13] [MQTT-3.1.2-15]): Malformed."""
    expect_error(_connect(flags, b"", level), 0, MALFORMED)


@pytest.mark.parametrize("level", [4, 5])
def test_connect_will_qos_3(level: int) -> None:
    """Will QoS 3 is Malformed (5.0 [MQTT-3.1.2-12]; 3.1.1 [MQTT-3.1.2-14])."""
    will = (b"\x00" if level == 5 else b"") + mstr("w") + mstr(b"x")
    expect_error(_connect(0x1E, will, level), 0, MALFORMED)


@pytest.mark.parametrize("level", [3, 4])
def test_connect_password_without_username_before_mqtt5(level: int) -> None:
    """3.1.1: if the User Name Flag is 0, the Password Flag MUST be 0 [MQTT-3.1.2-22]."""
    name = "MQIsdp" if level == 3 else "MQTT"
    expect_error(_connect(0x42, mstr(b"pw"), level, name), 0, MALFORMED)


def test_connect_password_without_username_in_mqtt5() -> None:
    """MQTT 5 allows a Password without a User Name (3.1.2.9)."""
    c = decode_one(_connect(0x42, mstr(b"pw"), 5), 0)
    assert c.username is None and c.password == b"pw"


@pytest.mark.parametrize("name", ["MQTX", "mqtt", "", "MQIsdp ", "MQTT\u00e9"])
def test_connect_unknown_protocol_name(name: str) -> None:
    """A protocol name other than "MQTT" (or "MQIsdp" for 3.1) is not this protocol
    [MQTT-3.1.2-1]: the CONNECT is refused as Malformed."""
    expect_error(_connect(0x02, b"", 4, name), 0, MALFORMED)


@pytest.mark.parametrize(
    ("name", "level"),
    [("MQTT", 3), ("MQTT", 6), ("MQTT", 0), ("MQTT", 255), ("MQIsdp", 4), ("MQIsdp", 5)],
)
def test_connect_unsupported_protocol_level(name: str, level: int) -> None:
    """A known protocol name with a level this broker does not speak: UnsupportedProtocol with
    that level, so the server can answer CONNACK 0x01 (3.1.1 [MQTT-3.1.2-2]) or 0x84
    (5.0 [MQTT-3.1.2-2])."""
    err = expect_error(_raw_level(name, level), 0, (UnsupportedProtocol, 0x84))
    assert err.protocol_level == level


def _raw_level(name: str, level: int) -> bytes:
    """A 3.1.1-shaped CONNECT whose protocol level byte is `level`."""
    return frame(0x10, mstr(name) + bytes([level, 0x02]) + u16(60) + mstr("c"))


@pytest.mark.parametrize("first", [CONNECT_V311, CONNECT_V5], ids=["v311", "v5"])
def test_second_connect(first: bytes) -> None:
    """A second CONNECT on a connection is a Protocol Error [MQTT-3.1.0-2]."""
    d = Decoder()
    assert len(d.feed(first)) == 1
    with pytest.raises(ProtocolError):
        d.feed(first)
    expect_error(first + first, 0, PROTOCOL, packets_before=1)


@pytest.mark.parametrize("ptype", range(2, 15))
def test_packet_before_connect(ptype: int) -> None:
    """The first packet from a client MUST be CONNECT [MQTT-3.1.0-1]: any other is a Protocol
    Error for a decoder that has not seen one."""
    expect_error(_valid_packets(V311)[ptype], 0, PROTOCOL)


def test_auth_before_connect() -> None:
    """AUTH before CONNECT: the level is not known yet, so type 15 is not a valid packet type
    for this decoder (Malformed); the connection refuses any first packet but CONNECT anyway."""
    expect_error(hx("f0 00"), 0, MALFORMED)


# ----------------------------------------------------------------------------------------------
# Maximum Packet Size (5.0 3.1.2.11.4 / 3.2.2.3.6, 4.13: 0x95 Packet too large)


def test_packet_larger_than_maximum() -> None:
    """The Maximum Packet Size counts the whole packet, fixed header included: exactly the
    limit is accepted, one byte more is PacketTooLarge (0x95)."""
    wire = encode(Publish("a/b", b"x" * 20), V5)
    assert len(Decoder(V5, len(wire)).feed(wire)) == 1
    expect_error(wire, V5, (PacketTooLarge, 0x95), max_packet_size=len(wire) - 1)


@pytest.mark.parametrize("header", [hx("30 ff 7f"), hx("30 ff ff ff 7f"), hx("82 e9 07")])
def test_packet_too_large_as_soon_as_the_header_arrives(header: bytes) -> None:
    """The size is known from the fixed header: the decoder refuses before any of the body
    arrives (and so never buffers it)."""
    d = Decoder(V311, max_packet_size=1000)
    with pytest.raises(PacketTooLarge) as info:
        d.feed(header)
    assert info.value.reason_code == 0x95
    d = Decoder(V311, max_packet_size=1000)
    assert d.feed(header[:-1]) == []  # the header is not complete yet
    with pytest.raises(PacketTooLarge):
        d.feed(header[-1:])


def test_packet_too_large_before_connect() -> None:
    """The limit applies to the CONNECT too (the broker's limit holds from the first byte)."""
    wire = encode(Connect("x" * 100, protocol_level=5))
    expect_error(wire, 0, (PacketTooLarge, 0x95), max_packet_size=50)


def test_packet_too_large_after_valid_packets() -> None:
    """Packets before the oversized one are fine; the oversized one raises when it arrives."""
    small = encode(Publish("a", b"x"), V311)
    big = encode(Publish("a", b"x" * 200), V311)
    d = Decoder(V311, max_packet_size=100)
    assert len(d.feed(small * 3)) == 3
    with pytest.raises(PacketTooLarge):
        d.feed(big)
