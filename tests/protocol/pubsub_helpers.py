"""Helpers for the publish/subscribe half of the end-to-end protocol suite.

Three ways to talk to the broker under test:

* `RawClient` -- a small raw-socket MQTT 3.1.1/5.0 client for byte-exact checks: it sends exactly the
  packets a test builds and hands back every packet the broker sends, decoded (properties kept in
  wire order, repeats included).
* `PahoClient` -- a thin synchronous wrapper over paho-mqtt 2.x (CallbackAPIVersion.VERSION2) that
  collects received messages in a queue.
* `mosquitto_pub` / `start_mosquitto_sub` -- Debian's command-line clients.

`broker_fixture(config)` makes a module-scoped broker fixture, for tests that need no per-test
configuration. Every topic a test uses should come from `unique_topic()` so tests sharing a
module broker (and its retained store) never see each other's messages.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.brokerproc import BrokerProc

#: How long a test waits for something that must arrive.
WAIT = 3.0
#: How long a test watches for something that must NOT arrive.
QUIET = 0.4

# -- packet types -----------------------------------------------------------------------------
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
)
PACKET_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

# -- MQTT 5 property identifiers ----------------------------------------------------------------
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
REQUEST_PROBLEM_INFORMATION = 0x17
REQUEST_RESPONSE_INFORMATION = 0x19
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

_BYTE_PROPS = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO_PROPS = {0x13, 0x21, 0x22, 0x23}
_FOUR_PROPS = {0x02, 0x11, 0x18, 0x27}
_VARINT_PROPS = {0x0B}
_STR_PROPS = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BIN_PROPS = {0x09, 0x16}
_PAIR_PROPS = {0x26}

# -- reason codes used by the tests ---------------------------------------------------------------
RC_SUCCESS = 0x00
RC_NO_SUBSCRIPTION_EXISTED = 0x11
RC_UNSPECIFIED = 0x80
RC_PROTOCOL_ERROR = 0x82
RC_PACKET_ID_NOT_FOUND = 0x92
RC_RECEIVE_MAXIMUM_EXCEEDED = 0x93
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95
RC_PAYLOAD_FORMAT_INVALID = 0x99
RC_QOS_NOT_SUPPORTED = 0x9B
RC_TOPIC_FILTER_INVALID = 0x8F
RC_V3_SUBACK_FAILURE = 0x80


def unique_topic(prefix: str = "t") -> str:
    """A topic prefix no other test (or test run) uses."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def unique_id(prefix: str = "c") -> str:
    """A client identifier of at most 23 characters, unique to this call."""
    return f"{prefix[:6]}{uuid.uuid4().hex[:16]}"


def broker_fixture(config: dict | None = None) -> Callable[..., Iterator[BrokerProc]]:
    """Return a module-scoped fixture that runs one broker with `config` for the whole module.

    Usage in a test module: ``mbroker = broker_fixture()``; tests then take ``mbroker`` as an
    argument.
    """

    @pytest.fixture(scope="module")
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
        b = BrokerProc(tmp_path_factory.mktemp("broker"), config)
        b.start()
        try:
            yield b
        finally:
            b.stop()

    return _fixture


# ================================================================================================
# Wire encoding
# ================================================================================================
def enc_varint(n: int) -> bytes:
    """Variable Byte Integer (MQTT 1.5.5)."""
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_str(s: str | bytes) -> bytes:
    """UTF-8 Encoded String / Binary Data: two-byte length then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


PropList = Sequence[tuple[int, Any]]


def enc_props(props: PropList | None) -> bytes:
    """Encode an MQTT 5 property list (list of (identifier, value), wire order kept)."""
    body = bytearray()
    for pid, val in props or ():
        body += enc_varint(pid)
        if pid in _BYTE_PROPS:
            body += struct.pack("!B", val)
        elif pid in _TWO_PROPS:
            body += struct.pack("!H", val)
        elif pid in _FOUR_PROPS:
            body += struct.pack("!I", val)
        elif pid in _VARINT_PROPS:
            body += enc_varint(val)
        elif pid in _STR_PROPS or pid in _BIN_PROPS:
            body += enc_str(val)
        elif pid in _PAIR_PROPS:
            body += enc_str(val[0]) + enc_str(val[1])
        else:
            raise ValueError(f"unknown property {pid:#x}")
    return enc_varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header + body."""
    return bytes([(ptype << 4) | flags]) + enc_varint(len(body)) + body


def build_connect(
    client_id: str,
    version: int = 5,
    clean: bool = True,
    keepalive: int = 60,
    props: PropList | None = None,
) -> bytes:
    """CONNECT (3.1) with no will, user name or password."""
    flags = 0x02 if clean else 0x00
    body = enc_str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += enc_props(props)
    body += enc_str(client_id)
    return packet(CONNECT, 0, body)


def build_publish(
    topic: str | bytes,
    payload: bytes = b"",
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
    props: PropList | None = None,
    version: int = 5,
) -> bytes:
    """PUBLISH (3.3)."""
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = enc_str(topic)
    if qos > 0:
        if pid is None:
            raise ValueError("QoS > 0 needs a packet identifier")
        body += struct.pack("!H", pid)
    if version == 5:
        body += enc_props(props)
    return packet(PUBLISH, flags, body + payload)


def build_ack(
    ptype: int, pid: int, rc: int | None = None, props: PropList | None = None, version: int = 5
) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP (3.4-3.7); PUBREL carries the fixed flags 0010."""
    body = struct.pack("!H", pid)
    if version == 5 and (rc is not None or props):
        body += bytes([rc or 0])
        if props:
            body += enc_props(props)
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def sub_opts(
    qos: int = 0, no_local: bool = False, rap: bool = False, retain_handling: int = 0
) -> int:
    """The Subscription Options byte (3.8.3.1)."""
    return qos | (0x04 if no_local else 0) | (0x08 if rap else 0) | (retain_handling << 4)


def build_subscribe(
    pid: int,
    filters: Sequence[tuple[str | bytes, int]],
    props: PropList | None = None,
    version: int = 5,
) -> bytes:
    """SUBSCRIBE (3.8) with (filter, options byte) pairs."""
    body = struct.pack("!H", pid)
    if version == 5:
        body += enc_props(props)
    for flt, opts in filters:
        body += enc_str(flt) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def build_unsubscribe(
    pid: int, filters: Sequence[str], props: PropList | None = None, version: int = 5
) -> bytes:
    """UNSUBSCRIBE (3.10)."""
    body = struct.pack("!H", pid)
    if version == 5:
        body += enc_props(props)
    for flt in filters:
        body += enc_str(flt)
    return packet(UNSUBSCRIBE, 0x02, body)


def build_disconnect(rc: int = 0, props: PropList | None = None, version: int = 5) -> bytes:
    """DISCONNECT (3.14)."""
    if version != 5:
        return packet(DISCONNECT, 0, b"")
    return packet(DISCONNECT, 0, bytes([rc]) + enc_props(props))


# ================================================================================================
# Wire decoding
# ================================================================================================
class Props(list):
    """Decoded MQTT 5 properties: a list of (identifier, value) in wire order."""

    def get(self, pid: int, default: Any = None) -> Any:  # type: ignore[override]
        for k, v in self:
            if k == pid:
                return v
        return default

    def all(self, pid: int) -> list[Any]:
        return [v for k, v in self if k == pid]

    def has(self, pid: int) -> bool:
        return any(k == pid for k, _ in self)


@dataclass
class Packet:
    """One decoded control packet from the broker."""

    ptype: int
    flags: int
    raw: bytes
    size: int
    pid: int | None = None
    rc: int | None = None
    props: Props = field(default_factory=Props)
    # CONNACK
    session_present: bool = False
    # PUBLISH
    topic: str = ""
    topic_bytes: bytes = b""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    # SUBACK / UNSUBACK
    codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.ptype, str(self.ptype))

    def __repr__(self) -> str:
        bits = [self.name]
        if self.ptype == PUBLISH:
            bits.append(f"topic={self.topic!r} q{self.qos} r{int(self.retain)} d{int(self.dup)}")
            bits.append(f"payload={self.payload[:40]!r}")
        if self.pid is not None:
            bits.append(f"pid={self.pid}")
        if self.rc is not None:
            bits.append(f"rc={self.rc:#04x}")
        if self.codes:
            bits.append(f"codes={[hex(c) for c in self.codes]}")
        if self.props:
            bits.append(f"props={list(self.props)}")
        return "<" + " ".join(bits) + ">"


class _Reader:
    def __init__(self, data: bytes):
        self.d = data
        self.i = 0

    def left(self) -> int:
        return len(self.d) - self.i

    def byte(self) -> int:
        v = self.d[self.i]
        self.i += 1
        return v

    def u16(self) -> int:
        (v,) = struct.unpack_from("!H", self.d, self.i)
        self.i += 2
        return v

    def u32(self) -> int:
        (v,) = struct.unpack_from("!I", self.d, self.i)
        self.i += 4
        return v

    def varint(self) -> int:
        mult, val = 1, 0
        while True:
            b = self.byte()
            val += (b & 0x7F) * mult
            if not b & 0x80:
                return val
            mult *= 128

    def binary(self) -> bytes:
        n = self.u16()
        v = self.d[self.i : self.i + n]
        self.i += n
        return v

    def string(self) -> str:
        return self.binary().decode("utf-8", errors="replace")

    def rest(self) -> bytes:
        v = self.d[self.i :]
        self.i = len(self.d)
        return v

    def props(self) -> Props:
        n = self.varint()
        end = self.i + n
        out = Props()
        while self.i < end:
            pid = self.varint()
            if pid in _BYTE_PROPS:
                out.append((pid, self.byte()))
            elif pid in _TWO_PROPS:
                out.append((pid, self.u16()))
            elif pid in _FOUR_PROPS:
                out.append((pid, self.u32()))
            elif pid in _VARINT_PROPS:
                out.append((pid, self.varint()))
            elif pid in _STR_PROPS:
                out.append((pid, self.string()))
            elif pid in _BIN_PROPS:
                out.append((pid, self.binary()))
            elif pid in _PAIR_PROPS:
                out.append((pid, (self.string(), self.string())))
            else:
                raise AssertionError(f"broker sent unknown property {pid:#x}")
        return out


def decode_packet(first: int, body: bytes, version: int, size: int) -> Packet:
    """Decode one packet (fixed header byte + remaining bytes) sent by the server."""
    ptype, flags = first >> 4, first & 0x0F
    p = Packet(ptype=ptype, flags=flags, raw=bytes([first]) + body, size=size)
    r = _Reader(body)
    if ptype == CONNACK:
        p.session_present = bool(r.byte() & 1)
        p.rc = r.byte()
        if version == 5 and r.left():
            p.props = r.props()
    elif ptype == PUBLISH:
        p.dup, p.qos, p.retain = bool(flags & 8), (flags >> 1) & 3, bool(flags & 1)
        p.topic_bytes = r.binary()
        p.topic = p.topic_bytes.decode("utf-8", errors="replace")
        if p.qos:
            p.pid = r.u16()
        if version == 5:
            p.props = r.props()
        p.payload = r.rest()
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        p.pid = r.u16()
        if version == 5:
            p.rc = r.byte() if r.left() else 0
            if r.left():
                p.props = r.props()
    elif ptype in (SUBACK, UNSUBACK):
        p.pid = r.u16()
        if version == 5:
            p.props = r.props()
        p.codes = list(r.rest())
    elif ptype == DISCONNECT:
        p.rc = r.byte() if r.left() else 0
        if r.left():
            p.props = r.props()
    return p


class ConnectionClosed(Exception):
    """The broker closed the network connection."""


# ================================================================================================
# Raw client
# ================================================================================================
class RawClient:
    """A raw-socket MQTT client. Nothing is sent that the test does not ask for, except that with
    `auto_ack` True (the default) an incoming QoS 1 PUBLISH is answered with PUBACK, a QoS 2
    PUBLISH with PUBREC and a PUBREL with PUBCOMP, the way a well-behaved client would."""

    def __init__(self, broker: BrokerProc, version: int = 5, auto_ack: bool = True):
        self.version = version
        self.auto_ack = auto_ack
        self.sock = socket.create_connection((broker.host, broker.port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pending: list[Packet] = []
        self.closed = False
        self.next_pid = 1
        self.connack: Packet | None = None
        self.aliases: dict[int, str] = {}

    # -- plumbing ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on timeout, raises ConnectionClosed on EOF/reset."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
            self.closed = True
            raise ConnectionClosed(str(e)) from e
        if not chunk:
            self.closed = True
            raise ConnectionClosed("EOF")
        self.buf += chunk
        return True

    def _parse_one(self) -> Packet | None:
        if len(self.buf) < 2:
            return None
        mult, length, i = 1, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            mult *= 128
        if len(self.buf) < i + length:
            return None
        first, body = self.buf[0], self.buf[i : i + length]
        self.buf = self.buf[i + length :]
        return decode_packet(first, body, self.version, i + length)

    def _read_packet(self, timeout: float) -> Packet | None:
        deadline = time.monotonic() + timeout
        while True:
            p = self._parse_one()
            if p is not None:
                self._after_receive(p)
                return p
            if not self._fill(deadline):
                return None

    def _after_receive(self, p: Packet) -> None:
        if not self.auto_ack:
            return
        if p.ptype == PUBLISH and p.qos == 1:
            self.send(build_ack(PUBACK, p.pid or 0, version=self.version))
        elif p.ptype == PUBLISH and p.qos == 2:
            self.send(build_ack(PUBREC, p.pid or 0, version=self.version))
        elif p.ptype == PUBREL:
            self.send(build_ack(PUBCOMP, p.pid or 0, version=self.version))

    def recv(self, timeout: float = WAIT) -> Packet | None:
        """The next packet from the broker (queued ones first), or None after `timeout`."""
        if self.pending:
            return self.pending.pop(0)
        return self._read_packet(timeout)

    def expect(self, ptype: int, timeout: float = WAIT) -> Packet:
        """Wait for the next packet of type `ptype`; other packets are kept for `recv`."""
        for i, p in enumerate(self.pending):
            if p.ptype == ptype:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            p = self._read_packet(max(0.0, deadline - time.monotonic()))
            if p is None:
                raise AssertionError(
                    f"no {PACKET_NAMES[ptype]} within {timeout}s; queued: {self.pending}"
                )
            if p.ptype == ptype:
                return p
            self.pending.append(p)

    def expect_publish(self, timeout: float = WAIT) -> Packet:
        """The next PUBLISH (PUBREL handled by auto_ack is skipped)."""
        return self.expect(PUBLISH, timeout)

    def publishes(self, n: int, timeout: float = WAIT) -> list[Packet]:
        """Exactly the next `n` PUBLISH packets (fails if fewer arrive within `timeout`)."""
        deadline = time.monotonic() + timeout
        return [self.expect(PUBLISH, max(0.0, deadline - time.monotonic())) for _ in range(n)]

    def quiet(self, window: float = QUIET, ptype: int = PUBLISH) -> list[Packet]:
        """Collect packets of `ptype` arriving within `window` (others stay queued)."""
        got = [p for p in self.pending if p.ptype == ptype]
        self.pending = [p for p in self.pending if p.ptype != ptype]
        deadline = time.monotonic() + window
        while True:
            p = self._read_packet(max(0.0, deadline - time.monotonic()))
            if p is None:
                return got
            if p.ptype == ptype:
                got.append(p)
            else:
                self.pending.append(p)

    def expect_nothing(self, window: float = QUIET) -> None:
        """Fail if any PUBLISH arrives within `window`."""
        got = self.quiet(window)
        assert not got, f"unexpected PUBLISH: {got}"

    def wait_closed(self, timeout: float = WAIT) -> list[Packet]:
        """Wait until the broker closes the connection; returns the packets sent before that."""
        got = list(self.pending)
        self.pending = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                p = self._read_packet(max(0.0, deadline - time.monotonic()))
                if p is None:
                    raise AssertionError(f"connection still open after {timeout}s; got {got}")
                got.append(p)
        except ConnectionClosed:
            return got

    def expect_disconnect(self, rc: int, timeout: float = WAIT) -> Packet:
        """The broker sends DISCONNECT with reason `rc` and closes the connection (v5)."""
        got = self.wait_closed(timeout)
        discs = [p for p in got if p.ptype == DISCONNECT]
        assert discs, f"connection closed without DISCONNECT; got {got}"
        assert discs[-1].rc == rc, f"DISCONNECT rc {discs[-1].rc:#04x}, expected {rc:#04x}"
        return discs[-1]

    def alloc_pid(self) -> int:
        pid = self.next_pid
        self.next_pid = self.next_pid % 65535 + 1
        return pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- MQTT operations --------------------------------------------------------------------------
    def connect(
        self,
        client_id: str | None = None,
        clean: bool = True,
        keepalive: int = 60,
        props: PropList | None = None,
        expect_rc: int | None = 0,
    ) -> Packet:
        """Send CONNECT and return the CONNACK (asserting reason code `expect_rc` unless None)."""
        self.client_id = client_id if client_id is not None else unique_id("raw")
        self.send(build_connect(self.client_id, self.version, clean, keepalive, props))
        ack = self.expect(CONNACK)
        if expect_rc is not None:
            assert ack.rc == expect_rc, f"CONNACK rc {ack.rc:#04x}"
        self.connack = ack
        return ack

    def subscribe(
        self,
        filters: Sequence[tuple[str | bytes, int]] | str,
        qos: int = 0,
        props: PropList | None = None,
        pid: int | None = None,
    ) -> Packet:
        """Send SUBSCRIBE and return the SUBACK (checking the echoed packet identifier)."""
        if isinstance(filters, str):
            filters = [(filters, qos)]
        pid = pid or self.alloc_pid()
        self.send(build_subscribe(pid, filters, props, self.version))
        ack = self.expect(SUBACK)
        assert ack.pid == pid, f"SUBACK pid {ack.pid} != SUBSCRIBE pid {pid} [MQTT-3.8.4-2]"
        return ack

    def unsubscribe(self, filters: Sequence[str], props: PropList | None = None) -> Packet:
        """Send UNSUBSCRIBE and return the UNSUBACK (checking the echoed packet identifier)."""
        pid = self.alloc_pid()
        self.send(build_unsubscribe(pid, filters, props, self.version))
        ack = self.expect(UNSUBACK)
        assert ack.pid == pid, f"UNSUBACK pid {ack.pid} != {pid} [MQTT-3.10.4-5]"
        return ack

    def publish(
        self,
        topic: str | bytes,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        props: PropList | None = None,
        dup: bool = False,
        pid: int | None = None,
    ) -> Packet | None:
        """Publish and complete the QoS flow: returns the PUBACK (QoS 1), the PUBCOMP (QoS 2,
        or the PUBREC if it carries a failure code), or None (QoS 0)."""
        if qos and pid is None:
            pid = self.alloc_pid()
        self.send(build_publish(topic, payload, qos, retain, dup, pid, props, self.version))
        if qos == 0:
            return None
        if qos == 1:
            ack = self.expect(PUBACK)
            assert ack.pid == pid, f"PUBACK pid {ack.pid} != {pid} [MQTT-2.2.1-5]"
            return ack
        rec = self.expect(PUBREC)
        assert rec.pid == pid, f"PUBREC pid {rec.pid} != {pid} [MQTT-2.2.1-5]"
        if rec.rc is not None and rec.rc >= 0x80:
            return rec
        self.send(build_ack(PUBREL, pid or 0, version=self.version))
        comp = self.expect(PUBCOMP)
        assert comp.pid == pid, f"PUBCOMP pid {comp.pid} != {pid} [MQTT-2.2.1-5]"
        return comp

    def ping(self) -> None:
        """PINGREQ -> PINGRESP: proves the broker processed everything sent before it."""
        self.send(packet(PINGREQ, 0, b""))
        self.expect(PINGRESP)

    def disconnect(self, rc: int = 0, props: PropList | None = None) -> None:
        with contextlib.suppress(OSError):
            self.send(build_disconnect(rc, props, self.version))
        self.close()

    def resolve_topic(self, p: Packet, max_alias: int) -> str:
        """Resolve an outbound Topic Alias the way a v5 client must (3.3.2.3.4)."""
        alias = p.props.get(TOPIC_ALIAS)
        if alias is None:
            assert p.topic, "PUBLISH with empty topic and no Topic Alias"
            return p.topic
        assert 0 < alias <= max_alias, (
            f"server used Topic Alias {alias} outside 1..{max_alias} [MQTT-3.3.2-11]"
        )
        if p.topic:
            self.aliases[alias] = p.topic
            return p.topic
        assert alias in self.aliases, f"server used unset Topic Alias {alias}"
        return self.aliases[alias]


# ================================================================================================
# paho-mqtt wrapper
# ================================================================================================
def v5props(packet_type: int, **values: Any) -> Properties:
    """paho Properties for `packet_type` (e.g. PacketTypes.PUBLISH) from keyword attributes."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class PahoClient:
    """paho-mqtt 2.x client with a network thread, collecting received messages in a queue."""

    def __init__(
        self,
        broker: BrokerProc,
        version: int = 5,
        client_id: str | None = None,
        clean: bool = True,
        connect_props: Properties | None = None,
        session_expiry: int | None = None,
        connect: bool = True,
        manual_ack: bool = False,
    ):
        self.broker = broker
        self.version = version
        self.client_id = client_id or unique_id("paho")
        self.clean = clean
        self.connect_props = connect_props
        if session_expiry is not None:
            self.connect_props = self.connect_props or Properties(PacketTypes.CONNECT)
            self.connect_props.SessionExpiryInterval = session_expiry
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=proto,
            clean_session=None if version == 5 else clean,
            manual_ack=manual_ack,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._acks: dict[int, Any] = {}
        self._ack_cv = threading.Condition()
        self.connack_rc: int | None = None
        self.connack_props: Properties | None = None
        self.session_present: bool | None = None
        self.disconnect_rc: int | None = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        self._loop = False
        if connect:
            self.connect()

    # -- callbacks --------------------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack_rc = rc.value
        self.connack_props = props
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._ack_cv:
            self._acks[mid] = [r.value for r in rcs] if rcs is not None else []
            self._ack_cv.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnect_rc = rc.value
        self._disconnected.set()

    def _wait_ack(self, mid: int, timeout: float = WAIT) -> list[int]:
        with self._ack_cv:
            ok = self._ack_cv.wait_for(lambda: mid in self._acks, timeout)
            assert ok, f"no SUBACK/UNSUBACK for mid {mid} within {timeout}s"
            return self._acks.pop(mid)

    # -- operations -------------------------------------------------------------------------------
    def connect(self, clean: bool | None = None) -> int:
        """Connect (waiting for CONNACK) and start the network thread; returns the reason code."""
        self._connected.clear()
        self._disconnected.clear()
        kw: dict[str, Any] = {}
        if self.version == 5:
            kw["clean_start"] = self.clean if clean is None else clean
            kw["properties"] = self.connect_props
        self.c.connect(self.broker.host, self.broker.port, keepalive=60, **kw)
        if not self._loop:
            self.c.loop_start()
            self._loop = True
        assert self._connected.wait(WAIT), "no CONNACK"
        assert self.connack_rc == 0, f"CONNACK rc {self.connack_rc}"
        return self.connack_rc

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        options: SubscribeOptions | None = None,
        props: Properties | None = None,
    ) -> list[int]:
        """Subscribe and return the SUBACK reason codes."""
        if self.version == 5:
            rc, mid = self.c.subscribe(
                topic, options=options or SubscribeOptions(qos=qos), properties=props
            )
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        return self._wait_ack(mid)

    def unsubscribe(self, topic: str | list[str]) -> list[int]:
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_ack(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        props: Properties | None = None,
        wait: bool = True,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; with `wait` block until the QoS flow completed (for QoS 0: written)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if wait:
            info.wait_for_publish(WAIT)
            assert info.is_published(), f"publish to {topic!r} (QoS {qos}) not completed"
        return info

    def get(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        """The next received message; fails if none arrives within `timeout`."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def get_n(self, n: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        return [self.get(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def drain(self, window: float = QUIET) -> list[mqtt.MQTTMessage]:
        """Everything that arrives within `window`."""
        out: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + window
        while True:
            try:
                out.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return out

    def expect_nothing(self, window: float = QUIET) -> None:
        got = self.drain(window)
        assert not got, f"{self.client_id}: unexpected {[(m.topic, m.payload) for m in got]}"

    def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.c.disconnect()
        if self._loop:
            self._disconnected.wait(1.0)
            self.c.loop_stop()
            self._loop = False

    def __enter__(self) -> PahoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


def user_props(msg: mqtt.MQTTMessage) -> list[tuple[str, str]]:
    """The User Properties of a received paho message, in order."""
    props = getattr(msg, "properties", None)
    return list(getattr(props, "UserProperty", []) or []) if props is not None else []


def sub_ids(msg: mqtt.MQTTMessage) -> list[int]:
    """The Subscription Identifiers of a received paho message."""
    props = getattr(msg, "properties", None)
    ids = getattr(props, "SubscriptionIdentifier", None) if props is not None else None
    if ids is None:
        return []
    return list(ids) if isinstance(ids, list) else [ids]


# ================================================================================================
# Debian's mosquitto command-line clients
# ================================================================================================
def mosquitto_pub(
    broker: BrokerProc,
    topic: str,
    message: str,
    qos: int = 0,
    version: int = 5,
    retain: bool = False,
    extra: Iterable[str] = (),
) -> None:
    """Run `mosquitto_pub` once (fails the test if it exits non-zero)."""
    cmd = [
        "mosquitto_pub",
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-t",
        topic,
        "-m",
        message,
        "-q",
        str(qos),
        "-V",
        "mqttv5" if version == 5 else "mqttv311",
        "-i",
        unique_id("mpub"),
    ]
    if retain:
        cmd.append("-r")
    cmd += list(extra)
    res = subprocess.run(cmd, capture_output=True, timeout=WAIT + 2)
    assert res.returncode == 0, f"mosquitto_pub failed: {res.stderr!r}"


def start_mosquitto_sub(
    broker: BrokerProc,
    topic: str,
    count: int,
    qos: int = 0,
    version: int = 5,
    extra: Iterable[str] = (),
) -> subprocess.Popen:
    """Start `mosquitto_sub -C count -v` and wait until its subscription is in place."""
    # stdbuf: line-buffered stdout, so the debug line announcing the SUBACK can be waited for
    cmd = [
        "stdbuf",
        "-oL",
        "mosquitto_sub",
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-t",
        topic,
        "-C",
        str(count),
        "-q",
        str(qos),
        "-V",
        "mqttv5" if version == 5 else "mqttv311",
        "-v",
        "-W",
        "5",
        "-i",
        unique_id("msub"),
        "-d",
    ]
    cmd += list(extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # With -d, mosquitto_sub prints "Client ... received SUBACK" once subscribed.
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "received SUBACK" in line:
            return proc
    proc.kill()
    proc.wait()
    raise AssertionError(f"mosquitto_sub did not subscribe: {lines}")


def finish_mosquitto_sub(proc: subprocess.Popen) -> list[str]:
    """Wait for `mosquitto_sub` to exit and return its `topic payload` lines (debug lines
    dropped)."""
    assert proc.stdout is not None
    # not communicate(): with a timeout it reads the pipe's fd directly and would lose what
    # start_mosquitto_sub's readline() already buffered. The output is a few lines at most.
    try:
        proc.wait(timeout=WAIT + 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"mosquitto_sub did not finish: {proc.stdout.read()!r}") from None
    out = proc.stdout.read()
    proc.stdout.close()
    return [
        ln
        for ln in out.splitlines()
        if ln and not ln.startswith(("Client ", "Subscribed (", "Timed out"))
    ]
