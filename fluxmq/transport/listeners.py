"""Every listener the configuration asks for, built in one place."""

from __future__ import annotations

from fluxmq._speedups.bufpool import Flusher
from fluxmq.config import Config, parse_addr
from fluxmq.mqtt.settings import MQTTSettings
from fluxmq.transport.tcp import TCPListener


def build_listeners(cfg: Config, broker, flusher: Flusher) -> list:
    """The listeners of `cfg` (not started). Each has `name`, `start()`, `close()`,
    `wait_closed()` and `connections` (the live MQTT connections, for the timeout scan)."""
    listeners: list = []
    plain = cfg.server.tcp.plain
    addr = parse_addr(plain.addr)
    if addr is not None:
        listeners.append(
            TCPListener(
                "tcp", addr[0], addr[1], broker, MQTTSettings.from_config(cfg, plain), flusher,
                plain.max_connections,
            )
        )
    return listeners
