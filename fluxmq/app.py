"""A FluxMQ node built from the configuration: it starts and stops everything in order.

`run(cfg)` is what `fluxmq serve` calls: it runs the node on uvloop until SIGINT or SIGTERM,
shuts down gracefully (wills, DISCONNECT 0x8B to MQTT 5 clients) and returns the exit code.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import lmdb

from fluxmq import __version__
from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.channel import set_storage_full
from fluxmq._speedups.segment import SegmentError
from fluxmq._speedups.session import Session
from fluxmq.broker.broker import Broker, SessionSettings
from fluxmq.broker.sys import SysTopics
from fluxmq.config import Config, ConfigError, parse_addr
from fluxmq.mqtt.keepalive import Timeouts
from fluxmq.ops.admin_api import AdminAPI
from fluxmq.ops.metrics import LoopLag, Metrics
from fluxmq.ops.queue_metrics import QueueCollector
from fluxmq.ops.webhooks import Webhooks
from fluxmq.queue.manager import QueueManager
from fluxmq.security.policy import SecurityConfig, SecurityHooks, bound_hosts, security_warnings
from fluxmq.storage import StorageError, open_store
from fluxmq.transport.http import HTTPListener
from fluxmq.transport.listeners import build_health, build_listeners

log = logging.getLogger("fluxmq")

SHUTDOWN_GRACE = 2.0  # seconds to let clients read their DISCONNECT and close before exiting


class StartupError(Exception):
    """The node cannot start (a port in use, storage unusable...)."""


class Node:
    """Everything one broker process runs."""

    def __init__(
        self, cfg: Config, config_path: str | None = None, overrides: dict | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path  # re-read on reload
        self.overrides = overrides
        self.hooks: SecurityHooks | None = None
        self.webhooks: Webhooks | None = None
        self.metrics = Metrics(self)
        self.loop_lag: LoopLag | None = None
        self.api: HTTPListener | None = None  # the admin API (server.api.addr)
        self.warnings: list[str] = []
        self.broker: Broker | None = None
        self.queues: QueueManager | None = None  # the durable queues
        self.listeners: list = []
        self.timeouts: Timeouts | None = None
        self.sys: SysTopics | None = None
        self.store = None
        self.health = None  # the health endpoints' listener (server.health_addr)
        self.storage_open = False
        self.started = False
        self.stopping = False

    def _new_session(self, client_id: str, expiry_interval: int) -> Session:
        s = self.cfg.session
        return Session(
            client_id,
            expiry_interval,
            self.cfg.broker.max_inflight,
            s.max_offline_queue_size,
            s.offline_queue_policy == "reject",
        )

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        try:
            self.store = open_store(cfg)
        except StorageError as exc:
            raise StartupError(str(exc)) from None
        try:
            sec = SecurityConfig.from_config(cfg, bound_hosts(cfg))
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.hooks = SecurityHooks(sec, node_id=cfg.cluster.node_id)
        s = cfg.session
        self.broker = Broker(
            loop,
            SessionSettings(
                max_inflight=cfg.broker.max_inflight,
                max_queue=s.max_offline_queue_size,
                drop_new=s.offline_queue_policy == "reject",
                default_expiry_interval=s.default_expiry_interval,
                max_expiry_interval=s.max_expiry_interval,
            ),
            max_retained=cfg.broker.max_retained_messages,
            hooks=self.hooks,
            store=self.store,
        )
        self.apply_security(sec)
        self.set_webhooks(Webhooks(cfg.webhook, cfg.cluster.node_id))
        self.loop_lag = LoopLag()
        self.loop_lag.start()
        flusher = Flusher(loop)
        if self.store is not None:
            try:
                self.broker.load(self.store.load(self._new_session))
            except StorageError as exc:
                raise StartupError(str(exc)) from None
            self.store.on_full = set_storage_full
            self.store.attach(loop, flusher)
        self.queues = QueueManager(cfg, self.broker, self.store, loop)
        try:
            self.queues.start(flusher)
        except (OSError, ValueError, lmdb.Error, SegmentError) as exc:
            raise StartupError(f"durable queues: {exc}") from None
        self.broker.queues = self.broker.dispatcher.queues = self.queues
        self.metrics.registry.register(QueueCollector(self.queues))
        self.storage_open = True
        self.health = build_health(cfg, self)
        if self.health is not None:  # first, so that /ready answers 503 while starting
            try:
                await self.health.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {self.health.host or '*'}:{self.health.port} (health): "
                    f"{exc.strerror or exc}"
                ) from exc
        self.listeners = build_listeners(cfg, self.broker, flusher)
        if not any(listener.settings is not None for listener in self.listeners):
            raise StartupError(
                "no MQTT listener is configured (server.tcp.*.addr and server.websocket.*.addr "
                "are all empty)"
            )
        for listener in self.listeners:
            try:
                await listener.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {listener.host or '*'}:{listener.port} "
                    f"({listener.name}): {exc.strerror or exc}"
                ) from exc
        api = cfg.server.api
        if api.addr:
            host, port = parse_addr(api.addr)
            self.api = HTTPListener(
                "api", host, port, AdminAPI(self), read_timeout=10.0, max_body=65536
            )
            try:
                await self.api.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {host or '*'}:{port} (admin API): {exc.strerror or exc}"
                ) from exc
        self.timeouts = Timeouts(self.listeners)
        self.timeouts.start()
        self.sys = SysTopics(self.broker, cfg.broker.sys_interval)
        self.sys.start()
        self.started = True
        log.info("FluxMQ %s started", __version__)

    def readiness(self) -> tuple[bool, dict]:
        """For `GET /ready`: ready once every listener is bound and storage is open."""
        details: dict = {
            "listeners": {listener.name: listener.bound for listener in self.listeners},
            "storage": "open" if self.storage_open and not self.stopping else "not open",
        }
        if self.warnings:
            details["warnings"] = list(self.warnings)
        if self.stopping:
            details["state"] = "stopping"
        elif not self.started:
            details["state"] = "starting"
        ready = (
            self.started
            and not self.stopping
            and self.storage_open
            and all(details["listeners"].values())
        )
        return ready, details

    def cluster_status(self) -> dict:
        """For `GET /cluster/status`: this node (a single node is its own leader)."""
        connected, total = self.broker.client_count() if self.broker else (0, 0)
        return {
            "node_id": self.cfg.cluster.node_id,
            "mode": "standalone",
            "is_leader": True,
            "sessions": connected,
            "sessions_total": total,
            "listeners": {listener.name: listener.bound for listener in self.listeners},
        }

    # -- security, webhooks, reload ----------------------------------------------------------------

    def apply_security(self, sec: SecurityConfig) -> None:
        """Put a snapshot of `auth.*` in force: every client's rules, the channels' publish
        checks, the dispatcher's read check (routes are recomputed)."""
        hooks = self.hooks
        hooks.reconfigure(sec)
        broker = self.broker
        d = broker.dispatcher
        d.read_check = hooks.read_check if hooks.checks_read else None
        d.clear_cache()
        if self.queues is not None:
            self.queues.wrap_read_check()
        for listener in self.listeners:
            for conn in list(listener.connections):
                if conn.client_id is not None and conn.session is not None:
                    conn.authz = broker.hooks.publish_hook(conn.client_id)
                    conn.authz_ok = None
                    conn.authz_last = None
        self.warnings = security_warnings(self.cfg, sec)
        for w in self.warnings:
            log.warning("SECURITY WARNING: %s", w)

    def set_webhooks(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks
        self.hooks.events = webhooks
        webhooks.install(self.broker)
        webhooks.start()

    def reload(self) -> tuple[bool, str]:
        """SIGHUP or `POST /api/v1/reload`: see fluxmq.ops.reload."""
        from fluxmq.ops.reload import reload

        return reload(self)

    def reload_tls(self) -> None:
        """Re-read the TLS certificates of every TLS listener (new connections get them;
        established ones stay). A listener whose files are now bad keeps its old ones."""
        for listener in self.listeners:
            tls = getattr(listener, "tls", None)
            if tls is None:
                continue
            try:
                tls.reload()
            except ConfigError as exc:
                log.error("certificates not reloaded: %s", exc, extra={"listener": listener.name})
            else:
                log.info("certificates reloaded", extra={"listener": listener.name})

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, publish wills, disconnect everyone, exit."""
        self.stopping = True
        if self.api is not None:
            self.api.close()
        for listener in self.listeners:
            listener.close()
        if self.sys is not None:
            await self.sys.stop()
        if self.timeouts is not None:
            await self.timeouts.stop()
        if self.broker is not None:
            self.broker.shutdown()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while any(listener.connections for listener in self.listeners):
            if asyncio.get_running_loop().time() > deadline:
                for listener in self.listeners:
                    for conn in list(listener.connections):
                        if conn.transport is not None:
                            conn.transport.abort()
                break
            await asyncio.sleep(0.02)
        for listener in self.listeners:
            await listener.wait_closed()
        if self.store is not None:
            self.store.close()  # first: its writer thread may still run the queues' fsyncs
            self.store = None
        if self.queues is not None:
            self.queues.close()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.loop_lag is not None:
            await self.loop_lag.stop()
        if self.api is not None:
            await self.api.wait_closed()
        if self.health is not None:
            self.health.close()
            await self.health.wait_closed()
        log.info("FluxMQ stopped")


async def serve(cfg: Config, config_path: str | None = None, overrides: dict | None = None) -> int:
    node = Node(cfg, config_path, overrides)
    # Signals are taken over before anything starts, so that a SIGTERM during start-up still
    # shuts down gracefully (it is acted on as soon as the start completes).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except StartupError as exc:
        log.error("%s", exc)
        await node.stop()
        return 1
    loop.add_signal_handler(signal.SIGHUP, node.reload)
    # Objects made at start-up live for ever: keep the collector away from them, and collect
    # young objects less often (the hot path allocates little that forms cycles).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)
    await stop.wait()
    log.info("shutting down")
    await node.stop()
    return 0


def run(cfg: Config, config_path: str | None = None, overrides: dict | None = None) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code. SIGHUP re-reads
    `config_path` (with `overrides`)."""
    import uvloop

    return uvloop.run(serve(cfg, config_path, overrides))
