"""Every listener the configuration asks for, built in one place.

MQTT: `server.tcp.{plain,tls,mtls}` and `server.websocket.{plain,tls,mtls}`; the HTTP bridge:
`server.http.{plain,tls,mtls}`; the CoAP bridge: `server.coap.{plain,dtls,mdtls}`; the health
endpoints: `server.health_addr` (`build_health`).
A listener is on when its `addr` is not empty.
"""

from __future__ import annotations

from fluxmq._speedups.bufpool import Flusher
from fluxmq.config import Config, parse_addr
from fluxmq.mqtt.settings import MQTTSettings
from fluxmq.transport.health import Health
from fluxmq.transport.http import HTTPListener
from fluxmq.transport.http_bridge import Bridge
from fluxmq.transport.limits import RateLimits
from fluxmq.transport.tcp import TCPListener
from fluxmq.transport.tls import ServerTLS
from fluxmq.transport.websocket import WSListener

MODES = ("plain", "tls", "mtls")


def _name(kind: str, mode: str) -> str:
    return kind if mode == "plain" else f"{kind}.{mode}"


def _enabled(cfg: Config, kind: str):
    """(mode, section, (host, port), ServerTLS or None) of each enabled `server.<kind>` slot."""
    for mode in MODES:
        section = getattr(getattr(cfg.server, kind), mode)
        addr = parse_addr(section.addr)
        if addr is not None:
            tls = ServerTLS(section, f"server.{kind}.{mode}") if mode != "plain" else None
            yield mode, section, addr, tls


def build_listeners(cfg: Config, broker, flusher: Flusher) -> list:
    """The listeners of `cfg` (not started). Each has `name`, `start()`, `close()`,
    `wait_closed()`, `bound`, and `connections` (the live MQTT connections, for the timeout
    scan; always empty for the HTTP bridge)."""
    limits = RateLimits.from_config(cfg)
    listeners: list = []
    for kind, cls in (("tcp", TCPListener), ("websocket", WSListener)):
        for mode, section, addr, tls in _enabled(cfg, kind):
            extra = (
                {"path": section.path, "allowed_origins": section.allowed_origins}
                if kind == "websocket"
                else {}
            )
            listeners.append(
                cls(
                    _name(kind, mode),
                    addr[0],
                    addr[1],
                    broker,
                    MQTTSettings.from_config(cfg, section),
                    flusher,
                    section.max_connections,
                    tls=tls,
                    conn_limiter=limits.connections,
                    message_rate=limits.message,
                    subscribe_rate=limits.subscribe,
                    **extra,
                )
            )
    for mode, section, addr, tls in _enabled(cfg, "http"):
        bridge = Bridge(
            broker,
            cfg.broker.max_message_size,
            cfg.broker.max_qos,
            limits.http_messages,
            use_identity_as_username=bool(tls and tls.use_identity_as_username),
            tls=tls is not None,
        )
        listeners.append(
            HTTPListener(
                _name("http", mode),
                addr[0],
                addr[1],
                bridge,
                section.read_timeout,
                bridge.max_body,
                tls,
                flusher,
            )
        )
    listeners += build_coap(cfg, broker, flusher)
    return listeners


def build_coap(cfg: Config, broker, flusher: Flusher) -> list:
    """The CoAP bridge listeners: `server.coap.{plain,dtls,mdtls}`."""
    from fluxmq.transport.coap import CoAPListener
    from fluxmq.transport.coap_bridge import Bridge as CoAPBridge
    from fluxmq.transport.dtls import DTLS
    from fluxmq.transport.limits import IPLimiter

    rl = cfg.ratelimit
    out = []
    for mode in ("plain", "dtls", "mdtls"):
        section = getattr(cfg.server.coap, mode)
        addr = parse_addr(section.addr)
        if addr is None:
            continue
        name = _name("coap", mode)
        limiter = None
        if rl.enabled and rl.message.enabled:
            limiter = IPLimiter(rl.message.rate, rl.message.burst, rl.connection.cleanup_interval)
        bridge = CoAPBridge(broker, cfg.broker.max_message_size, cfg.broker.max_qos, limiter,
                            name, mode == "mdtls")  # fmt: skip
        dtls = DTLS(section, f"server.coap.{mode}") if mode != "plain" else None
        out.append(CoAPListener(name, addr[0], addr[1], bridge, section, flusher, dtls))
    return out


def build_health(cfg: Config, node) -> HTTPListener | None:
    """The health listener (`server.health_addr`), or None when it is off."""
    if not cfg.server.health_enabled:
        return None
    addr = parse_addr(cfg.server.health_addr)
    if addr is None:
        return None
    return HTTPListener("health", addr[0], addr[1], Health(node), read_timeout=10.0, max_body=65536)
