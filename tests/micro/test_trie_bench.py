"""Routing micro-benchmarks: topic trie matching on 10k filters, dispatcher publish fan-out.

`make microbench`. Rates are in extra_info: matches_per_s, msgs_per_s, deliveries_per_s.
"""

from __future__ import annotations

import random

import pytest
from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.dispatch import Dispatcher
from fluxmq._speedups.message import Message
from fluxmq._speedups.session import Session, Subscription
from fluxmq._speedups.trie import TopicTrie, topic_matches
from pytest_benchmark.fixture import BenchmarkFixture

from tests.micro import ManualLoop, online_session, rate

pytestmark = pytest.mark.benchmark(group="routing")

FILTERS = 10_000
TOPICS = 1_000


def _filters(rnd: random.Random) -> list[str]:
    """10k filters in a building/floor/room/sensor tree; about a third use + or #."""
    out = []
    for i in range(FILTERS):
        b, f, r = rnd.randrange(50), rnd.randrange(20), rnd.randrange(40)
        kind = i % 6
        if kind == 0:
            out.append(f"b{b}/f{f}/r{r}/+")
        elif kind == 1:
            out.append(f"b{b}/f{f}/#")
        elif kind == 2:
            out.append(f"b{b}/+/r{r}/temp")
        else:
            out.append(f"b{b}/f{f}/r{r}/{rnd.choice(['temp', 'hum', 'co2'])}")
    return out


def _topics(rnd: random.Random) -> list[str]:
    return [
        f"b{rnd.randrange(50)}/f{rnd.randrange(20)}/r{rnd.randrange(40)}/{rnd.choice(['temp', 'hum', 'co2', 'pm25'])}"
        for _ in range(TOPICS)
    ]


def test_trie_match_10k_filters(benchmark: BenchmarkFixture) -> None:
    """match() of 1000 topics against 10k filters with wildcards (matches/s)."""
    rnd = random.Random(1)
    trie = TopicTrie()
    filters = _filters(rnd)
    for n, f in enumerate(filters):
        trie.insert(f, n, f)
    topics = _topics(rnd)
    # Correctness on a sample first (a fast wrong answer is no benchmark).
    for t in topics[:20]:
        assert len(trie.match(t)) == sum(1 for f in filters if topic_matches(f, t))

    def run() -> int:
        n = 0
        for t in topics:
            n += len(trie.match(t))
        return n

    assert benchmark(run) > 0
    rate(benchmark, TOPICS, "matches")


def test_trie_insert_remove_10k(benchmark: BenchmarkFixture) -> None:
    """Subscribing and unsubscribing 10k filters (ops/s counts insert + remove pairs)."""
    filters = _filters(random.Random(2))

    def run() -> int:
        trie = TopicTrie()
        for n, f in enumerate(filters):
            trie.insert(f, n, n)
        for n, f in enumerate(filters):
            trie.remove(f, n)
        return len(trie)

    assert benchmark(run) == 0
    rate(benchmark, FILTERS, "pairs")


@pytest.mark.parametrize("sessions", [1, 50])
def test_dispatcher_publish_qos0_online(benchmark: BenchmarkFixture, sessions: int) -> None:
    """publish() of a QoS 0 message to N connected sessions (3.1.1), including encoding into
    each connection's buffer and the end-of-turn write (msgs/s and deliveries/s)."""
    loop = ManualLoop()
    flusher = Flusher(loop)
    d = Dispatcher()
    transports = []
    for i in range(sessions):
        s, tr = online_session(d, flusher, f"c{i}")
        d.subscribe(Subscription(s, "sensors/+/temp", 0))
        transports.append(tr)
    msgs = [Message("sensors/r1/temp", b"21.5", 0) for _ in range(100)]

    def run() -> int:
        n = 0
        for m in msgs:
            n += d.publish(m)
        loop.turn()
        return n

    assert benchmark(run) == 100 * sessions
    assert all(tr.writes > 0 for tr in transports)
    rate(benchmark, 100, "msgs")
    rate(benchmark, 100 * sessions, "deliveries")


@pytest.mark.parametrize("sessions", [1, 50])
def test_dispatcher_publish_qos1_offline(benchmark: BenchmarkFixture, sessions: int) -> None:
    """publish() of a QoS 1 message to N offline sessions (queued, bounded queues evicting)."""
    d = Dispatcher()
    for i in range(sessions):
        d.subscribe(Subscription(Session(f"c{i}", max_queue=1000), "sensors/#", 1))
    msgs = [Message("sensors/r1/temp", b"21.5", 1) for _ in range(100)]

    def run() -> int:
        n = 0
        for m in msgs:
            n += d.publish(m)
        return n

    assert benchmark(run) == 100 * sessions
    rate(benchmark, 100, "msgs")
    rate(benchmark, 100 * sessions, "deliveries")
