"""Unit tests of the Cython core (fluxmq/_speedups), in-process and without a broker.

This package also holds the small helpers the unit tests share:

* a reference MQTT encoder (`vbi`, `u16`, `u32`, `mstr`, `frame`, `props`) written from the
  specification, so that byte-exact expectations never come from the codec under test;
* the MQTT 5 property table (`PROPS`, `ALLOWED`, `in_context`): which property may appear in
  which packet (5.0 2.2.2.2), with sample values and their reference encoding;
* `RecordingTransport`, a real transport object that records `write()` calls, and
  `connected_channel()`, which attaches a real `ChannelCore` (the protocol layer's `Outlet`) to a
  session over such a transport, for the few tests that need an online session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.channel import ChannelCore, Limits
from fluxmq._speedups.codec import (
    TYPE_AUTH,
    TYPE_CONNACK,
    TYPE_CONNECT,
    TYPE_DISCONNECT,
    TYPE_PUBACK,
    TYPE_PUBCOMP,
    TYPE_PUBLISH,
    TYPE_PUBREC,
    TYPE_PUBREL,
    TYPE_SUBACK,
    TYPE_SUBSCRIBE,
    TYPE_UNSUBACK,
    TYPE_UNSUBSCRIBE,
    Ack,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Packet,
    Properties,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    decode_all,
)
from fluxmq._speedups.dispatch import Dispatcher
from fluxmq._speedups.session import Session

# Protocol levels.
V31 = 3  # MQTT 3.1, protocol name "MQIsdp"
V311 = 4
V5 = 5
VERSIONS = (V31, V311, V5)

ST_CONNECTED = 2  # ChannelCore.state once CONNACK was sent (channel.pxd)


# ----------------------------------------------------------------------------------------------
# Reference encoder (MQTT 5.0 1.5 Data representation; 3.1.1 1.5)


def vbi(n: int) -> bytes:
    """A Variable Byte Integer in its shortest form [MQTT-1.5.5-1] (1.5.5 / 3.1.1 2.2.3)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(n)
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    """A Two Byte Integer, big-endian (1.5.2)."""
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    """A Four Byte Integer, big-endian (1.5.3)."""
    return n.to_bytes(4, "big")


def mstr(s: str | bytes) -> bytes:
    """A UTF-8 Encoded String or Binary Data: two-byte length, then the bytes (1.5.4, 1.5.6)."""
    raw = s.encode() if isinstance(s, str) else s
    return u16(len(raw)) + raw


def frame(first: int, body: bytes) -> bytes:
    """A whole control packet: the fixed header's first byte, the Remaining Length, the body."""
    return bytes([first]) + vbi(len(body)) + body


def props(*items: bytes) -> bytes:
    """A property block: its length, then the already encoded (identifier + value) items."""
    content = b"".join(items)
    return vbi(len(content)) + content


def prop(pid: int, value: bytes) -> bytes:
    """One property: its identifier (a Variable Byte Integer) and its encoded value."""
    return vbi(pid) + value


# ----------------------------------------------------------------------------------------------
# MQTT 5 properties (5.0 2.2.2.2)

WILL = "WILL"  # the property context of the Will Properties inside CONNECT

# identifier -> (attribute, sample value, encoded value): the encoded value by the reference
# encoder; user properties and subscription identifiers are lists on the attribute side.
PROPS: dict[int, tuple[str, object, bytes]] = {
    0x01: ("payload_format_indicator", 1, b"\x01"),
    0x02: ("message_expiry_interval", 3600, u32(3600)),
    0x03: ("content_type", "text/plain; charset=utf-8", mstr("text/plain; charset=utf-8")),
    0x08: ("response_topic", "reply/to/me", mstr("reply/to/me")),
    0x09: ("correlation_data", b"\x00\xffcorr", mstr(b"\x00\xffcorr")),
    0x0B: ("subscription_identifiers", [268_435_455], vbi(268_435_455)),
    0x11: ("session_expiry_interval", 0xFFFFFFFF, u32(0xFFFFFFFF)),
    0x12: ("assigned_client_identifier", "auto-7f3a", mstr("auto-7f3a")),
    0x13: ("server_keep_alive", 45, u16(45)),
    0x15: ("authentication_method", "SCRAM-SHA-256", mstr("SCRAM-SHA-256")),
    0x16: ("authentication_data", b"\x01\x02\x03", mstr(b"\x01\x02\x03")),
    0x17: ("request_problem_information", 0, b"\x00"),
    0x18: ("will_delay_interval", 120, u32(120)),
    0x19: ("request_response_information", 1, b"\x01"),
    0x1A: ("response_information", "resp/info", mstr("resp/info")),
    0x1C: ("server_reference", "other.example:1883", mstr("other.example:1883")),
    0x1F: ("reason_string", "für dich ✓", mstr("für dich ✓")),
    0x21: ("receive_maximum", 20, u16(20)),
    0x22: ("topic_alias_maximum", 10, u16(10)),
    0x23: ("topic_alias", 7, u16(7)),
    0x24: ("maximum_qos", 1, b"\x01"),
    0x25: ("retain_available", 0, b"\x00"),
    0x26: ("user_properties", [("name", "välue")], mstr("name") + mstr("välue")),
    0x27: ("maximum_packet_size", 1_048_576, u32(1_048_576)),
    0x28: ("wildcard_subscription_available", 0, b"\x00"),
    0x29: ("subscription_identifier_available", 1, b"\x01"),
    0x2A: ("shared_subscription_available", 0, b"\x00"),
}

ACKS = (TYPE_PUBACK, TYPE_PUBREC, TYPE_PUBREL, TYPE_PUBCOMP)

# MQTT 5.0 2.2.2.2 Table 2-4: where each property may appear.
ALLOWED: dict[object, set[int]] = {
    TYPE_CONNECT: {0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27},
    WILL: {0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26},
    TYPE_CONNACK: {0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21}
    | {0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A},
    TYPE_PUBLISH: {0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26},
    **{t: {0x1F, 0x26} for t in ACKS},
    TYPE_SUBSCRIBE: {0x0B, 0x26},
    TYPE_SUBACK: {0x1F, 0x26},
    TYPE_UNSUBSCRIBE: {0x26},
    TYPE_UNSUBACK: {0x1F, 0x26},
    TYPE_DISCONNECT: {0x11, 0x1C, 0x1F, 0x26},
    TYPE_AUTH: {0x15, 0x16, 0x1F, 0x26},
}
CONTEXT_NAMES = {
    TYPE_CONNECT: "CONNECT", WILL: "WILL", TYPE_CONNACK: "CONNACK", TYPE_PUBLISH: "PUBLISH",
    TYPE_PUBACK: "PUBACK", TYPE_PUBREC: "PUBREC", TYPE_PUBREL: "PUBREL",
    TYPE_PUBCOMP: "PUBCOMP", TYPE_SUBSCRIBE: "SUBSCRIBE", TYPE_SUBACK: "SUBACK",
    TYPE_UNSUBSCRIBE: "UNSUBSCRIBE", TYPE_UNSUBACK: "UNSUBACK", TYPE_DISCONNECT: "DISCONNECT",
    TYPE_AUTH: "AUTH",
}  # fmt: skip


def in_context(ctx: object, block: bytes, properties: Properties | None) -> tuple[bytes, Packet]:
    """The reference bytes of a small packet of context `ctx` carrying the property `block`,
    and the packet object they stand for (`properties` being what the block holds)."""
    if ctx == TYPE_CONNECT:
        body = mstr("MQTT") + b"\x05\x02" + u16(60) + block + mstr("cid")
        return frame(0x10, body), Connect("cid", protocol_level=5, properties=properties)
    if ctx == WILL:  # flags 0x06: clean start + will flag (QoS 0, no retain)
        body = mstr("MQTT") + b"\x05\x06" + u16(60) + b"\x00" + mstr("cid")
        body += block + mstr("will/t") + mstr(b"bye")
        will = Will("will/t", b"bye", properties=properties)
        return frame(0x10, body), Connect("cid", protocol_level=5, will=will)
    if ctx == TYPE_CONNACK:
        return frame(0x20, b"\x00\x00" + block), Connack(0, False, properties)
    if ctx == TYPE_PUBLISH:
        body = mstr("a/b") + u16(1) + block + b"payload"
        return frame(0x32, body), Publish("a/b", b"payload", 1, packet_id=1, properties=properties)
    if ctx in ACKS:
        first = (ctx << 4) | (2 if ctx == TYPE_PUBREL else 0)
        return frame(first, u16(1) + b"\x00" + block), Ack(ctx, 1, 0, properties)
    if ctx == TYPE_SUBSCRIBE:
        body = u16(1) + block + mstr("a/b") + b"\x01"
        return frame(0x82, body), Subscribe(1, [SubscriptionRequest("a/b", 1)], properties)
    if ctx == TYPE_SUBACK:
        return frame(0x90, u16(1) + block + b"\x01"), Suback(1, [1], properties)
    if ctx == TYPE_UNSUBSCRIBE:
        return frame(0xA2, u16(1) + block + mstr("a/b")), Unsubscribe(1, ["a/b"], properties)
    if ctx == TYPE_UNSUBACK:
        return frame(0xB0, u16(1) + block + b"\x00"), Unsuback(1, [0], properties)
    if ctx == TYPE_DISCONNECT:
        return frame(0xE0, b"\x00" + block), Disconnect(0, properties)
    assert ctx == TYPE_AUTH
    return frame(0xF0, b"\x18" + block), Auth(0x18, properties)


def decode_ctx(ctx: object, data: bytes) -> Packet:
    """Decode a packet built by in_context() with the decoder state it needs."""
    return decode_one(data, 0 if ctx in (TYPE_CONNECT, WILL) else V5)


# ----------------------------------------------------------------------------------------------
# Decoding shortcuts


def decode_one(data: bytes, version: int = V311, max_packet_size: int = 0) -> Packet:
    """Decode exactly one packet from `data` (which must hold exactly one)."""
    packets = decode_all(data, version, max_packet_size)
    assert len(packets) == 1, packets
    return packets[0]


def feed_chunks(decoder: Decoder, data: bytes, cuts: Iterable[int]) -> list[Packet]:
    """Feed `data` split at the offsets `cuts` (sorted, in range) and collect every packet."""
    out: list[Packet] = []
    pos = 0
    for cut in [*cuts, len(data)]:
        out += decoder.feed(data[pos:cut])
        pos = cut
    return out


# ----------------------------------------------------------------------------------------------
# A real transport and a real Outlet (ChannelCore) for online sessions


class RecordingTransport:
    """The asyncio transport surface ChannelCore/OutBuffer use; records every write() call."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise ConnectionResetError("transport died")
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    @property
    def data(self) -> bytes:
        """Everything written so far."""
        return b"".join(self.writes)

    def packets(self, version: int) -> list[Packet]:
        """Everything written so far, decoded as a client of `version` would."""
        return decode_all(self.data, version)


def connected_channel(
    dispatcher: Dispatcher,
    session: Session,
    flusher: Flusher,
    version: int = V311,
    transport: RecordingTransport | None = None,
    limits: Limits | None = None,
) -> tuple[ChannelCore, RecordingTransport]:
    """A ChannelCore in the CONNECTED state for `session`, over a RecordingTransport.

    This is what the broker does after CONNACK (minus the Python handlers): the channel is the
    session's Outlet, and whatever it sends leaves through the Flusher to the transport.
    """
    transport = transport or RecordingTransport()
    ch = ChannelCore(dispatcher, limits or Limits(), flusher)
    ch.connection_made(transport)
    ch.state = ST_CONNECTED
    ch.version = version
    ch.decoder.version = version
    ch.client_id = session.client_id
    ch.session = session
    session.resume(ch)
    return ch, transport


def run_one_turn(loop: asyncio.AbstractEventLoop) -> None:
    """Let `loop` run the callbacks scheduled so far (one turn) and return."""
    loop.run_until_complete(asyncio.sleep(0))
