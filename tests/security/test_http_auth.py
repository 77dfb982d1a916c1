"""The HTTP authentication callout (`auth.http`): a real local HTTP server answers allow, deny,
allow with an ACL, an error or nothing; answers are cached; failures deny by default."""

from __future__ import annotations

import base64
import time

import pytest

from tests.brokerproc import free_port
from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import HOST, http, start

pytestmark = pytest.mark.fluxmq_only


def _answer(path, body):
    user, pw = body.get("username"), body.get("password")
    if user == "slow":
        time.sleep(3)
    if user == "broken":
        return 500, {"error": "boom"}
    if user == "alice" and pw == "ok":
        return 200, {"result": "allow"}
    if user == "limited" and pw == "ok":
        return 200, {"result": "allow", "acl": [{"access": "readwrite", "topic": "own/%u/#"}]}
    if user == "forbidden":
        return 403, {}
    return 200, {"result": "deny"}


def _connect(port, cid, user, pw, version=5):
    with RawClient((HOST, port), version=version) as c:
        return c.connect(cid, username=user, password=pw).reason_code


def test_callout_decides(broker_factory, recorder, clients):
    r = recorder(_answer)
    _, ports = start(broker_factory, {"auth": {"http": {"url": r.url + "/auth", "timeout": "1s",
                                                        "headers": {"X-Key": "k1"}}}}, http=True)  # fmt: skip
    port = ports["tcp"]
    assert _connect(port, "c1", "alice", b"ok") == 0
    assert _connect(port, "c2", "alice", b"bad") == 0x86
    assert _connect(port, "c3", "alice", b"bad", version=4) == 0x04
    assert _connect(port, "c4", "forbidden", b"x") == 0x86
    assert _connect(port, "c5", "broken", b"x") == 0x87  # failure: fail closed
    assert _connect(port, "c6", "broken", b"x", version=4) == 0x05
    assert _connect(port, "c7", "slow", b"x") == 0x87  # timeout
    path, body, headers = r.posts[0]
    assert path == "/auth" and headers.get("X-Key") == "k1"
    assert body["client_id"] == "c1" and body["password"] == "ok"
    assert body["remote_addr"].startswith("127.0.0.1:") and body["protocol"] == "mqtt5"
    # The answer for c1 is cached: connecting again asks nobody.
    n = len(r.posts)
    assert _connect(port, "c1", "alice", b"ok") == 0
    assert len(r.posts) == n
    # An ACL from the callout applies to that client only.
    lim = clients("lim", 5)
    assert lim.connect(port, "limited", "ok") == 0
    assert lim.subscribe("own/limited/#", "other/#") == [1, 0x87]
    assert lim.publish("own/limited/x", qos=1) == 0
    assert lim.publish("other/x", qos=1) == 0x87
    # The HTTP bridge goes through the same callout (asynchronously).
    url = f"http://{HOST}:{ports['http']}/publish"

    def basic(u, p):
        return {"Authorization": "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()}

    assert http("POST", url, {"topic": "x"}, basic("alice", "ok"))[0] == 200
    assert http("POST", url, {"topic": "x"}, basic("alice", "no"))[0] == 401


def test_dead_callout_fails_closed_or_open(broker_factory):
    dead = f"http://{HOST}:{free_port()}/auth"
    _, ports = start(broker_factory, {"auth": {"http": {"url": dead}}})
    assert _connect(ports["tcp"], "d1", "alice", b"ok") == 0x87
    _, ports2 = start(broker_factory, {"auth": {"http": {"url": dead, "on_error": "allow"}}})
    assert _connect(ports2["tcp"], "d2", "alice", b"ok") == 0
