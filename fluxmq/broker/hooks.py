"""Hook points of the broker core: authentication, authorisation and events.

Every door (MQTT over TCP or WebSocket, the HTTP and CoAP bridges) goes through these, so a
policy applies to all clients alike. The defaults allow everything and record nothing; the
security and operations features plug their implementation in here
(`fluxmq.security.policy.SecurityHooks`).

- `authenticate(info)`: when a client connects (MQTT CONNECT; an HTTP bridge request). 0
  accepts; an MQTT 5 CONNACK reason code refuses (0x86 bad credentials, 0x87 not authorised;
  the protocol layer maps it for MQTT 3.1.1). It may return an awaitable of that code (an
  authentication service is asked): the door waits for it.
- `authorize_publish(client_id, username, topic)` / `publish_hook(client_id)`: may the client
  publish to `topic`. `publish_hook` gives the MQTT channel a per-publish callable
  `(channel, msg) -> reason code` for one client, or None when it needs none (the hot path then
  has no call at all).
- `authorize_subscribe(client_id, username, topic_filter)`: may the client subscribe.
- `read_check(session, topic)`: may the session's client receive a message on `topic`; set on
  the dispatcher only when `checks_read` is true.
- Events: `client_connected`, `client_disconnected`, `session_takeover`,
  `subscription_created`, `subscription_removed`, `session_ended`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class ClientInfo:
    """Who is connecting, as the authentication layer sees it."""

    client_id: str
    username: str | None
    password: bytes | None
    remote: str | None
    protocol: str  # "mqtt3.1", "mqtt3.1.1", "mqtt5", "http", "coap"
    listener: str
    cert_identity: str | None = None  # TLS client certificate: subject CN, else first SAN
    cert_sans: tuple[str, ...] = ()  # its SANs: "DNS:name", "IP:addr", "URI:...", "email:..."
    verified: bool = False  # the username is the certificate identity (already proven)
    clean_start: bool = True
    keepalive: int = 0
    ctx: Any = None  # what authentication decided about the client (the hooks' own state)


class Hooks:
    """The default hooks: everyone is allowed, nothing is recorded."""

    def authenticate(self, info: ClientInfo) -> int | Awaitable[int]:
        """0 to accept, else an MQTT 5 CONNACK reason code (0x86 bad credentials, 0x87 not
        authorised); the protocol layer maps it for MQTT 3.1.1. May be an awaitable."""
        return 0

    def authorize_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        return True

    def authorize_subscribe(self, client_id: str, username: str | None, topic_filter: str) -> bool:
        return True

    @property
    def checks_publish(self) -> bool:
        """Whether publishes need a per-message authorisation call (False keeps the hot path
        free of it)."""
        return False

    @property
    def checks_read(self) -> bool:
        """Whether deliveries need `read_check` (False: the dispatcher has no hook)."""
        return False

    def publish_hook(self, client_id: str) -> Callable[[Any, Any], int] | None:
        """The MQTT channel's per-publish check for this client, or None."""
        if not self.checks_publish:
            return None
        return self._publish_check

    def _publish_check(self, conn, msg) -> int:
        return 0 if self.authorize_publish(conn.client_id, conn.username, msg.topic) else 0x87

    def read_check(self, session, topic: str) -> bool:
        return True

    def client_connected(self, info: ClientInfo, session_present: bool) -> None:
        pass

    def client_disconnected(self, client_id: str, reason: int, remote: str | None = None) -> None:
        pass

    def session_takeover(self, client_id: str, remote: str | None = None) -> None:
        pass

    def subscription_created(self, client_id: str, sub) -> None:
        pass

    def subscription_removed(self, client_id: str, topic_filter: str) -> None:
        pass

    def session_ended(self, session) -> None:
        pass
