"""rawmqtt - a tiny raw-socket MQTT 3.1 / 3.1.1 / 5.0 client for byte-exact protocol tests.

Nothing here is clever or forgiving: builders emit exactly the bytes asked for (including invalid
ones, so tests can send malformed packets), and the parser decodes what the broker sent without
hiding anything (`Packet.raw`, `Packet.flags`, `Packet.property_list`).

Stable API (other test modules import it; extend, do not change):

Constants
    V31, V311, V5                  protocol levels 3, 4, 5 (`version=` everywhere)
    PacketType                     IntEnum CONNECT(1) .. AUTH(15)
    Prop                           IntEnum of MQTT 5 property identifiers (spec table 2-4)
    RC                             IntEnum of MQTT 5 reason codes (spec table 2-6)
    ConnackV3                      IntEnum of MQTT 3.1.1 CONNACK return codes

Encoding helpers
    encode_varint(n) / decode_varint(buf, pos) -> (value, pos)
    encode_u16(n), encode_u32(n)
    encode_string(s)               str is UTF-8 encoded; bytes are sent verbatim (invalid UTF-8!)
    encode_binary(b)
    encode_properties(props)       props: None | Mapping[int, Any] | Iterable[(id, value)] | bytes
                                   (bytes = the already-encoded property block, length added here;
                                   a (id, bytes) pair for an id not in the table is sent raw)
    decode_properties(buf, pos) -> (dict, list, pos)
    sub_options(qos, no_local, retain_as_published, retain_handling) -> int
    raw_packet(ptype, flags, body) -> bytes          fixed header + remaining length + body

Packet builders (each returns the whole packet as bytes; `version` selects 3.1.1 or 5 layout)
    connect(client_id, *, version, clean, keepalive, username, password, will, properties,
            protocol_name, protocol_level, extra_flags, flags)
    Will(topic, payload, qos, retain, properties)     the will of a CONNECT
    connack(session_present, reason, properties, version)
    publish(topic, payload, *, qos, retain, dup, packet_id, properties, version)
    puback / pubrec / pubrel / pubcomp(packet_id, reason=None, properties=None, version=5)
    subscribe(packet_id, topics, *, properties, version, flags)   topics: str | [(filter, opts)]
    suback(packet_id, reason_codes, properties, version)
    unsubscribe(packet_id, filters, *, properties, version)
    unsuback(packet_id, reason_codes, properties, version)
    pingreq(), pingresp()
    disconnect(reason=None, properties=None, version=5)
    auth(reason=0, properties=None)

Parsing
    split_packet(buf) -> (packet_bytes, rest) | None  (None: incomplete; MalformedError: >4 byte
                                                       remaining length)
    parse_packet(data, version=5) -> Packet
    Packet: type, flags, body, raw, version, packet_id, reason_code, reason_codes,
            session_present, properties (dict: USER_PROPERTY -> list of (k, v),
            SUBSCRIPTION_IDENTIFIER -> list of int, others -> value), property_list, topic,
            topic_bytes, payload, fields (CONNECT/SUBSCRIBE details); .qos .dup .retain .name

Client
    RawClient(address, *, version=5, timeout=3.0)      address: (host, port) or obj with .host/.port
        .send(data)                          raw bytes
        .recv(timeout=None) -> Packet        raises TimeoutError / ConnectionClosed; returns packets
                                             set aside in .pending (see below) first
        .expect(ptype, timeout=None) -> Packet        recv + assert type
        .expect_nothing(window=0.4)          asserts no packet (and no close) within `window`
        .wait_closed(timeout=None) -> list[Packet]    packets received before the close;
                                                      AssertionError if still open at the deadline
        .closed                              True once EOF/reset was seen
        .connect(client_id, **connect_kwargs) -> CONNACK Packet (also stored in .connack)
        .publish(topic, payload, qos=0, ...) -> final ack Packet or None (QoS 0); completes the
                                             QoS 1/2 flow unless wait=False
            (publish/subscribe/unsubscribe/ack wait for the matching ack by type and packet id;
             packets of other kinds arriving meanwhile are kept in .pending, in order)
        .subscribe(topics, qos=0, *, properties, packet_id) -> SUBACK Packet
        .unsubscribe(filters, *, properties, packet_id) -> UNSUBACK Packet
        .ping() -> PINGRESP Packet
        .ack(pkt, complete=True)             PUBACK (QoS 1) / PUBREC[-PUBREL-PUBCOMP] (QoS 2)
        .disconnect(reason=None, properties=None, linger=1.0)  send DISCONNECT, wait for the
                                             server's close (at most `linger` s), close
        .close()                             drop the TCP connection (no DISCONNECT)
        .abort()                             reset the TCP connection (RST)
        .pending                             deque of packets set aside while waiting for acks
        RawClient.live                       set of clients not yet closed (fixtures close them)
        .next_packet_id()
    RawClient.connected(address, client_id, *, version, timeout, **connect_kwargs) -> RawClient
        opens, sends CONNECT, asserts a successful CONNACK.
    ConnectionClosed, MalformedError         exceptions
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Protocol

V31 = 3
V311 = 4
V5 = 5

DEFAULT_TIMEOUT = 3.0


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class Prop(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class RC(IntEnum):
    """MQTT 5 reason codes (spec table 2-6). Values < 0x80 are successes."""

    SUCCESS = 0x00  # also NORMAL_DISCONNECTION and GRANTED_QOS_0
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnackV3(IntEnum):
    """MQTT 3.1 / 3.1.1 CONNACK return codes."""

    ACCEPTED = 0x00
    UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USER_NAME_OR_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05


class ConnectionClosed(Exception):
    """The peer closed (or reset) the TCP connection."""


class MalformedError(ValueError):
    """Bytes that cannot be parsed as an MQTT packet."""


# -- primitive encoders / decoders ------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """Variable Byte Integer (spec 1.5.5). Values above 268,435,455 are encoded anyway (5 bytes)
    so that tests can produce over-long encodings on purpose."""
    if n < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes, pos: int = 0) -> tuple[int, int]:
    """Decode a Variable Byte Integer at `pos`; returns (value, position after it)."""
    value = 0
    mult = 1
    for i in range(4):
        if pos + i >= len(buf):
            raise MalformedError("truncated variable byte integer")
        b = buf[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise MalformedError("variable byte integer longer than 4 bytes")


def encode_u16(n: int) -> bytes:
    return struct.pack("!H", n)


def encode_u32(n: int) -> bytes:
    return struct.pack("!I", n)


def encode_string(s: str | bytes) -> bytes:
    """UTF-8 Encoded String (spec 1.5.4). `bytes` are used verbatim, so invalid UTF-8 or U+0000
    can be sent deliberately."""
    data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return encode_u16(len(data)) + data


def encode_binary(b: bytes | str) -> bytes:
    data = b.encode("utf-8") if isinstance(b, str) else bytes(b)
    return encode_u16(len(data)) + data


def sub_options(
    qos: int = 0,
    no_local: bool = False,
    retain_as_published: bool = False,
    retain_handling: int = 0,
) -> int:
    """The MQTT 5 Subscription Options byte (spec 3.8.3.1); for 3.1.1 only `qos` is meaningful."""
    return (
        (qos & 0x03)
        | (0x04 if no_local else 0)
        | (0x08 if retain_as_published else 0)
        | ((retain_handling & 0x03) << 4)
    )


# -- properties -------------------------------------------------------------------------------

_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)

PROPERTY_TYPES: dict[int, int] = {
    Prop.PAYLOAD_FORMAT_INDICATOR: _BYTE,
    Prop.MESSAGE_EXPIRY_INTERVAL: _U32,
    Prop.CONTENT_TYPE: _STRING,
    Prop.RESPONSE_TOPIC: _STRING,
    Prop.CORRELATION_DATA: _BINARY,
    Prop.SUBSCRIPTION_IDENTIFIER: _VARINT,
    Prop.SESSION_EXPIRY_INTERVAL: _U32,
    Prop.ASSIGNED_CLIENT_IDENTIFIER: _STRING,
    Prop.SERVER_KEEP_ALIVE: _U16,
    Prop.AUTHENTICATION_METHOD: _STRING,
    Prop.AUTHENTICATION_DATA: _BINARY,
    Prop.REQUEST_PROBLEM_INFORMATION: _BYTE,
    Prop.WILL_DELAY_INTERVAL: _U32,
    Prop.REQUEST_RESPONSE_INFORMATION: _BYTE,
    Prop.RESPONSE_INFORMATION: _STRING,
    Prop.SERVER_REFERENCE: _STRING,
    Prop.REASON_STRING: _STRING,
    Prop.RECEIVE_MAXIMUM: _U16,
    Prop.TOPIC_ALIAS_MAXIMUM: _U16,
    Prop.TOPIC_ALIAS: _U16,
    Prop.MAXIMUM_QOS: _BYTE,
    Prop.RETAIN_AVAILABLE: _BYTE,
    Prop.USER_PROPERTY: _PAIR,
    Prop.MAXIMUM_PACKET_SIZE: _U32,
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}

# Properties that may legitimately appear more than once; decoded as lists.
REPEATABLE = frozenset({Prop.USER_PROPERTY, Prop.SUBSCRIPTION_IDENTIFIER})

Properties = Mapping[int, Any] | Iterable[tuple[int, Any]] | bytes | None


def _encode_property(pid: int, value: Any) -> bytes:
    ptype = PROPERTY_TYPES.get(pid)
    head = encode_varint(pid)
    if ptype is None:
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"unknown property 0x{pid:02x} needs a raw bytes value")
        return head + bytes(value)
    if ptype == _BYTE:
        return head + bytes([value])
    if ptype == _U16:
        return head + encode_u16(value)
    if ptype == _U32:
        return head + encode_u32(value)
    if ptype == _VARINT:
        return head + encode_varint(value)
    if ptype == _STRING:
        return head + encode_string(value)
    if ptype == _BINARY:
        return head + encode_binary(value)
    key, val = value
    return head + encode_string(key) + encode_string(val)


def _property_items(props: Mapping[int, Any] | Iterable[tuple[int, Any]]) -> list[tuple[int, Any]]:
    if isinstance(props, Mapping):
        items: list[tuple[int, Any]] = []
        for pid, value in props.items():
            if pid in REPEATABLE and isinstance(value, list):
                items.extend((pid, v) for v in value)
            else:
                items.append((pid, value))
        return items
    return list(props)


def encode_properties(props: Properties) -> bytes:
    """A property block with its Property Length prefix (spec 2.2.2). Order and duplicates of an
    iterable of pairs are kept, so duplicate properties can be sent on purpose."""
    if props is None:
        return b"\x00"
    if isinstance(props, (bytes, bytearray)):
        return encode_varint(len(props)) + bytes(props)
    body = b"".join(_encode_property(pid, v) for pid, v in _property_items(props))
    return encode_varint(len(body)) + body


def _read_u16(buf: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(buf):
        raise MalformedError("truncated two byte integer")
    return struct.unpack_from("!H", buf, pos)[0], pos + 2


def _read_u32(buf: bytes, pos: int) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise MalformedError("truncated four byte integer")
    return struct.unpack_from("!I", buf, pos)[0], pos + 4


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_u16(buf, pos)
    if pos + n > len(buf):
        raise MalformedError("truncated string/binary")
    return bytes(buf[pos : pos + n]), pos + n


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    data, pos = _read_bytes(buf, pos)
    return data.decode("utf-8", errors="surrogateescape"), pos


def decode_properties(buf: bytes, pos: int) -> tuple[dict[int, Any], list[tuple[int, Any]], int]:
    """Decode a property block at `pos`. Returns (dict, ordered list of (id, value), new pos)."""
    length, pos = decode_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedError("property length beyond packet end")
    plist: list[tuple[int, Any]] = []
    while pos < end:
        pid, pos = decode_varint(buf, pos)
        ptype = PROPERTY_TYPES.get(pid)
        value: Any
        if ptype is None:
            raise MalformedError(f"unknown property identifier 0x{pid:02x}")
        if ptype == _BYTE:
            if pos >= end:
                raise MalformedError("truncated byte property")
            value, pos = buf[pos], pos + 1
        elif ptype == _U16:
            value, pos = _read_u16(buf, pos)
        elif ptype == _U32:
            value, pos = _read_u32(buf, pos)
        elif ptype == _VARINT:
            value, pos = decode_varint(buf, pos)
        elif ptype == _STRING:
            value, pos = _read_str(buf, pos)
        elif ptype == _BINARY:
            value, pos = _read_bytes(buf, pos)
        else:
            k, pos = _read_str(buf, pos)
            v, pos = _read_str(buf, pos)
            value = (k, v)
        plist.append((pid, value))
    if pos != end:
        raise MalformedError("property overran its length")
    props: dict[int, Any] = {}
    for pid, value in plist:
        if pid in REPEATABLE:
            props.setdefault(pid, []).append(value)
        else:
            props[pid] = value
    return props, plist, end


# -- packet builders --------------------------------------------------------------------------


def raw_packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header (type << 4 | flags), Remaining Length, body."""
    return bytes([((ptype & 0x0F) << 4) | (flags & 0x0F)]) + encode_varint(len(body)) + body


@dataclass
class Will:
    """The Will Message of a CONNECT packet."""

    topic: str | bytes
    payload: bytes | str = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = None  # MQTT 5 Will Properties


def connect(
    client_id: str | bytes = "",
    *,
    version: int = V5,
    clean: bool = True,
    keepalive: int = 60,
    username: str | bytes | None = None,
    password: bytes | str | None = None,
    will: Will | None = None,
    properties: Properties = None,
    protocol_name: str | bytes | None = None,
    protocol_level: int | None = None,
    extra_flags: int = 0,
    flags: int | None = None,
) -> bytes:
    """CONNECT (spec 3.1). `version` 3 uses protocol name "MQIsdp". `extra_flags` is OR-ed into the
    computed Connect Flags (e.g. 0x01 = reserved bit, 0x20 = will retain without a will);
    `flags` replaces them entirely. The payload fields follow the flags actually computed from
    the arguments, not `flags`."""
    name = protocol_name if protocol_name is not None else ("MQIsdp" if version == V31 else "MQTT")
    level = protocol_level if protocol_level is not None else version
    f = 0x02 if clean else 0
    if will is not None:
        f |= 0x04 | ((will.qos & 0x03) << 3) | (0x20 if will.retain else 0)
    if password is not None:
        f |= 0x40
    if username is not None:
        f |= 0x80
    f |= extra_flags
    if flags is not None:
        f = flags
    vh = encode_string(name) + bytes([level & 0xFF, f & 0xFF]) + encode_u16(keepalive)
    if version == V5:
        vh += encode_properties(properties)
    payload = encode_string(client_id)
    if will is not None:
        if version == V5:
            payload += encode_properties(will.properties)
        payload += encode_string(will.topic) + encode_binary(will.payload)
    if username is not None:
        payload += encode_string(username)
    if password is not None:
        payload += encode_binary(password)
    return raw_packet(PacketType.CONNECT, 0, vh + payload)


def connack(
    session_present: bool = False, reason: int = 0, properties: Properties = None, version: int = V5
) -> bytes:
    body = bytes([1 if session_present else 0, reason])
    if version == V5:
        body += encode_properties(properties)
    return raw_packet(PacketType.CONNACK, 0, body)


def publish(
    topic: str | bytes,
    payload: bytes | str = b"",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    properties: Properties = None,
    version: int = V5,
) -> bytes:
    """PUBLISH (spec 3.3). A packet id is written when `qos` > 0 or `packet_id` is given (so a
    QoS 0 PUBLISH with a packet id, or QoS 3, can be built on purpose)."""
    flags = (0x08 if dup else 0) | ((qos & 0x03) << 1) | (0x01 if retain else 0)
    body = encode_string(topic)
    if qos > 0 or packet_id is not None:
        body += encode_u16(packet_id if packet_id is not None else 1)
    if version == V5:
        body += encode_properties(properties)
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return raw_packet(PacketType.PUBLISH, flags, body + data)


def _ack(
    ptype: int, flags: int, packet_id: int, reason: int | None, properties: Properties, version: int
) -> bytes:
    body = encode_u16(packet_id)
    if version == V5 and (reason is not None or properties is not None):
        body += bytes([reason or 0])
        if properties is not None:
            body += encode_properties(properties)
    return raw_packet(ptype, flags, body)


def puback(
    packet_id: int, reason: int | None = None, properties: Properties = None, version: int = V5
) -> bytes:
    return _ack(PacketType.PUBACK, 0, packet_id, reason, properties, version)


def pubrec(
    packet_id: int, reason: int | None = None, properties: Properties = None, version: int = V5
) -> bytes:
    return _ack(PacketType.PUBREC, 0, packet_id, reason, properties, version)


def pubrel(
    packet_id: int, reason: int | None = None, properties: Properties = None, version: int = V5
) -> bytes:
    return _ack(PacketType.PUBREL, 0x02, packet_id, reason, properties, version)


def pubcomp(
    packet_id: int, reason: int | None = None, properties: Properties = None, version: int = V5
) -> bytes:
    return _ack(PacketType.PUBCOMP, 0, packet_id, reason, properties, version)


def _topic_list(topics: str | Iterable[tuple[str | bytes, int]], qos: int) -> list[tuple[Any, int]]:
    if isinstance(topics, str):
        return [(topics, qos)]
    return list(topics)


def subscribe(
    packet_id: int,
    topics: str | Iterable[tuple[str | bytes, int]],
    *,
    qos: int = 0,
    properties: Properties = None,
    version: int = V5,
    flags: int = 0x02,
) -> bytes:
    """SUBSCRIBE (spec 3.8). `topics` is one filter (subscribed at `qos`) or a list of
    (filter, options byte) pairs; see `sub_options`. `flags` are the fixed-header flags (must be
    0b0010; other values are Malformed)."""
    body = encode_u16(packet_id)
    if version == V5:
        body += encode_properties(properties)
    for topic, opts in _topic_list(topics, qos):
        body += encode_string(topic) + bytes([opts])
    return raw_packet(PacketType.SUBSCRIBE, flags, body)


def suback(
    packet_id: int, reason_codes: Iterable[int], properties: Properties = None, version: int = V5
) -> bytes:
    body = encode_u16(packet_id)
    if version == V5:
        body += encode_properties(properties)
    return raw_packet(PacketType.SUBACK, 0, body + bytes(reason_codes))


def unsubscribe(
    packet_id: int,
    filters: str | Iterable[str | bytes],
    *,
    properties: Properties = None,
    version: int = V5,
    flags: int = 0x02,
) -> bytes:
    body = encode_u16(packet_id)
    if version == V5:
        body += encode_properties(properties)
    for f in [filters] if isinstance(filters, str) else filters:
        body += encode_string(f)
    return raw_packet(PacketType.UNSUBSCRIBE, flags, body)


def unsuback(
    packet_id: int,
    reason_codes: Iterable[int] = (),
    properties: Properties = None,
    version: int = V5,
) -> bytes:
    body = encode_u16(packet_id)
    if version == V5:
        body += encode_properties(properties) + bytes(reason_codes)
    return raw_packet(PacketType.UNSUBACK, 0, body)


def pingreq() -> bytes:
    return b"\xc0\x00"


def pingresp() -> bytes:
    return b"\xd0\x00"


def disconnect(
    reason: int | None = None, properties: Properties = None, version: int = V5
) -> bytes:
    """DISCONNECT (spec 3.14). For 3.1.1, or v5 with neither reason nor properties: 0xE0 0x00."""
    body = b""
    if version == V5 and (reason is not None or properties is not None):
        body = bytes([reason or 0])
        if properties is not None:
            body += encode_properties(properties)
    return raw_packet(PacketType.DISCONNECT, 0, body)


def auth(reason: int = 0, properties: Properties = None) -> bytes:
    return raw_packet(PacketType.AUTH, 0, bytes([reason]) + encode_properties(properties))


# -- parsing ----------------------------------------------------------------------------------


@dataclass
class Packet:
    """One decoded MQTT Control Packet."""

    type: int
    flags: int
    body: bytes
    raw: bytes
    version: int
    packet_id: int | None = None
    reason_code: int | None = None  # CONNACK return/reason code, PUB*, DISCONNECT, AUTH
    reason_codes: list[int] = field(default_factory=list)  # SUBACK / UNSUBACK
    session_present: bool | None = None
    properties: dict[int, Any] = field(default_factory=dict)
    property_list: list[tuple[int, Any]] = field(default_factory=list)
    topic: str | None = None
    topic_bytes: bytes | None = None
    payload: bytes = b""
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        try:
            return PacketType(self.type).name
        except ValueError:
            return f"TYPE{self.type}"

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03 if self.type == PacketType.PUBLISH else 0

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08) if self.type == PacketType.PUBLISH else False

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01) if self.type == PacketType.PUBLISH else False

    def __repr__(self) -> str:
        bits = [self.name]
        if self.type == PacketType.PUBLISH:
            bits.append(f"topic={self.topic!r} qos={self.qos} dup={self.dup} retain={self.retain}")
            bits.append(f"payload={self.payload[:60]!r}")
        if self.packet_id is not None:
            bits.append(f"id={self.packet_id}")
        if self.reason_code is not None:
            bits.append(f"rc=0x{self.reason_code:02x}")
        if self.reason_codes:
            bits.append("rcs=[" + ",".join(f"0x{c:02x}" for c in self.reason_codes) + "]")
        if self.session_present is not None:
            bits.append(f"sp={int(self.session_present)}")
        if self.properties:
            bits.append(f"props={self.properties}")
        return "<" + " ".join(bits) + ">"


def split_packet(buf: bytes | bytearray) -> tuple[bytes, bytes] | None:
    """If `buf` starts with a whole packet return (packet, rest), else None (need more bytes)."""
    if len(buf) < 2:
        return None
    length = 0
    mult = 1
    pos = 1
    while True:
        if pos >= len(buf):
            return None
        if pos > 4:
            raise MalformedError("remaining length longer than 4 bytes")
        b = buf[pos]
        length += (b & 0x7F) * mult
        mult *= 128
        pos += 1
        if not b & 0x80:
            break
    end = pos + length
    if len(buf) < end:
        return None
    return bytes(buf[:end]), bytes(buf[end:])


def parse_packet(data: bytes, version: int = V5) -> Packet:
    """Decode one whole packet (as returned by `split_packet`)."""
    if len(data) < 2:
        raise MalformedError("packet shorter than a fixed header")
    first = data[0]
    ptype, flags = first >> 4, first & 0x0F
    length, pos = decode_varint(data, 1)
    body = bytes(data[pos : pos + length])
    if len(body) != length:
        raise MalformedError("truncated packet")
    pkt = Packet(type=ptype, flags=flags, body=body, raw=bytes(data), version=version)
    v5 = version == V5
    try:
        _parse_body(pkt, body, v5)
    except (struct.error, IndexError) as e:
        raise MalformedError(str(e)) from e
    return pkt


def _parse_body(pkt: Packet, body: bytes, v5: bool) -> None:
    t = pkt.type
    if t == PacketType.CONNACK:
        pkt.session_present = bool(body[0] & 0x01)
        pkt.reason_code = body[1]
        if v5 and len(body) > 2:
            pkt.properties, pkt.property_list, _ = decode_properties(body, 2)
    elif t == PacketType.PUBLISH:
        pkt.topic_bytes, pos = _read_bytes(body, 0)
        pkt.topic = pkt.topic_bytes.decode("utf-8", errors="surrogateescape")
        if pkt.qos > 0:
            pkt.packet_id, pos = _read_u16(body, pos)
        if v5:
            pkt.properties, pkt.property_list, pos = decode_properties(body, pos)
        pkt.payload = body[pos:]
    elif t in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
        pkt.packet_id, pos = _read_u16(body, 0)
        pkt.reason_code = 0
        if v5 and len(body) > 2:
            pkt.reason_code = body[2]
            if len(body) > 3:
                pkt.properties, pkt.property_list, _ = decode_properties(body, 3)
    elif t in (PacketType.SUBACK, PacketType.UNSUBACK):
        pkt.packet_id, pos = _read_u16(body, 0)
        if v5:
            pkt.properties, pkt.property_list, pos = decode_properties(body, pos)
        pkt.reason_codes = list(body[pos:])
    elif t in (PacketType.DISCONNECT, PacketType.AUTH):
        if v5:
            pkt.reason_code = body[0] if body else 0
            if len(body) > 1:
                pkt.properties, pkt.property_list, _ = decode_properties(body, 1)
    elif t == PacketType.CONNECT:
        _parse_connect(pkt, body)
    elif t in (PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE):
        pkt.packet_id, pos = _read_u16(body, 0)
        if v5:
            pkt.properties, pkt.property_list, pos = decode_properties(body, pos)
        filters: list[Any] = []
        while pos < len(body):
            topic, pos = _read_str(body, pos)
            if t == PacketType.SUBSCRIBE:
                filters.append((topic, body[pos]))
                pos += 1
            else:
                filters.append(topic)
        pkt.fields["filters"] = filters


def _parse_connect(pkt: Packet, body: bytes) -> None:
    name, pos = _read_str(body, 0)
    level, cflags = body[pos], body[pos + 1]
    keepalive, pos = _read_u16(body, pos + 2)
    v5 = level == V5
    pkt.version = level
    f: dict[str, Any] = {
        "protocol_name": name,
        "protocol_level": level,
        "connect_flags": cflags,
        "clean": bool(cflags & 0x02),
        "keepalive": keepalive,
    }
    if v5:
        pkt.properties, pkt.property_list, pos = decode_properties(body, pos)
    f["client_id"], pos = _read_str(body, pos)
    if cflags & 0x04:
        will_props: dict[int, Any] = {}
        if v5:
            will_props, _, pos = decode_properties(body, pos)
        topic, pos = _read_str(body, pos)
        payload, pos = _read_bytes(body, pos)
        f["will"] = Will(topic, payload, (cflags >> 3) & 0x03, bool(cflags & 0x20), will_props)
    if cflags & 0x80:
        f["username"], pos = _read_str(body, pos)
    if cflags & 0x40:
        f["password"], pos = _read_bytes(body, pos)
    pkt.fields = f


# -- the client -------------------------------------------------------------------------------


class _HasAddress(Protocol):
    host: str
    port: int


Address = tuple[str, int] | _HasAddress


def _addr(address: Address) -> tuple[str, int]:
    if isinstance(address, tuple):
        return address
    return (address.host, address.port)


class RawClient:
    """A blocking TCP MQTT client that sends exactly the bytes it is given.

    `version` selects how incoming packets are parsed and the layout of packets built by the
    convenience methods. Every read is bounded by a timeout (default `timeout`).
    `RawClient.live` holds every client not yet closed (test fixtures close leftovers)."""

    live: ClassVar[set[RawClient]] = set()

    def __init__(self, address: Address, *, version: int = V5, timeout: float = DEFAULT_TIMEOUT):
        self.address = _addr(address)
        self.version = version
        self.timeout = timeout
        self.sock = socket.create_connection(self.address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.pending: deque[Packet] = deque()  # set aside while waiting for an ack
        self._eof = False
        self._pid = 0
        self.connack: Packet | None = None
        RawClient.live.add(self)

    @classmethod
    def connected(
        cls,
        address: Address,
        client_id: str | bytes,
        *,
        version: int = V5,
        timeout: float = DEFAULT_TIMEOUT,
        **connect_kwargs: Any,
    ) -> RawClient:
        """Open a connection, CONNECT and assert that the CONNACK is a success."""
        c = cls(address, version=version, timeout=timeout)
        try:
            ack = c.connect(client_id, **connect_kwargs)
            assert ack.reason_code == 0, f"CONNECT refused: {ack}"
        except BaseException:
            c.close()
            raise
        return c

    # -- context manager --
    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level --
    @property
    def closed(self) -> bool:
        return self._eof

    def send(self, data: bytes) -> None:
        """Send raw bytes. Raises ConnectionClosed if the peer has already gone."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            self._eof = True
            raise ConnectionClosed(str(e)) from e

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on timeout. Raises ConnectionClosed on EOF/reset."""
        if self._eof:
            raise ConnectionClosed("connection closed by peer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
            self._eof = True
            raise ConnectionClosed(str(e)) from e
        except TimeoutError:
            return False
        if not chunk:
            self._eof = True
            raise ConnectionClosed("connection closed by peer")
        self._buf += chunk
        return True

    def _take(self) -> Packet | None:
        if self.pending:
            return self.pending.popleft()
        return self._take_wire()

    def _take_wire(self) -> Packet | None:
        split = split_packet(self._buf)
        if split is None:
            return None
        data, rest = split
        self._buf = bytearray(rest)
        return parse_packet(data, self.version)

    def recv(self, timeout: float | None = None) -> Packet:
        """The next packet. Raises TimeoutError if none within `timeout`, ConnectionClosed if the
        connection closes first (buffered whole packets are returned before that)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            pkt = self._take()
            if pkt is not None:
                return pkt
            if not self._fill(deadline):
                raise TimeoutError(f"no packet within {timeout or self.timeout}s")

    def expect(self, ptype: int, timeout: float | None = None) -> Packet:
        """recv() and assert the packet type."""
        try:
            pkt = self.recv(timeout)
        except ConnectionClosed:
            raise AssertionError(f"expected {PacketType(ptype).name}, connection closed") from None
        except TimeoutError:
            raise AssertionError(f"expected {PacketType(ptype).name}, got nothing") from None
        assert pkt.type == ptype, f"expected {PacketType(ptype).name}, got {pkt!r}"
        return pkt

    def _expect_reply(self, ptype: int, packet_id: int | None, timeout: float | None) -> Packet:
        """Wait for the `ptype` packet with `packet_id`; other packets received meanwhile (e.g.
        PUBLISHes from the broker) are kept in `pending` and returned by later recv() calls."""
        name = PacketType(ptype).name
        for i, p in enumerate(self.pending):
            if p.type == ptype and p.packet_id == packet_id:
                del self.pending[i]
                return p
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                pkt = self._take_wire()
                if pkt is None:
                    if not self._fill(deadline):
                        raise AssertionError(
                            f"no {name} for id {packet_id}; set aside: {self.pending}"
                        )
                    continue
            except ConnectionClosed:
                raise AssertionError(f"connection closed waiting for {name} {packet_id}") from None
            if pkt.type == ptype and pkt.packet_id == packet_id:
                return pkt
            if pkt.type in (PacketType.DISCONNECT, PacketType.CONNACK) or pkt.type == ptype:
                raise AssertionError(f"waiting for {name} {packet_id}, got {pkt!r}")
            self.pending.append(pkt)

    def expect_nothing(self, window: float = 0.4) -> None:
        """Assert that no packet arrives, and the connection stays open, for `window` seconds."""
        try:
            pkt = self.recv(window)
        except TimeoutError:
            return
        except ConnectionClosed:
            raise AssertionError("connection closed while expecting nothing") from None
        raise AssertionError(f"expected nothing, got {pkt!r}")

    def wait_closed(self, timeout: float | None = None) -> list[Packet]:
        """Wait for the peer to close the connection; returns the packets received before the
        close. AssertionError if the connection is still open at the deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        got: list[Packet] = []
        while True:
            try:
                pkt = self._take()
                if pkt is not None:
                    got.append(pkt)
                    continue
                if not self._fill(deadline):
                    raise AssertionError(
                        f"connection still open after {timeout or self.timeout}s; got {got!r}"
                    )
            except ConnectionClosed:
                # whole packets that arrived just before the close are still reported
                while (pkt := self._take()) is not None:
                    got.append(pkt)
                return got

    def close(self) -> None:
        """Close the TCP connection without sending DISCONNECT (a 'network failure')."""
        with contextlib.suppress(OSError):
            self.sock.close()
        self._eof = True
        RawClient.live.discard(self)

    def abort(self) -> None:
        """Reset the TCP connection (SO_LINGER 0 -> RST)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def next_packet_id(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    # -- MQTT conveniences --
    def connect(self, client_id: str | bytes = "", **kwargs: Any) -> Packet:
        """Send CONNECT (see `connect()` for kwargs; version defaults to the client's) and return
        the CONNACK."""
        kwargs.setdefault("version", self.version)
        self.send(connect(client_id, **kwargs))
        self.connack = self.expect(PacketType.CONNACK)
        return self.connack

    def publish(
        self,
        topic: str | bytes,
        payload: bytes | str = b"",
        qos: int = 0,
        *,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        properties: Properties = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Packet | None:
        """Publish; for QoS 1 waits for PUBACK, for QoS 2 does PUBREC/PUBREL/PUBCOMP and returns
        the PUBCOMP (or the PUBREC if it carries an error). With wait=False only sends."""
        if qos > 0 and packet_id is None:
            packet_id = self.next_packet_id()
        self.send(
            publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                dup=dup,
                packet_id=packet_id,
                properties=properties,
                version=self.version,
            )
        )
        if qos == 0 or not wait:
            return None
        assert packet_id is not None
        if qos == 1:
            return self._expect_reply(PacketType.PUBACK, packet_id, timeout)
        rec = self._expect_reply(PacketType.PUBREC, packet_id, timeout)
        if (rec.reason_code or 0) >= 0x80:
            return rec
        self.send(pubrel(packet_id, version=self.version))
        return self._expect_reply(PacketType.PUBCOMP, packet_id, timeout)

    def subscribe(
        self,
        topics: str | Iterable[tuple[str | bytes, int]],
        qos: int = 0,
        *,
        properties: Properties = None,
        packet_id: int | None = None,
        timeout: float | None = None,
    ) -> Packet:
        """SUBSCRIBE and return the SUBACK (asserting its packet id)."""
        pid = packet_id if packet_id is not None else self.next_packet_id()
        self.send(subscribe(pid, topics, qos=qos, properties=properties, version=self.version))
        return self._expect_reply(PacketType.SUBACK, pid, timeout)

    def unsubscribe(
        self,
        filters: str | Iterable[str | bytes],
        *,
        properties: Properties = None,
        packet_id: int | None = None,
        timeout: float | None = None,
    ) -> Packet:
        pid = packet_id if packet_id is not None else self.next_packet_id()
        self.send(unsubscribe(pid, filters, properties=properties, version=self.version))
        return self._expect_reply(PacketType.UNSUBACK, pid, timeout)

    def ping(self, timeout: float | None = None) -> Packet:
        """PINGREQ and wait for the PINGRESP (packets arriving meanwhile go to .pending)."""
        self.send(pingreq())
        return self._expect_reply(PacketType.PINGRESP, None, timeout)

    def ack(self, pkt: Packet, *, complete: bool = True, timeout: float | None = None) -> None:
        """Acknowledge a received PUBLISH: PUBACK for QoS 1; PUBREC for QoS 2 and, when
        `complete`, wait for the PUBREL and send PUBCOMP."""
        assert pkt.type == PacketType.PUBLISH and pkt.packet_id is not None, pkt
        if pkt.qos == 1:
            self.send(puback(pkt.packet_id, version=self.version))
        elif pkt.qos == 2:
            self.send(pubrec(pkt.packet_id, version=self.version))
            if complete:
                self._expect_reply(PacketType.PUBREL, pkt.packet_id, timeout)
                self.send(pubcomp(pkt.packet_id, version=self.version))

    def disconnect(
        self, reason: int | None = None, properties: Properties = None, linger: float = 1.0
    ) -> list[Packet]:
        """Send DISCONNECT, half-close, wait up to `linger` s for the server to close (so the
        DISCONNECT is processed before this returns and no RST is provoked), then close.
        Returns any packets that arrived meanwhile."""
        got: list[Packet] = []
        with contextlib.suppress(ConnectionClosed):
            self.send(disconnect(reason, properties, version=self.version))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(AssertionError, MalformedError):
            got = self.wait_closed(linger)
        self.close()
        return got
