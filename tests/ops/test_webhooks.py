"""Webhooks: every event type reaches a real local HTTP server in the envelope of the original
FluxMQ; retries with backoff and the circuit breaker against a failing endpoint; a slow endpoint
does not slow message delivery and its drops are counted."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest

from fluxmq.ops.events import EVENT_TYPES
from tests.ops.test_metrics import scrape
from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import HOST, mosquitto_passwd, start, wait_until

pytestmark = pytest.mark.fluxmq_only

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def _hooks(*endpoints, **extra):
    return {"webhook": {"enabled": True, "shutdown_timeout": "1s", "endpoints": list(endpoints),
                        **extra}}  # fmt: skip


def test_every_event_is_emitted(broker_factory, clients, recorder, tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXMQ_TEST_HOOK_TOKEN", "tok-123")
    r = recorder()
    pw = tmp_path / "pw"
    mosquitto_passwd(pw, "alice", "alice")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite a/#\n")
    cfg = _hooks(
        {
            "name": "all",
            "url": r.url + "/hook",
            "headers": {"X-Token": "${FLUXMQ_TEST_HOOK_TOKEN}"},
        },
        include_payload=True,
    )
    cfg["auth"] = {"password_file": str(pw), "acl_file": str(acl)}
    cfg["cluster"] = {"node_id": "hook-node"}
    _, ports = start(broker_factory, cfg)
    port = ports["tcp"]
    with RawClient((HOST, port), version=5) as bad:
        assert bad.connect("intruder", username="alice", password=b"no").reason_code == 0x86
    c = clients("hooked", 5)
    assert c.connect(port, "alice", "alice") == 0
    assert c.subscribe("a/#", "deny/#") == [1, 0x87]
    assert c.publish("a/1", b"hello", qos=1, retain=True) == 0
    assert c.got().topic == "a/1"
    assert c.publish("deny/1", qos=1) == 0x87
    unsubscribed = threading.Event()
    c.c.on_unsubscribe = lambda *args: unsubscribed.set()
    c.c.unsubscribe("a/#")
    assert unsubscribed.wait(5)  # UNSUBACK before the takeover below
    again = clients("hooked", 5)  # the same client id: takes the session over
    assert again.connect(port, "alice", "alice") == 0
    again.close()

    def types():
        return {b["event_type"] for b in r.bodies("/hook")}

    assert wait_until(lambda: types() >= set(EVENT_TYPES), 10), set(EVENT_TYPES) - types()
    by_type: dict[str, list[dict]] = {}
    for body in r.bodies("/hook"):
        by_type.setdefault(body["event_type"], []).append(body)
        assert set(body) == {"event_type", "event_id", "timestamp", "broker_id", "data"}
        uuid.UUID(body["event_id"])
        assert TS.match(body["timestamp"]), body["timestamp"]
        assert body["broker_id"] == "hook-node"
        if body["event_type"] != "message.retained":
            assert body["data"]["client_id"] in ("hooked", "intruder"), body
    assert all(h.get("X-Token") == "tok-123" for _, _, h in r.posts)
    pub = next(e["data"] for e in by_type["message.published"] if e["data"]["topic"] == "a/1")
    assert pub == {"client_id": "hooked", "topic": "a/1", "qos": 1, "retained": True,
                   "payload_size": 5, "payload": "aGVsbG8="}  # fmt: skip
    assert by_type["message.delivered"][0]["data"]["client_id"] == "hooked"
    assert by_type["message.retained"][0]["data"] == {"topic": "a/1", "payload_size": 5,
                                                      "cleared": False}  # fmt: skip
    assert by_type["auth.failure"][0]["data"]["client_id"] == "intruder"
    assert by_type["authz.subscribe_denied"][0]["data"]["topic_filter"] == "deny/#"
    assert by_type["authz.publish_denied"][0]["data"]["topic"] == "deny/1"
    assert by_type["subscription.removed"][0]["data"]["topic_filter"] == "a/#"
    assert {e["data"]["reason"] for e in by_type["client.disconnected"]} <= {"normal", "error"}
    connected = by_type["client.connected"][0]["data"]
    assert connected["protocol"] == "mqtt5" and connected["remote_addr"].startswith("127.0.0.1:")


def test_filters_by_event_and_topic(broker_factory, clients, recorder):
    r = recorder()
    _, ports = start(broker_factory, _hooks(
        {"url": r.url + "/only", "events": ["message.published"], "topic_filters": ["keep/#"]},
    ))  # fmt: skip
    c = clients("filt", 5)
    assert c.connect(ports["tcp"]) == 0
    for t in ("keep/1", "skip/1", "keep/2/x"):
        c.publish(t, qos=1)
    assert wait_until(lambda: len(r.posts) >= 2)
    time.sleep(0.5)
    assert [b["data"]["topic"] for b in r.bodies()] == ["keep/1", "keep/2/x"]
    assert "payload" not in r.bodies()[0]["data"]  # include_payload is off


def test_retries_with_backoff_then_the_breaker(broker_factory, recorder):
    failing = recorder(lambda path, body: (500, {"no": True}))
    retry = {"max_attempts": 3, "initial_interval": "200ms", "multiplier": 2.0}
    _, ports = start(broker_factory, _hooks(
        {"name": "retrying", "url": failing.url + "/retry", "events": ["client.connected"],
         "retry": retry, "circuit_breaker": {"failure_threshold": 100}},
        {"name": "breaking", "url": failing.url + "/break", "events": ["client.connected"],
         "retry": {"max_attempts": 1}, "circuit_breaker": {"failure_threshold": 2,
                                                           "reset_timeout": "60s"}},
        workers=1,
    ), health=True)  # fmt: skip
    with RawClient((HOST, ports["tcp"]), version=5) as c:
        assert c.connect("r1").reason_code == 0
    assert wait_until(lambda: len(failing.bodies("/retry")) == 3, 10)
    ids = {b["event_id"] for b in failing.bodies("/retry")}
    assert len(ids) == 1  # the same event, three attempts
    for i in range(5):
        with RawClient((HOST, ports["tcp"]), version=5) as c:
            assert c.connect(f"b{i}").reason_code == 0
    assert wait_until(lambda: len(failing.bodies("/break")) >= 2)
    time.sleep(0.5)
    assert len(failing.bodies("/break")) == 2  # then the circuit is open: no more requests
    m = scrape(ports["health"])
    assert (
        m[("fluxmq_webhook_dropped_total", (("endpoint", "breaking"), ("reason", "circuit_open")))]
        == 4
    )
    assert m[("fluxmq_webhook_failures_total", (("endpoint", "retrying"),))] >= 3
    assert m[("fluxmq_webhook_dropped_total",
              (("endpoint", "retrying"), ("reason", "retries_exhausted")))] == 1  # fmt: skip
    # exponential backoff: attempt 2 came >= 0.2 s after attempt 1, attempt 3 >= 0.4 s later
    t = [at for path, at in failing.arrivals if path == "/retry"]
    assert t[1] - t[0] >= 0.18 and t[2] - t[1] >= 0.38, t


def test_slow_endpoint_never_slows_delivery(broker_factory, clients, recorder):
    slow = recorder(lambda path, body: (time.sleep(1.0), (200, {}))[1])
    _, ports = start(broker_factory, _hooks(
        {"name": "slow", "url": slow.url + "/slow", "events": ["message.delivered"],
         "timeout": "5s"},
        workers=1, queue_size=100, drop_policy="newest", shutdown_timeout=0,
    ), health=True)  # fmt: skip
    sub = clients("fast-sub", 5)
    assert sub.connect(ports["tcp"]) == 0
    sub.subscribe("fast/#", qos=0)
    pub = clients("fast-pub", 5)
    assert pub.connect(ports["tcp"]) == 0
    t0 = time.monotonic()
    for i in range(500):
        pub.publish(f"fast/{i}", b"x", qos=0)
    assert wait_until(lambda: sub.messages.qsize() == 500, 5)
    assert time.monotonic() - t0 < 4.0
    m = scrape(ports["health"])
    dropped = m[("fluxmq_webhook_dropped_total", (("endpoint", "slow"), ("reason", "queue_full")))]
    assert dropped >= 500 - 100 - 2
    assert m[("fluxmq_webhook_queue", (("endpoint", "slow"),))] <= 100
