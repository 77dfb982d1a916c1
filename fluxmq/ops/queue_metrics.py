"""Prometheus metrics of the durable queues (registered with the `GET /metrics` registry of
fluxmq.ops.metrics), read at scrape time from the queues' counters."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class QueueCollector:
    def __init__(self, manager) -> None:
        self.manager = manager

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Metric]:
        queues = list(self.manager.queues.values())
        depth = GaugeMetricFamily(
            "fluxmq_queue_depth",
            "Messages not yet acknowledged by the slowest group (all kept, without groups).",
            labels=["queue"],
        )
        msgs = GaugeMetricFamily(
            "fluxmq_queue_messages", "Messages kept in the queue's log.", labels=["queue"]
        )
        size = GaugeMetricFamily(
            "fluxmq_queue_bytes", "Bytes of the queue's segment files.", labels=["queue"]
        )
        appended = CounterMetricFamily(
            "fluxmq_queue_appended", "Messages appended to the queue.", labels=["queue"]
        )
        refused = CounterMetricFamily(
            "fluxmq_queue_refused",
            "Publishes refused (full, too large) or captures dropped, by reason.",
            labels=["queue", "reason"],
        )
        lag = GaugeMetricFamily(
            "fluxmq_queue_lag",
            "Messages a group has not acknowledged yet.",
            labels=["queue", "group"],
        )
        pending = GaugeMetricFamily(
            "fluxmq_queue_pending",
            "Deliveries of a group not yet acknowledged (or waiting for a retry).",
            labels=["queue", "group"],
        )
        consumers = GaugeMetricFamily(
            "fluxmq_queue_consumers", "Connected consumers of a group.", labels=["queue", "group"]
        )
        counters = {
            name: CounterMetricFamily(f"fluxmq_queue_{name}", doc, labels=["queue", "group"])
            for name, doc in (
                ("delivered", "Deliveries to consumers (redeliveries included)."),
                ("acks", "Messages acknowledged."),
                ("nacks", "Negative acknowledgements (redelivered after a backoff)."),
                ("rejects", "Messages rejected by consumers."),
                ("redeliveries", "Redeliveries (nack, visibility timeout, consumer gone)."),
                ("dead_lettered", "Messages moved to the dead-letter queue."),
            )
        }
        for q in queues:
            depth.add_metric([q.name], q.depth())
            msgs.add_metric([q.name], sum(pl.end - pl.start for pl in q.logs))
            size.add_metric([q.name], sum(pl.size for pl in q.logs))
            appended.add_metric([q.name], q.stats.appended)
            refused.add_metric([q.name, "full"], q.stats.refused_full)
            refused.add_metric([q.name, "too_large"], q.stats.refused_size)
            refused.add_metric([q.name, "capture_dropped"], q.stats.capture_dropped)
            for g in q.groups.values():
                labels = [q.name, g.name]
                lag.add_metric(labels, g.lag)
                pending.add_metric(labels, sum(len(gp.pending) for gp in g.parts))
                consumers.add_metric(labels, sum(1 for c in g.consumers if c.active))
                for name, m in counters.items():
                    m.add_metric(labels, getattr(g.stats, name))
        yield from (depth, msgs, size, appended, refused, lag, pending, consumers)
        yield from counters.values()
        yield CounterMetricFamily(
            "fluxmq_queue_bad_acks",
            "Acknowledgements refused (unknown queue, group or message; missing properties).",
            self.manager.stats.bad_acks,
        )
