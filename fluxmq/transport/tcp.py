"""MQTT over TCP (plain or TLS): a listening socket whose connections are
`fluxmq.mqtt.Connection`s.

TLS: the protocol factory wraps each connection in uvloop's `SSLProtocol` with the listener's
current context (`fluxmq.transport.tls.ServerTLS`), so certificates reloaded on SIGHUP apply to
the next connection and established ones keep theirs.

Limits, checked once per connection (nothing on the packet path): `max_connections` (the
CONNECT is refused with 0x9F), the per-IP connection rate (closed before MQTT), and the token
buckets of the per-client message and subscribe rates, which go with the connection.
"""

from __future__ import annotations

import asyncio
import logging

from uvloop.loop import SSLProtocol

from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.channel import Limits
from fluxmq._speedups.ratelimit import TokenBucket
from fluxmq.mqtt import reason_codes as rc
from fluxmq.mqtt.connection import Connection
from fluxmq.mqtt.settings import MQTTSettings
from fluxmq.transport.tls import peer_identity

log = logging.getLogger("fluxmq.transport")

_NO_IDENTITY: tuple[None, tuple[str, ...]] = (None, ())


class TCPListener:
    """One MQTT listener (`server.tcp.plain`, `server.tcp.tls`, ...)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        broker,
        settings: MQTTSettings,
        flusher: Flusher,
        max_connections: int = 0,
        tls=None,
        conn_limiter=None,
        message_rate: tuple[float, float] | None = None,
        subscribe_rate: tuple[float, float] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.broker = broker
        self.settings = settings
        self.flusher = flusher
        self.max_connections = max_connections
        self.tls = tls  # fluxmq.transport.tls.ServerTLS, or None
        self.conn_limiter = conn_limiter  # fluxmq.transport.limits.IPLimiter, or None
        self.message_rate = message_rate
        self.subscribe_rate = subscribe_rate
        self.use_identity_as_username = bool(tls is not None and tls.use_identity_as_username)
        self.check_rate_on_open = True
        self.limits = Limits(
            settings.max_qos,
            settings.max_topic_alias,
            settings.receive_maximum,
            settings.max_packet_size,
            settings.max_pending_bytes,
        )
        self.connections: set[Connection] = set()
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.accepted = 0
        self.refused = 0
        self.rate_refused = 0

    def make_protocol(self) -> asyncio.BaseProtocol:
        return Connection(self.broker, self)

    def _protocol(self) -> asyncio.BaseProtocol:
        proto = self.make_protocol()
        tls = self.tls
        if tls is None:
            return proto
        return SSLProtocol(
            self.loop,
            proto,
            tls.context,
            None,
            server_side=True,
            ssl_handshake_timeout=self.settings.read_timeout,
        )

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol,
            self.host or None,
            self.port,
            backlog=4096,
            reuse_address=True,
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
        """Stop accepting new connections (existing ones stay)."""
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()

    # -- connection accounting, called by Connection ---------------------------------------------

    def opened(self, conn: Connection) -> int:
        """A new connection: 0, or the reason its CONNECT will be refused with."""
        if self.conn_limiter is not None and self.check_rate_on_open:
            peer = conn.transport.get_extra_info("peername")
            if peer and not self.conn_limiter.allow(peer[0]):
                self.rate_refused += 1
                log.debug(
                    "connection rate exceeded", extra={"listener": self.name, "remote": conn.remote}
                )
                conn.close(-1, "connection rate exceeded")
                return 0
        self.connections.add(conn)
        self.accepted += 1
        if self.message_rate is not None:
            conn.msg_limit = TokenBucket(*self.message_rate)
        if self.subscribe_rate is not None:
            conn.sub_limit = TokenBucket(*self.subscribe_rate)
        if self.max_connections and len(self.connections) > self.max_connections:
            self.refused += 1
            return rc.CONNECTION_RATE_EXCEEDED
        return 0

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def peer_identity(self, conn: Connection) -> tuple[str | None, tuple[str, ...]]:
        """The client certificate's identity and SANs (TLS listeners), else (None, ())."""
        if self.tls is None:
            return _NO_IDENTITY
        return peer_identity(conn.transport)
