"""DISCONNECT from a client (and AUTH, which this broker does not take)."""

from __future__ import annotations

from fluxmq._speedups import codec
from fluxmq.mqtt import reason_codes as rc

DISCONNECT_WITH_WILL = 0x04


def handle_disconnect(conn, pkt: codec.Disconnect) -> None:
    props = pkt.properties
    if conn.version == 5 and props is not None and props.session_expiry_interval is not None:
        if conn.connect_expiry == 0 and props.session_expiry_interval != 0:
            # [MQTT-3.14.2-2]
            raise codec.ProtocolError("session expiry set on DISCONNECT after 0 on CONNECT")
        conn.broker.set_expiry(
            conn.session,
            min(props.session_expiry_interval, conn.listener.settings.max_expiry_interval),
        )
    conn.will_wanted = pkt.reason_code == DISCONNECT_WITH_WILL
    conn.close_reason = pkt.reason_code
    conn.close(-1)


def handle_auth(conn, pkt: codec.Auth) -> None:
    """Enhanced authentication is not offered (CONNECT with a method is refused with 0x8C),
    so an AUTH packet is a protocol error."""
    raise codec.MQTTError("AUTH without an authentication method", rc.PROTOCOL_ERROR)
