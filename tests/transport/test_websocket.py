"""MQTT over WebSocket (`server.websocket.plain`): paho-mqtt's websocket transport, raw frames
from the `websockets` client, and the TCP clients of Mosquitto on the other side."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from websockets.exceptions import InvalidStatus

from tests.protocol.rawmqtt import (
    V5,
    V311,
    PacketType,
    RawClient,
    Will,
    connect,
    pingreq,
    publish,
    subscribe,
)
from tests.transport.conftest import HOST
from tests.transport.wsmqtt import WSMQTT

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ws_broker(mqtt_broker):
    return mqtt_broker({"ws": {}})


def _paho(port: int, client_id: str, version=mqtt.MQTTv311, path="/mqtt", **tls) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, transport="websockets",
                    protocol=version)  # fmt: skip
    c.ws_set_options(path=path)
    if tls:
        c.tls_set(**tls)
    return c


class PahoWS:
    """A paho websocket client with its network loop in a thread, recording what it gets."""

    def __init__(self, port, client_id, version=mqtt.MQTTv311, path="/mqtt", **tls) -> None:
        self.c = _paho(port, client_id, version, path, **tls)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.published = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.got = threading.Event()
        self.rc = None
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_publish = lambda *a: self.published.set()
        self.c.on_message = self._on_message
        self.c.connect(HOST, port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(5), "no CONNACK over WebSocket"

    def _on_connect(self, client, userdata, flags, rc, props=None):
        self.rc = rc
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.append(msg)
        self.got.set()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v3.1.1", "v5"])
def test_paho_websocket_and_mosquitto_tcp_exchange_messages(ws_broker, mosquitto, version):
    _, ports = ws_broker
    p = PahoWS(ports["ws"], f"paho-ws-{version}", version)
    try:
        assert not p.rc.is_failure if hasattr(p.rc, "is_failure") else p.rc == 0
        p.c.subscribe("ws/in/#", qos=1)
        assert p.subscribed.wait(5)
        r = mosquitto.pub("-p", str(ports["tcp"]), "-t", "ws/in/1", "-m", "from tcp", "-q", "1")
        assert r.returncode == 0, r.stderr
        assert p.got.wait(5), "the WebSocket subscriber got nothing from the TCP publisher"
        assert (p.messages[0].topic, p.messages[0].payload) == ("ws/in/1", b"from tcp")

        sub = mosquitto.sub_ready("-p", str(ports["tcp"]), "-t", "ws/out", "-C", "1", "-W", "8")
        p.c.publish("ws/out", b"from ws", qos=1)
        assert mosquitto.payloads(sub) == ["from ws"]
    finally:
        p.close()


def test_subprotocol_negotiation(ws_broker):
    _, ports = ws_broker
    for offered, chosen in [
        (["mqtt"], "mqtt"),
        (["mqttv3.1"], "mqttv3.1"),
        (["mqttv3.1", "mqtt"], "mqtt"),
        (["chat", "mqtt"], "mqtt"),
        (None, None),
    ]:
        c = WSMQTT(ports["ws"], subprotocols=offered, version=V311)
        try:
            assert c.subprotocol == chosen, offered
            c.send(connect(f"sp-{chosen}", version=V311))
            assert c.expect(PacketType.CONNACK).reason_code == 0
        finally:
            c.close()


def test_several_packets_in_one_frame_and_one_packet_over_several_frames(ws_broker):
    _, ports = ws_broker
    c = WSMQTT(ports["ws"])
    try:
        # CONNECT, SUBSCRIBE and a PUBLISH to itself in a single binary frame.
        c.send(connect("frames", version=V5) + subscribe(1, "frames/#", qos=1)
               + publish("frames/a", b"one", qos=1, packet_id=2))  # fmt: skip
        assert c.expect(PacketType.CONNACK).reason_code == 0
        got = {c.recv_packet().type for _ in range(3)}
        assert got == {PacketType.SUBACK, PacketType.PUBACK, PacketType.PUBLISH}
        # One PUBLISH split over a fragmented message (three frames) ...
        pkt = publish("frames/b", b"x" * 5000, qos=0)
        c.send_fragments([pkt[:3], pkt[3:2000], pkt[2000:]])
        msg = c.expect(PacketType.PUBLISH)
        assert (msg.topic, msg.payload) == ("frames/b", b"x" * 5000)
        # ... and over two separate messages, the second also carrying a PINGREQ.
        pkt = publish("frames/c", b"y" * 300, qos=0)
        c.send(pkt[:100])
        c.send(pkt[100:] + pingreq())
        msg = c.expect(PacketType.PUBLISH)
        assert (msg.topic, msg.payload) == ("frames/c", b"y" * 300)
        c.expect(PacketType.PINGRESP)
    finally:
        c.close()


def test_websocket_ping_is_answered(ws_broker):
    _, ports = ws_broker
    c = WSMQTT(ports["ws"])
    try:
        c.send(connect("pinger"))
        c.expect(PacketType.CONNACK)
        pong = c.ws.ping(b"are you there")
        assert pong.wait(3), "no pong"
    finally:
        c.close()


def test_text_frame_is_refused_with_close_1003(ws_broker):
    _, ports = ws_broker
    c = WSMQTT(ports["ws"])
    c.send(connect("texter"))
    c.expect(PacketType.CONNACK)
    c.ws.send("hello")  # a text frame
    code, _ = c.wait_close()
    assert code == 1003


def test_malformed_mqtt_closes_with_1002(ws_broker):
    _, ports = ws_broker
    c = WSMQTT(ports["ws"])
    c.send(connect("bad"))
    c.expect(PacketType.CONNACK)
    c.send(bytes([0x00, 0x00]))  # packet type 0 is reserved
    code, packets = c.wait_close()
    assert code == 1002
    assert packets and packets[-1].type == PacketType.DISCONNECT


def test_client_close_ends_the_session_and_publishes_the_will(ws_broker):
    _, ports = ws_broker
    watcher = RawClient.connected((HOST, ports["tcp"]), "will-watcher", version=V5)
    try:
        watcher.subscribe("ws/will", qos=0)
        c = WSMQTT(ports["ws"])
        c.send(connect("will-ws", will=Will("ws/will", b"gone", 0)))
        c.expect(PacketType.CONNACK)
        c.ws.close(1000)  # a WebSocket close without MQTT DISCONNECT: the will goes
        msg = watcher.expect(PacketType.PUBLISH, timeout=5)
        assert (msg.topic, msg.payload) == ("ws/will", b"gone")
    finally:
        watcher.close()


def test_server_shutdown_sends_disconnect_then_close_1001(mqtt_broker):
    b, ports = mqtt_broker({"ws": {}})
    c = WSMQTT(ports["ws"])
    c.send(connect("shut"))
    c.expect(PacketType.CONNACK)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    code, packets = c.wait_close(10)
    stopper.join(20)
    assert code == 1001
    assert packets and packets[-1].type == PacketType.DISCONNECT
    assert packets[-1].reason_code == 0x8B


def test_permessage_deflate_is_negotiated_and_works(ws_broker):
    _, ports = ws_broker
    c = WSMQTT(ports["ws"], compression="deflate")
    plain = WSMQTT(ports["ws"], compression=None)
    try:
        ext = c.response_headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in ext
        assert "permessage-deflate" not in plain.response_headers.get(
            "Sec-WebSocket-Extensions", ""
        )
        c.send(connect("deflate"))
        c.expect(PacketType.CONNACK)
        plain.send(connect("no-deflate"))
        plain.expect(PacketType.CONNACK)
        c.send(subscribe(1, "z/#"))
        c.expect(PacketType.SUBACK)
        payload = b"compressible " * 2000
        plain.send(publish("z/1", payload))
        msg = c.expect(PacketType.PUBLISH)
        assert msg.payload == payload
        # the compressing client publishes, the plain one receives
        plain.send(subscribe(1, "y/#"))
        plain.expect(PacketType.SUBACK)
        c.send(publish("y/1", payload))
        assert plain.expect(PacketType.PUBLISH).payload == payload
    finally:
        c.close()
        plain.close()


def _status(port: int, **kw) -> int:
    try:
        c = WSMQTT(port, **kw)
    except InvalidStatus as exc:
        return exc.response.status_code
    c.close()
    return 101


def test_wrong_path_gets_404_and_query_strings_are_ignored(ws_broker):
    _, ports = ws_broker
    assert _status(ports["ws"], path="/other") == 404
    assert _status(ports["ws"], path="/") == 404
    assert _status(ports["ws"], path="/mqtt?token=x") == 101


def test_custom_path(mqtt_broker):
    _, ports = mqtt_broker({"ws": {"path": "/ws/mqtt"}})
    assert _status(ports["ws"], path="/mqtt") == 404
    assert _status(ports["ws"], path="/ws/mqtt") == 101


def test_origin_validation(mqtt_broker):
    _, ports = mqtt_broker(
        {
            "ws": {
                "allowed_origins": [
                    "https://app.example.com",
                    "http://localhost:3000",
                    "*.example.org",
                ]
            }
        }
    )
    port = ports["ws"]
    assert _status(port, origin="https://app.example.com") == 101
    assert _status(port, origin="https://APP.Example.com") == 101
    assert _status(port, origin="http://localhost:3000") == 101
    assert _status(port, origin="https://a.example.org") == 101
    assert _status(port, origin="https://deep.a.example.org") == 101
    assert _status(port, origin=None) == 101  # not a browser
    assert _status(port, origin="https://evil.example") == 403
    assert _status(port, origin="http://app.example.com") == 403  # scheme differs
    assert _status(port, origin="http://localhost:3001") == 403  # port differs
    assert _status(port, origin="https://example.org") == 403  # not a subdomain
    assert _status(port, origin="https://badexample.org") == 403


@pytest.mark.parametrize("allowed", [[], ["*"]], ids=["empty", "star"])
def test_empty_or_star_allows_every_origin(mqtt_broker, allowed):
    _, ports = mqtt_broker({"ws": {"allowed_origins": allowed}})
    assert _status(ports["ws"], origin="https://anything.example") == 101


def test_plain_http_request_is_not_upgraded(ws_broker):
    from tests.transport.conftest import http_request

    _, ports = ws_broker
    answer = http_request(ports["ws"], b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 426 ")


def test_websocket_handshake_timeout(mqtt_broker):
    import socket

    _, ports = mqtt_broker({"ws": {"read_timeout": "1s"}})
    with socket.create_connection((HOST, ports["ws"]), timeout=5) as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\n")  # and never the rest
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 0.5 < time.monotonic() - t0 < 4
