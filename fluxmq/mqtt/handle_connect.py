"""CONNECT: protocol checks, client identifier, keep-alive, session, will, and CONNACK.

Authentication is the broker's `authenticate` hook; when it has to ask a service (it returns an
awaitable), the channel stops reading until the answer comes, then the CONNECT completes or is
refused (MQTT 5 CONNACK 0x86/0x87, 3.1.1 0x04/0x05).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from fluxmq._speedups import codec
from fluxmq._speedups.channel import now as monotonic_now
from fluxmq._speedups.channel import storage_full
from fluxmq._speedups.message import Message
from fluxmq.broker.hooks import ClientInfo
from fluxmq.broker.will import Will
from fluxmq.mqtt import reason_codes as rc

log = logging.getLogger("fluxmq.mqtt")

ST_CONNECTED = 2
ST_CLOSING = 3
_PROTOCOLS = {3: "mqtt3.1", 4: "mqtt3.1.1", 5: "mqtt5"}
_EMPTY = codec.Properties()


def refuse(conn, reason: int, message: str | None = None) -> None:
    """Answer the CONNECT with a refusal and close (MQTT 3.1.1 gets its nearest return code)."""
    if conn.version == 5:
        props = codec.Properties(reason_string=message) if message else None
        conn.send(codec.Connack(reason, False, props))
    else:
        conn.send(codec.Connack(rc.v3_connack_code(reason), False))
    conn.will_wanted = False
    conn.close_reason = reason
    conn.close(-1)


def refuse_protocol(conn, level: int) -> None:
    """CONNECT of a protocol level we do not speak: 0x01 in the 3.1.1 form below level 5,
    0x84 in the MQTT 5 form above it."""
    if level > 5:
        conn.version = 5
        conn.send(codec.Connack(rc.UNSUPPORTED_PROTOCOL_VERSION, False))
    else:
        conn.version = 4
        conn.send(codec.Connack(rc.V3_UNACCEPTABLE_PROTOCOL_VERSION, False))


def _will(w: codec.Will, client_id: str, version: int) -> Will:
    msg = Message(w.topic, w.payload, w.qos, w.retain, origin=client_id)
    delay = 0
    expiry = None
    p = w.properties
    if version == 5 and p is not None:
        msg.payload_format = p.payload_format_indicator
        msg.content_type = p.content_type
        msg.response_topic = p.response_topic
        msg.correlation_data = p.correlation_data
        msg.user_properties = p.user_properties
        delay = p.will_delay_interval or 0
        expiry = p.message_expiry_interval
    return Will(msg, delay, expiry)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def handle_connect(conn, pkt: codec.Connect) -> None:
    s = conn.listener.settings
    broker = conn.broker
    v = pkt.protocol_level
    conn.version = v
    props = pkt.properties if pkt.properties is not None else _EMPTY
    if conn.refused:
        return refuse(conn, conn.refused, "too many connections")

    client_id = pkt.client_id
    assigned = False
    if not client_id:
        if v < 5 and not pkt.clean_start:
            return refuse(conn, rc.CLIENT_IDENTIFIER_NOT_VALID)  # [MQTT-3.1.3-8]
        client_id = f"auto-{uuid.uuid4()}"
        assigned = v == 5
    if props.authentication_method is not None:
        return refuse(conn, rc.BAD_AUTHENTICATION_METHOD, "enhanced authentication is not offered")

    keepalive = pkt.keepalive
    server_keepalive = None
    if s.max_keepalive and (keepalive > s.max_keepalive or keepalive == 0):
        if v == 5:
            keepalive = server_keepalive = s.max_keepalive
        elif keepalive > s.max_keepalive:
            return refuse(conn, rc.CLIENT_IDENTIFIER_NOT_VALID, "keep alive too long")

    returned_expiry = None
    if v == 5:
        expiry = props.session_expiry_interval or 0
        if expiry > s.max_expiry_interval:
            expiry = returned_expiry = s.max_expiry_interval
        conn.connect_expiry = props.session_expiry_interval or 0
    else:
        expiry = 0 if pkt.clean_start else s.default_expiry_interval

    if expiry and storage_full():
        return refuse(conn, rc.QUOTA_EXCEEDED, "storage is full: no new persistent sessions")

    will = None
    if pkt.will is not None:
        if v == 5 and pkt.will.qos > s.max_qos:
            return refuse(conn, rc.QOS_NOT_SUPPORTED, "will QoS above the maximum QoS")
        if (
            v == 5
            and pkt.will.properties is not None
            and pkt.will.properties.payload_format_indicator == 1
            and not _utf8(pkt.will.payload)
        ):
            return refuse(conn, rc.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
        will = _will(pkt.will, client_id, v)

    identity, sans = conn.listener.peer_identity(conn)  # the client certificate (TLS)
    username = pkt.username
    if conn.listener.use_identity_as_username:
        if identity is None:
            return refuse(conn, rc.NOT_AUTHORIZED, "a client certificate is required")
        username = identity
    info = ClientInfo(
        client_id,
        username,
        pkt.password,
        conn.remote,
        _PROTOCOLS[v],
        conn.listener.name,
        identity,
        sans,
        verified=bool(conn.listener.use_identity_as_username),
        clean_start=pkt.clean_start,
        keepalive=keepalive,
    )

    def finish(refusal: int) -> None:
        if refusal:
            return refuse(conn, refusal)
        _accept(
            conn,
            pkt,
            info,
            props,
            keepalive,
            server_keepalive,
            expiry,
            returned_expiry,
            will,
            assigned,
        )

    result = broker.hooks.authenticate(info)
    if isinstance(result, int):
        return finish(result)
    # Asked elsewhere: the channel keeps what arrives meanwhile until CONNECT is answered.
    task = asyncio.ensure_future(_await_auth(conn, result, finish))
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


_PENDING: set = set()  # authentications being awaited (a reference keeps each task alive)


async def _await_auth(conn, pending, finish) -> None:
    try:
        refusal = await pending
    except Exception:
        log.exception("authentication failed with an error", extra={"remote": conn.remote})
        refusal = rc.NOT_AUTHORIZED
    if conn.state >= ST_CLOSING or conn.transport is None:
        return  # the client went away meanwhile
    finish(refusal)
    if conn.state == ST_CONNECTED:
        conn.resume_input()


def _accept(
    conn, pkt, info, props, keepalive, server_keepalive, expiry, returned_expiry, will, assigned
) -> None:
    s = conn.listener.settings
    broker = conn.broker
    v = conn.version
    client_id = info.client_id
    username = info.username
    conn.client_id = client_id
    conn.username = username
    conn.keepalive = keepalive
    conn.last_rx = monotonic_now()
    window = s.max_inflight
    if v == 5:
        conn.client_max_packet = props.maximum_packet_size or 0
        conn.client_alias_max = props.topic_alias_maximum or 0
        conn.problem_info = props.request_problem_information != 0
        if props.receive_maximum:
            window = min(window, props.receive_maximum)

    result = broker.connect(conn, client_id, pkt.clean_start, expiry, window, will)
    conn.session = result.session
    ack_props = None
    if v == 5:
        ack_props = codec.Properties(
            receive_maximum=s.receive_maximum if s.receive_maximum != 65535 else None,
            maximum_qos=s.max_qos if s.max_qos < 2 else None,
            maximum_packet_size=s.max_packet_size,
            topic_alias_maximum=s.max_topic_alias or None,
            assigned_client_identifier=client_id if assigned else None,
            server_keep_alive=server_keepalive,
            session_expiry_interval=returned_expiry,
            wildcard_subscription_available=1,
            subscription_identifier_available=1,
            shared_subscription_available=1,
        )
    conn.send(codec.Connack(0, result.present, ack_props))
    conn.state = ST_CONNECTED
    hooks = broker.hooks
    hooks.client_connected(info, result.present)
    conn.authz = hooks.publish_hook(client_id)
    conn.authz_ok = None
    conn.authz_last = None
    log.info(
        "client connected",
        extra={
            "client_id": client_id,
            "remote": conn.remote,
            "username": username,
            "protocol": info.protocol,
            "listener": info.listener,
            "clean_start": pkt.clean_start,
            "keepalive": keepalive,
            "session_present": result.present,
        },
    )
    broker.resume_session(result.session, conn)
