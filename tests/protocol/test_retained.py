"""Retained messages (MQTT 5.0 3.3.1.3, 3.8.3.1; MQTT 3.1.1 3.3.1.3): set, replace, clear, the
RETAIN flag on deliveries, Retain As Published, Retain Handling 0/1/2, wildcards, `$` topics and
`broker.max_retained_messages`."""

from __future__ import annotations

import time

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import (
    MESSAGE_EXPIRY_INTERVAL,
    PahoClient,
    RawClient,
    broker_fixture,
    sub_opts,
    unique_topic,
)

mbroker = broker_fixture()
#: `$SYS` publishing every second, so there are `$` topics to (not) match.
sys_broker = broker_fixture({"broker": {"sys_interval": "1s"}})
limited_broker = broker_fixture({"broker": {"max_retained_messages": 3}})

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def _retain(broker: BrokerProc, topic: str, payload: bytes, qos: int = 1, version: int = 5) -> None:
    """Publish a retained message and wait until the broker acknowledged it."""
    with RawClient(broker, version=version) as pub:
        pub.connect()
        pub.publish(topic, payload, qos=qos, retain=True)
        if qos == 0:
            pub.ping()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("stored_qos", "sub_qos"), [(0, 2), (1, 2), (2, 2), (2, 1), (2, 0)])
def test_retained_delivered_on_subscribe_with_retain_flag(
    mbroker: BrokerProc, version: int, stored_qos: int, sub_qos: int
) -> None:
    """[MQTT-3.3.1-5] a RETAIN=1 PUBLISH is stored; [MQTT-3.3.1-9] (v3.1.1 [MQTT-3.3.1-6],
    [MQTT-3.3.1-9]) a new subscription gets it with RETAIN=1, at min(stored QoS, granted QoS)
    ([MQTT-3.8.4-8])."""
    topic = unique_topic("ret")
    _retain(mbroker, topic, b"kept", qos=stored_qos, version=version)
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        sub.subscribe(topic, qos=sub_qos)
        msg = sub.expect_publish()
        assert (msg.topic, msg.payload, msg.retain) == (topic, b"kept", True)
        assert msg.qos == min(stored_qos, sub_qos)
        sub.expect_nothing()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_replaced_by_newer(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.3.1-5] a new retained message replaces the stored one for that topic: a later
    subscriber gets only the newest."""
    topic = unique_topic("rep")
    for payload in (b"v1", b"v2", b"v3"):
        _retain(mbroker, topic, payload, version=version)
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        assert [p.payload for p in sub.quiet(0.5)] == [b"v3"]


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_retained_payload_clears(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.3.1-6]/[MQTT-3.3.1-7] (v3.1.1 [MQTT-3.3.1-10]/[MQTT-3.3.1-11]) an empty retained
    PUBLISH removes the retained message and is not stored itself, yet it is forwarded to current
    subscribers as a normal message (RETAIN 0)."""
    topic = unique_topic("clr")
    _retain(mbroker, topic, b"old", version=version)
    with RawClient(mbroker, version=version) as live:
        live.connect()
        live.subscribe(topic, qos=1)
        assert live.expect_publish().payload == b"old"
        _retain(mbroker, topic, b"", version=version)
        msg = live.expect_publish()
        assert (msg.payload, msg.retain) == (b"", False)
    with RawClient(mbroker, version=version) as late:
        late.connect()
        late.subscribe(topic, qos=1)
        late.expect_nothing()


@pytest.mark.parametrize("version", VERSIONS)
def test_non_retained_publish_keeps_retained(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.3.1-8] (v3.1.1 [MQTT-3.3.1-12]) a RETAIN=0 PUBLISH neither stores nor replaces
    nor removes the retained message, even with an empty payload."""
    topic = unique_topic("keep")
    _retain(mbroker, topic, b"retained", version=version)
    with RawClient(mbroker, version=version) as pub:
        pub.connect()
        pub.publish(topic, b"live", qos=1)
        pub.publish(topic, b"", qos=1)
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        assert [(p.payload, p.retain) for p in sub.quiet(0.5)] == [(b"retained", True)]


@pytest.mark.parametrize("version", VERSIONS)
def test_live_forward_has_retain_zero(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.3.1-12] (v5, Retain As Published 0) and v3.1.1 [MQTT-3.3.1-9]: a message forwarded
    to an established subscription has RETAIN 0 even if it was published with RETAIN 1."""
    topic = unique_topic("live")
    with RawClient(mbroker, version=version) as sub:
        sub.connect()
        sub.subscribe(topic, qos=1)
        _retain(mbroker, topic, b"r1", version=version)
        msg = sub.expect_publish()
        assert (msg.payload, msg.retain) == (b"r1", False)


def test_retain_as_published(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.1-13] with Retain As Published 1 the forwarded RETAIN flag equals the published
    one (1 for a retained publish, 0 for a normal one); [MQTT-3.3.1-12] the same client's RAP=0
    subscription gets RETAIN 0."""
    root = unique_topic("rap")
    with RawClient(mbroker) as sub:
        sub.connect()
        sub.subscribe([(f"{root}/rap", sub_opts(1, rap=True)), (f"{root}/norap", sub_opts(1))])
        _retain(mbroker, f"{root}/rap", b"a")
        _retain(mbroker, f"{root}/norap", b"b")
        with RawClient(mbroker) as pub:
            pub.connect()
            pub.publish(f"{root}/rap", b"c", qos=1)
        got = sub.publishes(3)
        assert [(p.topic, p.payload, p.retain) for p in got] == [
            (f"{root}/rap", b"a", True),
            (f"{root}/norap", b"b", False),
            (f"{root}/rap", b"c", False),
        ]


def test_retain_handling_0_sends_on_every_subscribe(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.1-9] Retain Handling 0 sends the retained messages at the time of the subscribe,
    and [MQTT-3.8.4-4] again when the same subscription is replaced."""
    topic = unique_topic("rh0")
    _retain(mbroker, topic, b"r")
    with RawClient(mbroker) as sub:
        sub.connect()
        for _ in range(2):
            sub.subscribe([(topic, sub_opts(1, retain_handling=0))])
            assert [(p.payload, p.retain) for p in sub.quiet(0.4)] == [(b"r", True)]


def test_retain_handling_1_only_for_new_subscription(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.1-10] Retain Handling 1 sends the retained messages if the subscription did not
    exist, and not when it already existed."""
    topic = unique_topic("rh1")
    _retain(mbroker, topic, b"r")
    with RawClient(mbroker) as sub:
        sub.connect()
        sub.subscribe([(topic, sub_opts(1, retain_handling=1))])
        assert [p.payload for p in sub.quiet(0.4)] == [b"r"]
        sub.subscribe([(topic, sub_opts(1, retain_handling=1))])
        sub.expect_nothing()
        # after unsubscribing it is a new subscription again
        sub.unsubscribe([topic])
        sub.subscribe([(topic, sub_opts(1, retain_handling=1))])
        assert [p.payload for p in sub.quiet(0.4)] == [b"r"]


def test_retain_handling_2_never_sends(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.1-11] Retain Handling 2: no retained messages at subscribe, new or not; live
    messages still flow."""
    topic = unique_topic("rh2")
    _retain(mbroker, topic, b"r")
    with RawClient(mbroker) as sub:
        sub.connect()
        assert sub.subscribe([(topic, sub_opts(1, retain_handling=2))]).codes == [1]
        sub.expect_nothing()
        sub.subscribe([(topic, sub_opts(1, retain_handling=2))])
        sub.expect_nothing()
        _retain(mbroker, topic, b"live")
        assert sub.expect_publish().payload == b"live"


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_with_wildcard_subscriptions(mbroker: BrokerProc, version: int) -> None:
    """[MQTT-3.3.1-9]: a wildcard subscription gets the retained message of every matching topic
    and only those (4.7.1: `+` one level, `#` any number of levels including the parent)."""
    root = unique_topic("rw")
    topics = [root, f"{root}/a", f"{root}/b", f"{root}/a/x", f"{root}/a/x/y", f"{root}x"]
    for t in topics:
        _retain(mbroker, t, t.encode(), version=version)
    cases = {
        f"{root}/+": {f"{root}/a", f"{root}/b"},
        f"{root}/#": {root, f"{root}/a", f"{root}/b", f"{root}/a/x", f"{root}/a/x/y"},
        f"{root}/+/x": {f"{root}/a/x"},
        f"{root}/a/#": {f"{root}/a", f"{root}/a/x", f"{root}/a/x/y"},
    }
    for flt, expected in cases.items():
        with RawClient(mbroker, version=version) as sub:
            sub.connect()
            sub.subscribe(flt, qos=1)
            got = sub.quiet(0.5)
            assert all(p.retain for p in got)
            assert sorted(p.topic for p in got) == sorted(expected), flt
            assert all(p.payload == p.topic.encode() for p in got)


def test_retained_not_sent_for_dollar_topics_to_wildcards(sys_broker: BrokerProc) -> None:
    """[MQTT-4.7.2-1] topic filters starting with a wildcard do not match `$` topics, so a new
    `#` or `+/...` subscription gets no retained `$SYS` message, while `$SYS/#` itself does get
    messages (precondition, `broker.sys_interval: 1s`)."""
    with RawClient(sys_broker) as direct:
        direct.connect()
        direct.subscribe("$SYS/#", qos=0)
        got = [direct.expect_publish(2.5)]
        assert got[0].topic.startswith("$SYS/")
        # after the first $SYS round, subscribe with leading wildcards
        with RawClient(sys_broker) as wild:
            wild.connect()
            wild.subscribe([("#", 0), ("+/#", 0), ("+/broker/#", 0)])
            leaked = [p.topic for p in wild.quiet(0.5) if p.topic.startswith("$")]
            assert not leaked, f"`$` topics matched by leading wildcards: {leaked}"


def test_retained_message_expiry(mbroker: BrokerProc) -> None:
    """[MQTT-3.3.2-5] a retained message whose Message Expiry Interval has passed is no longer
    sent to new subscribers; [MQTT-3.3.2-6] before that it carries the remaining interval."""
    root = unique_topic("rexp")
    with RawClient(mbroker) as pub:
        pub.connect()
        pub.publish(f"{root}/short", b"s", qos=1, retain=True, props=[(MESSAGE_EXPIRY_INTERVAL, 1)])
        pub.publish(f"{root}/long", b"l", qos=1, retain=True, props=[(MESSAGE_EXPIRY_INTERVAL, 60)])
    time.sleep(2.2)  # > 2 s: brokers may count expiry in whole seconds
    with RawClient(mbroker) as sub:
        sub.connect()
        sub.subscribe(f"{root}/+", qos=1)
        got = sub.quiet(0.5)
        assert [p.topic for p in got] == [f"{root}/long"]
        assert 55 <= got[0].props.get(MESSAGE_EXPIRY_INTERVAL) <= 58


def test_retained_paho_to_paho(mbroker: BrokerProc) -> None:
    """paho-mqtt end to end: a retained message published by one client is received with the
    retain flag by a later subscriber ([MQTT-3.3.1-9]), cleared with an empty payload
    ([MQTT-3.3.1-6])."""
    topic = unique_topic("pret")
    with PahoClient(mbroker) as pub:
        pub.publish(topic, b"state", qos=1, retain=True)
        with PahoClient(mbroker) as sub:
            sub.subscribe(topic, qos=1)
            msg = sub.get()
            assert (msg.payload, msg.retain) == (b"state", True)
        pub.publish(topic, b"", qos=1, retain=True)
        with PahoClient(mbroker) as sub2:
            sub2.subscribe(topic, qos=1)
            sub2.expect_nothing()


@pytest.mark.fluxmq_only  # Mosquitto has no limit on the number of retained messages
def test_max_retained_messages_bound(limited_broker: BrokerProc) -> None:
    """`broker.max_retained_messages: 3`: a 4th retained topic is not stored (but still forwarded
    live), while replacing an already stored topic still works."""
    root = unique_topic("lim")
    with RawClient(limited_broker) as live:
        live.connect()
        live.subscribe(f"{root}/#", qos=1)
        for i in range(4):
            _retain(limited_broker, f"{root}/{i}", b"v%d" % i)
        assert len(live.publishes(4)) == 4
        _retain(limited_broker, f"{root}/0", b"v0-new")
        assert live.expect_publish().payload == b"v0-new"
    with RawClient(limited_broker) as sub:
        sub.connect()
        sub.subscribe(f"{root}/#", qos=1)
        got = {p.topic: p.payload for p in sub.quiet(0.5)}
        assert got == {f"{root}/0": b"v0-new", f"{root}/1": b"v1", f"{root}/2": b"v2"}
