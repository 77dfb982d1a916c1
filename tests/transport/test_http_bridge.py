"""The HTTP bridge (`server.http.plain`): curl for every answer, raw sockets for keep-alive,
pipelining and misbehaving clients, MQTT subscribers (mosquitto_sub, paho) on the other side."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokerproc import free_port
from tests.transport.conftest import HOST, wait_until
from tests.transport.inproc import InProcessNode

pytestmark = pytest.mark.timeout(60)


def curl(port: int, *args: str, path: str = "/publish", body: str | None = None,
         content_type: str | None = "application/json") -> tuple[int, str, str]:  # fmt: skip
    """(status, body, headers) of one curl request to the bridge."""
    cmd = ["curl", "-sS", "--max-time", "5", "-D", "-", "-o", "-", *args]
    if content_type is not None:
        cmd += ["-H", f"Content-Type: {content_type}"]
    if body is not None:
        cmd += ["--data-binary", body]
    cmd.append(f"http://{HOST}:{port}{path}")
    r = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    assert r.returncode == 0, r.stderr
    head, _, text = r.stdout.decode().partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    return status, text, head


@pytest.fixture
def bridge(mqtt_broker):
    return mqtt_broker({"http": {}}, config={"broker": {"max_message_size": 4096}})


def test_publish_reaches_an_mqtt_subscriber(bridge, mosquitto):
    _, ports = bridge
    sub = mosquitto.sub_ready("-p", str(ports["tcp"]), "-t", "h/#", "-C", "2", "-W", "8",
                              "-F", "%t %x")  # fmt: skip
    status, body, head = curl(ports["http"], body='{"topic": "h/plain", "payload": "héllo"}')
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert "Content-Type: application/json" in head
    status, body, _ = curl(ports["http"], body=json.dumps(
        {"topic": "h/b64", "payload": "AAEC/w==", "encoding": "base64", "qos": 1}))  # fmt: skip
    assert status == 200, body
    assert mosquitto.payloads(sub) == ["h/plain " + "héllo".encode().hex(), "h/b64 000102ff"]


def test_qos_retain_and_properties_reach_an_mqtt5_subscriber(bridge):
    _, ports = bridge
    body = {
        "topic": "h/props", "payload": "21.5", "qos": 1, "retain": True,
        "properties": {
            "content_type": "text/plain", "response_topic": "h/replies",
            "correlation_data": "req-7", "message_expiry_interval": 60,
            "payload_format_indicator": 1, "user_properties": {"unit": "C", "room": "7"},
        },
    }  # fmt: skip
    assert curl(ports["http"], body=json.dumps(body))[0] == 200
    got: list[mqtt.MQTTMessage] = []
    ev = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="http-props", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: (got.append(m), ev.set())
    c.on_connect = lambda cl, *a: cl.subscribe("h/props", qos=1)
    c.connect(HOST, ports["tcp"])
    c.loop_start()
    try:
        assert ev.wait(5), "the retained message did not arrive"
        m = got[0]
        assert (m.payload, m.qos, m.retain) == (b"21.5", 1, True)
        p = m.properties
        assert p.ContentType == "text/plain"
        assert p.ResponseTopic == "h/replies"
        assert p.CorrelationData == b"req-7"
        assert p.PayloadFormatIndicator == 1
        assert 55 <= p.MessageExpiryInterval <= 60
        assert sorted(p.UserProperty) == [("room", "7"), ("unit", "C")]
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "body"),
        ("[1, 2]", "body"),
        ('{"payload": "x"}', "topic"),
        ('{"topic": ""}', "topic"),
        ('{"topic": 5}', "topic"),
        ('{"topic": "a/+/b"}', "topic"),
        ('{"topic": "a/#"}', "topic"),
        (json.dumps({"topic": "t" * 65536}), "topic"),
        ('{"topic": "a", "qos": 3}', "qos"),
        ('{"topic": "a", "qos": "1"}', "qos"),
        ('{"topic": "a", "qos": true}', "qos"),
        ('{"topic": "a", "retain": "yes"}', "retain"),
        ('{"topic": "a", "payload": 5}', "payload"),
        ('{"topic": "a", "payload": "%%%", "encoding": "base64"}', "payload"),
        ('{"topic": "a", "encoding": "hex"}', "encoding"),
        ('{"topic": "a", "colour": "red"}', "colour"),
        ('{"topic": "a", "properties": {"content_type": 1}}', "properties.content_type"),
        ('{"topic": "a", "properties": {"response_topic": "r/#"}}', "properties.response_topic"),
        ('{"topic": "a", "properties": {"user_properties": {"k": 1}}}',
         "properties.user_properties.k"),
        ('{"topic": "a", "properties": {"message_expiry_interval": -1}}',
         "properties.message_expiry_interval"),
        ('{"topic": "a", "properties": {"nope": 1}}', "properties.nope"),
        ('{"topic": "a", "payload": "/w==", "encoding": "base64", '
         '"properties": {"payload_format_indicator": 1}}', "properties.payload_format_indicator"),
    ],
)  # fmt: skip
def test_bad_bodies_get_400_naming_the_field(bridge, body, field):
    _, ports = bridge
    status, text, _ = curl(ports["http"], body=body)
    assert status == 400, text
    answer = json.loads(text)
    assert answer["status"] == "error"
    assert answer["error"].startswith(field + ":"), answer


def test_other_methods_get_405(bridge):
    _, ports = bridge
    for method in ("GET", "PUT", "DELETE"):
        status, text, head = curl(ports["http"], "-X", method)
        assert status == 405, method
        assert "Allow: POST" in head
        assert json.loads(text)["status"] == "error"


def test_too_large_gets_413(bridge):
    _, ports = bridge  # broker.max_message_size: 4096
    ok = curl(ports["http"], body=json.dumps({"topic": "big", "payload": "x" * 3000}))
    assert ok[0] == 200
    status, text, _ = curl(ports["http"], body=json.dumps({"topic": "big", "payload": "x" * 4097}))
    assert status == 413, text
    assert "max_message_size" in json.loads(text)["error"]
    # a body far beyond the limit is refused from its Content-Length, before it is read
    huge = json.dumps({"topic": "big", "payload": "x" * 100000})
    status, _, head = curl(ports["http"], body=huge)
    assert status == 413
    assert "Connection: close" in head


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_gets_415(bridge, content_type):
    _, ports = bridge
    status, text, _ = curl(ports["http"], body='{"topic": "a"}', content_type=content_type)
    assert status == 415, text


def test_json_with_charset_is_json(bridge):
    _, ports = bridge
    status, _, _ = curl(ports["http"], body='{"topic": "a"}',
                        content_type="application/json; charset=utf-8")  # fmt: skip
    assert status == 200


def test_sys_topics_are_refused(bridge):
    _, ports = bridge
    status, text, _ = curl(ports["http"], body='{"topic": "$SYS/broker/x"}')
    assert status == 403, text


def test_health_and_unknown_paths(bridge):
    _, ports = bridge
    status, text, _ = curl(ports["http"], path="/health", content_type=None)
    assert (status, json.loads(text)) == (200, {"status": "healthy"})
    assert curl(ports["http"], path="/nope", content_type=None)[0] == 404


def _request(body: str, close: bool = False) -> bytes:
    data = body.encode()
    return (
        f"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode() + data


def _read_responses(sock: socket.socket, n: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Read exactly n HTTP responses (Content-Length framed) from sock."""
    sock.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(out)} responses"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length")))  # fmt: skip
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        out.append((int(head.split(b" ")[1]), rest[:length]))
        buf = rest[length:]
    return out


def test_keep_alive_and_pipelining(bridge, mosquitto):
    _, ports = bridge
    sub = mosquitto.sub_ready("-p", str(ports["tcp"]), "-t", "pipe/#", "-C", "4", "-W", "8")
    with socket.create_connection((HOST, ports["http"]), timeout=5) as s:
        # three requests in one write: three answers, in order
        s.sendall(_request('{"topic": "pipe/1", "payload": "1"}')
                  + _request('{"topic": "bad/#"}')
                  + _request('{"topic": "pipe/2", "payload": "2"}'))  # fmt: skip
        answers = _read_responses(s, 3)
        assert [a[0] for a in answers] == [200, 400, 200]
        # the connection stays open for more
        time.sleep(0.2)
        s.sendall(_request('{"topic": "pipe/3", "payload": "3"}'))
        assert _read_responses(s, 1)[0][0] == 200
        # a request split into tiny pieces still works
        raw = _request('{"topic": "pipe/4", "payload": "4"}', close=True)
        for i in range(0, len(raw), 7):
            s.sendall(raw[i : i + 7])
        assert _read_responses(s, 1)[0][0] == 200
        assert s.recv(10) == b""  # Connection: close honoured
    assert mosquitto.payloads(sub) == ["1", "2", "3", "4"]


def test_a_slow_client_does_not_block_others(bridge):
    _, ports = bridge
    slow = socket.create_connection((HOST, ports["http"]), timeout=5)
    try:
        raw = _request('{"topic": "slow", "payload": "s"}')
        slow.sendall(raw[:20])  # half a request line, then nothing for a while
        t0 = time.monotonic()
        for i in range(5):
            assert curl(ports["http"], body=f'{{"topic": "fast/{i}"}}')[0] == 200
        assert time.monotonic() - t0 < 3
        slow.sendall(raw[20:])
        assert _read_responses(slow, 1)[0][0] == 200
    finally:
        slow.close()


def test_a_malformed_client_gets_400_and_others_carry_on(bridge):
    _, ports = bridge
    with socket.create_connection((HOST, ports["http"]), timeout=5) as s:
        s.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 400 ")
        s.settimeout(5)
        assert s.recv(10) == b""  # closed
    assert curl(ports["http"], body='{"topic": "after"}')[0] == 200


def test_an_incomplete_request_times_out_with_408(mqtt_broker):
    _, ports = mqtt_broker({"http": {"read_timeout": "1s"}})
    with socket.create_connection((HOST, ports["http"]), timeout=5) as s:
        s.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert 0.5 < time.monotonic() - t0 < 4


def test_http_publishes_are_rate_limited_per_address(mqtt_broker):
    _, ports = mqtt_broker(
        {"http": {}},
        config={"ratelimit": {"enabled": True, "message": {"rate": 0.01, "burst": 2}}},
    )
    codes = [curl(ports["http"], body='{"topic": "rl"}')[0] for _ in range(4)]
    assert codes == [200, 200, 429, 429]


def test_publishes_go_through_the_authorisation_hook(tmp_path):
    port = free_port()
    cfg = {
        "server": {"tcp": {"plain": {"addr": f"{HOST}:{free_port()}"}},
                   "websocket": {"plain": {"addr": ""}},
                   "http": {"plain": {"addr": f"{HOST}:{port}"}}, "health_addr": ""},
        "log": {"level": "warning"},
    }  # fmt: skip
    with InProcessNode(tmp_path, cfg) as n:
        assert curl(port, body='{"topic": "open/1"}')[0] == 200
        status, text, _ = curl(port, body='{"topic": "denied/1"}')
        assert status == 403, text
        assert wait_until(lambda: len(n.hooks.publish_checks) == 2)
        assert n.hooks.publish_checks == [
            ("http:127.0.0.1", None, "open/1"),
            ("http:127.0.0.1", None, "denied/1"),
        ]
