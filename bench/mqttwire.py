"""Minimal MQTT 3.1.1 / 5.0 client-side packet encoding for the load tool.

Only what a load generator sends is encoded here (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PUBREC,
PUBREL, PUBCOMP, PINGREQ, DISCONNECT), plus the few decoders it needs for what the broker answers
with a reason code (CONNACK, SUBACK). Walking the framing of a byte stream lives in
``bench.framing``. Protocol level 4 is MQTT 3.1.1 and 5 is MQTT 5.0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

V311 = 4
V5 = 5

# Packet types (high nibble of the first byte).
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

PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"  # v5: reason code 0 and no properties may be omitted

_H = struct.Struct(">H")

# MQTT 5 property identifiers the tool reads from CONNACK.
PROP_RECEIVE_MAXIMUM = 0x21
PROP_TOPIC_ALIAS_MAXIMUM = 0x22
PROP_MAXIMUM_QOS = 0x24
PROP_MAXIMUM_PACKET_SIZE = 0x27
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_SERVER_KEEP_ALIVE = 0x13


def varint(n: int) -> bytes:
    """Encode ``n`` as an MQTT variable byte integer (1-4 bytes)."""
    if n < 0 or n > 268_435_455:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; returns ``(value, bytes_used)``.

    Raises ``IndexError`` when the buffer ends inside the integer and ``ValueError`` when it is
    longer than four bytes.
    """
    value = 0
    shift = 0
    for i in range(4):
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("malformed variable byte integer (more than 4 bytes)")


def utf8(s: str | bytes) -> bytes:
    """Encode an MQTT UTF-8 string (2-byte big-endian length prefix)."""
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 65535:
        raise ValueError("string longer than 65535 bytes")
    return _H.pack(len(b)) + b


def fixed(first: int, body: bytes) -> bytes:
    """Prefix ``body`` with the fixed header (first byte and remaining length)."""
    return bytes((first,)) + varint(len(body)) + body


def connect(
    client_id: str,
    version: int = V311,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | None = None,
    session_expiry: int = 0,
    receive_maximum: int = 65535,
) -> bytes:
    """Encode a CONNECT packet for protocol level ``version`` (4 or 5)."""
    if version not in (V311, V5):
        raise ValueError(f"unsupported MQTT protocol level {version} (use 4 or 5)")
    flags = 0x02 if clean else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(utf8("MQTT"))
    body.append(version)
    body.append(flags)
    body += _H.pack(keepalive)
    if version == V5:
        props = bytearray()
        if session_expiry:
            props += b"\x11" + struct.pack(">I", session_expiry)
        if receive_maximum != 65535:
            props += bytes((PROP_RECEIVE_MAXIMUM,)) + _H.pack(receive_maximum)
        body += varint(len(props)) + props
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return fixed(0x10, bytes(body))


def subscribe(packet_id: int, filters: list[tuple[str, int]], version: int = V311) -> bytes:
    """Encode a SUBSCRIBE packet with ``(filter, qos)`` pairs."""
    body = bytearray(_H.pack(packet_id))
    if version == V5:
        body += b"\x00"  # no properties
    for topic, qos in filters:
        body += utf8(topic)
        body.append(qos & 0x03)
    return fixed(0x82, bytes(body))


def publish(
    topic: str | bytes,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    version: int = V311,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """Encode a whole PUBLISH packet."""
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = bytearray(utf8(topic))
    if qos:
        body += _H.pack(packet_id)
    if version == V5:
        body += b"\x00"
    body += payload
    return fixed(first, bytes(body))


@dataclass(frozen=True)
class PublishTemplate:
    """A pre-encoded PUBLISH whose packet id and timestamp are patched per message.

    ``packet`` is the whole packet with a zero packet id and a zero stamp. For QoS > 0,
    ``pid_stamp.pack_into(buf, offset + pid_offset, packet_id, stamp)`` writes the packet id,
    the empty v5 property length and the big-endian 8-byte timestamp in one call; for QoS 0
    the stamp alone goes at ``stamp_offset`` (``STAMP.pack_into``). ``stamp_offset`` is -1 when
    the payload is shorter than 8 bytes (no timestamp then).
    """

    packet: bytes
    qos: int
    size: int
    stamp_offset: int
    pid_offset: int
    pid_stamp: struct.Struct | None

    def build(self, packet_id: int = 0, stamp: int = 0) -> bytes:
        """One packet with ``packet_id`` and ``stamp`` filled in (slow path, for tests)."""
        b = bytearray(self.packet)
        if self.qos:
            b[self.pid_offset : self.pid_offset + 2] = _H.pack(packet_id)
        if self.stamp_offset >= 0:
            STAMP.pack_into(b, self.stamp_offset, stamp)
        return bytes(b)


STAMP = struct.Struct(">Q")


def publish_template(
    topic: str | bytes, payload_size: int, qos: int = 0, version: int = V311, retain: bool = False
) -> PublishTemplate:
    """Pre-encode a PUBLISH with a ``payload_size``-byte payload that starts with a stamp slot.

    The rest of the payload is filled with ``b"x"``.
    """
    if payload_size < 0:
        raise ValueError("payload size must be >= 0")
    first = 0x30 | (qos << 1) | (0x01 if retain else 0)
    t = utf8(topic)
    mid = (b"\x00\x00" if qos else b"") + (b"\x00" if version == V5 else b"")
    body = t + mid + b"x" * payload_size
    packet = bytes((first,)) + varint(len(body)) + body
    head_len = len(packet) - len(body) + len(t)
    pid_offset = head_len if qos else -1
    stamp_offset = head_len + len(mid) if payload_size >= 8 else -1
    pid_stamp = None
    if qos and stamp_offset >= 0:
        pid_stamp = struct.Struct(">HxQ" if version == V5 else ">HQ")
    elif qos:
        pid_stamp = struct.Struct(">H")
    if stamp_offset >= 0:
        packet = packet[:stamp_offset] + bytes(8) + packet[stamp_offset + 8 :]
    return PublishTemplate(packet, qos, len(packet), stamp_offset, pid_offset, pid_stamp)


def puback(packet_id: int) -> bytes:
    """Encode a PUBACK (short form: success, no properties; valid in v3.1.1 and v5)."""
    return b"\x40\x02" + _H.pack(packet_id)


def pubrec(packet_id: int) -> bytes:
    """Encode a PUBREC (short form)."""
    return b"\x50\x02" + _H.pack(packet_id)


def pubrel(packet_id: int) -> bytes:
    """Encode a PUBREL (short form)."""
    return b"\x62\x02" + _H.pack(packet_id)


def pubcomp(packet_id: int) -> bytes:
    """Encode a PUBCOMP (short form)."""
    return b"\x70\x02" + _H.pack(packet_id)


def pingreq() -> bytes:
    """Encode a PINGREQ."""
    return PINGREQ_BYTES


def disconnect() -> bytes:
    """Encode a DISCONNECT (normal disconnection; same two bytes in v3.1.1 and v5)."""
    return DISCONNECT_BYTES


@dataclass
class Connack:
    """The parts of a CONNACK the tool uses."""

    session_present: bool
    reason: int
    receive_maximum: int = 65535
    maximum_qos: int = 2
    maximum_packet_size: int = 0


def parse_properties(body: bytes | memoryview, pos: int) -> tuple[dict[int, int | bytes], int]:
    """Parse a v5 property block at ``pos``; returns integer/string properties and the end offset.

    Only properties with fixed-size integer, variable-integer or string/binary values are
    decoded; user properties are skipped. Unknown identifiers raise ``ValueError``.
    """
    length, n = decode_varint(body, pos)
    pos += n
    end = pos + length
    props: dict[int, int | bytes] = {}
    one = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
    two = {0x13, 0x21, 0x22, 0x23}
    four = {0x02, 0x11, 0x18, 0x27}
    strs = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}
    while pos < end:
        pid = body[pos]
        pos += 1
        if pid in one:
            props[pid] = body[pos]
            pos += 1
        elif pid in two:
            props[pid] = (body[pos] << 8) | body[pos + 1]
            pos += 2
        elif pid in four:
            props[pid] = int.from_bytes(body[pos : pos + 4], "big")
            pos += 4
        elif pid == 0x0B:
            props[pid], n = decode_varint(body, pos)
            pos += n
        elif pid in strs:
            ln = (body[pos] << 8) | body[pos + 1]
            props[pid] = bytes(body[pos + 2 : pos + 2 + ln])
            pos += 2 + ln
        elif pid == 0x26:  # user property: two strings
            for _ in range(2):
                ln = (body[pos] << 8) | body[pos + 1]
                pos += 2 + ln
        else:
            raise ValueError(f"unknown MQTT 5 property 0x{pid:02x}")
    return props, end


def parse_connack(body: bytes | memoryview, version: int) -> Connack:
    """Parse a CONNACK variable header (``body`` excludes the fixed header)."""
    if len(body) < 2:
        raise ValueError("CONNACK too short")
    ack = Connack(session_present=bool(body[0] & 1), reason=body[1])
    if version == V5 and len(body) > 2:
        props, _ = parse_properties(body, 2)
        ack.receive_maximum = int(props.get(PROP_RECEIVE_MAXIMUM, 65535))  # type: ignore[arg-type]
        ack.maximum_qos = int(props.get(PROP_MAXIMUM_QOS, 2))  # type: ignore[arg-type]
        ack.maximum_packet_size = int(props.get(PROP_MAXIMUM_PACKET_SIZE, 0))  # type: ignore[arg-type]
    return ack


def parse_suback(body: bytes | memoryview, version: int) -> tuple[int, list[int]]:
    """Parse a SUBACK body; returns ``(packet_id, reason codes)``."""
    pid = (body[0] << 8) | body[1]
    pos = 2
    if version == V5:
        _, pos = parse_properties(body, pos)
    return pid, list(body[pos:])


def connack_reason_ok(reason: int) -> bool:
    """True when a CONNACK return/reason code means the connection was accepted."""
    return reason == 0
