"""Prometheus metrics (`GET /metrics` on the health listener), read at scrape time.

Nothing is counted per message in Python: a custom collector reads the C counters of the
dispatcher and channels (`fluxmq._speedups.dispatch.Counters`), the listeners, the sessions, the
security hooks and the webhook sender when Prometheus asks. The publish-to-deliver latency
histogram is kept in C too (one PUBLISH in 16 is timed, from its bytes' arrival to its hand-over
to every subscriber's connection or session queue). Event-loop lag is measured by a timer that
asks to run every 0.25 s and records how late it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from fluxmq._speedups.dispatch import LATENCY_BUCKETS
from fluxmq.periodic import Periodic

__all__ = ["CONTENT_TYPE_LATEST", "LoopLag", "Metrics"]

_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_QOS = ("0", "1", "2")


class LoopLag(Periodic):
    """How late the event loop runs a timer (a busy or blocked loop runs it late)."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__()
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self.buckets = [0] * (len(_LAG_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def tick(self, late: float) -> None:
        self.observe(late)

    def observe(self, lag: float) -> None:
        self.last = lag
        self.max = max(self.max, lag)
        i = 0
        while i < len(_LAG_BUCKETS) and lag > _LAG_BUCKETS[i]:
            i += 1
        self.buckets[i] += 1
        self.sum += lag
        self.count += 1


def _histogram(name: str, doc: str, bounds, counts, total: float) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    cumulative, buckets = 0, []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    h.add_metric([], buckets, total)
    return h


class _Collector:
    def __init__(self, node) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Metric]:
        node = self.node
        broker = node.broker
        if broker is None:
            return
        c = broker.counters

        cur = GaugeMetricFamily(
            "fluxmq_connections", "Open client connections, by listener.", labels=["listener"]
        )
        tot = CounterMetricFamily(
            "fluxmq_connections", "Connections accepted, by listener.", labels=["listener"]
        )
        for lst in node.listeners:
            if lst.settings is None:
                continue  # the HTTP bridge: requests, not connections
            cur.add_metric([lst.name], len(lst.connections))
            tot.add_metric([lst.name], getattr(lst, "accepted", 0))
        yield cur
        yield tot

        q = c.by_qos()
        for direction, what in (("received", "received from clients"), ("sent", "sent to clients")):
            m = CounterMetricFamily(
                f"fluxmq_messages_{direction}", f"PUBLISH packets {what}, by QoS.", labels=["qos"]
            )
            b = CounterMetricFamily(
                f"fluxmq_message_bytes_{direction}",
                f"Bytes of PUBLISH packets {what}, by QoS.",
                labels=["qos"],
            )
            for i, qos in enumerate(_QOS):
                m.add_metric([qos], q[direction][i])
                b.add_metric([qos], q[f"{direction}_bytes"][i])
            yield m
            yield b
        yield CounterMetricFamily(
            "fluxmq_packets_received", "MQTT packets received.", c.messages_received
        )
        yield CounterMetricFamily("fluxmq_packets_sent", "MQTT packets sent.", c.messages_sent)
        yield CounterMetricFamily(
            "fluxmq_bytes_received", "Bytes received from MQTT clients.", c.bytes_received
        )
        yield CounterMetricFamily("fluxmq_bytes_sent", "Bytes sent to MQTT clients.", c.bytes_sent)

        sessions = list(broker.sessions.values())
        queue_full = (node.hooks.stats.dropped_ended if node.hooks else 0) + sum(
            s.dropped for s in sessions
        )
        known = (
            c.dropped_rate_limited + c.dropped_not_authorized + c.dropped_slow + c.dropped_too_large
        )
        d = CounterMetricFamily(
            "fluxmq_messages_dropped", "Messages dropped, by reason.", labels=["reason"]
        )
        d.add_metric(["rate_limited"], c.dropped_rate_limited)
        d.add_metric(["not_authorized"], c.dropped_not_authorized)
        d.add_metric(["slow_subscriber"], c.dropped_slow)
        d.add_metric(["too_large"], c.dropped_too_large)
        d.add_metric(["queue_full"], queue_full)
        d.add_metric(["refused"], max(0, c.publish_dropped - known))
        yield d

        yield GaugeMetricFamily(
            "fluxmq_subscriptions",
            "Subscriptions (each shared-group member counts).",
            broker.dispatcher.subscription_count,
        )
        yield GaugeMetricFamily(
            "fluxmq_retained_messages", "Retained messages ($SYS excluded).", broker.retained.count
        )
        online = sum(1 for s in sessions if s.outlet is not None)
        sg = GaugeMetricFamily("fluxmq_sessions", "Sessions, by state.", labels=["state"])
        sg.add_metric(["online"], online)
        sg.add_metric(["offline"], len(sessions) - online)
        yield sg
        yield GaugeMetricFamily(
            "fluxmq_inflight_messages",
            "Outbound QoS 1/2 messages sent and not yet acknowledged.",
            sum(s.inflight_count for s in sessions),
        )
        qd = GaugeMetricFamily(
            "fluxmq_queued_messages",
            "Messages queued in sessions, by session state.",
            labels=["state"],
        )
        qd.add_metric(["online"], sum(s.queued_count for s in sessions if s.outlet is not None))
        qd.add_metric(["offline"], sum(s.queued_count for s in sessions if s.outlet is None))
        yield qd

        hooks = node.hooks
        if hooks is not None:
            af = CounterMetricFamily(
                "fluxmq_auth_failures",
                "Refused connections (authentication), by reason.",
                labels=["reason"],
            )
            for reason in ("bad_credentials", "not_authorized"):
                af.add_metric([reason], hooks.stats.failures.get(reason, 0))
            yield af
            yield CounterMetricFamily(
                "fluxmq_auth_successes", "Accepted authentications.", hooks.stats.successes
            )
            ad = CounterMetricFamily(
                "fluxmq_authz_denied", "Refused by authorisation, by action.", labels=["action"]
            )
            ad.add_metric(["publish"], hooks.stats.publish_denied)
            ad.add_metric(["subscribe"], hooks.stats.subscribe_denied)
            yield ad

        wh = node.webhooks
        ok = CounterMetricFamily(
            "fluxmq_webhook_deliveries",
            "Webhook events delivered (2xx), by endpoint.",
            labels=["endpoint"],
        )
        fail = CounterMetricFamily(
            "fluxmq_webhook_failures", "Failed webhook attempts, by endpoint.", labels=["endpoint"]
        )
        drop = CounterMetricFamily(
            "fluxmq_webhook_dropped",
            "Webhook events dropped, by endpoint and reason.",
            labels=["endpoint", "reason"],
        )
        qlen = GaugeMetricFamily(
            "fluxmq_webhook_queue", "Webhook events waiting, by endpoint.", labels=["endpoint"]
        )
        if wh is not None:
            for ep in wh.endpoints:
                ok.add_metric([ep.name], ep.stats.delivered)
                fail.add_metric([ep.name], ep.stats.failed)
                qlen.add_metric([ep.name], len(ep.queue))
                for reason, n in ep.stats.dropped.items():
                    drop.add_metric([ep.name, reason], n)
        yield ok
        yield fail
        yield drop
        yield qlen

        counts, total, _ = c.latency()
        yield _histogram(
            "fluxmq_publish_to_deliver_seconds",
            "Time from a PUBLISH's arrival to its hand-over to every subscriber (1 in 16 timed).",
            LATENCY_BUCKETS,
            counts,
            total,
        )
        lag = node.loop_lag
        if lag is not None:
            yield GaugeMetricFamily(
                "fluxmq_event_loop_lag_seconds", "Last measured event-loop lag.", lag.last
            )
            yield _histogram(
                "fluxmq_event_loop_lag_histogram_seconds",
                "Event-loop lag (every 0.25 s).",
                _LAG_BUCKETS,
                lag.buckets,
                lag.sum,
            )
        yield GaugeMetricFamily(
            "fluxmq_uptime_seconds",
            "Seconds since the broker started.",
            time.time() - broker.stats.started_at,
        )


class Metrics:
    """The registry `GET /metrics` renders: FluxMQ's collector and the process's."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(node))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
