"""The HTTP bridge's 200 for a QoS 1 publish means the message is stored where storage is durable
(issue 4: "200 once the message is routed (and, for QoS>0, durably stored where storage is
durable)"): with `storage.fsync: always`, a broker killed right after the 200 still delivers the
message to a persistent subscriber after the restart."""

from __future__ import annotations

import json
import signal
import socket
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokerproc import free_port


def _persistent_subscriber(port: int, client_id: str, on_message, connected: threading.Event):
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    c.on_connect = lambda *a: connected.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _post(port: int, body: dict) -> int:
    data = json.dumps(body).encode()
    req = (
        f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_http_qos1_publish_acknowledged_then_kill9_is_delivered_after_restart(broker_factory):
    http_port = free_port()
    b = broker_factory(
        {
            "server": {"http": {"plain": {"addr": f"127.0.0.1:{http_port}"}}},
            "storage": {"type": "lmdb", "fsync": "always"},
        }
    )
    payloads = [f"m{i}" for i in range(20)]
    got: list = []
    done = threading.Event()

    def on_message(_c, _u, m) -> None:
        got.append(m.payload)
        if len(got) >= len(payloads):
            done.set()

    up = threading.Event()
    sub = _persistent_subscriber(b.port, "durable-sub", on_message, up)
    assert up.wait(5)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe("durable/#", qos=1)
    assert subscribed.wait(5)
    sub.loop_stop()
    sub.disconnect()  # offline persistent session: the message must be stored for it

    for p in payloads:
        assert _post(http_port, {"topic": "durable/x", "payload": p, "qos": 1}) == 200
    b.stop(signal.SIGKILL)
    b.start()

    up.clear()
    sub = _persistent_subscriber(b.port, "durable-sub", on_message, up)
    assert up.wait(5)
    assert done.wait(10), f"only {len(got)} of {len(payloads)} acknowledged messages arrived: {got}"
    sub.loop_stop()
    sub.disconnect()
    assert [g.decode() for g in got] == payloads
