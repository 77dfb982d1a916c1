"""`GET /metrics`: Prometheus text parsed with prometheus_client's parser and checked against
traffic the test made; JSON logs of connection events."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import HOST, mosquitto_passwd, start, wait_until

pytestmark = pytest.mark.fluxmq_only


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_follow_the_traffic(broker_factory, clients, tmp_path):
    pw = tmp_path / "pw"
    mosquitto_passwd(pw, "alice", "alice")
    _b, ports = start(broker_factory, {"auth": {"password_file": str(pw)},
                                      "broker": {"sys_interval": 0}}, health=True)  # fmt: skip
    key = ("fluxmq_connections", (("listener", "tcp"),))
    assert wait_until(lambda: scrape(ports["health"])[key] == 0)  # the port probe went away
    sub = clients("m-sub", 5)
    assert sub.connect(ports["tcp"], "alice", "alice") == 0
    assert sub.subscribe("m/#", "n/+") == [1, 1]
    pub = clients("m-pub", 4)
    assert pub.connect(ports["tcp"], "alice", "alice") == 0
    for i in range(50):
        pub.publish(f"m/{i % 5}", b"0123456789", qos=0)
    for _ in range(20):
        assert pub.publish("m/q1", b"x" * 100, qos=1) == 0
    pub.publish("m/kept", b"r", qos=1, retain=True)
    assert wait_until(lambda: sub.messages.qsize() >= 71)
    with RawClient((HOST, ports["tcp"]), version=5) as bad:
        assert bad.connect("bad1", username="alice", password=b"wrong").reason_code == 0x86

    m = scrape(ports["health"])
    q = lambda name, **lb: m.get((name, tuple(sorted(lb.items()))), 0.0)  # noqa: E731
    assert q("fluxmq_connections", listener="tcp") == 2
    assert q("fluxmq_connections_total", listener="tcp") >= 3
    assert q("fluxmq_messages_received_total", qos="0") == 50
    assert q("fluxmq_messages_received_total", qos="1") == 21
    assert q("fluxmq_messages_sent_total", qos="0") == 50
    assert q("fluxmq_messages_sent_total", qos="1") == 21
    # 50 QoS 0 PUBLISH packets of 2 + (2 + 3) + 10 bytes
    assert q("fluxmq_message_bytes_received_total", qos="0") == 50 * 17
    assert q("fluxmq_bytes_received_total") > q("fluxmq_message_bytes_received_total", qos="1")
    assert q("fluxmq_subscriptions") == 2
    assert q("fluxmq_retained_messages") == 1
    assert q("fluxmq_sessions", state="online") == 2
    assert q("fluxmq_inflight_messages") >= 0
    assert q("fluxmq_auth_failures_total", reason="bad_credentials") == 1
    assert q("fluxmq_messages_dropped_total", reason="not_authorized") == 0
    assert q("fluxmq_publish_to_deliver_seconds_count") >= 71 // 16
    assert q("fluxmq_publish_to_deliver_seconds_bucket", le="+Inf") == q(
        "fluxmq_publish_to_deliver_seconds_count"
    )
    assert ("fluxmq_event_loop_lag_seconds", ()) in m
    assert q("fluxmq_event_loop_lag_histogram_seconds_count") >= 1
    assert q("process_resident_memory_bytes") > 0
    # An offline persistent session with a queue.
    sub.close()
    assert wait_until(
        lambda: scrape(ports["health"])[("fluxmq_sessions", (("state", "online"),))] == 1
    )


def test_json_logs_name_the_client_and_its_address(broker_factory):
    b, ports = start(broker_factory, {"log": {"format": "json", "level": "info"}})
    with RawClient((HOST, ports["tcp"]), version=5) as c:
        assert c.connect("json-client").reason_code == 0
        c.disconnect() if hasattr(c, "disconnect") else None
    assert wait_until(lambda: "client disconnected" in b.logs())
    events = [json.loads(ln) for ln in b.logs().splitlines() if ln.startswith("{")]
    conn = [e for e in events if e["msg"] == "client connected"]
    gone = [e for e in events if e["msg"] == "client disconnected"]
    assert conn and gone
    assert conn[0]["client_id"] == "json-client" and conn[0]["remote"].startswith("127.0.0.1:")
    assert conn[0]["protocol"] == "mqtt5" and conn[0]["listener"] == "tcp"
    assert gone[0]["client_id"] == "json-client" and gone[0]["remote"] == conn[0]["remote"]
