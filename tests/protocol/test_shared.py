"""Shared subscriptions `$share/<group>/<filter>` (MQTT 5.0 section 4.8.2): one member per message,
round-robin over connected members, groups independent of each other and of non-shared
subscriptions, granted QoS per member, no retained messages, offline members."""

from __future__ import annotations

import time

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    PUBACK,
    RC_PROTOCOL_ERROR,
    SESSION_EXPIRY_INTERVAL,
    PahoClient,
    RawClient,
    broker_fixture,
    build_ack,
    build_subscribe,
    sub_opts,
    unique_id,
    unique_topic,
)

mbroker = broker_fixture()


def _publish(broker: BrokerProc, topic: str, n: int, qos: int = 1) -> None:
    with RawClient(broker) as pub:
        pub.connect()
        for i in range(n):
            pub.publish(topic, b"%02d" % i, qos=qos)
        pub.ping()


def test_shared_round_robin_over_members(mbroker: BrokerProc) -> None:
    """4.8.2: each message of a shared subscription goes to exactly one member (none lost, none
    twice); FluxMQ (like Mosquitto) picks members round-robin, so 30 messages over 3 members give
    10 each and any 3 consecutive messages go to 3 different members."""
    topic = unique_topic("rr")
    members = [RawClient(mbroker) for _ in range(3)]
    try:
        for m in members:
            m.connect()
            assert m.subscribe(f"$share/grp/{topic}", qos=1).codes == [1]
        _publish(mbroker, topic, 30)
        owner: dict[int, int] = {}
        for idx, m in enumerate(members):
            for p in m.quiet(0.5):
                n = int(p.payload)
                assert n not in owner, f"message {n} delivered to two members"
                owner[n] = idx
        assert sorted(owner) == list(range(30)), f"lost: {set(range(30)) - set(owner)}"
        counts = [list(owner.values()).count(i) for i in range(3)]
        assert counts == [10, 10, 10], counts
        for i in range(28):
            assert len({owner[i], owner[i + 1], owner[i + 2]}) == 3, f"not round-robin at {i}"
    finally:
        for m in members:
            m.close()


def test_shared_qos0_with_paho_members(mbroker: BrokerProc) -> None:
    """4.8.2 with paho-mqtt members and QoS 0: every message reaches exactly one member and the
    load is spread evenly (round-robin: 10 each of 30)."""
    topic = unique_topic("rrp")
    members = [PahoClient(mbroker) for _ in range(3)]
    try:
        for m in members:
            assert m.subscribe(f"$share/paho/{topic}", qos=0) == [0]
        _publish(mbroker, topic, 30, qos=0)
        per = [[int(msg.payload) for msg in m.drain(0.5)] for m in members]
        everything = sorted(n for lst in per for n in lst)
        assert everything == list(range(30))
        assert [len(lst) for lst in per] == [10, 10, 10], per
    finally:
        for m in members:
            m.disconnect()


def test_groups_and_non_shared_each_get_every_message(mbroker: BrokerProc) -> None:
    """4.8.2: each Shared Subscription (group) is separate: every group gets every message once,
    and a non-shared subscription on the same filter also gets every message."""
    topic = unique_topic("grp")
    clients: dict[str, RawClient] = {}
    try:
        for name, flt in (
            ("a1", f"$share/A/{topic}"),
            ("a2", f"$share/A/{topic}"),
            ("b1", f"$share/B/{topic}"),
            ("plain", topic),
        ):
            c = RawClient(mbroker)
            c.connect()
            c.subscribe(flt, qos=1)
            clients[name] = c
        _publish(mbroker, topic, 6)
        got = {name: sorted(int(p.payload) for p in c.quiet(0.5)) for name, c in clients.items()}
        assert sorted(got["a1"] + got["a2"]) == list(range(6))
        assert got["b1"] == list(range(6))
        assert got["plain"] == list(range(6))
    finally:
        for c in clients.values():
            c.close()


def test_shared_subscription_with_wildcard_filter(mbroker: BrokerProc) -> None:
    """4.8.2: the Topic Filter after the ShareName may contain wildcards; the delivered Topic
    Name is the published one ([MQTT-3.3.2-3])."""
    root = unique_topic("sw")
    with RawClient(mbroker) as m:
        m.connect()
        m.subscribe(f"$share/w/{root}/+/x", qos=1)
        with RawClient(mbroker) as pub:
            pub.connect()
            pub.publish(f"{root}/a/x", b"1", qos=1)
            pub.publish(f"{root}/b/y", b"2", qos=1)
        assert [p.topic for p in m.quiet(0.5)] == [f"{root}/a/x"]


def test_shared_members_get_their_granted_qos(mbroker: BrokerProc) -> None:
    """[MQTT-4.8.2-3] members may be granted different QoS; each delivery respects the granted
    QoS of the member it goes to."""
    topic = unique_topic("sq")
    with RawClient(mbroker) as low, RawClient(mbroker) as high:
        low.connect()
        high.connect()
        assert low.subscribe(f"$share/q/{topic}", qos=0).codes == [0]
        assert high.subscribe(f"$share/q/{topic}", qos=2).codes == [2]
        _publish(mbroker, topic, 6, qos=2)
        lows, highs = low.quiet(0.5), high.quiet(0.1)
        assert len(lows) + len(highs) == 6 and lows and highs
        assert {p.qos for p in lows} == {0}
        assert {p.qos for p in highs} == {2}


def test_member_leaving_group_gets_nothing_more(mbroker: BrokerProc) -> None:
    """4.8.2/[MQTT-3.10.4-2]: after one member unsubscribes and another disconnects (clean
    session), all further messages go to the remaining member."""
    topic = unique_topic("leave")
    flt = f"$share/l/{topic}"
    with RawClient(mbroker) as stay, RawClient(mbroker) as unsub, RawClient(mbroker) as gone:
        for c in (stay, unsub, gone):
            c.connect()
            c.subscribe(flt, qos=1)
        unsub.unsubscribe([flt])
        gone.disconnect()
        time.sleep(0.2)
        _publish(mbroker, topic, 6)
        assert sorted(int(p.payload) for p in stay.quiet(0.5)) == list(range(6))
        unsub.expect_nothing(0.1)


def test_rejected_shared_delivery_not_sent_to_another_member(mbroker: BrokerProc) -> None:
    """[MQTT-4.8.2-6] if a member answers a shared delivery with a PUBACK reason code >= 0x80, the
    server discards the message and does not send it to any other subscriber."""
    topic = unique_topic("rej")
    with RawClient(mbroker, auto_ack=False) as rejecter, RawClient(mbroker) as other:
        rejecter.connect()
        other.connect()
        rejecter.subscribe(f"$share/r/{topic}", qos=1)
        other.subscribe(f"$share/r/{topic}", qos=1)
        _publish(mbroker, topic, 6)
        rejected = rejecter.quiet(0.5)
        assert rejected, "round-robin should give the rejecting member some messages"
        for p in rejected:
            rejecter.send(build_ack(PUBACK, p.pid or 0, rc=0x80))
        accepted = other.quiet(0.6)
        r = sorted(int(p.payload) for p in rejected)
        a = sorted(int(p.payload) for p in accepted)
        assert not set(r) & set(a), f"rejected messages re-sent to the other member: {r} {a}"
        assert sorted(r + a) == list(range(6))


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 sends retained messages on a shared subscribe
def test_retained_not_sent_on_shared_subscribe(mbroker: BrokerProc) -> None:
    """3.3.1.3: retained messages are sent when a new Non-shared Subscription is made; 4.8.2 /
    3.8.3.1: they are not sent to a Shared Subscription (there is no normative statement number
    for this rule). Live messages still flow to the member."""
    topic = unique_topic("sret")
    with RawClient(mbroker) as pub:
        pub.connect()
        pub.publish(topic, b"retained", qos=1, retain=True)
    with RawClient(mbroker) as m:
        m.connect()
        assert m.subscribe(f"$share/g/{topic}", qos=1).codes == [1]
        m.expect_nothing(0.5)
        _publish(mbroker, topic, 1)
        assert m.expect_publish().payload == b"00"


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 keeps queueing to the offline member in turn
def test_messages_for_offline_member_go_to_connected_members(mbroker: BrokerProc) -> None:
    """4.8.2 leaves the choice of member to the server; FluxMQ round-robins over CONNECTED
    members, so while a member with a persistent session is offline every QoS 1 message goes to
    the connected one and none wait in the offline member's session."""
    topic = unique_topic("off")
    flt = f"$share/o/{topic}"
    cid = unique_id("shoff")
    props = [(SESSION_EXPIRY_INTERVAL, 60)]
    with RawClient(mbroker) as online:
        online.connect()
        online.subscribe(flt, qos=1)
        with RawClient(mbroker) as offline:
            offline.connect(client_id=cid, clean=True, props=props)
            offline.subscribe(flt, qos=1)
            offline.disconnect()
        time.sleep(0.2)
        _publish(mbroker, topic, 6)
        assert sorted(int(p.payload) for p in online.quiet(0.5)) == list(range(6))
        with RawClient(mbroker) as back:
            ack = back.connect(client_id=cid, clean=False, props=props)
            assert ack.session_present
            back.expect_nothing(0.5)
            back.disconnect(props=[(SESSION_EXPIRY_INTERVAL, 0)])


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 grants it
def test_no_local_on_shared_subscription_is_protocol_error(mbroker: BrokerProc) -> None:
    """[MQTT-3.8.3-4] it is a Protocol Error to set No Local on a Shared Subscription: DISCONNECT
    0x82 and the connection closes ([MQTT-4.13.1-1])."""
    with RawClient(mbroker) as c:
        c.connect()
        c.send(build_subscribe(1, [(f"$share/g/{unique_topic('nl')}", sub_opts(1, no_local=True))]))
        c.expect_disconnect(RC_PROTOCOL_ERROR)
