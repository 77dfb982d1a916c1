"""$SYS topics (`broker.sys_interval`; Mosquitto's topic names) and [MQTT-4.7.2-1].

Each test has its own broker with `sys_interval: 1s`, so the counters only move with the test's
own traffic. Values may arrive as retained messages (Mosquitto) or periodic publications.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.conftest import MosquittoCli, PahoClient
from tests.protocol.rawmqtt import V311, PacketType, RawClient

SYS_CONFIG = {"broker": {"sys_interval": "1s"}}
SYS_WAIT = 4.0  # a value must show up within ~3 intervals
TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
]
NUMERIC = TOPICS[2:]


def number(payload: bytes) -> int:
    """The leading integer of a $SYS value ("42", "17 seconds")."""
    return int(payload.decode().split()[0])


class SysWatcher:
    """A client subscribed to $SYS/broker/# keeping the latest value of each topic."""

    def __init__(self, broker: BrokerProc, client_id: str):
        self.c = RawClient.connected(broker, client_id)
        assert self.c.subscribe("$SYS/broker/#", 0).reason_codes == [0]
        self.latest: dict[str, bytes] = {}
        self.received = 0

    def pump(self, timeout: float) -> None:
        """Read publications for up to `timeout` seconds (returns early when idle 0.05 s after
        the first one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                p = self.c.recv(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return
            assert p.type == PacketType.PUBLISH, p
            assert p.topic is not None and p.topic.startswith("$SYS/"), p
            self.latest[p.topic] = p.payload
            self.received += 1

    def wait(self, topic: str, pred: Callable[[int], bool], what: str) -> int:
        """Wait until the numeric value of `topic` satisfies `pred`; returns it."""
        deadline = time.monotonic() + SYS_WAIT
        while True:
            if topic in self.latest and pred(number(self.latest[topic])):
                return number(self.latest[topic])
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{topic} never became {what}: last {self.latest.get(topic)!r}"
                )
            self.pump(min(left, 0.5))

    def value(self, topic: str) -> int:
        return self.wait(topic, lambda v: True, "published")

    def settle(self, topics: list[str], quiet: float = 2.2) -> dict[str, int]:
        """Values once none of `topics` changed for `quiet` s (> 2 publication periods)."""
        for t in topics:
            self.value(t)
        deadline = time.monotonic() + SYS_WAIT + quiet
        while time.monotonic() < deadline:
            before = {t: self.latest[t] for t in topics}
            self.pump(quiet)
            if all(self.latest[t] == before[t] for t in topics):
                break
        return {t: number(self.latest[t]) for t in topics}


@pytest.fixture
def sys_broker(broker_factory: Callable[..., BrokerProc]) -> BrokerProc:
    return broker_factory(SYS_CONFIG)


def test_sys_topics_published(sys_broker: BrokerProc, uid: str) -> None:
    """With `broker.sys_interval: 1s` the broker publishes Mosquitto's $SYS topics: version
    (non-empty text), uptime ("N seconds") and the counters as non-negative integers."""
    w = SysWatcher(sys_broker, uid)
    deadline = time.monotonic() + SYS_WAIT
    while not all(t in w.latest for t in TOPICS) and time.monotonic() < deadline:
        w.pump(0.5)
    missing = [t for t in TOPICS if t not in w.latest]
    assert not missing, f"not published: {missing}"
    assert w.latest["$SYS/broker/version"].strip()
    for t in NUMERIC:
        assert number(w.latest[t]) >= 0, (t, w.latest[t])
    assert number(w.latest["$SYS/broker/uptime"]) >= 0


def test_sys_version_with_mosquitto_sub(
    sys_broker: BrokerProc, mosquitto_cli: MosquittoCli
) -> None:
    """Debian's `mosquitto_sub -t '$SYS/broker/version' -C 1` gets the version string."""
    res = mosquitto_cli.sub(sys_broker, "-t", "$SYS/broker/version", "-C", "1", "-W", "4", "-v")
    assert res.returncode == 0, res.stderr
    topic, _, value = res.stdout.decode().strip().partition(" ")
    assert topic == "$SYS/broker/version" and value


def test_sys_uptime_increases(sys_broker: BrokerProc, uid: str) -> None:
    """$SYS/broker/uptime is republished and grows (seconds since start)."""
    w = SysWatcher(sys_broker, uid)
    first = w.value("$SYS/broker/uptime")
    assert w.wait("$SYS/broker/uptime", lambda v: v >= first + 1, f"> {first}") > first


def test_sys_client_counts_follow_connections(sys_broker: BrokerProc, uid: str) -> None:
    """clients/connected rises by exactly the number of new connections and falls back when they
    disconnect; clients/total rises at least as much."""
    w = SysWatcher(sys_broker, uid)
    base = w.settle(["$SYS/broker/clients/connected", "$SYS/broker/clients/total"])
    conn0, total0 = base["$SYS/broker/clients/connected"], base["$SYS/broker/clients/total"]
    extra = [RawClient.connected(sys_broker, f"{uid}-{i}") for i in range(3)]
    w.wait("$SYS/broker/clients/connected", lambda v: v == conn0 + 3, f"{conn0 + 3}")
    w.wait("$SYS/broker/clients/total", lambda v: v >= total0 + 3, f">= {total0 + 3}")
    for c in extra:
        c.disconnect()
    w.wait("$SYS/broker/clients/connected", lambda v: v == conn0, f"back to {conn0}")


def test_sys_message_and_byte_counters_grow(
    sys_broker: BrokerProc, paho_connect: Callable, uid: str
) -> None:
    """messages/received, messages/sent, bytes/received and bytes/sent grow with traffic: after
    5 PUBLISHes of 200 bytes in and out, each counter rose by at least that much."""
    counters = [
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
    ]
    w = SysWatcher(sys_broker, uid)
    sub: PahoClient = paho_connect(sys_broker, f"{uid}s", version=V311)
    sub.subscribe(f"t/{uid}", 1)
    base = w.settle(counters)
    pub = RawClient.connected(sys_broker, f"{uid}p")
    for i in range(5):
        pub.publish(f"t/{uid}", bytes([65 + i]) * 200, 1)
    for _ in range(5):
        assert len(sub.get().payload) == 200
    msgs, size = 5, 5 * 200
    w.wait(counters[0], lambda v: v >= base[counters[0]] + msgs, "+5")
    w.wait(counters[1], lambda v: v >= base[counters[1]] + msgs, "+5")
    w.wait(counters[2], lambda v: v >= base[counters[2]] + size, f"+{size}")
    w.wait(counters[3], lambda v: v >= base[counters[3]] + size, f"+{size}")


def test_sys_subscription_count(sys_broker: BrokerProc, uid: str) -> None:
    """subscriptions/count rises by 3 for 3 new subscriptions and falls back on UNSUBSCRIBE."""
    topic = "$SYS/broker/subscriptions/count"
    w = SysWatcher(sys_broker, uid)
    base = w.settle([topic])[topic]
    c = RawClient.connected(sys_broker, f"{uid}c")
    c.subscribe([(f"t/{uid}/a", 0), (f"t/{uid}/b/#", 1), (f"t/{uid}/+/c", 2)])
    w.wait(topic, lambda v: v == base + 3, f"{base + 3}")
    c.unsubscribe([f"t/{uid}/a", f"t/{uid}/b/#", f"t/{uid}/+/c"])
    w.wait(topic, lambda v: v == base, f"back to {base}")


def test_sys_retained_count(sys_broker: BrokerProc, uid: str) -> None:
    """ "retained messages/count" (Mosquitto's name) rises when 3 retained messages are stored and
    falls when they are cleared with empty retained PUBLISHes [MQTT-3.3.1-6]."""
    topic = "$SYS/broker/retained messages/count"
    w = SysWatcher(sys_broker, uid)
    base = w.settle([topic])[topic]
    c = RawClient.connected(sys_broker, f"{uid}c")
    for i in range(3):
        c.publish(f"t/{uid}/{i}", b"keep", 1, retain=True)
    high = w.wait(topic, lambda v: v >= base + 3, f">= {base + 3}")
    for i in range(3):
        c.publish(f"t/{uid}/{i}", b"", 1, retain=True)
    w.wait(topic, lambda v: v < high, f"< {high}")


@pytest.mark.parametrize("filters", [["#"], ["+/broker/#"], ["+/+/version", "+/broker/uptime"]])
def test_wildcards_do_not_match_dollar_topics(
    sys_broker: BrokerProc, uid: str, filters: list[str]
) -> None:
    """[MQTT-4.7.2-1]: Topic Filters starting with a wildcard (# or +) MUST NOT match Topic Names
    beginning with $: while $SYS/# receives the periodic $SYS publications, the wildcard
    subscriber gets none of them - but does get an ordinary message."""
    w = SysWatcher(sys_broker, uid)
    wild = RawClient.connected(sys_broker, f"{uid}wild")
    wild.subscribe([(f, 0) for f in filters])
    w.pump(0.2)  # whatever was retained
    n0 = w.received
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # > 2 sys intervals
        w.pump(0.5)
    assert w.received > n0, "no $SYS publication during the window: nothing to leak"
    got = []
    while True:
        try:
            got.append(wild.recv(0.2))
        except TimeoutError:
            break
    leaked = [p.topic for p in got if p.topic and p.topic.startswith("$")]
    assert not leaked, f"{filters} matched {leaked}"
    if "#" in filters:
        RawClient.connected(sys_broker, f"{uid}p").publish(f"t/{uid}/plain", b"ok", 0)
        p = wild.expect(PacketType.PUBLISH)
        assert p.topic == f"t/{uid}/plain"
