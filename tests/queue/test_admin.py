"""The queue endpoints of the admin API, Prometheus queue metrics, the HTTP bridge and a
restart that keeps queues, groups and positions."""

from __future__ import annotations

import base64
import datetime
import signal
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.queue.conftest import qconfig, wait_for
from tests.security.helpers import HOST, http, start

TOKEN = {"Authorization": "Bearer s3cret"}


def _api(ports):
    base = f"http://{HOST}:{ports['api']}/api/v1"
    return lambda method, path, body=None: http(method, base + path, body, dict(TOKEN))


def test_admin_api_create_stats_read_seek_purge_replay_delete(broker_factory, clients):
    b, ports = start(broker_factory, qconfig(), api=True)
    call = _api(ports)
    assert call("GET", "/queues")[1] == {"queues": []}
    status, q, _ = call("POST", "/queues", {"name": "jobs", "partitions": 2,
                                             "retry": {"max_retries": 0}})  # fmt: skip
    assert status == 201 and len(q["partitions"]) == 2
    assert call("POST", "/queues", {"name": "jobs"})[0] == 409
    status, err, _ = call("POST", "/queues", {"name": "bad", "partitions": 0})
    assert status == 400 and "partitions" in err["error"]
    assert call("GET", "/queues/nope")[0] == 404
    pub = clients(b.port, "pub")
    for i in range(6):
        pub.publish("$queue/jobs/x", f"m{i}".encode(), partition_key=f"k{i % 3}")
    con = clients(b.port, "c")
    con.subscribe("$queue/jobs", consumer_group="g", cursor="earliest")
    wait_for(lambda: len(con.got()) == 6)
    for m in con.got()[:4]:
        con.settle("ack", m)
    con.settle("reject", con.got()[4], reason="no")
    status, info, _ = call("GET", "/queues/jobs")
    assert status == 200 and info["messages"] == 6 and info["bytes"] > 0
    g = next(x for x in info["groups"] if x["group"] == "g")
    assert g["lag"] == 1 and g["pending"] == 1 and g["stats"]["rejects"] == 1
    assert sum(p["messages"] for p in info["partitions"]) == 6
    listed = call("GET", "/queues")[1]["queues"]
    assert {x["name"] for x in listed} == {"jobs", "dlq"} and listed[1]["groups"] == {"g": 1}
    # the DLQ: read it, replay it into its queue
    status, dl, _ = call("GET", "/queues/dlq/messages?limit=10")
    assert status == 200 and len(dl["messages"]) == 1
    d = dl["messages"][0]
    props = dict(d["user_properties"])
    assert props["dlq-failure-reason"] == "no" and base64.b64decode(d["payload"]).startswith(b"m")
    status, r, _ = call("POST", "/queues/dlq/replay", {})
    assert status == 200 and r["replayed"] == 1
    wait_for(lambda: len(con.got()) == 7, what="the replayed message")
    assert con.got()[6]["payload"] == base64.b64decode(d["payload"])
    assert "dlq-failure-reason" not in con.got()[6]["props"]
    # seek back to the start of partition 0 and to a time
    status, r, _ = call("POST", "/queues/jobs/groups/g/seek", {"offset": 0, "partition": 0})
    assert status == 200 and r["partitions"] == {"0": 0}
    wait_for(lambda: len(con.got()) > 7, what="messages again after the seek")
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
    status, r, _ = call("POST", "/queues/jobs/groups/g/seek", {"time": future})
    assert status == 200 and set(r["partitions"]) == {"0", "1"}
    assert call("POST", "/queues/jobs/groups/nope/seek", {"offset": 0})[0] == 404
    assert call("POST", "/queues/jobs/groups/g/seek", {})[0] == 400
    # purge, delete
    status, r, _ = call("POST", "/queues/jobs/purge")
    assert status == 200 and r["purged"] == 7
    assert call("GET", "/queues/jobs")[1]["messages"] == 0
    assert call("DELETE", "/queues/jobs/groups/g")[0] == 200
    assert call("DELETE", "/queues/jobs")[0] == 200
    assert call("GET", "/queues/jobs")[0] == 404
    status, doc, _ = http("GET", f"http://{HOST}:{ports['api']}/api/v1/openapi.json")
    assert "/api/v1/queues/{name}/groups/{group}/seek" in doc["paths"]


def test_prometheus_queue_metrics(broker_factory, clients):
    b, ports = start(broker_factory, qconfig([{"name": "jobs"}]), health=True)
    con = clients(b.port, "c")
    con.subscribe("$queue/jobs", consumer_group="g")
    pub = clients(b.port, "pub")
    for i in range(4):
        pub.publish("$queue/jobs/x", str(i).encode())
    wait_for(lambda: len(con.got()) == 4)
    con.settle("ack", con.got()[0])
    con.settle("nack", con.got()[1])
    with urllib.request.urlopen(f"http://{HOST}:{ports['health']}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    jg = (("group", "g"), ("queue", "jobs"))
    assert samples[("fluxmq_queue_depth", (("queue", "jobs"),))] == 3
    assert samples[("fluxmq_queue_appended_total", (("queue", "jobs"),))] == 4
    assert samples[("fluxmq_queue_lag", jg)] == 3
    assert samples[("fluxmq_queue_acks_total", jg)] == 1
    assert samples[("fluxmq_queue_nacks_total", jg)] == 1
    assert samples[("fluxmq_queue_delivered_total", jg)] == 4
    assert ("fluxmq_queue_dead_lettered_total", jg) in samples
    assert ("fluxmq_queue_redeliveries_total", jg) in samples


def test_http_bridge_publishes_to_queues(broker_factory, clients):
    b, ports = start(broker_factory, qconfig([{"name": "jobs", "limits": {"max_depth": 1}}],
                                             auto_create=False), http=True)  # fmt: skip
    url = f"http://{HOST}:{ports['http']}/publish"
    status, _, _ = http("POST", url, {"topic": "$queue/jobs/x", "payload": "hello", "qos": 1})
    assert status == 200
    status, body, _ = http("POST", url, {"topic": "$queue/jobs/x", "payload": "2", "qos": 1})
    assert status == 507 and "full" in body["error"]
    status, body, _ = http("POST", url, {"topic": "$queue/other/x", "payload": "2", "qos": 1})
    assert status == 404 and "other" in body["error"]
    con = clients(b.port, "c")
    con.subscribe("$queue/jobs", cursor="earliest")
    wait_for(lambda: con.payloads() == [b"hello"])


def test_a_restart_keeps_queues_groups_positions_and_persistent_consumers(broker_factory, clients):
    cfg = {**qconfig(), "storage": {"type": "lmdb", "fsync": "interval"}}
    b = broker_factory(cfg)
    pub = clients(b.port, "pub")
    for i in range(5):
        pub.publish("$queue/auto/x", str(i).encode())  # auto-created
    con = clients(b.port, "keeper", clean=False)
    con.subscribe("$queue/auto", consumer_group="g", cursor="earliest")
    wait_for(lambda: len(con.got()) == 5)
    for m in con.got()[:3]:
        con.settle("ack", m)
    con.close()
    time.sleep(0.2)
    b.stop(signal.SIGTERM)
    b.start()
    # the persistent session comes back with its queue subscription, and gets what it had
    # not acknowledged, marked as delivered before
    again = clients(b.port, "keeper", clean=False)
    wait_for(lambda: len(again.got()) == 2, what="the unacknowledged messages")
    assert again.payloads() == [b"3", b"4"]
    assert [m["props"]["delivery-count"] for m in again.got()] == ["2", "2"]
    pub = clients(b.port, "pub")
    pub.publish("$queue/auto/x", b"5")
    wait_for(lambda: again.payloads()[-1:] == [b"5"])


def test_deleting_a_queue_under_its_consumers(broker_factory, clients):
    b, ports = start(broker_factory, {**qconfig(), "broker": {"max_inflight": 2}}, api=True)
    call = _api(ports)
    legacy = clients(b.port, "legacy", version=4)  # acknowledges with PUBACK, later
    legacy.c.manual_ack_set(True)
    legacy.subscribe("$queue/tmp")
    v5 = clients(b.port, "v5")
    v5.subscribe("$queue/tmp", consumer_group="g")
    pub = clients(b.port, "pub")
    for i in range(5):
        pub.publish("$queue/tmp/x", str(i).encode())
    wait_for(lambda: len(legacy.got()) == 2 and len(v5.got()) == 2)  # their windows: 2
    assert call("DELETE", "/queues/tmp")[0] == 200
    for m in legacy.got():  # PUBACKs of deliveries whose queue is gone
        legacy.c.ack(m["mid"], 1)
    time.sleep(0.3)
    assert len(legacy.got()) == 2  # nothing more from the deleted queue
    code, why = v5.settle("ack", v5.got()[0])
    assert code == 0x90 and "tmp" in why
    # the queue comes back empty (auto-created), and both clients are still connected
    assert pub.publish("$queue/tmp/x", b"again") == (0, None)
    con = clients(b.port, "new")
    con.subscribe("$queue/tmp", consumer_group="n", cursor="earliest")
    wait_for(lambda: con.payloads() == [b"again"])
    assert legacy.c.is_connected() and v5.c.is_connected()
