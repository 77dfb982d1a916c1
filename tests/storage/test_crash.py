"""Crash tests (issue 3): the broker is killed (`kill -9`, `storage.fsync: always`) in the middle
of things, and picks them up where they were after the restart.

- Wills: a will with a Will Delay Interval goes once its delay has passed after the restart (and
  not before); a will whose deadline passed while the broker was down goes right after the
  restart; a will of a client that disconnected normally, or that came back in time, never goes.
- QoS 2 in flight resumes mid-flow, outbound (PUBREL re-sent with the same packet identifier, the
  message not re-sent) and inbound (PUBREL accepted after the restart, delivered exactly once).
- Unacknowledged QoS 1/2 PUBLISHes are re-sent with DUP and their packet identifiers.
"""

from __future__ import annotations

import signal
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests.protocol.rawmqtt import (
    V5,
    V311,
    PacketType,
    Prop,
    Will,
    puback,
    pubcomp,
    publish,
    pubrec,
    pubrel,
)
from tests.storage.conftest import (
    EXPIRY,
    QUIET,
    WAIT,
    Paho,
    commit_barrier,
    props,
    raw_session,
    wait_for_log,
)

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
KILL = signal.SIGKILL


def will_watcher(broker, uid: str, version: int = V5) -> Paho:
    """A persistent subscriber of the will topic, offline when this returns."""
    w = Paho(broker, f"{uid}-watch", version=version, clean=False, expiry=EXPIRY)
    assert w.subscribe(f"{uid}/will", qos=1) == [1]
    w.disconnect()
    return w


def will_of(uid: str, delay: int | None = None, **extra) -> dict:
    p = None
    if delay is not None:
        p = props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay, **extra)
    return {"topic": f"{uid}/will", "payload": b"gone", "qos": 1, "properties": p}


# -- wills -------------------------------------------------------------------------------------


def test_delayed_will_goes_after_its_delay_after_a_crash(lmdb_broker, uid):
    """A client connected with a will (Will Delay Interval 3 s, Session Expiry 60 s) when the
    broker was killed: after the restart its will reaches a persistent subscriber once the
    delay has passed, and not before."""
    b = lmdb_broker("always")
    will_watcher(b, uid)
    c = Paho(b, f"{uid}-c", clean=False, expiry=60, will=will_of(uid, delay=3))
    b.stop(KILL)  # the connection ends with the broker
    killed = time.monotonic()
    c.close()
    b.start()
    watch = Paho(b, f"{uid}-watch", clean=False, expiry=EXPIRY)
    assert watch.session_present is True
    # Not before 3 s after the connection ended (at the latest when the broker died).
    watch.expect_nothing(max(0.1, killed + 3.0 - 0.3 - time.monotonic()))
    m = watch.get(timeout=5.0)
    assert (m.topic, m.payload) == (f"{uid}/will", b"gone")
    watch.expect_nothing()


def test_will_overdue_after_downtime_goes_right_after_restart(lmdb_broker, uid):
    """The connection ended (will delay 2 s running); the broker is killed and stays down past
    the will's deadline: the will goes right after the restart."""
    b = lmdb_broker("always")
    will_watcher(b, uid)
    c = Paho(b, f"{uid}-c", clean=False, expiry=60, will=will_of(uid, delay=2))
    c.drop()
    # The broker sees the drop and stores the will's deadline; then it is killed.
    assert wait_for_log(b, f"client disconnected client_id={uid}-c")
    commit_barrier(b, uid)
    b.stop(KILL)
    time.sleep(2.5)
    b.start()
    started = time.monotonic()
    watch = Paho(b, f"{uid}-watch", clean=False, expiry=EXPIRY)
    m = watch.get(timeout=WAIT)
    assert (m.topic, m.payload) == (f"{uid}/will", b"gone")
    assert time.monotonic() - started < 1.5, "overdue will was not sent at once"
    watch.expect_nothing()


@VERSIONS
def test_will_without_delay_goes_after_crash(lmdb_broker, uid, version):
    """A persistent client connected with a will (no delay) when the broker was killed: the
    broker could not send the will then, so it sends it after the restart, once."""
    b = lmdb_broker("always")
    will_watcher(b, uid, version)
    c = Paho(b, f"{uid}-c", version=version, clean=False, expiry=60, will=will_of(uid))
    assert c.session_present is False
    b.stop(KILL)
    c.close()
    b.start()
    watch = Paho(b, f"{uid}-watch", version=version, clean=False, expiry=EXPIRY)
    m = watch.get()
    assert (m.topic, m.payload) == (f"{uid}/will", b"gone")
    watch.expect_nothing(1.0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, KILL], ids=["sigterm", "kill9"])
def test_will_of_normal_disconnect_never_goes(lmdb_broker, uid, sig):
    """Clients with a will (one with a Will Delay Interval) disconnected normally (DISCONNECT
    0x00) before the restart: their wills are never published. (Raw clients, whose
    disconnect() waits until the broker has closed the connection: the broker must have
    read the DISCONNECT before it is killed.)"""
    b = lmdb_broker("always")
    will_watcher(b, uid)
    for cid, will_props in ((f"{uid}-c", {Prop.WILL_DELAY_INTERVAL: 1}), (f"{uid}-d", None)):
        c = raw_session(
            b, cid, expiry=60, will=Will(f"{uid}/will", b"gone", qos=1, properties=will_props)
        )
        c.disconnect()
    commit_barrier(b, uid)
    b.restart(sig)
    watch = Paho(b, f"{uid}-watch", clean=False, expiry=EXPIRY)
    assert watch.session_present is True
    watch.expect_nothing(2.5)


def test_will_cancelled_by_reconnect_after_crash(lmdb_broker, uid):
    """The client comes back to its session within the will delay after the restart: the will
    is not published [MQTT-3.1.3-9]."""
    b = lmdb_broker("always")
    will_watcher(b, uid)
    c = Paho(b, f"{uid}-c", clean=False, expiry=60, will=will_of(uid, delay=2))
    b.stop(KILL)
    c.close()
    b.start()
    c = Paho(b, f"{uid}-c", clean=False, expiry=60)
    assert c.session_present is True
    watch = Paho(b, f"{uid}-watch", clean=False, expiry=EXPIRY)
    watch.expect_nothing(3.0)


def drain(client, window: float) -> list:
    """Every packet that arrives within `window` seconds."""
    out = []
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(client.recv(left))
        except TimeoutError:
            break
    return out


# -- QoS 2 in flight -------------------------------------------------------------------------------


def offline_qos2_subscriber(broker, uid: str, version: int):
    sub = raw_session(broker, f"{uid}-sub", version=version)
    assert sub.subscribe(f"{uid}/t", qos=2).reason_codes == [2]
    return sub


@VERSIONS
def test_outbound_qos2_resumes_with_pubrel(lmdb_broker, uid, version):
    """The subscriber got PUBLISH, sent PUBREC and got PUBREL; the broker is killed. After the
    restart it re-sends PUBREL with the same packet identifier, and never the message again."""
    b = lmdb_broker("always")
    sub = offline_qos2_subscriber(b, uid, version)
    pub = Paho(b, f"{uid}-pub", version=version)
    assert pub.publish(f"{uid}/t", b"once", qos=2) == 0
    p = sub.expect(PacketType.PUBLISH)
    assert (p.payload, p.qos) == (b"once", 2)
    sub.send(pubrec(p.packet_id, version=version))
    rel = sub.expect(PacketType.PUBREL)
    assert rel.packet_id == p.packet_id
    b.stop(KILL)
    sub.close()
    pub.close()
    b.start()

    sub = raw_session(b, f"{uid}-sub", version=version)
    assert sub.connack.session_present is True
    rel = sub.expect(PacketType.PUBREL)
    assert rel.packet_id == p.packet_id
    sub.expect_nothing(QUIET)  # no PUBLISH again, and no second PUBREL
    sub.send(pubcomp(p.packet_id, version=version))
    # The flow is over: a new message flows, and the old one never comes back.
    pub = Paho(b, f"{uid}-pub", version=version)
    assert pub.publish(f"{uid}/t", b"next", qos=2) == 0
    p2 = sub.expect(PacketType.PUBLISH)
    assert (p2.payload, p2.dup) == (b"next", False)
    sub.ack(p2)
    sub.disconnect()
    b.restart(signal.SIGTERM)
    sub = raw_session(b, f"{uid}-sub", version=version)
    sub.expect_nothing(QUIET)


@VERSIONS
def test_outbound_qos2_publish_resent_with_dup(lmdb_broker, uid, version):
    """The subscriber got a QoS 2 PUBLISH and did not answer; the broker is killed. After the
    restart the PUBLISH is re-sent with DUP and the same packet identifier, then completes."""
    b = lmdb_broker("always")
    sub = offline_qos2_subscriber(b, uid, version)
    pub = Paho(b, f"{uid}-pub", version=version)
    assert pub.publish(f"{uid}/t", b"unanswered", qos=2) == 0
    p = sub.expect(PacketType.PUBLISH)
    assert not p.dup
    b.stop(KILL)
    sub.close()
    pub.close()
    b.start()
    sub = raw_session(b, f"{uid}-sub", version=version)
    assert sub.connack.session_present is True
    again = sub.expect(PacketType.PUBLISH)
    assert (again.payload, again.qos, again.dup, again.packet_id) == (
        b"unanswered",
        2,
        True,
        p.packet_id,
    )
    sub.ack(again)  # PUBREC, PUBREL, PUBCOMP
    sub.expect_nothing(QUIET)


@VERSIONS
@pytest.mark.parametrize("resend", [False, True], ids=["pubrel", "dup-then-pubrel"])
def test_inbound_qos2_resumes_after_crash(lmdb_broker, uid, version, resend):
    """The publisher sent a QoS 2 PUBLISH and got PUBREC; the broker is killed before PUBREL.
    After the restart the publisher continues its session (and may re-send the PUBLISH with
    DUP: the broker answers PUBREC again), sends PUBREL, gets PUBCOMP; the subscriber gets
    the message exactly once."""
    b = lmdb_broker("always")
    watch = Paho(b, f"{uid}-watch", version=version, clean=False, expiry=EXPIRY)
    assert watch.subscribe(f"{uid}/t", qos=2) == [2]
    watch.disconnect()  # the message waits in its queue
    pub = raw_session(b, f"{uid}-pub", version=version)
    pid = 7
    pub.send(publish(f"{uid}/t", b"exactly-once", qos=2, packet_id=pid, version=version))
    rec = pub.expect(PacketType.PUBREC)
    assert rec.packet_id == pid and (rec.reason_code or 0) == 0
    b.stop(KILL)
    pub.close()
    b.start()

    pub = raw_session(b, f"{uid}-pub", version=version)
    assert pub.connack.session_present is True
    if resend:
        pub.send(
            publish(f"{uid}/t", b"exactly-once", qos=2, dup=True, packet_id=pid, version=version)
        )
        rec = pub.expect(PacketType.PUBREC)
        assert rec.packet_id == pid and (rec.reason_code or 0) == 0
    pub.send(pubrel(pid, version=version))
    comp = pub.expect(PacketType.PUBCOMP)
    assert comp.packet_id == pid
    assert (comp.reason_code or 0) == 0, "PUBREL of a packet id the broker forgot (0x92)"
    watch = Paho(b, f"{uid}-watch", version=version, clean=False, expiry=EXPIRY)
    assert watch.session_present is True
    m = watch.get()
    assert (m.payload, m.qos) == (b"exactly-once", 2)
    watch.expect_nothing(1.0)
    # The packet identifier is free again: a new message with it is a new message.
    ack = pub.publish(f"{uid}/t", b"second", qos=2, packet_id=pid)
    assert (ack.type, ack.reason_code or 0) == (PacketType.PUBCOMP, 0)
    assert watch.get().payload == b"second"
    watch.expect_nothing()


# -- QoS 1 in flight ----------------------------------------------------------------------------


@VERSIONS
def test_unacknowledged_qos1_resent_with_dup(lmdb_broker, uid, version):
    """QoS 1 PUBLISHes sent and not acknowledged when the broker was killed come again after
    the restart with DUP and their packet identifiers, in order, before the queued ones."""
    b = lmdb_broker("always", {"broker": {"max_inflight": 3}})
    sub = raw_session(b, f"{uid}-sub", version=version)
    assert sub.subscribe(f"{uid}/t", qos=1).reason_codes == [1]
    pub = Paho(b, f"{uid}-pub", version=version)
    for i in range(6):
        assert pub.publish(f"{uid}/t", f"n{i}".encode(), qos=1) == 0
    first = [sub.expect(PacketType.PUBLISH) for _ in range(3)]  # the window: 3 in flight
    assert [p.payload for p in first] == [b"n0", b"n1", b"n2"]
    sub.send(puback(first[0].packet_id, version=version))  # n0 acknowledged
    sub.expect(PacketType.PUBLISH)  # n3 takes its place
    sub.ping()  # the PUBACK was processed
    b.stop(KILL)
    sub.close()
    pub.close()
    b.start()

    sub = raw_session(b, f"{uid}-sub", version=version)
    assert sub.connack.session_present is True
    again = [sub.expect(PacketType.PUBLISH) for _ in range(3)]
    assert [(p.payload, p.dup) for p in again] == [(b"n1", True), (b"n2", True), (b"n3", True)]
    assert [p.packet_id for p in again[:2]] == [p.packet_id for p in first[1:]]
    for p in again:
        sub.ack(p)
    rest = [sub.expect(PacketType.PUBLISH) for _ in range(2)]
    assert [(p.payload, p.dup) for p in rest] == [(b"n4", False), (b"n5", False)]
    for p in rest:
        sub.ack(p)
    sub.expect_nothing(QUIET)


def test_v311_no_early_resend_after_restart(lmdb_broker, uid):
    """MQTT 3.1.1: after the restart, the in-flight PUBLISH (DUP) and PUBREL are re-sent once
    on reconnect, and not again before broker.retry_interval (20 s by default)."""
    b = lmdb_broker("always")
    sub = raw_session(b, f"{uid}-sub", version=V311)
    assert sub.subscribe(f"{uid}/t", qos=2).reason_codes == [2]
    pub = Paho(b, f"{uid}-pub", version=V311)
    pub.publish(f"{uid}/t", b"released", qos=2)
    p1 = sub.expect(PacketType.PUBLISH)
    sub.send(pubrec(p1.packet_id, version=V311))
    sub.expect(PacketType.PUBREL)
    pub.publish(f"{uid}/t", b"unanswered", qos=1)
    p2 = sub.expect(PacketType.PUBLISH)
    b.stop(KILL)
    sub.close()
    pub.close()
    b.start()
    sub = raw_session(b, f"{uid}-sub", version=V311)
    got = [(p.type, p.packet_id) for p in drain(sub, 1.5)]
    assert sorted(got) == sorted(
        [(PacketType.PUBREL, p1.packet_id), (PacketType.PUBLISH, p2.packet_id)]
    ), got
