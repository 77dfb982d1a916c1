"""MQTT over WebSocket: the Sans-I/O `websockets.server.ServerProtocol` inside a uvloop Protocol,
feeding the same MQTT channel (`fluxmq.mqtt.connection.Connection`) as TCP.

    uvloop TCP (or TLS) transport
        -> WSProtocol.data_received: HTTP upgrade (path 404, origin 403, rate 429), then frames
        -> binary frame payloads -> Connection.data_received (the C channel: one byte stream,
           so several MQTT packets in a frame and a packet split over frames both just work)
    Connection output (one OutBuffer flush per loop turn)
        -> WSTransport.write -> one binary frame -> the TCP transport

The channel sees an asyncio transport (`WSTransport`) whose `write()` wraps bytes into a binary
frame; without a negotiated extension the frame header is built here and the payload written
after it with `writelines` (no copy), with permessage-deflate the frame goes through the
`websockets` protocol. Pings are answered by the protocol; close codes: the client's close is
echoed (the MQTT connection then ends as if the socket dropped: the will is published); when
MQTT closes, the close code says why (1000 normal, 1001 server going down, 1002 protocol
error, 1008 policy, 1009 packet too large, 1011 internal error); a text frame is refused with
1003.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from urllib.parse import urlsplit

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from fluxmq.mqtt.connection import Connection
from fluxmq.transport.tcp import TCPListener

log = logging.getLogger("fluxmq.transport")

# The websockets library logs every connection at INFO and every frame at DEBUG: keep it quiet.
_WS_LOG = logging.getLogger("fluxmq.transport.websocket.protocol")
_WS_LOG.setLevel(logging.WARNING)
_WS_LOG.propagate = False
_WS_LOG.addHandler(logging.NullHandler())

SUBPROTOCOLS = ("mqtt", "mqttv3.1")
CLOSE_TIMEOUT = 2.0  # seconds to wait for the client's close frame before closing TCP

_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_TEXT = Opcode.TEXT
_OPEN = State.OPEN
_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack


def _select_subprotocol(protocol: ServerProtocol, offered) -> str | None:
    """`mqtt` (MQTT 3.1.1 and 5), else `mqttv3.1` (old clients); a client offering neither is
    still accepted, without a subprotocol."""
    for name in SUBPROTOCOLS:
        if name in offered:
            return name
    return None


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """`allowed_origins`: empty or `*` allows all; `scheme://host[:port]` matches exactly
    (case-insensitive); `*.example.com` matches any subdomain. No Origin header: allowed."""
    if not allowed or origin is None or "*" in allowed:
        return True
    o = origin.strip().lower().rstrip("/")
    host = None
    for a in allowed:
        a = a.lower()
        if a.startswith("*."):
            if host is None:
                try:
                    host = urlsplit(o).hostname or ""
                except ValueError:
                    host = ""
            if host.endswith(a[1:]) and len(host) > len(a) - 1:
                return True
        elif o == a.rstrip("/"):
            return True
    return False


def close_code(reason: int) -> int:
    """The WebSocket close code for an MQTT connection that ended with `reason`."""
    if reason in (0, 0x04, 0x8E, 0x8D, 0x98):
        return 1000
    if reason == 0x8B:
        return 1001
    if reason == 0x95:
        return 1009
    if reason == 0x80:
        return 1011
    if reason in (0x87, 0x96, 0x97, 0x9F, 0x89, 0x8A):
        return 1008
    if reason >= 0x80:
        return 1002
    return 1000


class WSTransport:
    """What the MQTT channel writes to: binary WebSocket frames over the real transport."""

    __slots__ = ("p",)

    def __init__(self, p: WSProtocol) -> None:
        self.p = p

    def write(self, data) -> None:
        p = self.p
        if p.closing:
            return
        if p.plain_frames:
            n = len(data)
            if n < 126:
                p.transport.writelines((bytes((0x82, n)), data))
            elif n < 65536:
                p.transport.writelines((_H16(0x82, 126, n), data))
            else:
                p.transport.writelines((_H64(0x82, 127, n), data))
        else:
            p.ws.send_binary(bytes(data))
            p.flush()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        self.p.close_ws()

    def abort(self) -> None:
        self.p.closing = True
        self.p.transport.abort()

    def is_closing(self) -> bool:
        return self.p.closing or self.p.transport.is_closing()

    def get_extra_info(self, name, default=None):
        if name == "subprotocol":
            return self.p.ws.subprotocol
        if name == "websocket_extensions":
            return [e.name for e in self.p.ws.extensions]
        return self.p.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.p.paused = True
        self.p.transport.pause_reading()

    def resume_reading(self) -> None:
        p = self.p
        p.paused = False
        if not p.transport.is_closing():
            p.transport.resume_reading()
        p.deliver_pending()

    def is_reading(self) -> bool:
        return not self.p.paused

    def get_write_buffer_size(self) -> int:
        return self.p.transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.p.transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return False


class WSProtocol(asyncio.Protocol):
    """One WebSocket connection: the HTTP upgrade, then an MQTT connection over its frames."""

    __slots__ = (
        "closing",
        "conn",
        "listener",
        "paused",
        "pending",
        "plain_frames",
        "timer",
        "transport",
        "ws",
    )

    def __init__(self, listener: WSListener) -> None:
        self.listener = listener
        self.transport = None
        self.ws: ServerProtocol | None = None
        self.conn: Connection | None = None
        self.timer = None
        self.closing = False
        self.plain_frames = False
        self.paused = False
        self.pending: list[bytes] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        lst = self.listener
        self.transport = transport
        self.ws = ServerProtocol(
            extensions=lst.extensions,
            select_subprotocol=_select_subprotocol,
            max_size=(None, lst.max_frame),
            logger=_WS_LOG,
        )
        lst.handshaking.add(self)
        self.timer = lst.loop.call_later(lst.settings.read_timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        conn = self.conn
        for ev in events:
            if type(ev) is Request:
                self._upgrade(ev)
                conn = self.conn
                continue
            op = ev.opcode
            if op is _BINARY or op is _CONT:
                if conn is None:
                    continue
                payload = ev.data
                if type(payload) is not bytes:
                    payload = bytes(payload)
                if self.paused:
                    if self.pending is None:
                        self.pending = []
                    self.pending.append(payload)
                else:
                    conn.data_received(payload)
            elif op is _TEXT:
                if ws.state is _OPEN:
                    ws.fail(1003, "MQTT over WebSocket uses binary frames")
                self.closing = True
                break
        self.flush()

    def eof_received(self):
        self.ws.receive_eof()
        self.flush()
        return False

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.handshaking.discard(self)
        conn = self.conn
        if conn is not None:
            conn.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_writing()

    # -- the upgrade -----------------------------------------------------------------------------

    def _upgrade(self, request: Request) -> None:
        ws = self.ws
        lst = self.listener
        path = request.path.split("?", 1)[0]
        if path != lst.path:
            response = ws.reject(404, "Not Found\n")
        elif not origin_allowed(request.headers.get("Origin"), lst.allowed_origins):
            lst.origin_refused += 1
            response = ws.reject(403, "Origin not allowed\n")
        elif lst.conn_limiter is not None and not lst.conn_limiter.allow(self._peer_ip()):
            lst.rate_refused += 1
            response = ws.reject(429, "Too many connections from this address\n")
            response.headers["Retry-After"] = "1"
        else:
            response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            self.closing = True
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lst.handshaking.discard(self)
        self.plain_frames = not ws.extensions
        self.conn = conn = Connection(lst.broker, lst)
        self.flush()  # the 101 response goes before anything the channel writes
        conn.connection_made(WSTransport(self))

    def _peer_ip(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return peer[0] if peer else ""

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.conn is None and self.transport is not None:
            self.closing = True
            self.transport.abort()

    # -- output and closing ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the websockets protocol has queued (handshake, pong, close frames)."""
        transport = self.transport
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # the protocol's end of stream: a server closes the TCP connection
                self.closing = True
                transport.close()

    def deliver_pending(self) -> None:
        """After the channel resumes reading: the payloads that arrived while it was paused."""
        pending = self.pending
        while pending and not self.paused and self.conn is not None and not self.closing:
            self.conn.data_received(pending.pop(0))
        if not pending:
            self.pending = None

    def close_ws(self) -> None:
        """The MQTT side closes: a close frame with the code for its reason, then (once the
        client answers, or after CLOSE_TIMEOUT) the TCP connection."""
        if self.closing:
            return
        self.closing = True
        ws = self.ws
        if ws.state is _OPEN:
            code = close_code(self.conn.close_reason if self.conn is not None else 0)
            ws.send_close(code, "")
            self.flush()
        if not self.transport.is_closing():
            self.timer = self.listener.loop.call_later(CLOSE_TIMEOUT, self.transport.close)


class WSListener(TCPListener):
    """One MQTT-over-WebSocket listener (`server.websocket.plain`, ...)."""

    def __init__(
        self,
        *args,
        path: str = "/mqtt",
        allowed_origins: tuple[str, ...] = (),
        compression: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.path = path
        self.allowed_origins = tuple(allowed_origins)
        # A frame may carry several packets; each frame's payload goes to the decoder at once,
        # so only a frame's size needs a bound (the packet size is the decoder's business).
        self.max_frame = 2 * self.settings.max_packet_size + 65536
        self.extensions = (
            [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
            if compression
            else []
        )
        self.handshaking: set[WSProtocol] = set()
        self.origin_refused = 0
        self.check_rate_on_open = False  # the connection rate is checked at the upgrade

    def make_protocol(self) -> WSProtocol:
        return WSProtocol(self)

    def close(self) -> None:
        super().close()
        for p in list(self.handshaking):
            if p.transport is not None:
                p.transport.abort()
