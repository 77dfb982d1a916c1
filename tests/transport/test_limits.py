"""Connection limits and rate limits: `max_connections` per listener, `ratelimit.connection`
(per source IP: TCP closed, WebSocket 429), `ratelimit.message` (v5 PUBACK/PUBREC 0x97, v3.1.1 disconnect),
`ratelimit.subscribe` (v5 0x97, v3.1.1 0x80), and the release of limiter state."""

from __future__ import annotations

import socket
import time

import pytest
from fluxmq._speedups.ratelimit import KeyedLimiter, TokenBucket
from websockets.exceptions import InvalidStatus

from fluxmq.transport.limits import IPLimiter
from tests.protocol.rawmqtt import V5, V311, ConnectionClosed, PacketType, RawClient, connect
from tests.transport.conftest import HOST
from tests.transport.wsmqtt import WSMQTT

pytestmark = pytest.mark.timeout(60)

RATE = {"ratelimit": {"enabled": True}}


def _limits(**sections) -> dict:
    return {"ratelimit": {"enabled": True, **sections}}


# -- max_connections -----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "code"), [(V5, 0x9F), (V311, 0x03)])
def test_tcp_max_connections(mqtt_broker, version, code):
    _, ports = mqtt_broker(config={"server": {"tcp": {"plain": {"max_connections": 2}}}})
    a = RawClient.connected((HOST, ports["tcp"]), f"mc-a-{version}", version=version)
    b = RawClient.connected((HOST, ports["tcp"]), f"mc-b-{version}", version=version)
    c = RawClient((HOST, ports["tcp"]), version=version)
    try:
        assert c.connect(f"mc-c-{version}").reason_code == code
        c.wait_closed()
        a.close()
        time.sleep(0.3)
        d = RawClient.connected((HOST, ports["tcp"]), f"mc-d-{version}", version=version)
        d.close()
    finally:
        for x in (a, b, c):
            x.close()


@pytest.mark.parametrize(("version", "code"), [(V5, 0x9F), (V311, 0x03)])
def test_websocket_max_connections(mqtt_broker, version, code):
    _, ports = mqtt_broker({"ws": {"max_connections": 1}})
    a = WSMQTT(ports["ws"], version=version)
    b = WSMQTT(ports["ws"], version=version)
    try:
        a.send(connect("ws-mc-a", version=version))
        assert a.expect(PacketType.CONNACK).reason_code == 0
        b.send(connect("ws-mc-b", version=version))
        assert b.expect(PacketType.CONNACK).reason_code == code
        close_code, _ = b.wait_close()
        assert close_code == 1008
    finally:
        a.close()
        b.close()


# -- ratelimit.connection -------------------------------------------------------------------------


# The test set-up's own probes (is the port open yet?) are connections too: each test waits for
# its bucket to refill first.


def test_tcp_connection_rate_per_ip_closes_before_mqtt(mqtt_broker):
    _, ports = mqtt_broker(config=_limits(connection={"rate": 2, "burst": 2}))
    time.sleep(1.1)
    for i in range(2):
        RawClient.connected((HOST, ports["tcp"]), f"cr-{i}", version=V5).close()
    c = RawClient((HOST, ports["tcp"]), version=V5)
    c.send(connect("cr-over"))
    with pytest.raises((ConnectionClosed, OSError, AssertionError)):
        c.expect(PacketType.CONNACK, timeout=3)
    c.close()


def test_websocket_connection_rate_answers_429(mqtt_broker):
    _, ports = mqtt_broker({"ws": {}}, config=_limits(connection={"rate": 1, "burst": 1}))
    time.sleep(1.5)
    WSMQTT(ports["ws"]).close()
    with pytest.raises(InvalidStatus) as info:
        WSMQTT(ports["ws"])
    assert info.value.response.status_code == 429


def test_connection_rate_is_off_unless_the_master_switch_is_on(mqtt_broker):
    _, ports = mqtt_broker(
        config={"ratelimit": {"enabled": False, "connection": {"rate": 0.01, "burst": 1}}}
    )
    for i in range(3):
        RawClient.connected((HOST, ports["tcp"]), f"off-{i}", version=V5).close()


def test_connection_rate_can_be_turned_off_alone(mqtt_broker):
    _, ports = mqtt_broker(config=_limits(connection={"enabled": False, "rate": 0.01, "burst": 1}))
    for i in range(3):
        RawClient.connected((HOST, ports["tcp"]), f"off1-{i}", version=V5).close()


# -- ratelimit.message ---------------------------------------------------------------------------


def test_message_rate_v5_answers_0x97_and_drops_qos0(mqtt_broker):
    _, ports = mqtt_broker(config=_limits(message={"rate": 0.01, "burst": 3}))
    watcher = RawClient.connected((HOST, ports["tcp"]), "mr-watch", version=V5)
    pub = RawClient.connected((HOST, ports["tcp"]), "mr-pub", version=V5)
    try:
        watcher.subscribe("mr/#", qos=1)
        assert pub.publish("mr/1", b"a", qos=1).reason_code == 0
        pub.publish("mr/0", b"b", qos=0)
        assert pub.publish("mr/2", b"c", qos=2).type == PacketType.PUBCOMP
        got = [watcher.expect(PacketType.PUBLISH).payload for _ in range(3)]
        assert sorted(got) == [b"a", b"b", b"c"]
        # the bucket is empty now
        assert pub.publish("mr/1", b"x", qos=1).reason_code == 0x97
        rec = pub.publish("mr/2", b"y", qos=2)
        assert (rec.type, rec.reason_code) == (PacketType.PUBREC, 0x97)
        pub.publish("mr/0", b"z", qos=0)
        watcher.expect_nothing(0.5)  # none of the three was delivered
        pub.ping()  # and the publisher is still connected
    finally:
        watcher.close()
        pub.close()


def test_message_rate_v311_disconnects(mqtt_broker):
    _, ports = mqtt_broker(config=_limits(message={"rate": 0.01, "burst": 2}))
    pub = RawClient.connected((HOST, ports["tcp"]), "mr3-pub", version=V311)
    try:
        pub.publish("mr3/1", b"a", qos=1)
        pub.publish("mr3/2", b"b", qos=0)
        pub.publish("mr3/3", b"c", qos=1, wait=False)
        pub.wait_closed(3)
    finally:
        pub.close()


def test_message_rate_applies_over_websocket_too(mqtt_broker):
    _, ports = mqtt_broker({"ws": {}}, config=_limits(message={"rate": 0.01, "burst": 1}))
    from tests.protocol.rawmqtt import publish

    c = WSMQTT(ports["ws"])
    try:
        c.send(connect("mr-ws"))
        c.expect(PacketType.CONNACK)
        c.send(publish("mrws/1", b"a", qos=1, packet_id=1))
        assert c.expect(PacketType.PUBACK).reason_code == 0x10  # no subscribers
        c.send(publish("mrws/1", b"b", qos=1, packet_id=2))
        assert c.expect(PacketType.PUBACK).reason_code == 0x97
    finally:
        c.close()


def test_message_rate_refills(mqtt_broker):
    _, ports = mqtt_broker(config=_limits(message={"rate": 20, "burst": 1}))
    pub = RawClient.connected((HOST, ports["tcp"]), "refill", version=V5)
    try:
        assert pub.publish("r/1", b"a", qos=1).reason_code == 0x10
        assert pub.publish("r/1", b"b", qos=1).reason_code == 0x97
        time.sleep(0.2)  # 20 a second: at least one token back
        assert pub.publish("r/1", b"c", qos=1).reason_code == 0x10
    finally:
        pub.close()


def test_message_limiter_goes_with_the_connection(mqtt_broker):
    _, ports = mqtt_broker(config=_limits(message={"rate": 0.01, "burst": 1}))
    a = RawClient.connected((HOST, ports["tcp"]), "fresh", version=V5)
    assert a.publish("f/1", b"a", qos=1).reason_code == 0x10
    assert a.publish("f/1", b"b", qos=1).reason_code == 0x97
    a.disconnect()
    b = RawClient.connected((HOST, ports["tcp"]), "fresh", version=V5)
    try:
        assert b.publish("f/1", b"c", qos=1).reason_code == 0x10
    finally:
        b.close()


# -- ratelimit.subscribe -------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "code"), [(V5, 0x97), (V311, 0x80)])
def test_subscribe_rate_refuses_each_filter_over_the_limit(mqtt_broker, version, code):
    _, ports = mqtt_broker(config=_limits(subscribe={"rate": 0.01, "burst": 2}))
    c = RawClient.connected((HOST, ports["tcp"]), f"sr-{version}", version=version)
    try:
        ack = c.subscribe([("s/1", 1), ("s/2", 0), ("s/3", 1)])
        assert ack.reason_codes == [1, 0, code]
        ack = c.subscribe([("s/4", 0)])
        assert ack.reason_codes == [code]
        # the granted subscriptions work, the refused one does not exist
        c.publish("s/3", b"no", qos=0)
        c.publish("s/1", b"yes", qos=0)
        assert c.expect(PacketType.PUBLISH).payload == b"yes"
    finally:
        c.close()


# -- the limiters themselves ------------------------------------------------------------------------


def test_token_bucket():
    b = TokenBucket(10, 2)
    t = b.stamp
    assert b.allow(t) and b.allow(t)
    assert not b.allow(t)
    assert not b.allow(t + 0.05)  # half a token
    assert b.allow(t + 0.2)
    assert b.allow(t + 10) and b.allow(t + 10)  # refilled to the burst, no more
    assert not b.allow(t + 10)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_keyed_limiter_forgets_full_buckets():
    k = KeyedLimiter(1, 2)
    assert k.allow("a", 100.0) and k.allow("b", 100.0) and k.allow("b", 100.0)
    assert not k.allow("b", 100.0)
    assert len(k) == 2
    assert k.sweep(100.5) == 0  # neither full yet
    assert k.sweep(101.0) == 1  # "a" had one token left: full after a second
    assert "a" not in k and "b" in k
    assert k.sweep(102.0) == 1
    assert len(k) == 0


def test_ip_limiter_releases_state_of_addresses_that_went_away():
    lim = IPLimiter(1000.0, 5, cleanup_interval=0.05)
    for i in range(100):
        assert lim.allow(f"10.0.0.{i}")
    assert len(lim) == 100
    time.sleep(0.1)
    assert lim.allow("10.0.1.1")  # the sweep runs on the next check after the interval
    assert len(lim) == 1


def test_tcp_rate_refusal_leaves_nothing_behind(mqtt_broker):
    """Refused connections do not count against max_connections."""
    _, ports = mqtt_broker(
        config={
            **_limits(connection={"rate": 1, "burst": 1}),
            "server": {"tcp": {"plain": {"max_connections": 1}}},
        }
    )
    time.sleep(1.1)
    a = RawClient.connected((HOST, ports["tcp"]), "only", version=V5)
    try:
        for _ in range(3):
            with socket.create_connection((HOST, ports["tcp"]), timeout=3) as s:
                s.settimeout(3)
                assert s.recv(10) == b""  # closed at once
        a.ping()
    finally:
        a.close()
