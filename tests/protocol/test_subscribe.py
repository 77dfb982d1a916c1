"""SUBSCRIBE / UNSUBSCRIBE (MQTT 5.0 3.8-3.11, 4.7, 4.8.1; MQTT 3.1.1 3.8-3.11, 4.7): reason codes,
filter validation, replacement, wildcard matching, `$` topics, overlapping subscriptions,
Subscription Identifiers, No Local and the CONNACK capability flags."""

from __future__ import annotations

import uuid

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    RC_NO_SUBSCRIPTION_EXISTED,
    RC_TOPIC_FILTER_INVALID,
    RC_V3_SUBACK_FAILURE,
    RETAIN_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    ConnectionClosed,
    Packet,
    PahoClient,
    RawClient,
    broker_fixture,
    sub_opts,
    unique_topic,
)

mbroker = broker_fixture()
sys_broker = broker_fixture({"broker": {"sys_interval": "1s"}})

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def _pub(broker: BrokerProc, topic: str, payload: bytes = b"m", qos: int = 1) -> None:
    with RawClient(broker) as pub:
        pub.connect()
        pub.publish(topic, payload, qos=qos)
        if qos == 0:
            pub.ping()


# -- SUBACK / UNSUBACK ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_suback_one_reason_code_per_filter_in_order(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.8.4-5]/[MQTT-3.8.4-6]/[MQTT-3.9.3-1] one SUBSCRIBE with several filters is handled
    as a sequence of subscriptions and answered by one SUBACK with one code per filter, in
    order, each the granted QoS ([MQTT-3.8.4-7]); every subscription then delivers."""
    root = unique_topic("sa")
    filters = [(f"{root}/q2", 2), (f"{root}/q0", 0), (f"{root}/q1", 1), (f"{root}/+/w", 2)]
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        ack = sub.subscribe([(f, q) for f, q in filters])
        assert ack.codes == [2, 0, 1, 2]
        for t in (f"{root}/q2", f"{root}/q0", f"{root}/q1", f"{root}/x/w"):
            _pub(mbroker, t, qos=2)
        got = sub.publishes(4)
        assert [(p.topic, p.qos) for p in got] == [
            (f"{root}/q2", 2),
            (f"{root}/q0", 0),
            (f"{root}/q1", 1),
            (f"{root}/x/w", 2),
        ]


WILDCARD_INVALID = ["a/#/b", "a+", "#a", "a/b#", "+a/b", "a/+b/c", ""]
SHARED_INVALID = ["$share/g", "$share/+/x", "$share/g/", "$share//x", "$share/g#/x", "$share/g+/x"]


@pytest.mark.fluxmq_only  # Mosquitto closes the connection instead (v5: DISCONNECT 0x81)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("bad", WILDCARD_INVALID + SHARED_INVALID)
def test_invalid_filter_fails_only_that_filter(mbroker: BrokerProc, version: int, bad: str) -> None:
    """[MQTT-4.7.1-1] (`#` last and alone in its level), [MQTT-4.7.1-2] (`+` a whole level),
    [MQTT-4.7.3-1] (at least one character), [MQTT-4.8.2-1]/[MQTT-4.8.2-2] (`$share/` + non-empty
    ShareName without `/+#` + `/` + Topic Filter): FluxMQ rejects just that filter, with 0x8F
    (v5) / 0x80 (v3.1.1), grants the others in the same SUBSCRIBE ([MQTT-3.8.4-5]) and keeps the
    connection."""
    root = unique_topic("inv")
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        ack = sub.subscribe([(f"{root}/ok1", 1), (bad, 1), (f"{root}/ok2", 2)])
        fail = RC_TOPIC_FILTER_INVALID if version == 5 else RC_V3_SUBACK_FAILURE
        assert ack.codes == [1, fail, 2]
        _pub(mbroker, f"{root}/ok2")
        assert sub.expect_publish().topic == f"{root}/ok2"
        sub.ping()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "bad",
    WILDCARD_INVALID
    # Mosquitto 2.0.11 grants these, against [MQTT-4.8.2-1]/[MQTT-4.8.2-2]
    + [pytest.param(f, marks=pytest.mark.fluxmq_only) for f in SHARED_INVALID],
)
def test_invalid_filter_never_granted(mbroker: BrokerProc, version: int, bad: str) -> None:
    """[MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1], [MQTT-4.8.2-1], [MQTT-4.8.2-2]: an ill-formed
    Topic Filter is never granted: the broker either answers it with a failure code (>= 0x80) or
    closes the connection (4.13: a malformed packet), never with a granted QoS."""
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        try:
            ack: Packet | None = sub.subscribe([(bad, 1)])
        except ConnectionClosed:
            ack = None
        except AssertionError:
            # no SUBACK: then the broker must have closed (possibly after DISCONNECT 0x81/0x82)
            sub.wait_closed(1.0)
            ack = None
        if ack is not None:
            assert len(ack.codes) == 1 and ack.codes[0] >= 0x80, ack


def test_unsuback_reason_codes(mbroker: BrokerProc) -> None:
    """[MQTT-3.10.4-1] filters are compared character by character (no wildcard matching);
    [MQTT-3.10.4-6]/[MQTT-3.11.3-1] one UNSUBACK code per filter, in order: 0x00 where a
    subscription was deleted, 0x11 where none existed; [MQTT-3.10.4-2] deleted subscriptions
    stop delivering, the others go on."""
    root = unique_topic("us")
    with RawClient(mbroker) as sub:
        sub.connect()
        sub.subscribe([(f"{root}/+", 1), (f"{root}/a", 1)])
        ack = sub.unsubscribe([f"{root}/never", f"{root}/+", f"{root}/#", f"{root}/+"])
        assert ack.codes == [
            RC_NO_SUBSCRIPTION_EXISTED,
            0x00,
            RC_NO_SUBSCRIPTION_EXISTED,
            RC_NO_SUBSCRIPTION_EXISTED,
        ]
        _pub(mbroker, f"{root}/a", b"still")
        _pub(mbroker, f"{root}/b", b"gone")
        assert [(p.topic, p.payload) for p in sub.quiet(0.5)] == [(f"{root}/a", b"still")]


def test_unsubscribe_v311(mbroker: BrokerProc) -> None:
    """v3.1.1 [MQTT-3.10.4-4]/[MQTT-3.10.4-5]: UNSUBACK with the same Packet Identifier, also when
    nothing was subscribed; [MQTT-3.10.4-2] no delivery after unsubscribing."""
    topic = unique_topic("us3")
    with RawClient(mbroker, version=4) as sub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        ack = sub.unsubscribe([topic, topic + "/none"])
        assert ack.codes == []  # v3.1.1 UNSUBACK has no payload
        _pub(mbroker, topic)
        sub.expect_nothing()


@pytest.mark.parametrize("version", VERSIONS)
def test_resubscribe_replaces_subscription(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.8.4-3] subscribing again to an identical filter replaces the subscription: one
    delivery per message, at the new QoS (both upgrade and downgrade)."""
    topic = unique_topic("resub")
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        sub.subscribe(topic, qos=0)
        assert sub.subscribe(topic, qos=2).codes == [2]
        _pub(mbroker, topic, b"up", qos=2)
        got = sub.quiet(0.5)
        assert [(p.payload, p.qos) for p in got] == [(b"up", 2)]
        assert sub.subscribe(topic, qos=1).codes == [1]
        _pub(mbroker, topic, b"down", qos=2)
        got = sub.quiet(0.5)
        assert [(p.payload, p.qos) for p in got] == [(b"down", 1)]


# -- matching ------------------------------------------------------------------------------------
def _collect_ids(sub: RawClient, end_topic: str) -> dict[bytes, list[Packet]]:
    """Gather PUBLISHes by payload until the one on `end_topic` arrives."""
    out: dict[bytes, list[Packet]] = {}
    while True:
        p = sub.expect_publish()
        if p.topic == end_topic:
            return out
        out.setdefault(p.payload, []).append(p)


def test_wildcard_matching(mbroker: BrokerProc) -> None:
    """4.7.1: `+` matches exactly one level (possibly empty) and `#` any number of levels including
    the parent (`a/#` matches `a`); [MQTT-4.7.3-4] no normalisation (case matters, empty levels
    count); [MQTT-3.3.2-3] the delivered Topic Name is the published one. Each filter carries its
    own Subscription Identifier, so the identifiers on the deliveries tell which matched."""
    hexid = uuid.uuid4().hex[:10]
    root = f"wm/{hexid}"
    filters = {
        1: f"{root}/+",
        2: f"{root}/#",
        3: f"{root}/a/#",
        4: f"{root}/+/c",
        5: f"{root}/+/+",
        6: f"{root}/a",
        7: f"+/{hexid}/a",
        8: f"{root}/a/+/c",
    }
    expected = {
        f"{root}/a": {1, 2, 3, 6, 7},
        f"{root}/A": {1, 2},
        f"{root}/a/c": {2, 3, 4, 5},
        f"{root}/b/c": {2, 4, 5},
        f"{root}/a/b/c": {2, 3, 8},
        f"{root}/a//c": {2, 3, 8},
        root: {2},
        f"{root}/": {1, 2},
        f"{root}//c": {2, 4, 5},
        f"{root}x/a": set(),
    }
    end = unique_topic("end")
    with RawClient(mbroker) as sub:
        sub.connect()
        for sid, flt in filters.items():
            assert sub.subscribe([(flt, 0)], props=[(SUBSCRIPTION_IDENTIFIER, sid)]).codes == [0]
        sub.subscribe(end, qos=0)
        with RawClient(mbroker) as pub:
            pub.connect()
            for i, topic in enumerate(expected):
                pub.publish(topic, b"%d" % i, qos=1)
            pub.publish(end, b"end", qos=1)
        got = _collect_ids(sub, end)
        for i, (topic, ids) in enumerate(expected.items()):
            deliveries = got.get(b"%d" % i, [])
            assert all(p.topic == topic for p in deliveries)
            seen = {s for p in deliveries for s in p.props.all(SUBSCRIPTION_IDENTIFIER)}
            assert seen == ids, f"{topic!r}: matched {sorted(seen)}, expected {sorted(ids)}"


@pytest.mark.parametrize("version", VERSIONS)
def test_dollar_topics_not_matched_by_leading_wildcards(
    sys_broker: BrokerProc, version: int
) -> None:
    """[MQTT-4.7.2-1] filters starting with `#` or `+` do not match Topic Names beginning with
    `$`: over more than one `$SYS` period (`broker.sys_interval: 1s`) `#` and `+/#` get no `$`
    topic, while `$SYS/#` does receive."""
    with (
        RawClient(sys_broker, version=version) as wild,
        RawClient(sys_broker, version=version) as direct,
    ):
        wild.connect()
        wild.subscribe([("#", 0), ("+/#", 0), ("+", 0)])
        direct.connect()
        direct.subscribe("$SYS/#", qos=0)
        leaked = [p.topic for p in wild.quiet(1.6) if p.topic.startswith("$")]
        sys_msgs = direct.quiet(0.1)
        assert sys_msgs and all(p.topic.startswith("$SYS/") for p in sys_msgs)
        assert not leaked, f"`$` topics matched by leading wildcards: {sorted(set(leaked))}"


# -- overlapping subscriptions and Subscription Identifiers ------------------------------------------
def _overlap(broker: BrokerProc) -> list[Packet]:
    """One client with three overlapping subscriptions; returns what one QoS 2 message produced."""
    root = unique_topic("ov")
    with RawClient(broker) as sub:
        sub.connect()
        sub.subscribe([(f"{root}/+", 0)], props=[(SUBSCRIPTION_IDENTIFIER, 11)])
        sub.subscribe([(f"{root}/#", 2)], props=[(SUBSCRIPTION_IDENTIFIER, 22)])
        sub.subscribe([(f"{root}/a", 1)])
        _pub(broker, f"{root}/a", b"ov", qos=2)
        got = sub.quiet(0.6)
        assert got and all((p.topic, p.payload) == (f"{root}/a", b"ov") for p in got), got
        return got


def test_overlapping_subscriptions_max_qos_and_all_identifiers(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.4-2] a message matching several subscriptions of one client is delivered
    respecting the maximum QoS of all of them (here 2); [MQTT-3.3.4-3] the Subscription
    Identifiers of all matching subscriptions are sent (in one copy or spread over copies,
    [MQTT-3.3.4-4]/[MQTT-3.3.4-5])."""
    got = _overlap(mbroker)
    assert max(p.qos for p in got) == 2
    assert sorted(s for p in got for s in p.props.all(SUBSCRIPTION_IDENTIFIER)) == [11, 22]


@pytest.mark.fluxmq_only  # Mosquitto sends one copy per matching subscription (spec allows it)
def test_overlapping_subscriptions_single_delivery(mbroker: BrokerProc) -> None:
    """FluxMQ sends ONE copy for overlapping subscriptions: at the highest granted QoS
    ([MQTT-3.3.4-2]) carrying every matching Subscription Identifier ([MQTT-3.3.4-4])."""
    got = _overlap(mbroker)
    assert len(got) == 1, got
    assert got[0].qos == 2
    assert sorted(got[0].props.all(SUBSCRIPTION_IDENTIFIER)) == [11, 22]


def test_subscription_identifier_on_live_and_retained(mbroker: BrokerProc) -> None:
    """3.8.2.1.2/3.3.4: the Subscription Identifier is returned on messages delivered because of
    that subscription, both retained ones at subscribe time and live ones; a subscription
    without identifier delivers without one; re-subscribing with a new identifier replaces it
    ([MQTT-3.8.4-3])."""
    root = unique_topic("sid")
    with RawClient(mbroker) as pub:
        pub.connect()
        pub.publish(f"{root}/r", b"ret", qos=1, retain=True)
    with RawClient(mbroker) as sub:
        sub.connect()
        sub.subscribe([(f"{root}/r", 1)], props=[(SUBSCRIPTION_IDENTIFIER, 268435455)])
        ret = sub.expect_publish()
        assert ret.retain and ret.props.all(SUBSCRIPTION_IDENTIFIER) == [268435455]
        sub.subscribe([(f"{root}/plain", 1)])
        _pub(mbroker, f"{root}/r", b"live")
        _pub(mbroker, f"{root}/plain", b"plain")
        live, plain = sub.publishes(2)
        assert live.props.all(SUBSCRIPTION_IDENTIFIER) == [268435455]
        assert plain.props.all(SUBSCRIPTION_IDENTIFIER) == []
        sub.subscribe(
            [(f"{root}/r", sub_opts(1, retain_handling=2))], props=[(SUBSCRIPTION_IDENTIFIER, 5)]
        )
        _pub(mbroker, f"{root}/r", b"after")
        after = sub.expect_publish()
        assert after.props.all(SUBSCRIPTION_IDENTIFIER) == [5]


def test_subscription_identifiers_via_paho(mbroker: BrokerProc) -> None:
    """paho-mqtt sees the Subscription Identifier of its subscription on each delivery
    (3.3.2.3.8)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    topic = unique_topic("psid")
    with PahoClient(mbroker) as sub, PahoClient(mbroker) as pub:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 77
        sub.subscribe(topic, qos=1, props=props)
        pub.publish(topic, b"x", qos=1)
        msg = sub.get()
        ids = msg.properties.SubscriptionIdentifier
        assert (ids if isinstance(ids, list) else [ids]) == [77]


# -- No Local ----------------------------------------------------------------------------------------
def test_no_local(mbroker: BrokerProc) -> None:
    """[MQTT-3.8.3-3] with No Local 1, messages published by this ClientID are not forwarded to
    it; messages from other clients are, and other clients get its messages."""
    topic = unique_topic("nl")
    with RawClient(mbroker) as me, RawClient(mbroker) as other:
        me.connect()
        me.subscribe([(topic, sub_opts(1, no_local=True))])
        other.connect()
        other.subscribe(topic, qos=1)
        me.publish(topic, b"mine", qos=1)
        other.publish(topic, b"theirs", qos=1)
        assert [p.payload for p in me.quiet(0.5)] == [b"theirs"]
        assert [p.payload for p in other.quiet(0.3)] == [b"mine", b"theirs"]


def test_without_no_local_own_messages_are_received(mbroker: BrokerProc) -> None:
    """Control for [MQTT-3.8.3-3]: with No Local 0 a client does receive its own messages."""
    topic = unique_topic("nl0")
    with RawClient(mbroker) as me:
        me.connect()
        me.subscribe([(topic, sub_opts(1, no_local=False))])
        me.publish(topic, b"echo", qos=1)
        assert me.expect_publish().payload == b"echo"


# -- CONNACK capability flags ---------------------------------------------------------------------
def test_connack_capability_flags(mbroker: BrokerProc) -> None:
    """3.2.2.3.5/3.2.2.3.11-13: Retain Available, Wildcard Subscription Available, Subscription
    Identifier Available and Shared Subscription Available are absent (= supported) or 1, since
    the broker supports all four; each appears at most once."""
    with RawClient(mbroker) as c:
        ack = c.connect()
        for prop in (
            RETAIN_AVAILABLE,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            SHARED_SUBSCRIPTION_AVAILABLE,
        ):
            values = ack.props.all(prop)
            assert values in ([], [1]), f"property {prop:#x}: {values}"
