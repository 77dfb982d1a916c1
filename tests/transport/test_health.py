"""The health endpoints (`server.health_addr`): /health, /ready, /cluster/status, with curl."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading

import pytest

from fluxmq.transport.tcp import TCPListener
from tests.brokerproc import free_port
from tests.protocol.rawmqtt import V5, RawClient
from tests.transport.conftest import HOST, wait_until
from tests.transport.inproc import InProcessNode

pytestmark = pytest.mark.timeout(60)


def get(port: int, path: str, *args: str) -> tuple[int, dict]:
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", *args,
         f"http://{HOST}:{port}{path}"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.decode().rpartition("\n")
    return int(code), json.loads(body) if body else {}


def test_health_ready_and_cluster_status(mqtt_broker):
    _, ports = mqtt_broker({"ws": {}}, config={"cluster": {"node_id": "node-7"}}, health=True)
    port = ports["health"]
    assert get(port, "/health") == (200, {"status": "healthy"})
    assert get(port, "/ready") == (200, {"status": "ready"})
    status, body = get(port, "/cluster/status")
    assert status == 200
    assert body["node_id"] == "node-7"
    assert body["mode"] == "standalone"
    assert body["sessions"] == 0
    assert body["listeners"] == {"tcp": True, "websocket": True}
    c = RawClient.connected((HOST, ports["tcp"]), "health-c", version=V5)
    try:
        assert get(port, "/cluster/status")[1]["sessions"] == 1
    finally:
        c.close()
    assert wait_until(lambda: get(port, "/cluster/status")[1]["sessions"] == 0)


def test_other_methods_and_paths(mqtt_broker):
    _, ports = mqtt_broker(health=True)
    port = ports["health"]
    assert get(port, "/health", "-X", "POST")[0] == 405
    assert get(port, "/ready", "-X", "DELETE")[0] == 405
    assert get(port, "/nothing-here")[0] == 404


def test_health_can_be_turned_off(broker_factory):
    port = free_port()
    broker_factory({"server": {"health_addr": f"{HOST}:{port}", "health_enabled": False}})
    with pytest.raises(OSError), socket.create_connection((HOST, port), timeout=1):
        pass


def test_ready_is_503_until_every_listener_is_bound(tmp_path, monkeypatch):
    gate = threading.Event()
    original = TCPListener.start

    async def slow_start(self):
        while not gate.is_set():
            await asyncio.sleep(0.02)
        await original(self)

    monkeypatch.setattr(TCPListener, "start", slow_start)
    health, mqtt_port = free_port(), free_port()
    cfg = {
        "server": {"tcp": {"plain": {"addr": f"{HOST}:{mqtt_port}"}},
                   "websocket": {"plain": {"addr": ""}}, "http": {"plain": {"addr": ""}},
                   "coap": {"plain": {"addr": ""}}, "health_addr": f"{HOST}:{health}"},
        "log": {"level": "warning"},
    }  # fmt: skip
    with InProcessNode(tmp_path, cfg, wait_started=False) as n:
        assert wait_until(lambda: _answers(health), 10)
        status, body = get(health, "/ready")
        assert status == 503
        assert body["status"] == "not_ready"
        assert body["details"]["listeners"] == {"tcp": False}
        assert body["details"]["state"] == "starting"
        assert get(health, "/health")[0] == 200  # alive while starting
        gate.set()
        n.wait()
        assert get(health, "/ready") == (200, {"status": "ready"})


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False
