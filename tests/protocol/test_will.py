"""Will Messages (MQTT 3.1.1 3.1.2.5-3.1.2.7; MQTT 5.0 3.1.2.5-3.1.2.7, 3.1.3.2, 3.14)."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable

import pytest

from tests.brokerproc import TARGET, BrokerProc
from tests.protocol import rawmqtt as r
from tests.protocol.conftest import QUIET, WAIT, MosquittoCli, PahoClient
from tests.protocol.rawmqtt import V5, V311, Packet, PacketType, Prop, RawClient, Will

VERSIONS = [pytest.param(V5, id="v5"), pytest.param(V311, id="v311")]
SE = Prop.SESSION_EXPIRY_INTERVAL
WDI = Prop.WILL_DELAY_INTERVAL
# see test_keepalive.py: Mosquitto 2.0.11 checks keep-alive on a ~5 s cadence
KEEPALIVE_SLACK = 9.0 if TARGET == "mosquitto" else 1.0
TIMER_SLACK = 1.5  # will delay / session expiry timers have second granularity in real brokers

RawOpen = Callable[..., RawClient]
RawConnect = Callable[..., RawClient]


def watcher(broker: BrokerProc, uid: str, raw_connect: RawConnect, qos: int = 2) -> RawClient:
    """A v5 subscriber to every will topic of this test (f"will/{uid}/#")."""
    w = raw_connect(broker, f"{uid}w")
    assert w.subscribe(f"will/{uid}/#", qos).reason_codes == [qos]
    return w


def expect_will(w: RawClient, topic: str, payload: bytes, timeout: float = WAIT) -> Packet:
    """The next packet on the watcher must be the will PUBLISH (acknowledged)."""
    p = w.expect(PacketType.PUBLISH, timeout)
    assert (p.topic, p.payload) == (topic, payload), p
    if p.qos:
        w.ack(p)
    return p


# -- when the will is published ---------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_will_published_on_network_close(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """3.1.1 [MQTT-3.1.2-8], 5.0 [MQTT-3.1.2-8]: the Will Message is published when the Network
    Connection closes without a DISCONNECT (here: the TCP connection is dropped)."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(module_broker, uid, version=version, will=Will(f"will/{uid}/x", b"gone", 1))
    c.close()
    p = expect_will(w, f"will/{uid}/x", b"gone")
    assert p.qos == 1 and p.retain is False


def test_will_published_on_tcp_reset(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 3.1.2.5 ("An I/O error or network failure detected by the Server"): a reset
    connection (RST) also publishes the will."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(module_broker, uid, will=Will(f"will/{uid}/rst", b"reset", 0))
    c.abort()
    expect_will(w, f"will/{uid}/rst", b"reset")


def test_will_published_when_mosquitto_sub_is_killed(
    module_broker: BrokerProc, paho_connect: Callable, mosquitto_cli: MosquittoCli, uid: str
) -> None:
    """[MQTT-3.1.2-8] with Debian's mosquitto_sub as the client: its --will-* options set the
    will; SIGKILL drops its connection and a paho-mqtt subscriber receives the will."""
    sub: PahoClient = paho_connect(module_broker, f"{uid}w")
    sub.subscribe(f"will/{uid}/#", 1)
    will_topic = f"will/{uid}/cli"
    ready = f"t/{uid}/ready"
    proc = mosquitto_cli.spawn(
        "mosquitto_sub",
        module_broker,
        "-V", "mqttv5", "-i", uid, "-t", ready,
        "--will-topic", will_topic, "--will-payload", "cli-died", "--will-qos", "1",
    )  # fmt: skip
    # it is connected and subscribed once it prints a message published to `ready`
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + WAIT
    while b"ready" not in out:
        assert time.monotonic() < deadline and proc.poll() is None, "mosquitto_sub not ready"
        sub.publish(ready, b"ready")
        if select.select([proc.stdout], [], [], 0.2)[0]:
            out += os.read(proc.stdout.fileno(), 4096)
    sub.expect_nothing(QUIET)  # connected, no will yet
    proc.send_signal(signal.SIGKILL)
    msg = sub.get_topic(will_topic)
    assert msg.payload == b"cli-died" and msg.qos == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_will_published_on_keepalive_timeout(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """5.0 3.1.2.5 ("The Client fails to communicate within the Keep Alive time") and
    [MQTT-3.1.2-22]: the server closes "as if the network had failed", so the will goes out."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(
        module_broker, uid, version=version, keepalive=1, will=Will(f"will/{uid}/ka", b"silent", 1)
    )
    w.expect_nothing(0.5)
    expect_will(w, f"will/{uid}/ka", b"silent", timeout=1.5 + KEEPALIVE_SLACK)
    c.wait_closed()


@pytest.mark.parametrize("version", VERSIONS)
def test_will_published_on_protocol_error(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """5.0 3.1.2.5 ("The Server closes the Network Connection without first receiving a
    DISCONNECT packet with Reason Code 0x00"), 3.1.1 [MQTT-3.1.2-8]: a client closed for a
    protocol violation (PUBLISH to a wildcard topic, [MQTT-3.3.2-2]) has its will published."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(
        module_broker, uid, version=version, will=Will(f"will/{uid}/err", b"violator", 1)
    )
    c.send(r.publish(f"t/{uid}/#", b"bad", version=version))
    c.wait_closed()
    expect_will(w, f"will/{uid}/err", b"violator")


def test_will_published_on_invalid_disconnect(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 3.14.2.2.2: a DISCONNECT setting a non-zero Session Expiry when CONNECT had 0 is not
    treated as a valid DISCONNECT (Protocol Error), so the will is published."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(module_broker, uid, will=Will(f"will/{uid}/bad", b"bad-disconnect", 1))
    c.send(r.disconnect(0, {SE: 30}))
    c.wait_closed()
    expect_will(w, f"will/{uid}/bad", b"bad-disconnect")


def test_will_published_on_disconnect_with_will_message(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 3.14.2.1: DISCONNECT with Reason Code 0x04 (Disconnect with Will Message) asks the
    server to publish the will."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(module_broker, uid, will=Will(f"will/{uid}/04", b"asked-for", 2))
    c.disconnect(r.RC.DISCONNECT_WITH_WILL)
    p = expect_will(w, f"will/{uid}/04", b"asked-for")
    assert p.qos == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_will_not_published_on_normal_disconnect(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """3.1.1 [MQTT-3.1.2-10] [MQTT-3.14.4-3], 5.0 [MQTT-3.1.2-10] [MQTT-3.14.4-3]: on a DISCONNECT
    (v5: Reason Code 0x00) the will is discarded without being published - not even later."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(module_broker, uid, version=version, will=Will(f"will/{uid}/n", b"no", 1))
    c.disconnect(0 if version == V5 else None)
    w.expect_nothing(0.6)


def test_paho_will_not_published_on_disconnect(
    module_broker: BrokerProc, paho_connect: Callable, uid: str
) -> None:
    """The same with paho-mqtt 2.x (will_set + disconnect()) [MQTT-3.14.4-3], and the same paho
    client's will IS published when its socket is dropped [MQTT-3.1.2-8]."""
    sub: PahoClient = paho_connect(module_broker, f"{uid}w")
    sub.subscribe(f"will/{uid}/#", 1)
    a: PahoClient = paho_connect(
        module_broker, f"{uid}a", will={"topic": f"will/{uid}/a", "payload": b"A", "qos": 1}
    )
    a.disconnect()
    sub.expect_nothing(0.6)
    b: PahoClient = paho_connect(
        module_broker, f"{uid}b", will={"topic": f"will/{uid}/b", "payload": b"B", "qos": 1}
    )
    b.drop()
    assert sub.get_topic(f"will/{uid}/b").payload == b"B"


# -- Will Delay Interval ----------------------------------------------------------------------


def test_will_delay_interval_delays_publication(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 3.1.3.2.2 / [MQTT-3.1.2-8]: with Will Delay Interval 1 s (and a longer session) the
    will is published about 1 s after the connection drops - not at once."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(
        module_broker,
        uid,
        clean=False,
        properties={SE: 30},
        will=Will(f"will/{uid}/d", b"late", 1, properties={WDI: 1}),
    )
    c.close()
    t0 = time.monotonic()
    w.expect_nothing(0.6)
    expect_will(w, f"will/{uid}/d", b"late", timeout=1.0 + TIMER_SLACK)
    assert time.monotonic() - t0 >= 0.9
    RawClient.connected(module_broker, uid, clean=True).disconnect()


def test_will_not_published_if_client_reconnects_within_delay(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 [MQTT-3.1.3-9]: if a new Network Connection to the Session is made before the Will
    Delay Interval has passed, the will MUST NOT be sent."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(
        module_broker,
        uid,
        clean=False,
        properties={SE: 30},
        will=Will(f"will/{uid}/r", b"never", 1, properties={WDI: 1}),
    )
    c.close()
    time.sleep(0.3)
    again = raw_connect(module_broker, uid, clean=False, properties={SE: 30})
    assert again.connack is not None and again.connack.session_present is True
    w.expect_nothing(1.0 + TIMER_SLACK)
    again.disconnect(0, {SE: 0})


def test_will_delay_not_published_on_takeover_with_clean_start_0(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 3.1.3.2.2 (non-normative) + [MQTT-3.1.3-9]: a takeover by a Clean Start 0
    connection while the old one has a Will Delay does not publish the will."""
    w = watcher(module_broker, uid, raw_connect)
    raw_connect(
        module_broker,
        uid,
        clean=False,
        properties={SE: 30},
        will=Will(f"will/{uid}/t", b"never", 1, properties={WDI: 1}),
    )
    new = raw_connect(module_broker, uid, clean=False, properties={SE: 30})
    w.expect_nothing(1.0 + TIMER_SLACK)
    new.disconnect(0, {SE: 0})


def test_will_published_on_takeover_with_clean_start_1(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 3.1.4 (non-normative after [MQTT-3.1.4-3]): when the new connection has Clean Start
    1 the original Session ends on the takeover, so the old connection's will is sent."""
    w = watcher(module_broker, uid, raw_connect)
    raw_connect(module_broker, uid, will=Will(f"will/{uid}/t1", b"taken", 1))
    raw_connect(module_broker, uid, clean=True)
    expect_will(w, f"will/{uid}/t1", b"taken")


def test_will_sent_at_session_end_if_before_will_delay(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 [MQTT-3.1.2-8] / 3.1.3.2.2: the will is published when the Will Delay Interval has
    passed or the Session ends, whichever is first: Session Expiry 1 s < Will Delay 30 s ->
    published about 1 s after the drop."""
    w = watcher(module_broker, uid, raw_connect)
    c = raw_connect(
        module_broker,
        uid,
        clean=False,
        properties={SE: 1},
        will=Will(f"will/{uid}/se", b"session-ended", 1, properties={WDI: 30}),
    )
    c.close()
    t0 = time.monotonic()
    w.expect_nothing(0.6)
    expect_will(w, f"will/{uid}/se", b"session-ended", timeout=1.0 + TIMER_SLACK)
    assert time.monotonic() - t0 >= 0.9


# -- what is published ------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_will_retain_stores_retained_message(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """3.1.1 [MQTT-3.1.2-17], 5.0 [MQTT-3.1.2-15]: with Will Retain 1 the will is published as a
    retained message - a later subscriber gets it with RETAIN 1 ([MQTT-3.3.1-9] 5.0); with Will
    Retain 0 nothing is retained [MQTT-3.1.2-14] (5.0) / [MQTT-3.1.2-16] (3.1.1)."""
    topic, plain = f"will/{uid}/keep", f"will/{uid}/plain"
    a = raw_connect(module_broker, f"{uid}a", version=version, will=Will(topic, b"kept", 1, True))
    b = raw_connect(module_broker, f"{uid}b", version=version, will=Will(plain, b"not-kept", 1))
    a.close()
    b.close()
    time.sleep(0.3)
    late = raw_connect(module_broker, f"{uid}l", version=version)
    late.subscribe(f"will/{uid}/#", 1)
    p = late.expect(PacketType.PUBLISH)
    assert (p.topic, p.payload, p.retain) == (topic, b"kept", True)
    late.ack(p)
    late.expect_nothing()
    late.publish(topic, b"", 1, retain=True)  # clear it [MQTT-3.3.1-6]


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, will_qos: int
) -> None:
    """5.0 3.1.2.6 / 3.1.1 3.1.2.6: the will is published at the Will QoS; a QoS 2 subscriber gets
    it at that QoS, a QoS 0 subscriber at QoS 0 ([MQTT-3.8.4-8] minimum of the two)."""
    w2 = watcher(module_broker, uid, raw_connect, qos=2)
    w0 = raw_connect(module_broker, f"{uid}z")
    w0.subscribe(f"will/{uid}/#", 0)
    c = raw_connect(module_broker, uid, will=Will(f"will/{uid}/q", b"qos", will_qos))
    c.close()
    assert expect_will(w2, f"will/{uid}/q", b"qos").qos == will_qos
    assert expect_will(w0, f"will/{uid}/q", b"qos").qos == 0


def test_will_properties_forwarded_to_v5_subscriber(
    module_broker: BrokerProc, raw_connect: RawConnect, paho_connect: Callable, uid: str
) -> None:
    """5.0 3.1.3.2.3-3.1.3.2.8: the will's Payload Format Indicator [MQTT-3.3.2-4], Content Type,
    Response Topic, Correlation Data and User Properties (in order, [MQTT-3.1.3-10]) are sent
    with it, and its Message Expiry Interval as the remaining lifetime (<= sent, > 0)
    [MQTT-3.3.2-6]. Checked byte-level (rawmqtt) and through paho-mqtt's parser."""
    topic = f"will/{uid}/props"
    w = watcher(module_broker, uid, raw_connect)
    paho: PahoClient = paho_connect(module_broker, f"{uid}p")
    paho.subscribe(topic, 1)
    users = [("k1", "v1"), ("k2", "v2"), ("k1", "v3")]
    props = [
        (Prop.PAYLOAD_FORMAT_INDICATOR, 1),
        (Prop.MESSAGE_EXPIRY_INTERVAL, 100),
        (Prop.CONTENT_TYPE, "text/plain; charset=utf-8"),
        (Prop.RESPONSE_TOPIC, f"resp/{uid}"),
        (Prop.CORRELATION_DATA, b"\x00\x01\xfe\xff"),
        *[(Prop.USER_PROPERTY, kv) for kv in users],
    ]
    c = raw_connect(module_broker, uid, will=Will(topic, "ünïcode".encode(), 1, properties=props))
    c.close()
    p = expect_will(w, topic, "ünïcode".encode())
    got = p.properties
    assert got.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1
    assert got.get(Prop.CONTENT_TYPE) == "text/plain; charset=utf-8"
    assert got.get(Prop.RESPONSE_TOPIC) == f"resp/{uid}"
    assert got.get(Prop.CORRELATION_DATA) == b"\x00\x01\xfe\xff"
    assert got.get(Prop.USER_PROPERTY) == users
    assert 0 < got.get(Prop.MESSAGE_EXPIRY_INTERVAL, 0) <= 100
    assert Prop.WILL_DELAY_INTERVAL not in got  # not a PUBLISH property
    m = paho.get_topic(topic)
    assert m.properties is not None
    assert m.properties.ContentType == "text/plain; charset=utf-8"
    assert m.properties.ResponseTopic == f"resp/{uid}"
    assert m.properties.CorrelationData == b"\x00\x01\xfe\xff"
    assert m.properties.UserProperty == users
    assert m.properties.PayloadFormatIndicator == 1


def test_will_to_v311_subscriber_has_no_properties(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """A v5 will with properties reaches a v3.1.1 subscriber as a plain 3.1.1 PUBLISH (topic,
    packet id, payload - no property block)."""
    topic = f"will/{uid}/v311"
    sub = raw_connect(module_broker, f"{uid}s", version=V311)
    sub.subscribe(topic, 1)
    c = raw_connect(
        module_broker,
        uid,
        will=Will(topic, b"plain", 1, properties={Prop.CONTENT_TYPE: "x/y", WDI: 0}),
    )
    c.close()
    p = sub.expect(PacketType.PUBLISH)
    assert p.packet_id is not None
    assert p.raw == r.publish(topic, b"plain", qos=1, packet_id=p.packet_id, version=V311)
