"""The admin API (`server.api`): bearer token (401), clients (pagination, prefix filter, 404),
kicking (MQTT 5 DISCONNECT 0x98), subscriptions, retained messages, stats, the OpenAPI document
and reload over HTTP."""

from __future__ import annotations

import urllib.parse

import pytest

from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import HOST, http, start, wait_until

pytestmark = pytest.mark.fluxmq_only

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def api(broker_factory):
    b, ports = start(broker_factory, api=True)
    base = f"http://{HOST}:{ports['api']}/api/v1"

    def call(method, path, token=TOKEN, body=None):
        return http(method, base + path, body, dict(token or {}))

    return b, ports, call


def test_token_is_required(api):
    _, _, call = api
    for token in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        status, body, headers = call("GET", "/stats", token)
        assert status == 401 and body["status"] == "error"
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert call("GET", "/stats")[0] == 200
    assert call("GET", "/nothing")[0] == 404
    assert call("POST", "/stats")[0] == 405
    status, doc, _ = call("GET", "/openapi.json", None)  # public
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/v1/clients", "/api/v1/clients/{id}", "/api/v1/retained", "/api/v1/stats",
                 "/api/v1/clients/{id}/subscriptions", "/api/v1/retained/{topic}"):  # fmt: skip
        assert path in doc["paths"]


def test_clients_subscriptions_and_kick(api, clients):
    _, ports, call = api
    made = []
    for name in ("dev-1", "dev-2", "dev-3", "other"):
        c = clients(name, 5)
        assert c.connect(ports["tcp"]) == 0
        made.append(c)
    made[0].subscribe("a/#", "$share/g/b/+", qos=1)
    status, page, _ = call("GET", "/clients?prefix=dev-&limit=2")
    assert status == 200 and page["total"] == 3
    assert [c["client_id"] for c in page["clients"]] == ["dev-1", "dev-2"]
    assert page["next"] == "dev-2"
    _, page2, _ = call("GET", "/clients?prefix=dev-&limit=2&after=dev-2")
    assert [c["client_id"] for c in page2["clients"]] == ["dev-3"] and page2["next"] is None
    status, one, _ = call("GET", "/clients/dev-1")
    assert status == 200 and one["connected"] and one["protocol"] == "mqtt5"
    assert one["remote_addr"].startswith("127.0.0.1:") and one["subscriptions"] == 2
    status, subs, _ = call("GET", "/clients/dev-1/subscriptions")
    assert [s["topic_filter"] for s in subs["subscriptions"]] == ["$share/g/b/+", "a/#"]
    assert call("GET", "/clients/nobody")[0] == 404
    assert call("GET", "/clients/nobody/subscriptions")[0] == 404
    assert call("DELETE", "/clients/nobody")[0] == 404
    assert call("GET", "/clients?limit=0")[0] == 400
    # kick: the MQTT 5 client gets DISCONNECT 0x98
    status, body, _ = call("DELETE", "/clients/dev-2")
    assert status == 200 and body["disconnected"]
    assert made[1].disconnects.get(timeout=5) == 0x98
    # a raw MQTT 5 client sees the packet itself
    with RawClient((HOST, ports["tcp"]), version=5) as raw:
        assert raw.connect("a/b c", clean=True).reason_code == 0
        quoted = urllib.parse.quote("a/b c", safe="")
        assert call("DELETE", f"/clients/{quoted}")[0] == 200
        pkt = raw.recv()
        assert (pkt.name, pkt.reason_code) == ("DISCONNECT", 0x98)


def test_retained_and_stats(api, clients):
    _, ports, call = api
    c = clients("ret", 5)
    assert c.connect(ports["tcp"]) == 0
    c.publish("r/1", b"one", qos=1, retain=True)
    c.publish("r/2/x", b"two", qos=1, retain=True)
    c.publish("s/1", b"three", qos=1, retain=True)
    status, body, _ = call("GET", "/retained?filter=" + urllib.parse.quote("r/#"))
    assert status == 200 and [m["topic"] for m in body["retained"]] == ["r/1", "r/2/x"]
    assert body["retained"][0]["payload"] == "b25l" and body["retained"][0]["payload_size"] == 3
    assert call("GET", "/retained?filter=a/%23/b")[0] == 400
    assert call("DELETE", "/retained/r/2/x")[0] == 200
    assert call("DELETE", "/retained/r/2/x")[0] == 404
    _, body, _ = call("GET", "/retained")
    assert [m["topic"] for m in body["retained"]] == ["r/1", "s/1"]
    status, stats, _ = call("GET", "/stats")
    assert status == 200
    assert stats["clients"]["connected"] == 1 and stats["retained"] == 2
    assert stats["counters"]["publish_received"] >= 3
    assert stats["publish_by_qos"]["received"][1] == 3


def test_reload_over_http(api, tmp_path):
    b, _, call = api
    status, body, _ = call("POST", "/reload")
    assert status == 200 and body["status"] == "ok"
    assert wait_until(lambda: "configuration reloaded" in b.logs())
    cfg = b.workdir / "fluxmq.yaml"
    good = cfg.read_text()
    cfg.write_text(good + "broker: {max_qos: 7}\n")
    status, body, _ = call("POST", "/reload")
    assert status == 400 and "max_qos" in body["error"]
    assert "reload refused" in b.logs()
    cfg.write_text(good)
    assert call("GET", "/stats")[0] == 200
