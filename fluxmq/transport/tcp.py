"""MQTT over TCP: a listening socket whose connections are `fluxmq.mqtt.Connection`s."""

from __future__ import annotations

import asyncio
import logging

from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.channel import Limits
from fluxmq.mqtt import reason_codes as rc
from fluxmq.mqtt.connection import Connection
from fluxmq.mqtt.settings import MQTTSettings

log = logging.getLogger("fluxmq.transport")


class TCPListener:
    """One MQTT listener (`server.tcp.plain`, ...)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        broker,
        settings: MQTTSettings,
        flusher: Flusher,
        max_connections: int = 0,
        ssl=None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.broker = broker
        self.settings = settings
        self.flusher = flusher
        self.max_connections = max_connections
        self.ssl = ssl
        self.limits = Limits(
            settings.max_qos, settings.max_topic_alias, settings.receive_maximum,
            settings.max_packet_size,
        )
        self.connections: set[Connection] = set()
        self.server: asyncio.AbstractServer | None = None
        self.accepted = 0
        self.refused = 0

    def _protocol(self) -> Connection:
        return Connection(self.broker, self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, self.host or None, self.port, backlog=4096, ssl=self.ssl,
            reuse_address=True,
        )
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        log.info("listening", extra={"listener": self.name,
                                     "addr": f"{self.host or '*'}:{self.port}"})

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
        self.connections.add(conn)
        self.accepted += 1
        if self.max_connections and len(self.connections) > self.max_connections:
            self.refused += 1
            return rc.CONNECTION_RATE_EXCEEDED
        return 0

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
