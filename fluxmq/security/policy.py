"""The broker's hooks with security on: who may connect (`auth.*`), what each client may
publish, subscribe to and receive (`auth.acl_file`, or the ACL the HTTP callout returns), and
the events the operations layer (webhooks) is told about.

Every door calls the same hooks (`fluxmq.broker.hooks.Hooks`), so MQTT over TCP and WebSocket,
the HTTP bridge and CoAP are treated alike. Decisions are cached per client and topic (topics
repeat): the MQTT channel keeps the topics it may publish to in C (`ChannelCore.authz_ok`), the
dispatcher keeps only readers in its cached routes, and the rest is cached here. With no
password file, no ACL and no callout, no per-message hook is installed at all.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fluxmq.broker.hooks import ClientInfo, Hooks
from fluxmq.mqtt import reason_codes as rc
from fluxmq.security.acl import ACL, READ, WRITE, ClientRules
from fluxmq.security.passwords import PasswordFile

log = logging.getLogger("fluxmq.security")

CACHE_MAX = 4096  # decisions cached per client before its cache is cleared


class NullEvents:
    """Events go nowhere (no webhook wants them)."""

    def wants(self, event_type: str) -> bool:
        return False

    def emit(self, event_type: str, data: dict, topic: str | None = None) -> None:
        pass


def is_loopback(remote: str | None) -> bool:
    """Whether a remote address (`ip`, `ip:port` or `[ipv6]:port`) is a loopback address."""
    if not remote:
        return False
    host = remote
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _host_is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bound_hosts(cfg) -> list[str]:
    """The hosts the client listeners (MQTT over TCP and WebSocket, the HTTP bridge, CoAP)
    bind; "" = every interface."""
    return [addr[0] for addr in _client_listeners(cfg)]


# Client listener groups and their slots (CoAP's are plain, dtls and mdtls).
_GROUPS = (
    ("tcp", ("plain", "tls", "mtls")),
    ("websocket", ("plain", "tls", "mtls")),
    ("http", ("plain", "tls", "mtls")),
    ("coap", ("plain", "dtls", "mdtls")),
)


def _client_listeners(cfg) -> list[tuple[str, int]]:
    from fluxmq.config import parse_addr

    out = []
    for kind, modes in _GROUPS:
        group = getattr(cfg.server, kind, None)
        for mode in modes if group is not None else ():
            slot = getattr(group, mode, None)
            addr = parse_addr(slot.addr) if slot is not None else None
            if addr is not None:
                out.append(addr)
    return out


def security_warnings(cfg, sec: SecurityConfig) -> list[str]:
    """The loud warnings of a broker reachable from other machines with no authentication."""
    if sec.loopback_only or sec.authenticates:
        return []
    exposed = [
        f"{host or '*'}:{port}"
        for host, port in _client_listeners(cfg)
        if not _host_is_loopback(host)
    ]
    where = ", ".join(exposed)
    if sec.allow_anonymous is True:
        return [
            f"listening on {where} with no authentication and auth.allow_anonymous: true: "
            "anyone who can reach these addresses can connect, publish and subscribe "
            "(set auth.password_file or auth.http.url)"
        ]
    if sec.allow_anonymous == "auto":
        return [
            f"listening on {where} with no authentication configured: only clients on this "
            "machine (loopback) can connect; clients from other machines are refused "
            "(set auth.password_file or auth.http.url, or auth.allow_anonymous: true)"
        ]
    return [
        f"listening on {where} with auth.allow_anonymous: false and no authentication "
        "configured: only clients with a TLS certificate used as username can connect"
    ]


@dataclass(slots=True)
class SecurityConfig:
    """What `auth.*` says, with the files read (one snapshot; a reload makes a new one)."""

    allow_anonymous: bool | str = "auto"
    loopback_only: bool = True  # every listener binds to a loopback address
    passwords: PasswordFile | None = None
    acl: ACL | None = None
    http: Any = None  # fluxmq.security.http_auth.HTTPAuth, or None

    @classmethod
    def from_config(cls, cfg, listener_hosts: list[str]) -> SecurityConfig:
        """Raises ValueError (with the file and line) if a file cannot be used."""
        a = cfg.auth
        passwords = PasswordFile.load(a.password_file) if a.password_file else None
        acl = ACL.load(a.acl_file) if a.acl_file else None
        http = None
        if a.http.url:
            from fluxmq.security.http_auth import HTTPAuth

            http = HTTPAuth(a.http)
        return cls(
            allow_anonymous=a.allow_anonymous,
            loopback_only=all(_host_is_loopback(h) for h in listener_hosts),
            passwords=passwords,
            acl=acl,
            http=http,
        )

    @property
    def authenticates(self) -> bool:
        """A way to prove who one is is configured (password file or callout)."""
        return self.passwords is not None or self.http is not None

    def anonymous_allowed(self, remote: str | None) -> bool:
        if self.allow_anonymous == "auto":
            return self.loopback_only or is_loopback(remote)
        return bool(self.allow_anonymous)


@dataclass(slots=True)
class ClientCtx:
    """One client's authorisation state: its rules (None = everything allowed) and caches."""

    client_id: str
    username: str | None
    rules: ClientRules | None
    from_callout: bool = False
    write: dict[str, bool] = field(default_factory=dict)
    read: dict[str, bool] = field(default_factory=dict)

    def may_write(self, topic: str) -> bool:
        if self.rules is None:
            return True
        ok = self.write.get(topic)
        if ok is None:
            if len(self.write) >= CACHE_MAX:
                self.write.clear()
            ok = self.write[topic] = self.rules.allows(topic, WRITE)
        return ok

    def may_read(self, topic: str) -> bool:
        if self.rules is None:
            return True
        ok = self.read.get(topic)
        if ok is None:
            if len(self.read) >= CACHE_MAX:
                self.read.clear()
            ok = self.read[topic] = self.rules.allows(topic, READ)
        return ok


@dataclass(slots=True)
class AuthStats:
    """Counts for the metrics."""

    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    successes: int = 0
    publish_denied: int = 0
    subscribe_denied: int = 0
    dropped_ended: int = 0  # queue-full drops of sessions that have ended

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


def _strip_share(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


class SecurityHooks(Hooks):
    """Hooks that apply `auth.*` and report events. `sec` and `events` may be replaced at run
    time (hot reload): call `reconfigure`."""

    def __init__(
        self, sec: SecurityConfig | None = None, events: Any = None, node_id: str = ""
    ) -> None:
        self.sec = sec or SecurityConfig()
        self.events = events or NullEvents()
        self.node_id = node_id
        self.clients: dict[str, ClientCtx] = {}
        self.adhoc: dict[tuple[str, str | None], ClientCtx] = {}  # bridge clients
        self.stats = AuthStats()

    # -- configuration ------------------------------------------------------------------------

    @property
    def checks_read(self) -> bool:
        """Deliveries need a read check (an ACL file, or a callout that may return ACLs)."""
        return self.sec.acl is not None or self.sec.http is not None

    @property
    def checks_publish(self) -> bool:
        return self.checks_read

    def reconfigure(self, sec: SecurityConfig) -> None:
        """A new snapshot of `auth.*` (reload): every client's rules are rebuilt, caches go."""
        self.sec = sec
        self.adhoc.clear()
        for ctx in self.clients.values():
            if not ctx.from_callout:
                ctx.rules = self._file_rules(ctx.username, ctx.client_id)
            ctx.write.clear()
            ctx.read.clear()

    def _file_rules(self, username: str | None, client_id: str) -> ClientRules | None:
        acl = self.sec.acl
        return None if acl is None else acl.rules_for(username, client_id)

    def _ctx(self, client_id: str, username: str | None) -> ClientCtx:
        ctx = self.clients.get(client_id)
        if ctx is not None and ctx.username == username:
            return ctx
        key = (client_id, username)
        ctx = self.adhoc.get(key)
        if ctx is None:
            if len(self.adhoc) >= CACHE_MAX:
                self.adhoc.clear()
            ctx = self.adhoc[key] = ClientCtx(
                client_id, username, self._file_rules(username, client_id)
            )
        return ctx

    # -- authentication -----------------------------------------------------------------------

    def authenticate(self, info: ClientInfo) -> int | Awaitable[int]:
        sec = self.sec
        if info.username is None or info.verified:
            # Anonymous, or a username proven by the TLS client certificate.
            if info.username is None and not sec.anonymous_allowed(info.remote):
                return self._refuse(info, rc.NOT_AUTHORIZED, "anonymous clients are not allowed")
            return self._accept(info, None)
        if sec.passwords is not None and info.username in sec.passwords:
            if sec.passwords.verify(info.username, info.password):
                return self._accept(info, None)
            return self._refuse(info, rc.BAD_USERNAME_OR_PASSWORD, "bad username or password")
        if sec.http is not None:
            return self._callout(sec, info)
        if sec.passwords is not None:
            sec.passwords.verify(info.username, info.password)  # same time as a known user
            return self._refuse(info, rc.BAD_USERNAME_OR_PASSWORD, "unknown username")
        # No way to check a password is configured: the username is taken as given (as
        # Mosquitto does) and the client is admitted like an anonymous one.
        if not sec.anonymous_allowed(info.remote):
            return self._refuse(info, rc.NOT_AUTHORIZED, "no authentication is configured")
        return self._accept(info, None)

    async def _callout(self, sec: SecurityConfig, info: ClientInfo) -> int:
        allowed, acl_items, why = await sec.http.check(info)
        if not allowed:
            code = rc.BAD_USERNAME_OR_PASSWORD if why == "denied" else rc.NOT_AUTHORIZED
            return self._refuse(info, code, f"HTTP callout: {why}")
        rules = None
        if acl_items is not None:
            from fluxmq.security.acl import rules_from_list

            try:
                rules = rules_from_list(acl_items, info.username, info.client_id)
            except ValueError as e:
                return self._refuse(info, rc.NOT_AUTHORIZED, f"HTTP callout: bad acl ({e})")
        return self._accept(info, rules)

    def _accept(self, info: ClientInfo, rules: ClientRules | None) -> int:
        from_callout = rules is not None
        if rules is None:
            rules = self._file_rules(info.username, info.client_id)
        info.ctx = ClientCtx(info.client_id, info.username, rules, from_callout)
        self.stats.successes += 1
        if self.events.wants("auth.success"):
            self.events.emit(
                "auth.success",
                {
                    "client_id": info.client_id,
                    "username": info.username,
                    "remote_addr": info.remote or "",
                    "protocol": info.protocol,
                    "listener": info.listener,
                },
            )
        return 0

    def _refuse(self, info: ClientInfo, code: int, why: str) -> int:
        reason = "bad_credentials" if code == rc.BAD_USERNAME_OR_PASSWORD else "not_authorized"
        self.stats.fail(reason)
        log.info(
            "authentication failed: %s",
            why,
            extra={
                "client_id": info.client_id,
                "username": info.username,
                "remote": info.remote,
                "listener": info.listener,
                "reason": f"0x{code:02X}",
            },
        )
        if self.events.wants("auth.failure"):
            self.events.emit(
                "auth.failure",
                {
                    "client_id": info.client_id,
                    "username": info.username,
                    "reason": why,
                    "reason_code": code,
                    "remote_addr": info.remote or "",
                    "protocol": info.protocol,
                    "listener": info.listener,
                },
            )
        return code

    # -- authorisation ------------------------------------------------------------------------

    def authorize_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        ctx = self._ctx(client_id, username)
        if ctx.may_write(topic):
            return True
        self._publish_denied(client_id, topic)
        return False

    def _publish_denied(self, client_id: str, topic: str) -> None:
        self.stats.publish_denied += 1
        log.debug("publish denied", extra={"client_id": client_id, "topic": topic})
        if self.events.wants("authz.publish_denied"):
            self.events.emit(
                "authz.publish_denied",
                {"client_id": client_id, "topic": topic, "reason": "not authorized"},
                topic,
            )

    def publish_hook(self, client_id: str) -> Callable[[Any, Any], int] | None:
        ctx = self.clients.get(client_id)
        if ctx is None or ctx.rules is None:
            return None
        return self._check_publish

    def _check_publish(self, conn, msg) -> int:
        """The MQTT channel's per-publish hook (called only for topics not yet allowed)."""
        ctx = self.clients.get(conn.client_id)
        if ctx is None:
            ctx = self._ctx(conn.client_id, conn.username)
        if ctx.may_write(msg.topic):
            return 0
        self._publish_denied(conn.client_id, msg.topic)
        return rc.NOT_AUTHORIZED

    def authorize_subscribe(self, client_id: str, username: str | None, topic_filter: str) -> bool:
        ctx = self._ctx(client_id, username)
        if ctx.rules is None or ctx.rules.allows_subscribe(_strip_share(topic_filter)):
            return True
        self.stats.subscribe_denied += 1
        log.debug("subscribe denied", extra={"client_id": client_id, "topic_filter": topic_filter})
        if self.events.wants("authz.subscribe_denied"):
            self.events.emit(
                "authz.subscribe_denied",
                {"client_id": client_id, "topic_filter": topic_filter, "reason": "not authorized"},
            )
        return False

    def read_check(self, session, topic: str) -> bool:
        """The dispatcher's delivery check: may this session's client receive `topic`?"""
        ctx = self.clients.get(session.client_id)
        if ctx is None:
            # A session restored from storage whose client has not connected since: it is
            # checked as a client without a username until it does.
            ctx = self._ctx(session.client_id, None)
        return ctx.may_read(topic)

    # -- events -------------------------------------------------------------------------------

    def client_connected(self, info: ClientInfo, session_present: bool) -> None:
        ctx = info.ctx
        if ctx is None:
            ctx = ClientCtx(
                info.client_id, info.username, self._file_rules(info.username, info.client_id)
            )
        self.clients[info.client_id] = ctx
        if self.events.wants("client.connected"):
            self.events.emit(
                "client.connected",
                {
                    "client_id": info.client_id,
                    "username": info.username,
                    "protocol": info.protocol,
                    "clean_start": info.clean_start,
                    "keep_alive": info.keepalive,
                    "remote_addr": info.remote or "",
                    "listener": info.listener,
                    "session_present": session_present,
                },
            )

    def client_disconnected(self, client_id: str, reason: int, remote: str | None = None) -> None:
        if self.events.wants("client.disconnected"):
            self.events.emit(
                "client.disconnected",
                {
                    "client_id": client_id,
                    "reason": "normal" if reason in (0, 4, 0x8E, 0x8B, 0x98) else "error",
                    "reason_code": reason,
                    "remote_addr": remote or "",
                },
            )

    def session_takeover(self, client_id: str, remote: str | None = None) -> None:
        if self.events.wants("client.session_takeover"):
            self.events.emit(
                "client.session_takeover",
                {
                    "client_id": client_id,
                    "from_node": self.node_id,
                    "to_node": self.node_id,
                    "remote_addr": remote or "",
                },
            )

    def subscription_created(self, client_id: str, sub) -> None:
        if self.events.wants("subscription.created"):
            data = {"client_id": client_id, "topic_filter": sub.full_filter, "qos": sub.qos}
            if sub.identifier is not None:
                data["subscription_id"] = sub.identifier
            self.events.emit("subscription.created", data)

    def subscription_removed(self, client_id: str, topic_filter: str) -> None:
        if self.events.wants("subscription.removed"):
            self.events.emit(
                "subscription.removed", {"client_id": client_id, "topic_filter": topic_filter}
            )

    def session_ended(self, session) -> None:
        self.stats.dropped_ended += session.dropped
        self.clients.pop(session.client_id, None)
