"""Hook points of the broker core: authentication, authorisation and events.

Every door (MQTT over TCP or WebSocket, the HTTP and CoAP bridges) goes through these, so a
policy applies to all clients alike. The defaults allow everything and record nothing; the
security and operations features plug their implementations in here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ClientInfo:
    """Who is connecting, as the authentication layer sees it."""

    client_id: str
    username: str | None
    password: bytes | None
    remote: str | None
    protocol: str  # "mqtt3.1", "mqtt3.1.1", "mqtt5"
    listener: str
    cert_identity: str | None = None  # TLS client certificate: subject CN, else first SAN
    cert_sans: tuple[str, ...] = ()  # its SANs: "DNS:name", "IP:addr", "URI:...", "email:..."


class Hooks:
    """The default hooks: everyone is allowed, nothing is recorded."""

    def authenticate(self, info: ClientInfo) -> int:
        """0 to accept, else an MQTT 5 CONNACK reason code (0x86 bad credentials, 0x87 not
        authorised); the protocol layer maps it for MQTT 3.1.1."""
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

    def client_connected(self, info: ClientInfo, session_present: bool) -> None:
        pass

    def client_disconnected(self, client_id: str, reason: int) -> None:
        pass

    def session_ended(self, session) -> None:
        pass
