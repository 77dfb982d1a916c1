"""One MQTT client connection of the load tool: non-blocking socket, optional TLS, CONNECT.

A ``Client`` belongs to one ``Worker`` (``bench.worker``), which owns the epoll object, the
shared receive buffer and the ``Scanner``. The client drives its own small state machine
(TCP connect -> TLS handshake -> CONNECT/CONNACK -> role-specific set-up -> ready), keeps an
output buffer that is written with as few ``send`` calls as possible, and hands every read to
the scanner. Roles subclass it: ``bench.pub.Publisher``, ``bench.sub.Subscriber``,
``bench.conn.IdleClient``.
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

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


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
            self.worker.unregister(self)
            try:
                self.sock = ctx.wrap_socket(
                    self.sock, server_hostname=self.worker.opts.host, do_handshake_on_connect=False
                )
            except (OSError, ssl.SSLError) as e:
                self.fail(f"tls:{e.__class__.__name__}")
                return
            self.fd = self.sock.fileno()
            self.state = HANDSHAKE
            self.worker.register(self, EPOLLIN | EPOLLOUT)
            self._handshake()
            return
        self._send_connect()

    def _handshake(self) -> None:
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.worker.modify(self, EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self.worker.modify(self, EPOLLOUT)
            return
        except (OSError, ssl.SSLError) as e:
            self.fail(f"tls:{getattr(e, 'reason', None) or e.__class__.__name__}")
            return
        self._send_connect()

    def _send_connect(self) -> None:
        opts = self.worker.opts
        self.state = WAIT_CONNACK
        self.worker.modify(self, EPOLLIN)
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
        if st in (READY, WAIT_CONNACK, WAIT_SUBACK):
            if ev & EPOLLIN:
                self.on_readable()
            if ev & EPOLLOUT and self.state != CLOSED:
                self.on_writable()
            if ev & EPOLLERR and not ev & EPOLLIN and self.state != CLOSED:
                self.fail("reset")
        elif st == CONNECTING:
            self._connected_tcp()
        elif st == HANDSHAKE:
            self._handshake()

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
        sock = self.sock
        assert sock is not None
        try:
            n = sock.recv_into(rb.view[k:])
        except _WOULD_BLOCK:
            return
        except (OSError, ssl.SSLError) as e:
            self.fail(_errname(e))
            return
        if n == 0:
            self.fail("closed_by_broker")
            return
        end = k + n
        if worker.opts.tls:  # decrypted bytes that epoll cannot see
            end = _drain_tls(sock, rb, end)
            buf = rb.buf
        sc = worker.scanner
        pos = sc.scan(buf, 0, end, time.monotonic_ns(), self.out, self.inflight, self.on_packet)
        self.carry = bytes(rb.view[pos:end]) if pos < end else b""
        if sc.last_publishes:
            self.received += sc.last_publishes
        if sc.last_acked or sc.last_unexpected:
            self.on_acks(sc.last_acked, sc.last_ack_errors, sc.last_unexpected)
        if self.out and self.state != CLOSED:
            self.flush()

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
        """Send ``data`` now if possible; keep what the socket does not take for EPOLLOUT."""
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
        except (OSError, ssl.SSLError) as e:
            self.fail(_errname(e))
            return
        if n < len(data):
            self.out += memoryview(data)[n:]
            self.worker.modify(self, EPOLLIN | EPOLLOUT)

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
            except (OSError, ssl.SSLError) as e:
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

    def close(self, graceful: bool = False) -> None:
        """Close the socket (with a DISCONNECT first when ``graceful`` and established)."""
        if self.state == CLOSED:
            return
        sock = self.sock
        if sock is not None:
            if graceful and self.state == READY:
                try:
                    if self.out:
                        sock.send(self.out)
                    sock.send(w.DISCONNECT_BYTES)
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


def _drain_tls(sock: socket.socket, rb: RecvBuffer, end: int) -> int:
    """Read the TLS records already decrypted into ``rb`` after ``end``; return the new end."""
    assert isinstance(sock, ssl.SSLSocket)
    while sock.pending():
        if end == len(rb.buf):
            rb.grow(end)
        try:
            n = sock.recv_into(rb.view[end:])
        except _WOULD_BLOCK:
            break
        if n == 0:
            break
        end += n
    return end
