"""Dead letters: a message rejected, or out of retries, is appended to its queue's dead-letter
queue (`dlq.topic`, by default `$queue/dlq/<queue>`: queue `dlq`, routing key the queue's name)
with user properties saying where it came from, why, and how often it was tried. The
dead-letter queue is an ordinary queue; `replay` appends its messages to their queues again."""

from __future__ import annotations

import datetime

from fluxmq.queue.topics import PREFIX, split

ORIGINAL_QUEUE = "dlq-original-queue"
ORIGINAL_PARTITION = "dlq-original-partition"
ORIGINAL_OFFSET = "dlq-original-offset"
CONSUMER_GROUP = "dlq-consumer-group"
CONSUMER_ID = "dlq-consumer-id"
DELIVERY_COUNT = "dlq-delivery-count"
FAILURE_REASON = "dlq-failure-reason"
MOVED_AT = "dlq-moved-at"


def target(queue) -> tuple[str, str]:
    """(dead-letter queue name, routing key) of a queue."""
    topic = queue.settings.dlq.topic or f"{PREFIX}dlq/{queue.name}"
    name, rk, _ = split(topic)
    return name, rk


def dead_message(entry, queue_name: str, partition: int, group: str, client: str | None,
                 count: int, reason: str):  # fmt: skip
    """The message appended to the dead-letter queue: the original topic, payload and
    properties, plus the dlq-* user properties."""
    m = entry.msg.copy()
    props = [kv for kv in (m.user_properties or ()) if not kv[0].startswith("dlq-")]
    props += [
        (ORIGINAL_QUEUE, queue_name),
        (ORIGINAL_PARTITION, str(partition)),
        (ORIGINAL_OFFSET, str(entry.offset)),
        (CONSUMER_GROUP, group),
        (CONSUMER_ID, client or ""),
        (DELIVERY_COUNT, str(count)),
        (FAILURE_REASON, reason),
        (MOVED_AT, datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")),
    ]
    m.user_properties = props
    return m


def revived(entry):
    """A dead letter made ready to go back to its queue: (queue name, message, routing key,
    routing-key start) or None if it does not say where it came from."""
    props = entry.msg.user_properties or []
    origin = next((v for k, v in props if k == ORIGINAL_QUEUE), None)
    if origin is None:
        return None
    m = entry.msg.copy()
    m.user_properties = [kv for kv in props if not kv[0].startswith("dlq-")] or None
    if m.topic.startswith(PREFIX):
        name, _, start = split(m.topic)
        if name == origin:
            return origin, m, None, start
    return origin, m, None, 0  # a captured topic is its own routing key
