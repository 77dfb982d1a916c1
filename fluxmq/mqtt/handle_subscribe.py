"""SUBSCRIBE: one reason code per filter, then the retained messages the options ask for."""

from __future__ import annotations

from fluxmq._speedups import codec
from fluxmq._speedups.channel import storage_full
from fluxmq._speedups.session import Subscription
from fluxmq.mqtt import reason_codes as rc


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """`$share/<group>/<filter>` -> (group, filter); anything else -> (None, filter)."""
    if topic_filter.startswith("$share/"):
        _, group, inner = topic_filter.split("/", 2)
        return group, inner
    return None, topic_filter


_WHY = {
    rc.TOPIC_FILTER_INVALID: "invalid topic filter",
    rc.NOT_AUTHORIZED: "not authorized",
    rc.QUOTA_EXCEEDED: "quota exceeded (subscribe rate, or storage full)",
}


def _explain(codes: list[int], why: dict[int, str] | None = None) -> str:
    """A reason string naming each refused filter's problem, by position."""
    why = why or {}
    return "; ".join(
        f"filter {i + 1}: {why.get(i) or _WHY.get(code, 'refused')}"
        for i, code in enumerate(codes)
        if code >= 0x80
    )


def handle_subscribe(conn, pkt: codec.Subscribe) -> None:
    broker = conn.broker
    session = conn.session
    v5 = conn.version == 5
    max_qos = conn.listener.settings.max_qos
    sub_id = None
    if pkt.properties is not None and pkt.properties.subscription_identifiers:
        sub_id = pkt.properties.subscription_identifiers[0]
    codes: list[int] = []
    granted: list[tuple[Subscription, bool]] = []
    queue_why: dict[int, str] = {}  # durable queue subscriptions: reason strings by position
    queue_starts: list = []  # ... and what starts their deliveries once the SUBACK is sent
    for req in pkt.requests:
        topic_filter = req.topic_filter
        if not codec.valid_topic_filter(topic_filter):
            codes.append(rc.TOPIC_FILTER_INVALID if v5 else 0x80)
            continue
        if conn.sub_limit is not None and not conn.sub_limit.allow():  # ratelimit.subscribe
            codes.append(rc.QUOTA_EXCEEDED if v5 else 0x80)
            continue
        group, inner = split_shared(topic_filter)
        if group is not None and req.no_local:
            raise codec.ProtocolError("No Local on a shared subscription")  # [MQTT-3.8.3-4]
        if session.store is not None and storage_full():
            codes.append(rc.QUOTA_EXCEEDED if v5 else 0x80)  # cannot be stored right now
            continue
        if not broker.hooks.authorize_subscribe(conn.client_id, conn.username, topic_filter):
            codes.append(rc.NOT_AUTHORIZED if v5 else 0x80)
            continue
        qos = min(req.qos, max_qos)
        if group is None and broker.queues is not None and inner.startswith("$queue/"):
            user_props = pkt.properties.user_properties if pkt.properties is not None else None
            code, why, begin = broker.queues.subscribe(session, inner, qos, user_props, v5)
            if why:
                queue_why[len(codes)] = why
            codes.append(code if v5 or code < 0x80 else 0x80)
            if begin is not None:
                queue_starts.append(begin)
            continue
        sub = Subscription(
            session,
            inner,
            qos,
            share_group=group,
            no_local=req.no_local,
            retain_as_published=req.retain_as_published,
            retain_handling=req.retain_handling,
            identifier=sub_id,
        )
        granted.append((sub, broker.subscribe(session, sub)))
        codes.append(qos)
    props = None
    if v5 and conn.problem_info and any(code >= 0x80 for code in codes):
        props = codec.Properties(reason_string=_explain(codes, queue_why))
    conn.send(codec.Suback(pkt.packet_id, codes, props))
    for begin in queue_starts:
        begin()
    for sub, new in granted:
        # Retained messages go to new non-shared subscriptions as Retain Handling says.
        if sub.share_group is None and (
            sub.retain_handling == 0 or (sub.retain_handling == 1 and new)
        ):
            broker.send_retained(session, sub)
