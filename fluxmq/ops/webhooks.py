"""Webhooks (`webhook.*`): broker events POSTed as JSON to HTTP endpoints.

Each event is one envelope (the original FluxMQ's):

    {"event_type": "client.connected", "event_id": "<uuid4>",
     "timestamp": "2026-11-26T13:30:01.123456789Z", "broker_id": "<cluster.node_id>",
     "data": {"client_id": "...", ...}}

Every endpoint has its own bounded queue (`queue_size`; `drop_policy` oldest|newest) and
`workers` tasks that send from it, each on its own kept-alive connection, so a slow or dead
endpoint delays only its own events, never message delivery nor the other endpoints. A failed
attempt (no answer within `timeout`, a refused connection, a status other than 2xx) is retried
after `initial_interval`, then each wait times `multiplier` up to `max_interval`, until
`max_attempts` attempts were made; the retry goes back in the queue when it is due. After
`failure_threshold` consecutive failures the endpoint's circuit opens: its events are dropped
without a request for `reset_timeout`, then one trial request decides (success closes it).
Every drop is counted by reason (`queue_full`, `circuit_open`, `retries_exhausted`,
`shutdown`) in `fluxmq_webhook_dropped_total`.

Events on the message path (`message.published`, `message.delivered`, `message.retained`) are
hooked into the dispatcher only when an endpoint asks for them; otherwise they cost nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from fluxmq.ops.events import EVENT_TYPES, TOPIC_EVENTS
from fluxmq.security.acl import matches
from fluxmq.transport.http_client import HTTPClient, HTTPError

log = logging.getLogger("fluxmq.webhook")


def rfc3339_now() -> str:
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


@dataclass(slots=True)
class EndpointStats:
    delivered: int = 0
    failed: int = 0  # failed attempts
    retried: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


class Breaker:
    """closed -> (failure_threshold consecutive failures) -> open -> (reset_timeout) ->
    half-open: one trial; success -> closed, failure -> open."""

    def __init__(self, threshold: int, reset_timeout: float) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self.failures = 0
        self.opened_at = 0.0
        self.state = "closed"
        self.trial = False

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_timeout:
            self.state = "half_open"
            self.trial = False
        if self.state == "half_open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.state = "closed"

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            if self.state != "open":
                log.warning("webhook circuit opened", extra={"failures": self.failures})
            self.state = "open"
            self.opened_at = time.monotonic()


class Endpoint:
    def __init__(self, cfg, wcfg, index: int) -> None:
        d = wcfg.defaults
        self.name = cfg.name or f"endpoint{index}"
        self.url = cfg.url
        self.events = frozenset(cfg.events) if cfg.events else frozenset(EVENT_TYPES)
        self.filters = [tuple(f.split("/")) for f in cfg.topic_filters]
        self.timeout = cfg.timeout if cfg.timeout is not None else d.timeout
        self.retry = replace(d.retry, **dict(cfg.retry))
        bc = replace(d.circuit_breaker, **dict(cfg.circuit_breaker))
        self.breaker = Breaker(bc.failure_threshold, bc.reset_timeout)
        self.headers = dict(cfg.headers)
        self.queue_size = wcfg.queue_size
        self.drop_oldest = wcfg.drop_policy == "oldest"
        self.workers = wcfg.workers
        self.queue: deque[tuple[bytes, int]] = deque()
        self.stats = EndpointStats()
        self.ready: asyncio.Event | None = None
        self.tasks: list[asyncio.Task] = []
        self.timers: set[asyncio.TimerHandle] = set()
        self.busy = 0

    def topic_ok(self, topic: str | None) -> bool:
        if topic is None:
            return True
        if not self.filters:
            return not topic.startswith("$SYS")
        return any(matches(f, topic) for f in self.filters)

    def put(self, body: bytes, attempt: int = 1) -> None:
        if len(self.queue) >= self.queue_size:
            self.stats.drop("queue_full")
            if not self.drop_oldest:
                return
            self.queue.popleft()
        self.queue.append((body, attempt))
        if self.ready is not None:
            self.ready.set()

    def start(self) -> None:
        self.ready = asyncio.Event()
        if self.queue:
            self.ready.set()
        self.tasks = [
            asyncio.get_running_loop().create_task(self._worker()) for _ in range(self.workers)
        ]

    async def _worker(self) -> None:
        client = HTTPClient(self.url, self.headers)
        try:
            while True:
                while not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                body, attempt = self.queue.popleft()
                if not self.breaker.allow():
                    self.stats.drop("circuit_open")
                    continue
                self.busy += 1
                try:
                    ok, why = await self._send(client, body)
                finally:
                    self.busy -= 1
                if ok:
                    self.breaker.success()
                    self.stats.delivered += 1
                    continue
                self.breaker.failure()
                self.stats.failed += 1
                if attempt >= self.retry.max_attempts:
                    self.stats.drop("retries_exhausted")
                    log.warning(
                        "webhook event dropped after %d attempts: %s",
                        attempt,
                        why,
                        extra={"endpoint": self.name},
                    )
                    continue
                self.stats.retried += 1
                delay = min(
                    self.retry.initial_interval * self.retry.multiplier ** (attempt - 1),
                    self.retry.max_interval,
                )
                self._retry_later(delay, body, attempt + 1)
        finally:
            client.close()

    def _retry_later(self, delay: float, body: bytes, attempt: int) -> None:
        holder: list[asyncio.TimerHandle] = []

        def due() -> None:
            self.timers.discard(holder[0])
            self.put(body, attempt)

        holder.append(asyncio.get_running_loop().call_later(delay, due))
        self.timers.add(holder[0])

    async def _send(self, client: HTTPClient, body: bytes) -> tuple[bool, str]:
        try:
            status, _ = await client.post(body, self.timeout)
        except TimeoutError:
            return False, "timeout"
        except (HTTPError, ValueError) as exc:
            return False, str(exc)
        if 200 <= status < 300:
            return True, ""
        return False, f"HTTP {status}"

    @property
    def pending(self) -> int:
        return len(self.queue) + self.busy + len(self.timers)

    async def stop(self) -> None:
        for h in self.timers:
            h.cancel()
        if self.timers:
            self.stats.drop("shutdown", len(self.timers))
        self.timers.clear()
        if self.queue:
            self.stats.drop("shutdown", len(self.queue))
            self.queue.clear()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.tasks = []


class Webhooks:
    """The configured endpoints and the events they want."""

    def __init__(self, wcfg, broker_id: str) -> None:
        self.cfg = wcfg
        self.broker_id = broker_id
        self.include_payload = wcfg.include_payload
        self.endpoints = (
            [Endpoint(e, wcfg, i) for i, e in enumerate(wcfg.endpoints)] if wcfg.enabled else []
        )
        self.wanted: dict[str, list[Endpoint]] = {
            t: [e for e in self.endpoints if t in e.events] for t in EVENT_TYPES
        }

    def wants(self, event_type: str) -> bool:
        return bool(self.wanted.get(event_type))

    def emit(self, event_type: str, data: dict[str, Any], topic: str | None = None) -> None:
        targets = self.wanted.get(event_type)
        if not targets:
            return
        if topic is not None and event_type in TOPIC_EVENTS:
            targets = [e for e in targets if e.topic_ok(topic)]
            if not targets:
                return
        body = orjson.dumps(
            {
                "event_type": event_type,
                "event_id": str(uuid.uuid4()),
                "timestamp": rfc3339_now(),
                "broker_id": self.broker_id,
                "data": data,
            }
        )
        for e in targets:
            e.put(body)

    # -- the dispatcher's hooks (installed only when wanted) ----------------------------------

    def on_publish(self, msg) -> None:
        data = {
            "client_id": msg.origin or "",
            "topic": msg.topic,
            "qos": msg.qos,
            "retained": bool(msg.retain),
            "payload_size": msg.payload_size,
        }
        if self.include_payload:
            data["payload"] = base64.b64encode(msg.payload).decode()
        self.emit("message.published", data, msg.topic)

    def on_deliver(self, session, msg, qos: int) -> None:
        self.emit(
            "message.delivered",
            {
                "client_id": session.client_id,
                "topic": msg.topic,
                "qos": qos,
                "payload_size": msg.payload_size,
            },
            msg.topic,
        )

    def retained_hook(self, store_set):
        """`dispatcher.on_retain` that also reports `message.retained`."""

        def on_retain(msg) -> None:
            store_set(msg)
            if not msg.topic.startswith("$SYS"):
                self.emit(
                    "message.retained",
                    {
                        "topic": msg.topic,
                        "payload_size": msg.payload_size,
                        "cleared": msg.payload_size == 0,
                    },
                    msg.topic,
                )

        return on_retain

    def install(self, broker) -> None:
        """Hook the message events into the dispatcher (only those an endpoint wants)."""
        d = broker.dispatcher
        d.on_publish = self.on_publish if self.wants("message.published") else None
        d.on_deliver = self.on_deliver if self.wants("message.delivered") else None
        store_set = broker.retained.set
        d.on_retain = self.retained_hook(store_set) if self.wants("message.retained") else store_set

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for e in self.endpoints:
            e.start()
        for e in self.endpoints:
            log.info(
                "webhook endpoint",
                extra={"endpoint": e.name, "url": e.url, "events": len(e.events)},
            )

    async def stop(self, timeout: float | None = None) -> None:
        """Give queued events up to `timeout` (webhook.shutdown_timeout) to go, then stop."""
        limit = self.cfg.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while any(e.queue or e.busy for e in self.endpoints) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for e in self.endpoints:
            await e.stop()
