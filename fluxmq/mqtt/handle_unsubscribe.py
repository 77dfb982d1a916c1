"""UNSUBSCRIBE: one reason code per filter (MQTT 5); 0x11 where nothing was subscribed."""

from __future__ import annotations

from fluxmq._speedups import codec
from fluxmq.mqtt import reason_codes as rc
from fluxmq.mqtt.handle_subscribe import split_shared


def handle_unsubscribe(conn, pkt: codec.Unsubscribe) -> None:
    codes: list[int] = []
    for topic_filter in pkt.topic_filters:
        if not codec.valid_topic_filter(topic_filter):
            codes.append(rc.TOPIC_FILTER_INVALID)
            continue
        group, inner = split_shared(topic_filter)
        queues = conn.broker.queues
        if group is None and queues is not None and inner.startswith("$queue/"):
            removed = queues.unsubscribe(conn.session, inner)
        else:
            removed = conn.broker.unsubscribe(conn.session, inner, group)
        codes.append(rc.SUCCESS if removed else rc.NO_SUBSCRIPTION_EXISTED)
    props = None
    if conn.version == 5 and conn.problem_info and rc.TOPIC_FILTER_INVALID in codes:
        props = codec.Properties(reason_string="invalid topic filter")
    conn.send(codec.Unsuback(pkt.packet_id, codes if conn.version == 5 else [], props))
