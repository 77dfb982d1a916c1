"""Routing: Dispatcher (subscribe, unsubscribe, publish, shared groups) and Session queues.

Most tests use offline sessions (no Outlet): a QoS>0 delivery to an offline session is queued,
so `Session.queued_items()` shows exactly what was delivered, at which QoS, with which retain
flag and Subscription Identifiers. A few tests need an online session; they attach a real
ChannelCore (the protocol layer's Outlet) over a RecordingTransport and decode what it wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.codec import Publish, encode
from fluxmq._speedups.dispatch import Dispatcher, SharedGroup
from fluxmq._speedups.message import Message
from fluxmq._speedups.session import Session, Subscription

from tests.unit import V5, V311, connected_channel, run_one_turn


def msg(
    topic: str = "a/b",
    qos: int = 1,
    payload: bytes = b"x",
    *,
    retain: bool = False,
    origin: str | None = None,
) -> Message:
    """A message as a publisher would hand it to the dispatcher."""
    return Message(topic, payload, qos, retain, origin=origin)


def sub(session: Session, topic_filter: str, qos: int = 1, **options: object) -> Subscription:
    """A Subscription of `session` (options: share_group, no_local, retain_as_published,
    retain_handling, identifier)."""
    return Subscription(session, topic_filter, qos, **options)


def queued(session: Session) -> list[tuple[str, bytes, int, bool, list | None]]:
    """What is queued for an offline session: (topic, payload, qos, retain, sub_ids sorted)."""
    return [
        (
            e.msg.topic,
            e.msg.payload,
            e.qos,
            e.retain,
            None if e.sub_ids is None else sorted(e.sub_ids),
        )
        for e in session.queued_items()
    ]


# ----------------------------------------------------------------------------------------------
# Subscribing and unsubscribing


def test_subscribe_matching_and_count() -> None:
    """subscribe() returns 1 for a new subscription and 0 for a replacement; matching() lists the
    subscriptions whose filters match; subscription_count counts them."""
    d = Dispatcher()
    s1, s2 = Session("c1"), Session("c2")
    a = sub(s1, "a/+")
    assert d.subscribe(a) == 1
    assert d.subscribe(sub(s2, "a/b")) == 1
    assert d.subscribe(sub(s1, "x/#")) == 1
    assert d.subscription_count == 3
    matches = d.matching("a/b")
    assert len(matches) == 2 and a in matches
    assert {m.session.client_id for m in matches} == {"c1", "c2"}
    assert d.matching("a/b/c") == [] and [x.topic_filter for x in d.matching("x")] == ["x/#"]
    replacement = sub(s1, "a/+", 2)
    assert d.subscribe(replacement) == 0  # same session and filter [MQTT-3.8.4-3]
    assert d.subscription_count == 3
    assert replacement in d.matching("a/c") and a not in d.matching("a/c")


def test_replacing_a_subscription_changes_delivery() -> None:
    """A SUBSCRIBE for an existing filter replaces the subscription [MQTT-3.8.4-3]: the new
    QoS is used from the next publish on (the route cache is invalidated)."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/#", 0))
    assert d.publish(msg("a/b", 1)) == 0  # QoS 0 for an offline session: not queued
    d.subscribe(sub(s, "a/#", 1))
    assert d.publish(msg("a/b", 1)) == 1
    assert queued(s) == [("a/b", b"x", 1, False, None)]


def test_unsubscribe_returns_the_subscription() -> None:
    """unsubscribe() removes and returns the session's subscription; None when there is none
    (3.10.4: an UNSUBSCRIBE for a filter not subscribed is still acknowledged)."""
    d = Dispatcher()
    s, other = Session("c"), Session("o")
    a = sub(s, "a/+")
    d.subscribe(a)
    d.subscribe(sub(other, "a/+"))
    assert d.unsubscribe(s, "a/#") is None
    assert d.unsubscribe(s, "a/+") is a
    assert d.unsubscribe(s, "a/+") is None
    assert d.subscription_count == 1
    assert [x.session for x in d.matching("a/b")] == [other]


def test_unsubscribe_only_removes_its_own_session() -> None:
    """A different Session object with the same client id (a stale one) cannot remove the
    current session's subscription."""
    d = Dispatcher()
    current, stale = Session("c"), Session("c")
    d.subscribe(sub(current, "t"))
    assert d.unsubscribe(stale, "t") is None
    assert d.subscription_count == 1


def test_unsubscribe_stops_delivery_and_keeps_what_was_queued() -> None:
    """After UNSUBSCRIBE no new messages are delivered for that filter [MQTT-3.10.4-2];
    messages already queued stay queued (3.10.4: the Server MAY continue to deliver them)."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/#"))
    assert d.publish(msg("a/1")) == 1
    d.unsubscribe(s, "a/#")
    assert d.publish(msg("a/2")) == 0
    assert [t for t, *_ in queued(s)] == ["a/1"]


def test_route_cache_follows_subscription_changes() -> None:
    """The per-topic route cache never serves a stale route: new, removed and replaced
    subscriptions take effect on the next publish, also with a tiny cache."""
    d = Dispatcher(cache_max=2)
    sessions = [Session(f"c{i}") for i in range(4)]
    for i, s in enumerate(sessions):
        for topic in ("t/1", "t/2", "t/3"):
            d.publish(msg(topic))  # warm (and overflow) the cache
        d.subscribe(sub(s, "t/+"))
        assert d.publish(msg("t/1")) == i + 1
    d.unsubscribe(sessions[0], "t/+")
    assert d.publish(msg("t/1")) == 3
    assert d.publish(msg("t/2")) == 3


# ----------------------------------------------------------------------------------------------
# Publishing to offline sessions


def test_qos_0_is_not_queued_for_offline_sessions() -> None:
    """A QoS 0 message for an offline session is dropped (as Mosquitto does; 3.1.2.4 lets the
    server choose): publish() counts no delivery, nothing is queued."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/b", 2))
    assert d.publish(msg("a/b", 0)) == 0
    assert s.queued_count == 0


@pytest.mark.parametrize(
    ("msg_qos", "sub_qos", "expected"), [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 2), (2, 0, None)]
)
def test_delivered_qos_is_the_minimum(msg_qos: int, sub_qos: int, expected: int | None) -> None:
    """Delivered QoS = min(published QoS, granted QoS) [MQTT-3.8.4-8] (3.1.1 [MQTT-3.8.4-6]);
    a QoS 0 result for an offline session is not queued."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/b", sub_qos))
    n = d.publish(msg("a/b", msg_qos))
    if expected is None:
        assert n == 0 and s.queued_count == 0
    else:
        assert n == 1 and [e.qos for e in s.queued_items()] == [expected]


def test_publish_counts_one_delivery_per_session() -> None:
    """publish() returns the number of sessions that got (or queued) the message; sessions
    without a matching subscription get nothing."""
    d = Dispatcher()
    sessions = [Session(f"c{i}") for i in range(5)]
    for i, s in enumerate(sessions):
        d.subscribe(sub(s, "a/#" if i % 2 else "b/#"))
    assert d.publish(msg("a/x")) == 2
    assert d.publish(msg("b/x")) == 3
    assert d.publish(msg("c/x")) == 0
    assert [s.queued_count for s in sessions] == [1, 1, 1, 1, 1]


def test_queue_is_fifo_and_keeps_message_properties() -> None:
    """Queued messages keep their order and the message itself (payload, properties)."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "q/#", 2))
    sent = [Message(f"q/{i}", bytes([i]) * i, 1 + i % 2, content_type=f"ct{i}") for i in range(10)]
    for m in sent:
        d.publish(m)
    items = s.queued_items()
    assert [(e.msg.topic, e.msg.payload, e.msg.content_type, e.qos) for e in items] == [
        (m.topic, m.payload, m.content_type, m.qos) for m in sent
    ]


def test_overlapping_subscriptions_give_one_delivery() -> None:
    """Overlapping subscriptions of one client: a single copy at the maximum QoS of the matching
    subscriptions [MQTT-3.3.4-2], carrying every matching Subscription Identifier, in any order
    [MQTT-3.3.4-3] [MQTT-3.3.4-4]."""
    d = Dispatcher()
    s, other = Session("c"), Session("o")
    d.subscribe(sub(s, "a/+", 1, identifier=1))
    d.subscribe(sub(s, "a/#", 2, identifier=2))
    d.subscribe(sub(s, "a/b", 0))  # no identifier
    d.subscribe(sub(s, "#", 0, identifier=268_435_455))
    d.subscribe(sub(s, "x/#", 2, identifier=99))  # does not match
    d.subscribe(sub(other, "a/b", 1, identifier=7))
    assert d.publish(msg("a/b", 2)) == 2
    assert queued(s) == [("a/b", b"x", 2, False, [1, 2, 268_435_455])]
    assert queued(other) == [("a/b", b"x", 1, False, [7])]
    assert d.publish(msg("a/b", 1)) == 2  # capped by the message's QoS
    assert queued(s)[1] == ("a/b", b"x", 1, False, [1, 2, 268_435_455])


def test_overlap_without_identifiers_has_none() -> None:
    """Without any Subscription Identifier the delivery carries none (None, not [])."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/+"))
    d.subscribe(sub(s, "a/#"))
    d.publish(msg("a/b"))
    assert queued(s) == [("a/b", b"x", 1, False, None)]


def test_no_local() -> None:
    """No Local: messages are not forwarded to the client that published them [MQTT-3.8.3-3];
    other clients, and messages without an origin (bridges, the broker), still are."""
    d = Dispatcher()
    me, other = Session("me"), Session("other")
    d.subscribe(sub(me, "a/#", 1, no_local=True))
    d.subscribe(sub(other, "a/#", 1, no_local=True))
    assert d.publish(msg("a/b", origin="me")) == 1
    assert me.queued_count == 0 and other.queued_count == 1
    assert d.publish(msg("a/b", origin=None)) == 2
    assert d.publish(msg("a/b", origin="third")) == 2
    assert me.queued_count == 2 and other.queued_count == 3


def test_no_local_with_an_overlapping_plain_subscription() -> None:
    """A client's own message that matches a No Local and a plain subscription is delivered
    through the plain one only: its QoS and its identifiers, not the No Local one's."""
    d = Dispatcher()
    me = Session("me")
    d.subscribe(sub(me, "a/#", 2, no_local=True, identifier=1))
    d.subscribe(sub(me, "a/b", 1, identifier=2))
    d.subscribe(sub(me, "+/b", 1, identifier=3, no_local=True))
    assert d.publish(msg("a/b", 2, origin="me")) == 1
    assert queued(me) == [("a/b", b"x", 1, False, [2])]
    assert d.publish(msg("a/b", 2, origin="you")) == 1
    assert queued(me)[1] == ("a/b", b"x", 2, False, [1, 2, 3])


@pytest.mark.parametrize(
    ("retain", "rap", "expected"), [(True, False, False), (True, True, True), (False, True, False)]
)
def test_retain_as_published(retain: bool, rap: bool, expected: bool) -> None:
    """Forwarded messages have RETAIN 0 unless Retain As Published is set, then the received
    flag [MQTT-3.3.1-12] [MQTT-3.3.1-13] (3.1.1 [MQTT-3.3.1-9]: always 0)."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/b", 1, retain_as_published=rap))
    d.publish(msg("a/b", retain=retain))
    assert [e.retain for e in s.queued_items()] == [expected]


def test_retained_publish_goes_to_the_retain_hook() -> None:
    """Retained messages are handed to on_retain (the retained store) even without
    subscribers; other messages are not."""
    d = Dispatcher()
    kept: list[Message] = []
    d.on_retain = kept.append
    m = msg("r/t", retain=True)
    assert d.publish(m) == 0
    assert kept == [m]
    d.publish(msg("r/t", retain=False))
    assert kept == [m]


def test_expired_message_is_not_delivered() -> None:
    """A message whose expiry interval has passed is not delivered (3.3.2.3.3 [MQTT-3.3.2-5])."""
    d = Dispatcher()
    s = Session("c")
    d.subscribe(sub(s, "a/b"))
    gone = Message("a/b", b"x", 1, expires_at=time.time() - 1)
    assert d.publish(gone) == 0 and s.queued_count == 0
    fresh = Message("a/b", b"x", 1, expires_at=time.time() + 60)
    assert d.publish(fresh) == 1 and s.queued_count == 1


# ----------------------------------------------------------------------------------------------
# Queue bound and policy


def test_queue_bound_evicts_the_oldest() -> None:
    """When the queue is full, the default policy drops the oldest queued message to make room;
    the delivery still counts, and `dropped` counts the eviction."""
    d = Dispatcher()
    s = Session("c", max_queue=3)
    d.subscribe(sub(s, "t/#"))
    results = [d.publish(msg(f"t/{i}")) for i in range(5)]
    assert results == [1, 1, 1, 1, 1]
    assert [t for t, *_ in queued(s)] == ["t/2", "t/3", "t/4"]
    assert s.dropped == 2 and s.queued_count == 3


def test_queue_bound_rejects_the_newest() -> None:
    """With drop_new (offline_queue_policy: reject) the new message is dropped: no delivery."""
    d = Dispatcher()
    s = Session("c", max_queue=3, drop_new=True)
    d.subscribe(sub(s, "t/#"))
    results = [d.publish(msg(f"t/{i}")) for i in range(5)]
    assert results == [1, 1, 1, 0, 0]
    assert [t for t, *_ in queued(s)] == ["t/0", "t/1", "t/2"]
    assert s.dropped == 2


def test_one_full_queue_does_not_affect_others() -> None:
    """Queues are per session: a full queue drops only for its own session."""
    d = Dispatcher()
    small, big = Session("small", max_queue=1, drop_new=True), Session("big")
    d.subscribe(sub(small, "t"))
    d.subscribe(sub(big, "t"))
    assert [d.publish(msg("t")) for _ in range(3)] == [2, 1, 1]
    assert small.queued_count == 1 and big.queued_count == 3


# ----------------------------------------------------------------------------------------------
# Shared subscriptions (4.8.2)


def test_shared_group_membership() -> None:
    """$share/<name>/<filter> members form one SharedGroup per (name, filter); each session is
    a member once (a second SUBSCRIBE replaces); the last UNSUBSCRIBE removes the group."""
    d = Dispatcher()
    s1, s2 = Session("c1"), Session("c2")
    assert d.subscribe(sub(s1, "a/#", share_group="g")) == 1
    assert d.subscribe(sub(s2, "a/#", share_group="g")) == 1
    assert d.subscribe(sub(s1, "a/#", 2, share_group="g")) == 0
    assert d.subscribe(sub(s1, "a/#", share_group="h")) == 1
    g = d.shared_group("g", "a/#")
    assert isinstance(g, SharedGroup) and (g.name, g.topic_filter) == ("g", "a/#")
    assert [m.session.client_id for m in g.members] == ["c1", "c2"] and g.members[0].qos == 2
    assert d.subscription_count == 3
    groups = [v for v in d.matching("a/b") if isinstance(v, SharedGroup)]
    assert sorted(x.name for x in groups) == ["g", "h"]
    assert d.unsubscribe(s1, "a/#", "g").session is s1
    assert d.unsubscribe(s1, "a/#", "g") is None
    assert d.unsubscribe(s1, "a/#", "nope") is None
    assert d.unsubscribe(s2, "a/#", "g").session is s2
    assert d.shared_group("g", "a/#") is None and d.subscription_count == 1
    assert [v.name for v in d.matching("a/b")] == ["h"]


def test_shared_group_offline_members_take_turns() -> None:
    """Each message goes to exactly one member of the group (4.8.2: the message is sent to only
    one of the subscribing sessions); with every member offline, QoS>0 messages go round robin
    into the members' queues."""
    d = Dispatcher()
    members = [Session(f"m{i}") for i in range(3)]
    for s in members:
        d.subscribe(sub(s, "job/+", 1, share_group="workers", identifier=5))
    results = [d.publish(msg(f"job/{i}", 1)) for i in range(9)]
    assert results == [1] * 9
    assert [s.queued_count for s in members] == [3, 3, 3]
    got = sorted(t for s in members for t, *_ in queued(s))
    assert got == sorted(f"job/{i}" for i in range(9))
    assert all(e.sub_ids == [5] and e.group is not None for s in members for e in s.queued_items())


def test_shared_group_qos0_with_every_member_offline() -> None:
    """A QoS 0 message for a group whose members are all offline is delivered to nobody."""
    d = Dispatcher()
    members = [Session(f"m{i}") for i in range(2)]
    for s in members:
        d.subscribe(sub(s, "t", 1, share_group="g"))
    assert d.publish(msg("t", 0)) == 0
    assert [s.queued_count for s in members] == [0, 0]


def test_two_groups_and_a_plain_subscriber_each_get_a_copy() -> None:
    """Every group gets the message once, independently of other groups and of non-shared
    subscriptions (even of the same session)."""
    d = Dispatcher()
    a, b, c = Session("a"), Session("b"), Session("c")
    d.subscribe(sub(a, "t/#", share_group="g1"))
    d.subscribe(sub(b, "t/#", share_group="g1"))
    d.subscribe(sub(c, "t/#", share_group="g2"))
    d.subscribe(sub(a, "t/x"))
    assert d.publish(msg("t/x")) == 3
    assert a.queued_count + b.queued_count == 2 and c.queued_count == 1


def test_shared_delivery_qos_is_capped_by_the_member() -> None:
    """A member receives at min(message QoS, its subscription QoS) [MQTT-3.8.4-8]."""
    d = Dispatcher()
    s = Session("m")
    d.subscribe(sub(s, "t", 1, share_group="g"))
    d.publish(msg("t", 2))
    assert [e.qos for e in s.queued_items()] == [1]


def test_take_shared_and_redeliver_with_nobody_else_online() -> None:
    """A departing member's shared messages can be taken back; with no other member online they
    return to the original member's queue (nothing is lost)."""
    d = Dispatcher()
    s1, s2 = Session("m1"), Session("m2")
    d.subscribe(sub(s1, "t", 1, share_group="g"))
    d.subscribe(sub(s2, "t", 1, share_group="g"))
    d.subscribe(sub(s1, "t"))  # a plain subscription too: not taken
    for _ in range(4):
        d.publish(msg("t"))
    plain_before = [e for e in s1.queued_items() if e.group is None]
    taken = s1.take_shared()
    assert len(taken) == 2 and all(e.group is not None for e in taken)
    assert s1.queued_items() == plain_before
    assert len(plain_before) == 4 and s2.queued_count == 2
    assert d.redeliver_shared(s1, taken) == 0
    back = s1.queued_items()[4:]
    assert [e.msg for e in back] == [e.msg for e in taken]
    assert all(e.group is taken[0].group for e in back)


def test_shared_group_offline_member_that_cannot_queue_is_skipped() -> None:
    """With every member offline, a QoS 1 message must go to a member whose session can queue
    it (one subscribed at QoS >= 1), not be lost on a QoS 0 member."""
    d = Dispatcher()
    q0, q1 = Session("q0"), Session("q1")
    d.subscribe(sub(q0, "t", 0, share_group="g"))
    d.subscribe(sub(q1, "t", 1, share_group="g"))
    assert [d.publish(msg("t", 1)) for _ in range(4)] == [1, 1, 1, 1]
    assert q1.queued_count == 4


def test_publish_to_delivers_to_one_session() -> None:
    """publish_to() (retained messages on SUBSCRIBE, wills) delivers to that session only."""
    d = Dispatcher()
    s = Session("c")
    assert d.publish_to(s, msg("a"), 1, True, [3]) == 1
    assert queued(s) == [("a", b"x", 1, True, [3])]
    assert d.publish_to(s, msg("a", 0), 0, False, None) == 0


# ----------------------------------------------------------------------------------------------
# Online sessions, through a real ChannelCore over a RecordingTransport


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private event loop for the Flusher."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_online_qos0_is_sent_not_queued(loop: asyncio.AbstractEventLoop) -> None:
    """A connected session receives QoS 0 at once (one write per loop turn), nothing queued."""
    d, fl = Dispatcher(), Flusher(loop)
    s = Session("c")
    d.subscribe(sub(s, "a/#", 1, retain_as_published=True))
    _, tr = connected_channel(d, s, fl, V311)
    assert d.publish(msg("a/b", 0, b"hello", retain=True)) == 1
    assert s.queued_count == 0 and tr.writes == []
    run_one_turn(loop)
    assert tr.packets(V311) == [Publish("a/b", b"hello", 0, retain=True)]


def test_online_overlap_single_publish_with_all_identifiers(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Online, overlapping subscriptions still give a single PUBLISH carrying every matching
    Subscription Identifier [MQTT-3.3.4-4]."""
    d, fl = Dispatcher(), Flusher(loop)
    s = Session("c")
    d.subscribe(sub(s, "a/+", 1, identifier=10))
    d.subscribe(sub(s, "a/#", 0, identifier=20))
    _, tr = connected_channel(d, s, fl, V5)
    d.publish(msg("a/b", 1))
    run_one_turn(loop)
    (p,) = tr.packets(V5)
    assert p.qos == 1 and sorted(p.properties.subscription_identifiers) == [10, 20]


def test_shared_group_prefers_online_members(loop: asyncio.AbstractEventLoop) -> None:
    """A shared message goes to one connected member, round robin among the connected ones;
    an offline member gets nothing while someone is online."""
    d, fl = Dispatcher(), Flusher(loop)
    online = [Session("on1"), Session("on2")]
    offline = Session("off")
    for s in [*online, offline]:
        d.subscribe(sub(s, "t/#", 1, share_group="g"))
    transports = [connected_channel(d, s, fl, V311)[1] for s in online]
    for i in range(6):
        assert d.publish(msg(f"t/{i}", 1)) == 1
    run_one_turn(loop)
    got = [[p.topic for p in tr.packets(V311)] for tr in transports]
    assert [len(g) for g in got] == [3, 3]
    assert sorted(got[0] + got[1]) == [f"t/{i}" for i in range(6)]
    assert offline.queued_count == 0


def test_inflight_window_queues_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    """At most `window` QoS>0 messages are in flight (the client's Receive Maximum,
    [MQTT-3.3.4-9]); the rest wait in the queue and go out as PUBACKs arrive, in order."""
    d, fl = Dispatcher(), Flusher(loop)
    s = Session("c", window=2)
    d.subscribe(sub(s, "t", 1))
    _, tr = connected_channel(d, s, fl, V5)
    for i in range(5):
        d.publish(msg("t", 1, bytes([i])))
    assert s.inflight_count == 2 and s.queued_count == 3
    run_one_turn(loop)
    first = tr.packets(V5)
    assert [(p.packet_id, p.payload) for p in first] == [(1, b"\x00"), (2, b"\x01")]
    assert s.on_puback(1) == 1 and s.on_puback(1) == 0
    assert s.inflight_count == 2 and s.queued_count == 2
    s.on_puback(2)
    s.on_puback(3)
    s.on_puback(4)
    run_one_turn(loop)
    assert [p.payload for p in tr.packets(V5)] == [bytes([i]) for i in range(5)]
    assert s.queued_count == 0


def test_resume_sends_the_offline_queue_in_order(loop: asyncio.AbstractEventLoop) -> None:
    """Messages queued while offline are sent when the session is resumed, in order, with
    fresh packet identifiers; expired ones are dropped (3.3.2.3.3)."""
    d, fl = Dispatcher(), Flusher(loop)
    s = Session("c")
    d.subscribe(sub(s, "t/#", 2))
    d.publish(msg("t/0", 1))
    d.publish(Message("t/expiring", b"", 1, expires_at=time.time() + 0.05))
    d.publish(msg("t/2", 2))
    assert s.queued_count == 3
    time.sleep(0.1)
    _, tr = connected_channel(d, s, fl, V311)
    run_one_turn(loop)
    assert [(p.topic, p.qos, p.packet_id) for p in tr.packets(V311)] == [
        ("t/0", 1, 1),
        ("t/2", 2, 2),
    ]
    assert s.queued_count == 0 and s.inflight_count == 2


def test_no_local_online(loop: asyncio.AbstractEventLoop) -> None:
    """No Local online: the publisher's own QoS 0 message is not sent back [MQTT-3.8.3-3]."""
    d, fl = Dispatcher(), Flusher(loop)
    me = Session("me")
    d.subscribe(sub(me, "chat", 0, no_local=True))
    _, tr = connected_channel(d, me, fl, V5)
    assert d.publish(msg("chat", 0, origin="me")) == 0
    assert d.publish(msg("chat", 0, origin="you")) == 1
    run_one_turn(loop)
    assert len(tr.packets(V5)) == 1


def test_packet_ids_wrap_and_skip_ids_in_flight(loop: asyncio.AbstractEventLoop) -> None:
    """Packet identifiers run 1..65535, wrap to 1 and skip identifiers still in flight
    [MQTT-2.2.1-3]; a restored in-flight PUBLISH is re-sent with DUP on resume [MQTT-4.4.0-1]."""
    d, fl = Dispatcher(), Flusher(loop)
    s = Session("c")
    d.subscribe(sub(s, "t", 2))
    s.restore_inflight(65534, Session.new_inflight(Message("t", b"old", 1), 1, False, None, 1))
    s.restore_inflight(1, Session.new_inflight(Message("t", b"one", 1), 1, False, None, 1))
    _, tr = connected_channel(d, s, fl, V311)
    for i in range(3):
        d.publish(msg("t", 2, bytes([i])))
    run_one_turn(loop)
    got = [(p.packet_id, p.dup, p.payload) for p in tr.packets(V311)]
    assert got == [
        (65534, True, b"old"),
        (1, True, b"one"),
        (65535, False, b"\x00"),
        (2, False, b"\x01"),
        (3, False, b"\x02"),
    ]


def test_qos2_outbound_flow_and_retry(loop: asyncio.AbstractEventLoop) -> None:
    """QoS 2 to a client: PUBLISH, then PUBREC -> PUBREL, PUBCOMP ends it (4.3.3); 3.1.1 retries
    re-send what is unacknowledged with DUP and the same packet id (retry_due)."""
    d, fl = Dispatcher(), Flusher(loop)
    s = Session("c")
    d.subscribe(sub(s, "t", 2))
    _, tr = connected_channel(d, s, fl, V311)
    d.publish(msg("t", 2, b"a"))
    d.publish(msg("t", 2, b"b"))
    assert s.on_pubrec(1, 0) == 1 and s.on_pubrec(9, 0) == 0
    assert s.on_pubcomp(2) == 0  # no PUBREL sent for 2 yet
    run_one_turn(loop)
    kinds = [(p.packet_type, p.packet_id) for p in tr.packets(V311)]
    assert kinds == [(3, 1), (3, 2), (6, 1)]
    assert s.retry_due(time.monotonic() + 100, 10) == 2  # PUBREL 1 and PUBLISH 2 again
    run_one_turn(loop)
    again = tr.packets(V311)[3:]
    assert [(p.packet_type, p.packet_id) for p in again] == [(6, 1), (3, 2)] and again[1].dup
    assert s.on_pubcomp(1) == 1 and s.inflight_count == 1
    assert s.on_pubrec(2, 0x80) == 1 and s.inflight_count == 0  # an error reason ends it


def test_payload_published_through_a_channel_is_detached(loop: asyncio.AbstractEventLoop) -> None:
    """A PUBLISH decoded by a channel refers to the receive chunk while it is routed; a session
    that queues it keeps exactly its payload (Message.detach), whatever else the chunk held."""
    d, fl = Dispatcher(), Flusher(loop)
    offline = Session("off")
    d.subscribe(sub(offline, "x/#", 2))
    publisher = Session("pub")
    ch, tr = connected_channel(d, publisher, fl, V311)
    chunk = bytearray(
        encode(Publish("x/a", b"first-payload", 1, packet_id=1), V311)
        + encode(Publish("x/b", b"qos0", 0), V311)
        + encode(Publish("x/c", b"third", 2, packet_id=2), V311)
    )
    ch.data_received(bytes(chunk))
    chunk[:] = b"\x00" * len(chunk)
    items = offline.queued_items()
    assert [(e.msg.topic, e.msg.payload, e.msg.payload_size, e.msg.origin) for e in items] == [
        ("x/a", b"first-payload", 13, "pub"),
        ("x/c", b"third", 5, "pub"),
    ]
    run_one_turn(loop)
    assert [(p.packet_type, p.packet_id) for p in tr.packets(V311)] == [(4, 1), (5, 2)]
