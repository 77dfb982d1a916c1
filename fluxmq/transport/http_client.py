"""A small HTTP/1.1 client for the broker's own outgoing requests (webhooks, the HTTP
authentication callout): `POST` of a JSON body on a kept-alive connection, httptools to read
the answer. One `HTTPClient` is one connection, used by one task at a time."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

__all__ = ["HTTPClient", "HTTPError"]


class HTTPError(Exception):
    """The request could not be made or its answer could not be read."""


class _Answer:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class HTTPClient:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.tls = u.scheme == "https"
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        host = u.netloc.rsplit("@", 1)[-1]
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: FluxMQ\r\n"
            f"Content-Type: application/json\r\n{extra}"
        ).encode("latin-1")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        ctx = ssl.create_default_context() if self.tls else None
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=ctx)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, body: bytes, timeout: float) -> tuple[int, bytes]:
        """POST `body`; (status, answer body). Raises HTTPError (or TimeoutError)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._post(body)
        except TimeoutError:
            self.close()
            raise
        except (OSError, httptools.HttpParserError, EOFError) as exc:
            self.close()
            raise HTTPError(str(exc) or type(exc).__name__) from None

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                await self._connect()
            self.writer.write(self.head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            answer = _Answer()
            parser = httptools.HttpResponseParser(answer)
            got_any = False
            while not answer.done:
                data = await self.reader.read(65536)
                if not data:
                    if not got_any and not fresh and attempt == 0:
                        break  # the kept-alive connection had been closed: try a new one
                    raise EOFError("connection closed before the answer ended")
                got_any = True
                parser.feed_data(data)
            if not answer.done:
                self.close()
                continue
            if not parser.should_keep_alive():
                self.close()
            return parser.get_status_code(), b"".join(answer.body)
        raise EOFError("connection closed")
