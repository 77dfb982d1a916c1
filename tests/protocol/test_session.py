"""Sessions: clean start / clean session, Session Present, Session Expiry, session takeover,
offline queues and message re-delivery (MQTT 3.1.1 3.1.2.4, 3.2.2.2, 4.4; MQTT 5.0 3.1.2.4,
3.1.2.11.2, 3.1.4, 3.2.2.1.1, 3.14.2.2.2, 4.1, 4.4)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol import rawmqtt as r
from tests.protocol.conftest import (
    QUIET,
    WAIT,
    MosquittoCli,
    PahoClient,
    assert_disconnect,
    assert_only_disconnect,
)
from tests.protocol.rawmqtt import V5, V311, Packet, PacketType, Prop, RawClient

VERSIONS = [pytest.param(V5, id="v5"), pytest.param(V311, id="v311")]
SE = Prop.SESSION_EXPIRY_INTERVAL
# Session expiry is checked with second granularity by real brokers: allow this much lateness.
EXPIRY_SLACK = 1.5

RawOpen = Callable[..., RawClient]
RawConnect = Callable[..., RawClient]


def persistent(version: int, expiry: int = 60) -> dict:
    """CONNECT kwargs for a session that outlives the connection."""
    if version == V5:
        return {"clean": False, "properties": {SE: expiry}}
    return {"clean": False}


def drain_publishes(c: RawClient, quiet: float = QUIET, ack: bool = True) -> list[Packet]:
    """Every PUBLISH that arrives until `quiet` seconds pass without one (acknowledged)."""
    got: list[Packet] = []
    while True:
        try:
            p = c.recv(quiet)
        except TimeoutError:
            return got
        assert p.type == PacketType.PUBLISH, p
        got.append(p)
        if ack and p.qos:
            c.ack(p)


def end_session(broker: BrokerProc, client_id: str, version: int) -> None:
    """Discard a persistent session (clean start/session 1, then a normal DISCONNECT)."""
    with RawClient.connected(broker, client_id, version=version, clean=True) as c:
        c.disconnect()


# -- Session Present and Clean Start ----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_session_present_false_first_then_true_on_resume(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str, version: int
) -> None:
    """3.1.1 [MQTT-3.2.2-2] [MQTT-3.2.2-3], 5.0 [MQTT-3.2.2-3]: with Clean Session/Start 0 the
    CONNACK has Session Present 0 when the server has no session for the ClientID and 1 when it
    resumes one."""
    a = raw_open(module_broker, version)
    assert a.connect(uid, **persistent(version)).session_present is False
    a.disconnect()
    b = raw_open(module_broker, version)
    ack = b.connect(uid, **persistent(version))
    assert ack.reason_code == 0 and ack.session_present is True, ack
    b.disconnect()
    end_session(module_broker, uid, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_start_discards_existing_session(
    module_broker: BrokerProc, raw_open: RawOpen, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """3.1.1 [MQTT-3.1.2-6] [MQTT-3.2.2-1], 5.0 [MQTT-3.1.2-4] [MQTT-3.2.2-2]: Clean Session/Start
    1 discards any existing Session (its subscriptions too) and CONNACK has Session Present 0."""
    topic = f"t/{uid}/clean"
    a = raw_open(module_broker, version)
    a.connect(uid, **persistent(version))
    a.subscribe(topic, 1)
    a.disconnect()
    b = raw_open(module_broker, version)
    kw = {"properties": {SE: 60}} if version == V5 else {}
    ack = b.connect(uid, clean=True, **kw)
    assert ack.reason_code == 0 and ack.session_present is False, ack
    b.disconnect()
    pub = raw_connect(module_broker, f"{uid}p")
    pub.publish(topic, b"to-old-subscription", 1)
    c = raw_open(module_broker, version)
    ack = c.connect(uid, **persistent(version))
    # 5.0: the clean session of `b` had an expiry, so a (fresh, empty) session exists now
    assert ack.session_present is (version == V5), ack
    assert drain_publishes(c) == [], "the discarded session's subscription still delivered"
    c.disconnect()
    end_session(module_broker, uid, version)


def test_v5_no_session_expiry_means_session_ends_at_close(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str
) -> None:
    """5.0 3.1.2.11.2: an absent Session Expiry Interval means 0 - the Session ends when the
    Network Connection closes, even with Clean Start 0."""
    a = raw_open(module_broker)
    a.connect(uid, clean=False)
    a.subscribe(f"t/{uid}", 1)
    a.close()  # even without DISCONNECT
    time.sleep(0.2)
    b = raw_open(module_broker)
    assert b.connect(uid, clean=False).session_present is False


# -- Session Expiry Interval ------------------------------------------------------------------


def test_session_kept_within_expiry_and_gone_after(
    module_broker: BrokerProc, raw_open: RawOpen, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 [MQTT-3.1.2-23] [MQTT-4.1.0-2]: the Session (subscriptions, queued QoS 1 messages) is
    kept while the Session Expiry Interval has not passed, and discarded after it."""
    pub = raw_connect(module_broker, f"{uid}p")
    # client A: 2 s expiry, resumed after 0.5 s -> still there, with the message queued
    a = raw_open(module_broker)
    a.connect(f"{uid}a", clean=False, properties={SE: 2})
    a.subscribe(f"t/{uid}/a", 1)
    a.disconnect()
    # client B: 1 s expiry, resumed after 1 s + slack -> gone
    b = raw_open(module_broker)
    b.connect(f"{uid}b", clean=False, properties={SE: 1})
    b.subscribe(f"t/{uid}/b", 1)
    b.disconnect()
    t0 = time.monotonic()
    pub.publish(f"t/{uid}/a", b"kept", 1)
    pub.publish(f"t/{uid}/b", b"lost", 1)
    time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    a2 = raw_open(module_broker)
    ack = a2.connect(f"{uid}a", clean=False, properties={SE: 0})
    assert ack.session_present is True, ack
    assert [p.payload for p in drain_publishes(a2)] == [b"kept"]
    time.sleep(max(0.0, 1.0 + EXPIRY_SLACK - (time.monotonic() - t0)))
    b2 = raw_open(module_broker)
    ack = b2.connect(f"{uid}b", clean=False, properties={SE: 0})
    assert ack.session_present is False, ack
    assert drain_publishes(b2) == []


def test_disconnect_updates_session_expiry(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str
) -> None:
    """5.0 3.14.2.2.2: the Session Expiry Interval in DISCONNECT replaces the CONNECT value:
    1 s -> 60 s keeps the session past 1 s; 60 s -> 0 ends it at once."""
    a = raw_open(module_broker)
    a.connect(f"{uid}a", clean=False, properties={SE: 1})
    a.disconnect(0, {SE: 60})
    b = raw_open(module_broker)
    b.connect(f"{uid}b", clean=False, properties={SE: 60})
    b.disconnect(0, {SE: 0})
    b2 = raw_open(module_broker)
    assert b2.connect(f"{uid}b", clean=False).session_present is False
    time.sleep(1.0 + EXPIRY_SLACK)
    a2 = raw_open(module_broker)
    assert a2.connect(f"{uid}a", clean=False).session_present is True


def test_disconnect_session_expiry_from_zero_is_protocol_error(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str
) -> None:
    """5.0 3.14.2.2.2: if the CONNECT Session Expiry Interval was 0, a non-zero one in DISCONNECT
    is a Protocol Error: the server answers DISCONNECT 0x82 and closes; the session is not kept."""
    a = raw_open(module_broker)
    a.connect(uid, clean=False)
    a.send(r.disconnect(0, {SE: 60}))
    assert_disconnect(a.wait_closed(), {r.RC.PROTOCOL_ERROR})
    b = raw_open(module_broker)
    assert b.connect(uid, clean=False).session_present is False


@pytest.mark.fluxmq_only  # Mosquitto cannot cap the Session Expiry Interval
def test_max_expiry_interval_caps_session_expiry(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """5.0 3.2.2.3.2: the server may use a smaller Session Expiry Interval than requested and
    tells the client in CONNACK. With `session.max_expiry_interval: 1` a client asking for 3600 s
    gets 1 in CONNACK, and its session is gone 1 s (+ slack) after it disconnects. A client
    asking for less than the cap keeps its value."""
    b = broker_factory({"session": {"max_expiry_interval": 1}})
    a = RawClient(b)
    ack = a.connect(uid, clean=False, properties={SE: 3600})
    assert ack.properties.get(SE) == 1, ack
    a.subscribe(f"t/{uid}", 1)
    a.disconnect()
    c = RawClient(b)
    ack_c = c.connect(f"{uid}c", clean=False, properties={SE: 1})
    assert ack_c.properties.get(SE, 1) == 1, ack_c
    c.close()
    time.sleep(0.3)
    a2 = RawClient(b)
    assert a2.connect(uid, clean=False, properties={SE: 3600}).session_present is True
    a2.disconnect()
    time.sleep(1.0 + EXPIRY_SLACK)
    a3 = RawClient(b)
    assert a3.connect(uid, clean=False, properties={SE: 3600}).session_present is False
    a3.close()


@pytest.mark.fluxmq_only  # Mosquitto's persistent_client_expiration is not configurable here
def test_v311_persistent_session_default_expiry(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """3.1.1 clean-session-0 sessions have no expiry in the protocol; FluxMQ keeps them for
    `session.default_expiry_interval` (like the 5.0 "Session Expiry" of 4.1): present when
    resumed at once, gone after the interval (+ slack)."""
    b = broker_factory({"session": {"default_expiry_interval": 1}})
    a = RawClient(b, version=V311)
    assert a.connect(uid, version=V311, clean=False).session_present is False
    a.disconnect()
    a2 = RawClient(b, version=V311)
    assert a2.connect(uid, version=V311, clean=False).session_present is True
    a2.disconnect()
    time.sleep(1.0 + EXPIRY_SLACK)
    a3 = RawClient(b, version=V311)
    assert a3.connect(uid, version=V311, clean=False).session_present is False
    a3.close()


# -- offline delivery -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_receives_qos12_published_while_offline_in_order(
    module_broker: BrokerProc,
    raw_open: RawOpen,
    mosquitto_cli: MosquittoCli,
    uid: str,
    version: int,
) -> None:
    """3.1.1 [MQTT-3.1.2-4] [MQTT-3.1.2-5], 5.0 [MQTT-3.1.2-5] [MQTT-4.5.0-1]: a resumed session
    keeps its subscriptions and gets the QoS 1 and QoS 2 messages published while it was
    offline, each QoS stream in publication order [MQTT-4.6.0-6]. (QoS 0 messages MAY be
    queued too; not required.) Published with Debian's mosquitto_pub."""
    topic = f"t/{uid}/offline"
    a = raw_open(module_broker, version)
    a.connect(uid, **persistent(version))
    assert a.subscribe(topic, 2).reason_codes == [2]
    a.disconnect()
    sent = []
    for i in range(6):
        qos = (1, 2, 0)[i % 3]
        payload = f"m{i}-q{qos}"
        mosquitto_cli.pub(module_broker, "-t", topic, "-m", payload, "-q", str(qos))
        sent.append((payload.encode(), qos))
    b = raw_open(module_broker, version)
    assert b.connect(uid, **persistent(version)).session_present is True
    got = drain_publishes(b)
    for q in (1, 2):
        assert [(p.payload, p.qos) for p in got if p.qos == q] == [s for s in sent if s[1] == q]
    assert all(p.topic == topic for p in got)
    assert {p.payload for p in got if p.qos == 0} <= {s[0] for s in sent if s[1] == 0}
    b.disconnect()
    end_session(module_broker, uid, version)


def test_paho_persistent_session_resume(
    module_broker: BrokerProc, paho_connect: Callable, raw_connect: RawConnect, uid: str
) -> None:
    """The same through paho-mqtt 2.x (MQTT 5, clean_start False, Session Expiry 60): Session
    Present on resume [MQTT-3.2.2-3] and the QoS 1 message published while offline arrives."""
    topic = f"t/{uid}/paho"
    a: PahoClient = paho_connect(module_broker, uid, clean=False, session_expiry=60)
    assert a.session_present is False
    a.subscribe(topic, 1)
    a.disconnect()
    raw_connect(module_broker, f"{uid}p").publish(topic, b"while-away", 1)
    b: PahoClient = paho_connect(module_broker, uid, clean=False, session_expiry=0)
    assert b.session_present is True
    msg = b.get_topic(topic)
    assert msg.payload == b"while-away" and msg.qos == 1


def _fill_offline_queue(broker: BrokerProc, uid: str, n: int) -> list[bytes]:
    with RawClient.connected(broker, uid, clean=False, properties={SE: 60}) as a:
        a.subscribe(f"t/{uid}/q", 1)
        a.disconnect()
    with RawClient.connected(broker, f"{uid}p") as p:
        for i in range(n):
            p.publish(f"t/{uid}/q", f"m{i}".encode(), 1)
    with RawClient.connected(broker, uid, clean=False, properties={SE: 0}) as b:
        assert b.connack is not None and b.connack.session_present is True
        return [x.payload for x in drain_publishes(b)]


def test_offline_queue_reject_policy_drops_newest(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """`session.max_offline_queue_size: 3` with policy `reject`: of 6 QoS 1 messages published
    while the client is offline only the 3 oldest are kept and delivered on resume, in order
    (Mosquitto's max_queued_messages behaves the same)."""
    b = broker_factory({"session": {"max_offline_queue_size": 3, "offline_queue_policy": "reject"}})
    assert _fill_offline_queue(b, uid, 6) == [b"m0", b"m1", b"m2"]


@pytest.mark.fluxmq_only  # Mosquitto can only drop the newest message
def test_offline_queue_evict_policy_drops_oldest(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """`session.max_offline_queue_size: 3` with policy `evict`: the oldest queued messages make
    room for new ones, so the 3 newest of 6 are delivered on resume, in order."""
    b = broker_factory({"session": {"max_offline_queue_size": 3, "offline_queue_policy": "evict"}})
    assert _fill_offline_queue(b, uid, 6) == [b"m3", b"m4", b"m5"]


# -- re-delivery of unacknowledged messages ---------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_unacknowledged_publish_resent_with_dup_on_reconnect(
    module_broker: BrokerProc, raw_open: RawOpen, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """3.1.1 4.4 / 5.0 [MQTT-4.4.0-1]: on reconnect with Clean Start 0 the server re-sends the
    unacknowledged QoS 1 and QoS 2 PUBLISH packets with their original Packet Identifiers, with
    DUP set [MQTT-3.3.1-1], same topic, QoS and payload, in the original order [MQTT-4.6.0-6];
    once acknowledged they are not sent again."""
    topic = f"t/{uid}/dup"
    a = raw_open(module_broker, version)
    a.connect(uid, **persistent(version))
    a.subscribe(topic, 2)
    pub = raw_connect(module_broker, f"{uid}p")
    pub.publish(topic, b"one", 1)
    pub.publish(topic, b"two", 2)
    first = [a.expect(PacketType.PUBLISH), a.expect(PacketType.PUBLISH)]
    assert [(p.payload, p.qos, p.dup) for p in first] == [(b"one", 1, False), (b"two", 2, False)]
    a.close()  # no PUBACK / PUBREC
    time.sleep(0.2)
    b = raw_open(module_broker, version)
    assert b.connect(uid, **persistent(version)).session_present is True
    again = [b.expect(PacketType.PUBLISH), b.expect(PacketType.PUBLISH)]
    for old, new in zip(first, again, strict=True):
        assert new.dup is True, new
        assert (new.packet_id, new.topic, new.qos, new.payload) == (
            old.packet_id,
            old.topic,
            old.qos,
            old.payload,
        )
        assert new.raw[0] == old.raw[0] | 0x08  # only the DUP bit differs in the fixed header
    for p in again:
        b.ack(p)
    b.expect_nothing()
    b.disconnect()
    c = raw_open(module_broker, version)
    assert c.connect(uid, **persistent(version)).session_present is True
    assert drain_publishes(c) == []
    c.disconnect()
    end_session(module_broker, uid, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_pubrel_resent_on_reconnect(
    module_broker: BrokerProc, raw_open: RawOpen, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """[MQTT-4.4.0-1]: an unacknowledged PUBREL is re-sent on reconnect with the original Packet
    Identifier, and the QoS 2 PUBLISH is NOT re-sent once its PUBREL was sent [MQTT-4.3.3-6]
    (5.0). After PUBCOMP nothing more is re-sent."""
    topic = f"t/{uid}/rel"
    a = raw_open(module_broker, version)
    a.connect(uid, **persistent(version))
    a.subscribe(topic, 2)
    raw_connect(module_broker, f"{uid}p").publish(topic, b"exactly-once", 2)
    msg = a.expect(PacketType.PUBLISH)
    assert msg.qos == 2 and msg.packet_id
    a.send(r.pubrec(msg.packet_id, version=version))
    rel = a.expect(PacketType.PUBREL)
    assert rel.packet_id == msg.packet_id and rel.flags == 0x02
    a.close()  # no PUBCOMP
    time.sleep(0.2)
    b = raw_open(module_broker, version)
    assert b.connect(uid, **persistent(version)).session_present is True
    rel2 = b.recv()
    assert rel2.type == PacketType.PUBREL and rel2.packet_id == msg.packet_id, rel2
    assert rel2.flags == 0x02  # [MQTT-3.6.1-1] / [MQTT-2.1.3-1]
    if version == V311:
        assert rel2.raw == b"\x62\x02" + r.encode_u16(msg.packet_id)
    b.send(r.pubcomp(msg.packet_id, version=version))
    b.expect_nothing()
    b.disconnect()
    c = raw_open(module_broker, version)
    assert c.connect(uid, **persistent(version)).session_present is True
    c.expect_nothing()
    c.disconnect()
    end_session(module_broker, uid, version)


# -- session takeover -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_takeover_closes_old_connection(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """3.1.1 [MQTT-3.1.4-2], 5.0 [MQTT-3.1.4-3]: a new connection with the ClientID of a
    connected client makes the server close the existing connection (5.0: after an optional
    DISCONNECT 0x8E); the new connection works."""
    old = raw_connect(module_broker, uid, version=version)
    new = raw_connect(module_broker, uid, version=version)
    got = old.wait_closed()
    if version == V5:
        assert_only_disconnect(got, {r.RC.SESSION_TAKEN_OVER})
    else:
        assert got == []
    assert new.ping().type == PacketType.PINGRESP


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 closes the old connection without the DISCONNECT
def test_takeover_v5_sends_session_taken_over(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 [MQTT-3.1.4-3]: the Server sends the existing v5 client DISCONNECT 0x8E (Session
    taken over), then closes its connection."""
    old = raw_connect(module_broker, uid)
    raw_connect(module_broker, uid)
    assert_disconnect(old.wait_closed(), {r.RC.SESSION_TAKEN_OVER})


@pytest.mark.parametrize("version", VERSIONS)
def test_takeover_with_clean_start_0_keeps_subscriptions(
    module_broker: BrokerProc,
    raw_connect: RawConnect,
    paho_connect: Callable,
    uid: str,
    version: int,
) -> None:
    """[MQTT-3.1.4-3] + [MQTT-3.1.2-5] (5.0) / [MQTT-3.1.2-4] (3.1.1): when the new connection
    takes the session over with Clean Start 0 it gets Session Present 1 and the subscriptions
    made on the old connection deliver to it (new side: paho-mqtt)."""
    topic = f"t/{uid}/takeover"
    old = raw_connect(module_broker, uid, version=version, **persistent(version))
    old.subscribe(topic, 1)
    kw = {"session_expiry": 60} if version == V5 else {}
    new: PahoClient = paho_connect(module_broker, uid, version=version, clean=False, **kw)
    assert new.session_present is True
    old.wait_closed()
    raw_connect(module_broker, f"{uid}p").publish(topic, b"for-the-new-one", 1)
    msg = new.get_topic(topic, WAIT)
    assert msg.payload == b"for-the-new-one"
    new.disconnect()
    end_session(module_broker, uid, version)


def test_takeover_with_clean_start_1_drops_subscriptions(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """5.0 [MQTT-3.1.2-4] on takeover: a new connection with Clean Start 1 discards the old
    session, so the old subscription no longer delivers."""
    topic = f"t/{uid}/takeover1"
    old = raw_connect(module_broker, uid, **persistent(V5))
    old.subscribe(topic, 1)
    new = raw_connect(module_broker, uid, clean=True)
    assert new.connack is not None and new.connack.session_present is False
    old.wait_closed()
    raw_connect(module_broker, f"{uid}p").publish(topic, b"nobody", 1)
    new.expect_nothing()
