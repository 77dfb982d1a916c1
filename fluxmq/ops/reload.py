"""Hot reload (SIGHUP, `POST /api/v1/reload`): the configuration file is read again and what can
change without dropping a connection is applied: the password file, the ACL file and the rest of
`auth.*`, rate limits, webhooks, the log level and format, and the TLS certificates.

Everything is read and checked before anything changes: an invalid file (a YAML or value error,
a password or ACL file that cannot be read or has a bad line) refuses the whole reload, the
error is logged and the running configuration stays. Settings that need a restart (listener
addresses, storage, broker limits...) are reported in the log and keep their running values.
"""

from __future__ import annotations

import asyncio
import logging

from fluxmq._speedups.ratelimit import TokenBucket
from fluxmq.config import Config, ConfigError, load_config
from fluxmq.log import setup_logging
from fluxmq.ops.webhooks import Webhooks
from fluxmq.security.policy import SecurityConfig, bound_hosts
from fluxmq.transport.limits import RateLimits

log = logging.getLogger("fluxmq")

_LIVE = ("auth", "ratelimit", "webhook", "log")


def _restart_needed(old: Config, new: Config) -> list[str]:
    out = []
    for name in ("broker", "session", "storage", "cluster"):
        if getattr(old, name) != getattr(new, name):
            out.append(name)
    o, n = old.server.to_dict(), new.server.to_dict()
    o["api"].pop("token", None)
    n["api"].pop("token", None)
    if o != n:
        out.append("server")
    return out


def apply_rate_limits(node, cfg: Config) -> None:
    limits = RateLimits.from_config(cfg)
    for lst in node.listeners:
        if lst.settings is None:  # the HTTP bridge
            bridge = lst.handler
            if hasattr(bridge, "limiter"):
                bridge.limiter = limits.http_messages
            continue
        lst.conn_limiter = limits.connections
        lst.message_rate = limits.message
        lst.subscribe_rate = limits.subscribe
        for conn in list(lst.connections):
            conn.msg_limit = TokenBucket(*limits.message) if limits.message else None
            conn.sub_limit = TokenBucket(*limits.subscribe) if limits.subscribe else None


def reload(node) -> tuple[bool, str]:
    """Re-read and apply the configuration; (True, what changed) or (False, the error)."""
    old = node.cfg
    try:
        cfg = load_config(node.config_path, node.overrides)
        sec = SecurityConfig.from_config(cfg, bound_hosts(old))
    except (ConfigError, ValueError) as exc:
        log.error(
            "reload refused (the running configuration is kept; certificates not reloaded): %s", exc
        )
        return False, str(exc)
    changed = []
    # auth.*: files were read above; new rules for every client, caches cleared.
    node.apply_security(sec)
    changed.append("auth")
    if cfg.ratelimit != old.ratelimit:
        apply_rate_limits(node, cfg)
        changed.append("ratelimit")
    if cfg.webhook != old.webhook:
        previous = node.webhooks
        node.set_webhooks(Webhooks(cfg.webhook, old.cluster.node_id))
        if previous is not None:
            asyncio.get_running_loop().create_task(previous.stop())
        changed.append("webhook")
    log_changed = cfg.log != old.log
    if log_changed:
        changed.append("log")
    node.reload_tls()
    later = _restart_needed(old, cfg)
    if later:
        log.warning("changes that need a restart were not applied: %s", ", ".join(later))
    # What was applied is now the running configuration; the rest keeps its running values.
    node.cfg = _merge(old, cfg)
    message = "reloaded: " + ", ".join(changed)
    log.info(
        "configuration reloaded",
        extra={"changed": ",".join(changed), "needs_restart": ",".join(later)},
    )
    if log_changed:  # last, so that the line above still follows the old settings
        setup_logging(cfg.log.level, cfg.log.format)
    return True, message


def _merge(old: Config, new: Config) -> Config:
    import dataclasses

    server = dataclasses.replace(
        old.server, api=dataclasses.replace(old.server.api, token=new.server.api.token)
    )
    return dataclasses.replace(old, server=server, **{name: getattr(new, name) for name in _LIVE})
