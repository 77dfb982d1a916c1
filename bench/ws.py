"""MQTT over WebSocket for the load tool: the upgrade handshake, masked client frames, unframing.

Written by hand for speed on the tool's raw non-blocking sockets (RFC 6455, no extensions):

- ``upgrade_request`` / ``parse_upgrade``: the HTTP/1.1 upgrade with a random
  ``Sec-WebSocket-Key``, offering the ``mqtt`` subprotocol; the answer must be ``101`` with
  ``Upgrade: websocket``, ``Connection: upgrade``, the right ``Sec-WebSocket-Accept`` and the
  ``mqtt`` subprotocol.
- ``frame``: one masked binary frame (a fresh 4-byte key per frame) around any bytes;
  ``RepeatFramer``: a QoS 0 publisher's batch (one packet repeated n times) framed and masked
  without masking the whole batch: when the unit of ``g`` packets is a multiple of 4 bytes long
  every unit meets the mask at the same phase, so the masked batch is the masked unit repeated.
- ``FrameReader.unframe``: server frames (never masked) walked in place in the receive buffer,
  payloads moved down over the headers so that the MQTT framing walker sees one contiguous
  byte stream; a frame may hold several MQTT packets and a packet may span frames, a frame
  header may be split between reads. Control frames (ping, pong, close) are handed back.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MAX_UPGRADE_RESPONSE = 16 * 1024

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")

try:  # the websockets package's C helper (FluxMQ depends on it): ~200x the pure-Python speed
    from websockets.speedups import apply_mask as _c_mask
except ImportError:  # pragma: no cover - the tool still works without it, more slowly
    _c_mask = None


class WSError(Exception):
    """A WebSocket protocol error; ``kind`` is the error counter's name."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _py_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    m = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    if _c_mask is not None:
        return _c_mask(data, key)
    return _py_mask(data, key)


def new_mask_key() -> bytes:
    """A fresh masking key (not cryptographic: the tool only talks to loopback brokers)."""
    return random.getrandbits(32).to_bytes(4, "big")


def new_key() -> str:
    """A ``Sec-WebSocket-Key``: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(host: str, port: int, path: str, key: str, subprotocol: str = "mqtt") -> bytes:
    """The HTTP/1.1 upgrade request."""
    h = f"[{host}]" if ":" in host else host
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {h}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        "\r\n"
    ).encode()


def parse_upgrade(data: bytes | bytearray, key: str, subprotocol: str = "mqtt") -> int:
    """Check the server's answer to the upgrade; return its length (what follows is frames).

    Returns 0 while the header is incomplete; raises ``WSError`` on a refusal or a bad answer.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_UPGRADE_RESPONSE:
            raise WSError("ws_upgrade:response_too_long")
        return 0
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise WSError("ws_upgrade:bad_status_line")
    if parts[1] != "101":
        raise WSError(f"ws_upgrade:http_{parts[1]}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise WSError("ws_upgrade:bad_header")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if headers.get("upgrade", "").lower() != "websocket":
        raise WSError("ws_upgrade:no_upgrade_header")
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        raise WSError("ws_upgrade:no_connection_upgrade")
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise WSError("ws_upgrade:bad_accept")
    if headers.get("sec-websocket-protocol") != subprotocol:
        raise WSError("ws_upgrade:no_subprotocol")
    if headers.get("sec-websocket-extensions"):
        raise WSError("ws_upgrade:unrequested_extension")
    return end + 4


def header(n: int, opcode: int = OP_BINARY, key: bytes | None = None) -> bytes:
    """A final frame's header for an ``n``-byte payload (masked with ``key`` when given)."""
    b0 = 0x80 | opcode
    m = 0x80 if key is not None else 0
    if n < 126:
        h = bytes((b0, m | n))
    elif n < 65536:
        h = _H16.pack(b0, m | 126, n)
    else:
        h = _H64.pack(b0, m | 127, n)
    return h + key if key is not None else h


def frame(payload: bytes | bytearray | memoryview, opcode: int = OP_BINARY) -> bytes:
    """One masked client frame (fresh key) around ``payload``."""
    key = new_mask_key()
    return header(len(payload), opcode, key) + apply_mask(payload, key)


def server_frame(payload: bytes | bytearray, opcode: int = OP_BINARY) -> bytes:
    """One unmasked (server) frame around ``payload``."""
    return header(len(payload), opcode) + bytes(payload)


def close_payload(code: int = 1000, reason: str = "") -> bytes:
    """The payload of a close frame."""
    return code.to_bytes(2, "big") + reason.encode()


class RepeatFramer:
    """Masked frames of one packet repeated n times, masking only ``g`` packets per frame.

    ``g = 4 / gcd(len(packet), 4)`` packets are a multiple of 4 bytes long, so each such unit
    meets the 4-byte mask at the same phase: the masked payload is the masked unit repeated,
    then the masked remainder (which starts at a multiple of 4 too).
    """

    def __init__(self, packet_size: int) -> None:
        self.size = packet_size
        self.g = 4 // math.gcd(max(1, packet_size), 4)

    def frame(self, packet: bytes, n: int) -> bytes:
        """The masked binary frame holding ``packet * n`` (fresh key)."""
        key = new_mask_key()
        g = self.g
        q, r = divmod(n, g)
        body = apply_mask(packet * g, key) * q
        if r:
            body += apply_mask(packet * r, key)
        return header(len(packet) * n, OP_BINARY, key) + body


class FrameReader:
    """Unwraps a server's frames in place; keeps the state of a frame cut by a read boundary.

    ``unframe(buf, view, r, end)`` walks the raw bytes ``buf[r:end]``, moves the payload bytes
    of binary and continuation frames down to start at ``r`` and returns where they end.
    Control frames are collected in ``controls`` as ``(opcode, payload)`` for the caller.
    A frame header cut by the end of the read is kept in ``raw``: the caller puts it back in
    front of the next read.
    """

    __slots__ = ("controls", "ctrl", "ctrl_op", "frames", "left", "raw")

    def __init__(self) -> None:
        self.left = 0  # payload bytes of the current frame still to come
        self.ctrl_op = 0  # the current frame's opcode when it is a control frame, else 0
        self.ctrl = bytearray()  # a control frame's payload so far
        self.raw = b""  # an incomplete frame header from the end of the last read
        self.controls: list[tuple[int, bytes]] = []
        self.frames = 0  # frame headers walked

    def unframe(self, buf: bytearray, view: memoryview, r: int, end: int) -> int:
        """Walk ``buf[r:end]``; return the end of the data payload moved to start at ``r``."""
        w = r
        left = self.left
        nframes = 0
        while r < end:
            if left:
                m = end - r
                if m > left:
                    m = left
                if self.ctrl_op:
                    self.ctrl += view[r : r + m]
                else:
                    if w != r:
                        view[w : w + m] = view[r : r + m]
                    w += m
                r += m
                left -= m
                if not left and self.ctrl_op:
                    self._control_done()
                continue
            avail = end - r
            if avail < 2:
                break
            b0 = buf[r]
            n = buf[r + 1]
            if b0 == 0x82 and n < 126 and avail >= n + 2:  # a whole small binary frame
                r += 2
                view[w : w + n] = view[r : r + n]
                w += n
                r += n
                nframes += 1
                continue
            if n & 0x80:
                raise WSError("ws_masked_server_frame")
            if n < 126:
                hl = 2
            elif n == 126:
                if avail < 4:
                    break
                n = (buf[r + 2] << 8) | buf[r + 3]
                hl = 4
            else:
                if avail < 10:
                    break
                n = int.from_bytes(buf[r + 2 : r + 10], "big")
                hl = 10
            if b0 & 0x70:
                raise WSError("ws_reserved_bits")
            op = b0 & 0x0F
            nframes += 1
            r += hl
            left = n
            if op in (OP_BINARY, OP_CONT):
                continue
            if op >= 8:
                if n > 125 or not b0 & 0x80:
                    raise WSError("ws_bad_control_frame")
                self.ctrl_op = op
                if not n:
                    self._control_done()
                continue
            raise WSError("ws_text_frame" if op == OP_TEXT else f"ws_opcode_{op}")
        self.left = left
        self.raw = bytes(view[r:end]) if r < end else b""
        self.frames += nframes
        return w

    def _control_done(self) -> None:
        self.controls.append((self.ctrl_op, bytes(self.ctrl)))
        self.ctrl_op = 0
        self.ctrl.clear()


def iter_client_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete (masked or not) frames at the start of ``buf``: ``([(opcode, payload)], used)``.

    For the relay and the tests (the server side); payloads are unmasked.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        n = b1 & 0x7F
        hl = 2
        if n == 126:
            if end - pos < 4:
                break
            n = (buf[pos + 2] << 8) | buf[pos + 3]
            hl = 4
        elif n == 127:
            if end - pos < 10:
                break
            n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            hl = 10
        masked = b1 & 0x80
        if masked:
            hl += 4
        if end - pos < hl + n:
            break
        payload = bytes(buf[pos + hl : pos + hl + n])
        if masked:
            payload = apply_mask(payload, bytes(buf[pos + hl - 4 : pos + hl]))
        out.append((b0 & 0x0F, payload))
        pos += hl + n
    return out, pos
