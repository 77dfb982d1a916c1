"""A small HTTP/1.1 server on httptools, for the HTTP bridge and the health endpoints.

One `HTTPProtocol` per connection parses requests as they arrive (keep-alive and pipelining:
answers go out in request order, those of one read together in one write). Each connection is
on its own: a slow client (a request trickling in) or a malformed one (400, then closed) holds
up nobody else. Bounds: a request must be complete within `read_timeout` of its first byte, an
idle keep-alive connection is closed after `read_timeout`, the request line and headers are
limited to 64 KiB (431) and the body to `max_body` (413, then closed). A client that does not
read its answers stops being read from until it does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

import httptools
import orjson
from uvloop.loop import SSLProtocol

from fluxmq._speedups.bufpool import Flusher, OutBuffer

log = logging.getLogger("fluxmq.transport")

MAX_HEAD = 65536


class Request:
    """One HTTP request, complete with its body."""

    __slots__ = ("body", "headers", "method", "path", "query", "remote", "transport")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        remote: str,
        transport,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # names in lower case; a repeated header keeps the last value
        self.body = body
        self.remote = remote  # the client's IP address
        self.transport = transport


class Response:
    __slots__ = ("body", "close", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = close


def json_response(
    status: int, obj, headers: dict[str, str] | None = None, close: bool = False
) -> Response:
    return Response(status, orjson.dumps(obj), "application/json", headers, close)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, close: bool = False
) -> Response:
    return json_response(status, {"status": "error", "error": message}, headers, close)


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _serialize(resp: Response, keep_alive: bool, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
    ]
    if not keep_alive:
        lines.append("Connection: close")
    if resp.headers:
        lines.extend(f"{k}: {v}" for k, v in resp.headers.items())
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head else out + resp.body


class _Pending:
    """The place of an answer that a handler gives later (it returned an awaitable): answers
    still leave in request order."""

    __slots__ = ("close", "data")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False


class _Stop(Exception):
    """Raised from a parser callback to stop parsing this connection (answer already queued)."""


class HTTPProtocol(asyncio.Protocol):
    """One HTTP client connection."""

    def __init__(self, listener: HTTPListener) -> None:
        self.listener = listener
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = ""
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_len = 0
        self.head_len = 0
        self.out: list[bytes | _Pending] = []
        self.closing = False
        self.timer = None
        self.in_request = False
        self.ob: OutBuffer | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        # Output goes through the broker's flusher like MQTT output: written at the end of the
        # loop turn, after durable storage committed what the turn's requests published.
        self.ob = OutBuffer(transport, self.listener.flusher) if self.listener.flusher else None
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else ""
        self.listener.conns.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop) and not isinstance(exc.__cause__, _Stop):
                log.error("HTTP handler failed", exc_info=exc)
                self._queue(error_response(500, "internal error"), False)
            self.closing = True
        except httptools.HttpParserUpgrade:
            self._queue(error_response(400, "protocol upgrade is not supported here"), False)
            self.closing = True
        except httptools.HttpParserError as exc:
            self._queue(error_response(400, f"malformed HTTP request: {exc}"), False)
            self.closing = True
        self._flush()

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.ob is not None:
            self.ob.detach_transport()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.conns.discard(self)

    def pause_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_len = 0
        self.head_len = 0
        self.in_request = True
        self._arm()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.listener.max_body:
            self._refuse(413, "request body too large")
        if self.headers.get("expect", "").lower() == "100-continue":
            self.out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._flush()

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.body_len > self.listener.max_body:
            self._refuse(413, "request body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        parser = self.parser
        try:
            url = httptools.parse_url(self.url)
            path = url.path.decode("utf-8", "replace") if url.path else "/"
            query = url.query.decode("utf-8", "replace") if url.query else ""
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, "invalid request URL")
        method = parser.get_method().decode("latin-1")
        req = Request(
            method, path, query, self.headers, b"".join(self.body), self.remote, self.transport
        )
        self.body = []
        resp = self.listener.handler(req)
        if not isinstance(resp, Response):  # an awaitable: the answer comes later
            self._later(resp, parser.should_keep_alive(), method == "HEAD")
            self._arm()
            return
        keep_alive = parser.should_keep_alive() and not resp.close
        self._queue(resp, keep_alive, method == "HEAD")
        if not keep_alive:
            self.closing = True
            raise _Stop
        self._arm()

    # -- helpers ---------------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self.head_len += n
        if self.head_len > MAX_HEAD:
            self._refuse(431, "request line and headers too large")

    def _refuse(self, status: int, message: str) -> None:
        self._queue(error_response(status, message), False)
        self.closing = True
        raise _Stop

    def _queue(self, resp: Response, keep_alive: bool, head: bool = False) -> None:
        self.out.append(_serialize(resp, keep_alive, head))

    def _later(self, awaitable, keep_alive: bool, head: bool) -> None:
        slot = _Pending()
        self.out.append(slot)

        async def answer() -> None:
            try:
                resp = await awaitable
            except Exception as exc:
                log.error("HTTP handler failed", exc_info=exc)
                resp = error_response(500, "internal error")
            slot.close = not keep_alive or resp.close
            slot.data = _serialize(resp, not slot.close, head)
            if slot.close:
                self.closing = True
            if self.transport is not None:
                self._flush()

        task = asyncio.ensure_future(answer())
        self.listener.tasks.add(task)
        task.add_done_callback(self.listener.tasks.discard)

    def _flush(self) -> None:
        transport = self.transport
        if self.out:
            ready: list[bytes] = []
            while self.out:
                item = self.out[0]
                if isinstance(item, _Pending):
                    if item.data is None:
                        break  # later answers wait for this one
                    item = item.data
                ready.append(item)
                del self.out[0]
            if ready and not transport.is_closing():
                data = b"".join(ready) if len(ready) > 1 else ready[0]
                if self.ob is not None:
                    self.ob.write(data)
                else:
                    transport.write(data)
        if self.closing and not self.out and not transport.is_closing():
            if self.ob is not None:
                self.ob.close()
            else:
                transport.close()

    def _arm(self) -> None:
        """(Re)start the read timer: a request must complete, or an idle connection send a
        new one, within read_timeout."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.listener.loop.call_later(self.listener.read_timeout, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.in_request:
            self._queue(error_response(408, "request not received in time"), False)
        self.closing = True
        self._flush()


class HTTPListener:
    """One HTTP listener (the bridge's `server.http.*`, or the health endpoints)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        handler: Callable[[Request], Response],
        read_timeout: float = 30.0,
        max_body: int = 1 << 20,
        tls=None,
        flusher: Flusher | None = None,
    ) -> None:
        self.name = name
        self.flusher = flusher
        self.host = host
        self.port = port
        self.handler = handler
        self.read_timeout = read_timeout
        self.max_body = max_body
        self.tls = tls
        self.conns: set[HTTPProtocol] = set()
        self.tasks: set[asyncio.Future] = set()  # answers being awaited
        # Duck typing with the MQTT listeners (the timeout scan and the shutdown wait).
        self.connections: frozenset = frozenset()
        self.settings = None
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _protocol(self) -> asyncio.BaseProtocol:
        proto = HTTPProtocol(self)
        if self.tls is None:
            return proto
        return SSLProtocol(
            self.loop,
            proto,
            self.tls.context,
            None,
            server_side=True,
            ssl_handshake_timeout=self.read_timeout,
        )

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, self.host or None, self.port, backlog=1024, reuse_address=True
        )
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        log.info(
            "listening", extra={"listener": self.name, "addr": f"{self.host or '*'}:{self.port}"}
        )

    @property
    def bound(self) -> bool:
        return self.server is not None and self.server.is_serving()

    def close(self) -> None:
        """Stop accepting; close idle connections (a request being read is cut short)."""
        if self.server is not None:
            self.server.close()
        for p in list(self.conns):
            if p.transport is not None and not p.transport.is_closing():
                p.transport.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()
