"""A client connection: the C channel (`fluxmq._speedups.channel.ChannelCore`) plus the
Python handlers of the packets that are not on the hot path.

One concern per module, as in Mosquitto: `handle_connect`, `handle_subscribe`,
`handle_unsubscribe`, `handle_disconnect`; keep-alive and timeouts are in `keepalive`.
"""

from __future__ import annotations

import logging

from fluxmq._speedups import codec
from fluxmq._speedups.channel import ChannelCore
from fluxmq.mqtt import reason_codes as rc
from fluxmq.mqtt.handle_connect import handle_connect, refuse_protocol
from fluxmq.mqtt.handle_disconnect import handle_auth, handle_disconnect
from fluxmq.mqtt.handle_subscribe import handle_subscribe
from fluxmq.mqtt.handle_unsubscribe import handle_unsubscribe

log = logging.getLogger("fluxmq.mqtt")

_ACKS = (codec.TYPE_PUBACK, codec.TYPE_PUBREC, codec.TYPE_PUBREL, codec.TYPE_PUBCOMP)


class Connection(ChannelCore):
    """One MQTT client connection (any transport that gives an asyncio Protocol its bytes)."""

    __slots__ = ("broker", "connect_expiry", "listener", "refused", "remote", "username")

    def __init__(self, broker, listener) -> None:
        super().__init__(broker.dispatcher, listener.limits, listener.flusher)
        self.broker = broker
        self.listener = listener
        self.remote: str | None = None
        self.username: str | None = None
        self.connect_expiry = 0
        self.refused = 0

    # -- hooks of the C channel -----------------------------------------------------------------

    def on_open(self) -> None:
        peer = self.transport.get_extra_info("peername")
        if peer:
            self.remote = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        self.refused = self.listener.opened(self)

    def on_packet(self, pkt) -> None:
        t = pkt.packet_type
        if t == codec.TYPE_CONNECT:
            handle_connect(self, pkt)
        elif t == codec.TYPE_SUBSCRIBE:
            handle_subscribe(self, pkt)
        elif t == codec.TYPE_UNSUBSCRIBE:
            handle_unsubscribe(self, pkt)
        elif t == codec.TYPE_DISCONNECT:
            handle_disconnect(self, pkt)
        elif t in _ACKS:
            self.on_ack_packet(pkt)
        elif t == codec.TYPE_PINGREQ:
            self.send(codec.Pingresp())
        elif t == codec.TYPE_AUTH:
            handle_auth(self, pkt)
        else:
            raise codec.ProtocolError(f"a client may not send {pkt.name}")

    def on_closed(self, exc) -> None:
        self.listener.closed(self)
        if self.session is not None:
            self.broker.disconnect(self, self.session, self.will_wanted)
            self.broker.hooks.client_disconnected(self.client_id, self.close_reason, self.remote)
            log.info(
                "client disconnected",
                extra={
                    "client_id": self.client_id,
                    "remote": self.remote,
                    "reason": f"0x{self.close_reason:02X}",
                },
            )

    def on_violation(self, exc) -> None:
        if isinstance(exc, codec.UnsupportedProtocol):
            refuse_protocol(self, exc.protocol_level)
        log.info(
            "closing client: %s",
            exc,
            extra={
                "client_id": self.client_id,
                "remote": self.remote,
                "reason": f"0x{getattr(exc, 'reason_code', 0x81):02X}",
            },
        )

    def on_error(self, exc) -> None:
        log.error(
            "internal error on a client connection",
            exc_info=exc,
            extra={"client_id": self.client_id, "remote": self.remote},
        )

    # -- called by the broker ---------------------------------------------------------------------

    def takeover(self) -> None:
        """Another connection took this client's session."""
        self.broker.hooks.session_takeover(self.client_id, self.remote)
        self.will_wanted = False
        self.close_reason = rc.SESSION_TAKEN_OVER
        self.close(rc.SESSION_TAKEN_OVER, "session taken over")

    def shutdown(self) -> None:
        """The server is going down (its will was handled by the broker)."""
        self.will_wanted = False
        self.close_reason = rc.SERVER_SHUTTING_DOWN
        self.close(rc.SERVER_SHUTTING_DOWN, "server shutting down")

    def kick(self, reason: int = rc.ADMINISTRATIVE_ACTION, message: str | None = None) -> None:
        self.close_reason = reason
        self.close(reason, message)

    def __repr__(self) -> str:
        return f"<Connection {self.client_id!r} {self.remote} v{self.version} state={self.state}>"
