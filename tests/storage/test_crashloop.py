"""Crash loop (issue 3): the broker is killed (`kill -9`) at random moments while a publisher
sends QoS 1 messages to a persistent subscriber (`storage.fsync: always`), and restarted; the
clients reconnect by themselves. At the end, every message whose PUBACK the publisher received
has reached the subscriber (duplicates allowed for QoS 1, none missing), and nothing else.

5 rounds in the normal run; 30 under `-m soak` (`make soak`). The seed of the random moments
is in every failure message (FLUXMQ_CRASHLOOP_SEED=<seed> replays it).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from tests.protocol.rawmqtt import (
    V5,
    ConnectionClosed,
    PacketType,
    Prop,
    RawClient,
    puback,
    publish,
)
from tests.storage.conftest import EXPIRY, raw_session, wait_for

WINDOW = 20  # QoS 1 publishes in flight at a time
PAD = b"." * 100


def number(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "big")


class Subscriber(threading.Thread):
    """A persistent subscriber that reconnects (Clean Start 0) whenever its connection ends,
    acknowledging every message it gets. While `away` is set it stays disconnected (its
    messages queue up in the broker, on disk)."""

    def __init__(self, broker, client_id: str) -> None:
        super().__init__(daemon=True, name=f"sub-{client_id}")
        self.broker = broker
        self.client_id = client_id
        self.received: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.away = threading.Event()
        self.errors: list[str] = []

    def numbers(self) -> set[int]:
        with self.lock:
            return set(self.received)

    def run(self) -> None:
        while not self.stop.is_set():
            if self.away.is_set():
                time.sleep(0.02)
                continue
            c = None
            try:
                c = RawClient(self.broker, version=V5, timeout=2.0)
                ack = c.connect(
                    self.client_id, clean=False, properties={Prop.SESSION_EXPIRY_INTERVAL: EXPIRY}
                )
                if ack.reason_code != 0 or not ack.session_present:
                    self.errors.append(f"CONNACK {ack!r}")
                    return
                while not self.stop.is_set() and not self.away.is_set():
                    try:
                        pkt = c.recv(0.3)
                    except TimeoutError:
                        continue
                    if pkt.type != PacketType.PUBLISH:
                        continue
                    with self.lock:
                        self.received.append(number(pkt.payload))
                    c.send(puback(pkt.packet_id))
            except (OSError, ConnectionClosed, AssertionError):
                time.sleep(0.05)  # the broker is down: try again
            finally:
                if c is not None:
                    c.close()


class Publisher(threading.Thread):
    """Publishes numbered QoS 1 messages, WINDOW at a time, reconnecting when its connection
    ends; `acked` holds the numbers whose PUBACK (success) it received."""

    def __init__(self, broker, client_id: str, topic: str) -> None:
        super().__init__(daemon=True, name=f"pub-{client_id}")
        self.broker = broker
        self.client_id = client_id
        self.topic = topic
        self.next = 0
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self) -> None:
        while not self.stop.is_set():
            c = None
            try:
                c = RawClient(self.broker, version=V5, timeout=2.0)
                c.connect(self.client_id, clean=True)
                inflight: dict[int, int] = {}
                while not self.stop.is_set():
                    while len(inflight) < WINDOW:
                        pid = c.next_packet_id()
                        n = self.next
                        self.next += 1
                        c.send(
                            publish(self.topic, n.to_bytes(8, "big") + PAD, qos=1, packet_id=pid)
                        )
                        inflight[pid] = n
                    pkt = c.recv(2.0)
                    if pkt.type != PacketType.PUBACK or pkt.packet_id not in inflight:
                        continue
                    n = inflight.pop(pkt.packet_id)
                    if pkt.reason_code == 0:
                        with self.lock:
                            self.acked.add(n)
                    else:  # 0x10 would mean the persistent subscription was lost
                        self.errors.append(f"PUBACK 0x{pkt.reason_code:02x} for {n}")
            except (OSError, ConnectionClosed, TimeoutError, AssertionError):
                time.sleep(0.05)  # unacknowledged ones are given up (may arrive or not)
            finally:
                if c is not None:
                    c.close()


def crash_loop(lmdb_broker, uid: str, rounds: int) -> None:
    seed = int(os.environ.get("FLUXMQ_CRASHLOOP_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    tag = f"[seed {seed}]"
    b = lmdb_broker("always", {"session": {"max_offline_queue_size": 1_000_000}})
    topic = f"{uid}/load"
    s = raw_session(b, f"{uid}-sub")
    assert s.subscribe(topic, qos=1).reason_codes == [1]
    s.disconnect()

    sub = Subscriber(b, f"{uid}-sub")
    pub = Publisher(b, f"{uid}-pub", topic)
    sub.start()
    pub.start()
    try:
        for r in range(rounds):
            # Half of the rounds, the subscriber is away: the broker dies with a queue.
            if rng.random() < 0.5:
                sub.away.set()
            # Load is flowing (new acknowledgements since the restart), then a random moment.
            before = pub.count()
            assert wait_for(lambda before=before: pub.count() > before + 50, timeout=15), (
                f"{tag} round {r}: no progress after the restart; publisher {pub.errors[:3]}, "
                f"subscriber {sub.errors[:3]}\n{b.logs()[-3000:]}"
            )
            time.sleep(rng.uniform(0.0, 0.8))
            b.stop(signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.3))
            b.start()
            sub.away.clear()
        pub.stop.set()
        pub.join(10)
        acked = set(pub.acked)
        assert wait_for(lambda: acked <= sub.numbers(), timeout=60, interval=0.2), (
            f"{tag} {len(acked - sub.numbers())} of {len(acked)} acknowledged messages never "
            f"delivered, e.g. {sorted(acked - sub.numbers())[:20]}"
        )
    finally:
        pub.stop.set()
        sub.stop.set()
        pub.join(10)
        sub.join(10)
    got = sub.numbers()
    assert not pub.errors and not sub.errors, f"{tag} {pub.errors[:5]} {sub.errors[:5]}"
    assert got <= set(range(pub.next)), (
        f"{tag} messages nobody sent: {sorted(got - set(range(pub.next)))[:10]}"
    )
    assert len(acked) >= rounds * 50
    log = b.logs()
    assert "Traceback" not in log, f"{tag} exception in the broker log"


def test_crash_loop(lmdb_broker, uid):
    crash_loop(lmdb_broker, uid, rounds=5)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_crash_loop_soak(lmdb_broker, uid):
    crash_loop(lmdb_broker, uid, rounds=30)
