"""One MQTT client connection of the load tool: non-blocking socket, optional TLS, CONNECT.

A ``Client`` belongs to one ``Worker`` (``bench.worker``), which owns the epoll object, the
shared receive buffer and the ``Scanner``. The client drives its own small state machine
(TCP connect -> TLS handshake -> CONNECT/CONNACK -> role-specific set-up -> ready), keeps an
output buffer of bytes for the wire that is written with as few ``send`` calls as possible, and
hands every read to the scanner.

TLS runs in memory (``ssl.SSLObject`` over two ``MemoryBIO``s) on the plain socket: one
``recv`` takes whatever the kernel holds, however many records, and the records are decrypted
from memory. (An ``SSLSocket`` reads each record with two system calls, which made the tool,
not the broker, the limit against one that writes one small record per packet: Mosquitto.) Roles subclass it: ``bench.pub.Publisher``, ``bench.sub.Subscriber``,
``bench.conn.IdleClient``.

Over WebSocket (``ConnOptions.ws``; ``bench.ws``) the TCP (or TLS) connection is followed by
the HTTP upgrade; every write is then one masked binary frame, reads are unframed in place
before the MQTT walker sees them, pings are answered, and the end is a close handshake.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import mqttwire as w
from bench import ws
from bench.framing import RecvBuffer

if TYPE_CHECKING:
    from bench.worker import Worker

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR | select.EPOLLHUP

# States.
NEW = 0
CONNECTING = 1
HANDSHAKE = 2
WAIT_CONNACK = 3
WAIT_SUBACK = 4
READY = 5
CLOSED = 6
WS_UPGRADE = 7  # waiting for the answer to the WebSocket upgrade
CLOSING = 8  # WebSocket close frame sent, waiting for the broker's (or the end of the stream)

_WOULD_BLOCK = (BlockingIOError, InterruptedError)
TLS_RECV = 256 * 1024  # bytes read from a TLS connection's socket per wake-up, at most


@dataclass
class ConnOptions:
    """How every client of a run connects (already validated: host is a loopback address)."""

    host: str
    port: int = 1883
    version: int = w.V311
    clean: bool = True
    keepalive: int = 300
    prefix: str = "bench"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    cafile: str | None = None
    insecure: bool = False
    connect_timeout: float = 15.0
    ws: bool = False  # MQTT over WebSocket (with ``tls``: wss)
    ws_path: str = "/mqtt"


def make_ssl_context(opts: ConnOptions) -> ssl.SSLContext:
    """An SSL client context for ``opts`` (CA file, or no verification with ``insecure``)."""
    ctx = ssl.create_default_context(cafile=opts.cafile)
    if opts.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """A connection and its MQTT session set-up. Subclasses add what the role does when ready."""

    role = "conn"

    def __init__(self, worker: Worker, index: int, client_id: str) -> None:
        self.worker = worker
        self.index = index
        self.client_id = client_id
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = NEW
        self.out = bytearray()
        self.carry = b""
        self.inflight: bytearray | None = None
        self.mask = 0  # epoll event mask currently registered
        self.last_send = 0
        self.started_ns = 0
        self.ready_ns = 0
        self.received = 0
        self.broker_receive_max = 65535
        self.ws = worker.opts.ws
        self.ws_key = ""
        self.ws_hs = bytearray()  # the upgrade answer so far
        self.wsr: ws.FrameReader | None = ws.FrameReader() if self.ws else None
        self.acks = bytearray()  # what the scanner answers, when it must be framed/encrypted
        self.tlso: ssl.SSLObject | None = None
        self.tls_in: ssl.MemoryBIO | None = None
        self.tls_out: ssl.MemoryBIO | None = None

    # -- connection set-up -------------------------------------------------------------------
    def start(self, now: int) -> None:
        """Open the TCP connection (non-blocking)."""
        opts = self.worker.opts
        family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
        self.started_ns = now
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            self.fail(f"socket:{errno.errorcode.get(e.errno or 0, e.errno)}")
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.fd = s.fileno()
        err = s.connect_ex((opts.host, opts.port))
        if err not in (0, errno.EINPROGRESS):
            self.fail(f"connect:{errno.errorcode.get(err, err)}")
            return
        self.state = CONNECTING
        self.worker.register(self, EPOLLOUT)

    def _connected_tcp(self) -> None:
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(f"connect:{errno.errorcode.get(err, err)}")
            return
        if self.worker.opts.tls:
            ctx = self.worker.ssl_context()
            self.tls_in = ssl.MemoryBIO()
            self.tls_out = ssl.MemoryBIO()
            try:
                self.tlso = ctx.wrap_bio(
                    self.tls_in, self.tls_out, server_hostname=self.worker.opts.host
                )
            except (OSError, ssl.SSLError) as e:
                self.fail(f"tls:{e.__class__.__name__}")
                return
            self.state = HANDSHAKE
            self.worker.modify(self, EPOLLIN)
            self._handshake()
            return
        self._transport_ready()

    def _handshake(self) -> None:
        """Drive the TLS handshake: send what it produced, feed it what the socket holds."""
        o = self.tlso
        tin = self.tls_in
        tout = self.tls_out
        sock = self.sock
        assert o is not None and tin is not None and tout is not None and sock is not None
        while True:
            try:
                o.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                self.fail(f"tls:{e.reason or e.__class__.__name__}")
                return
            if tout.pending:
                self._send_wire(tout.read())
                if self.state == CLOSED:
                    return
            try:
                data = sock.recv(65536)
            except _WOULD_BLOCK:
                return
            except OSError as e:
                self.fail(_errname(e))
                return
            if not data:
                self.fail("tls:closed_by_broker")
                return
            tin.write(data)
        if tout.pending:
            self._send_wire(tout.read())
            if self.state == CLOSED:
                return
        self._transport_ready()

    def _transport_ready(self) -> None:
        """TCP (and TLS) is up: CONNECT, or first the WebSocket upgrade."""
        if not self.ws:
            self._send_connect()
            return
        opts = self.worker.opts
        self.state = WS_UPGRADE
        self._want_read()
        self.ws_key = ws.new_key()
        self.send_raw(ws.upgrade_request(opts.host, opts.port, opts.ws_path, self.ws_key))

    def _read_upgrade(self) -> None:
        """Read the answer to the upgrade; CONNECT once it is a valid 101."""
        hs = self.ws_hs
        if self.tlso is not None:
            rb = self.worker.rbuf
            end = self._recv_tls(rb, 0)
            if end <= 0:
                return
            hs += rb.view[:end]
        else:
            sock = self.sock
            assert sock is not None
            try:
                data = sock.recv(65536)
            except _WOULD_BLOCK:
                return
            except OSError as e:
                self.fail(_errname(e))
                return
            if not data:
                self.fail("ws_upgrade:closed_by_broker")
                return
            hs += data
        try:
            n = ws.parse_upgrade(hs, self.ws_key)
        except ws.WSError as e:
            self.fail(e.kind)
            return
        if not n:
            return
        assert self.wsr is not None
        self.wsr.raw = bytes(hs[n:])  # frames right after the answer: walked with the next read
        self.ws_hs = bytearray()
        self._send_connect()

    def _send_connect(self) -> None:
        opts = self.worker.opts
        self.state = WAIT_CONNACK
        self._want_read()
        pkt = w.connect(
            self.client_id,
            version=opts.version,
            clean=opts.clean,
            keepalive=opts.keepalive,
            username=opts.username,
            password=opts.password,
        )
        self.write(pkt)

    # -- events ------------------------------------------------------------------------------
    def on_event(self, ev: int) -> None:
        """Handle one epoll event for this connection."""
        st = self.state
        if st in (READY, WAIT_CONNACK, WAIT_SUBACK, CLOSING):
            if ev & EPOLLIN:
                if self.ws:
                    self.on_readable_ws()
                else:
                    self.on_readable()
            if ev & EPOLLOUT and self.state != CLOSED:
                self.on_writable()
            if ev & EPOLLERR and not ev & EPOLLIN and self.state != CLOSED:
                if self.state == CLOSING:
                    self.close()
                else:
                    self.fail("reset")
        elif st == CONNECTING:
            self._connected_tcp()
        elif st == HANDSHAKE:
            if ev & EPOLLOUT:
                self.flush()
            if self.state == HANDSHAKE:
                self._handshake()
        elif st == WS_UPGRADE:
            if ev & EPOLLIN:
                self._read_upgrade()
            if ev & EPOLLOUT and self.state != CLOSED:
                self.flush()
            if ev & EPOLLERR and not ev & EPOLLIN and self.state != CLOSED:
                self.fail("reset")

    def on_readable(self) -> None:
        """Read once into the worker's buffer and walk the packets."""
        worker = self.worker
        rb = worker.rbuf
        buf = rb.buf
        carry = self.carry
        k = len(carry)
        if k:
            if k * 2 > len(buf):
                rb.ensure(k)
                buf = rb.buf
            buf[:k] = carry
        if self.tlso is not None:
            self._on_readable_tls(k)
            return
        sock = self.sock
        assert sock is not None
        try:
            n = sock.recv_into(rb.view[k:])
        except _WOULD_BLOCK:
            return
        except OSError as e:
            self.fail(_errname(e))
            return
        if n == 0:
            self.fail("closed_by_broker")
            return
        end = k + n
        sc = worker.scanner
        pos = sc.scan(buf, 0, end, time.monotonic_ns(), self.out, self.inflight, self.on_packet)
        self.carry = bytes(rb.view[pos:end]) if pos < end else b""
        if sc.last_publishes:
            self.received += sc.last_publishes
        if sc.last_acked or sc.last_unexpected:
            self.on_acks(sc.last_acked, sc.last_ack_errors, sc.last_unexpected)
        if self.out and self.state != CLOSED:
            self.flush()

    def _on_readable_tls(self, k: int) -> None:
        """TLS without WebSocket: decrypt after the carried bytes, walk, answer via ``acks``."""
        rb = self.worker.rbuf
        end = self._recv_tls(rb, k)
        if end <= k:
            return
        self._walk(rb.buf, end)

    def _walk(self, buf: bytearray, end: int) -> None:
        """Walk ``buf[0:end]``; acks go to ``self.acks``, then out as one (framed) write."""
        sc = self.worker.scanner
        acks = self.acks
        pos = sc.scan(buf, 0, end, time.monotonic_ns(), acks, self.inflight, self.on_packet)
        self.carry = bytes(buf[pos:end]) if pos < end else b""
        if sc.last_publishes:
            self.received += sc.last_publishes
        if sc.last_acked or sc.last_unexpected:
            self.on_acks(sc.last_acked, sc.last_ack_errors, sc.last_unexpected)
        if acks and self.state != CLOSED:
            self.write(acks)
            acks.clear()
        if self.out and self.state != CLOSED:
            self.flush()

    def _recv_tls(self, rb: RecvBuffer, start: int) -> int:
        """One ``recv`` of everything the socket holds, decrypted into ``rb`` from ``start``.

        Returns the end of the plaintext (``start`` when a record is still incomplete), or -1
        after the connection failed or ended.
        """
        sock = self.sock
        o = self.tlso
        tin = self.tls_in
        assert sock is not None and o is not None and tin is not None
        try:
            data = sock.recv(TLS_RECV)
        except _WOULD_BLOCK:
            return start
        except OSError as e:
            self._read_failed(_errname(e))
            return -1
        if not data:
            self._read_failed("closed_by_broker")
            return -1
        tin.write(data)
        end = start
        while True:
            if len(rb.buf) - end < 32768:
                rb.grow(end)
            view = rb.view
            try:
                n = o.read(len(view) - end, view[end:])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._read_failed("closed_by_broker")
                return -1
            except ssl.SSLError as e:
                self._read_failed(f"tls:{e.reason or e.__class__.__name__}")
                return -1
            if not n:
                break
            end += n
        tout = self.tls_out
        if tout is not None and tout.pending:  # e.g. a key update answered by the TLS layer
            self._send_wire(tout.read())
        return end

    def _read_failed(self, kind: str) -> None:
        """A read ended the connection: an error, or the expected end while closing."""
        if self.state == CLOSING:
            self.close()
        else:
            self.fail(kind)

    def on_readable_ws(self) -> None:
        """WebSocket: read once after the unfinished packet and frame header, unframe, walk."""
        worker = self.worker
        wsr = self.wsr
        assert wsr is not None
        rb = worker.rbuf
        carry = self.carry
        raw = wsr.raw
        k = len(carry)
        h = len(raw)
        if k + h:
            if (k + h) * 2 > len(rb.buf):
                rb.ensure(k + h)
            buf = rb.buf
            buf[:k] = carry
            buf[k : k + h] = raw
        if self.tlso is not None:
            end = self._recv_tls(rb, k + h)
            if end <= k + h:
                return
        else:
            sock = self.sock
            assert sock is not None
            try:
                n = sock.recv_into(rb.view[k + h :])
            except _WOULD_BLOCK:
                return
            except OSError as e:
                self._read_failed(_errname(e))
                return
            if n == 0:
                self._read_failed("closed_by_broker")
                return
            end = k + h + n
        buf = rb.buf
        try:
            end = wsr.unframe(buf, rb.view, k, end)
        except ws.WSError as e:
            self.fail(e.kind)
            return
        if wsr.controls:
            self._ws_controls()
            if self.state == CLOSED:
                return
        self._walk(buf, end)

    def _ws_controls(self) -> None:
        """Answer pings; a close frame from the broker ends the connection."""
        wsr = self.wsr
        assert wsr is not None
        controls = wsr.controls
        wsr.controls = []
        for op, payload in controls:
            if op == ws.OP_PING:
                self.send_raw(ws.frame(payload, ws.OP_PONG))
            elif op == ws.OP_CLOSE:
                if self.state == CLOSING:  # the answer to ours: the handshake is complete
                    self.close()
                    return
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send_raw(ws.frame(payload[:2], ws.OP_CLOSE))  # echo the code
                self.fail(f"ws_closed_by_broker:{code}")
                return
            if self.state == CLOSED:
                return

    def on_writable(self) -> None:
        """The socket can take more bytes."""
        self.flush()

    def on_acks(self, acked: int, errors: int, unexpected: int) -> None:
        """Publisher hook: ``acked`` in-flight messages completed (``errors`` of them refused)."""
        if unexpected:
            self.worker.error("unexpected_ack", unexpected)

    def on_packet(self, h: int, buf: bytearray, start: int, body: int, end: int) -> None:
        """Slow path for packets the scanner does not handle itself."""
        t = h >> 4
        if t == w.CONNACK:
            try:
                ack = w.parse_connack(bytes(buf[body:end]), self.worker.opts.version)
            except (ValueError, IndexError):
                self.fail("bad_connack")
                return
            if not w.connack_reason_ok(ack.reason):
                self.fail(f"connack_refused:{ack.reason}")
                return
            self.broker_receive_max = ack.receive_maximum
            self.on_connack()
        elif t == w.SUBACK:
            _, codes = w.parse_suback(bytes(buf[body:end]), self.worker.opts.version)
            if not codes or any(c >= 0x80 for c in codes):
                self.fail(f"suback_refused:{codes[0] if codes else 'empty'}")
                return
            self.on_suback()
        elif t == w.PINGRESP:
            pass
        elif t == w.DISCONNECT:
            reason = buf[body] if end > body else 0
            self.fail(f"disconnected_by_broker:{reason}")
        else:
            self.worker.error(f"unexpected_packet:{t}")

    def on_connack(self) -> None:
        """CONNACK accepted: by default the client is ready."""
        self.set_ready()

    def on_suback(self) -> None:
        """SUBACK accepted (subscribers override)."""
        self.worker.error("unexpected_suback")

    def set_ready(self) -> None:
        """Mark the connection established and tell the worker."""
        self.state = READY
        self.ready_ns = time.monotonic_ns()
        self.worker.client_ready(self)

    # -- output --------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray) -> None:
        """Send ``data`` now if possible (over WebSocket: as one masked binary frame)."""
        if self.ws:
            data = ws.frame(data)
        self.send_raw(data)

    def send_raw(self, data: bytes | bytearray) -> None:
        """Send bytes without WebSocket framing (encrypted first over TLS)."""
        o = self.tlso
        if o is not None:
            try:
                o.write(data)
            except ssl.SSLError as e:
                self.fail(f"tls:{e.reason or e.__class__.__name__}")
                return
            assert self.tls_out is not None
            data = self.tls_out.read()
        self._send_wire(data)

    def _send_wire(self, data: bytes | bytearray) -> None:
        """Put bytes on the socket now if possible; keep what it does not take for EPOLLOUT."""
        self.last_send = self.worker.now
        if self.out:
            self.out += data
            return
        sock = self.sock
        assert sock is not None
        try:
            n = sock.send(data)
        except _WOULD_BLOCK:
            n = 0
        except OSError as e:
            self.fail(_errname(e))
            return
        if n < len(data):
            self.out += memoryview(data)[n:]
            self.worker.modify(self, EPOLLIN | EPOLLOUT)

    def _want_read(self) -> None:
        """Wait for input (and for output room while bytes are pending)."""
        self.worker.modify(self, EPOLLIN | EPOLLOUT if self.out else EPOLLIN)

    def flush(self) -> None:
        """Write as much of the pending output as the socket takes."""
        out = self.out
        if out:
            sock = self.sock
            assert sock is not None
            try:
                n = sock.send(out)
            except _WOULD_BLOCK:
                n = 0
            except OSError as e:
                self.fail(_errname(e))
                return
            self.last_send = self.worker.now
            del out[:n]
        if out:
            if not self.mask & EPOLLOUT:
                self.worker.modify(self, EPOLLIN | EPOLLOUT)
        elif self.mask & EPOLLOUT:
            self.worker.modify(self, EPOLLIN)
            self.on_drained()

    def on_drained(self) -> None:
        """The output buffer emptied after a partial write (publishers resume)."""

    def ping_if_idle(self, now: int, idle_ns: int) -> None:
        """Send PINGREQ when nothing was sent for ``idle_ns``."""
        if self.state == READY and now - self.last_send > idle_ns:
            self.write(w.PINGREQ_BYTES)

    # -- teardown ------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """Count an error for this connection and close it."""
        if self.state == CLOSED:
            return
        was_ready = self.state == READY
        self.worker.error(reason)
        self.close()
        self.worker.client_failed(self, was_ready)

    def begin_ws_close(self) -> bool:
        """WebSocket: queue DISCONNECT and a close frame (1000); wait for the broker's close.

        Returns True when the client now waits in CLOSING (the worker then polls it until the
        broker answers or closes, and calls ``close`` on whatever is left after a deadline).
        """
        if not self.ws or self.state != READY or self.sock is None:
            return False
        self.write(w.DISCONNECT_BYTES)
        self.send_raw(ws.frame(ws.close_payload(1000), ws.OP_CLOSE))
        if self.state == CLOSED:
            return False
        self.state = CLOSING
        self.flush()
        return self.state == CLOSING

    def close(self, graceful: bool = False) -> None:
        """Close the socket (with a DISCONNECT first when ``graceful`` and established)."""
        if self.state == CLOSED:
            return
        sock = self.sock
        if sock is not None:
            if graceful and self.state == READY and not self.ws:
                try:
                    bye = w.DISCONNECT_BYTES
                    if self.tlso is not None and self.tls_out is not None:
                        self.tlso.write(bye)
                        bye = self.tls_out.read()
                    sock.send(bytes(self.out) + bye)
                except (OSError, ssl.SSLError):
                    pass
            self.worker.unregister(self)
            try:
                sock.close()
            except OSError:
                pass
        self.state = CLOSED
        self.sock = None


def _errname(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return f"tls:{e.reason or e.__class__.__name__}"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "broken_pipe"
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return e.__class__.__name__
