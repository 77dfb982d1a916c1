"""Fixtures and helpers of the durable-storage tests (tests/storage, issue 3).

Every test runs its own broker process(es) with `storage.type: lmdb` on a free 127.0.0.1 port
and a data directory under the test's tmp_path, and stops or restarts it with a signal
(`BrokerProc.stop(sig)` / `.restart(sig)` keep the port and the data directory), so the tests
are parallel-safe under pytest-xdist.

Fixtures
    uid                 a short unique token for client ids and topics.
    lmdb_broker         lmdb_broker(fsync="always", config=None) -> BrokerProc with LMDB storage.

Helpers (imported by the test modules)
    lmdb_config(fsync, extra)     the config tree of an LMDB broker.
    Paho                          a paho-mqtt 2.x client (CallbackAPIVersion.VERSION2) with its
                                  network thread; received messages queue up in `.messages`.
    raw_session(...)              a RawClient (tests/protocol/rawmqtt.py) connected to a
                                  persistent (or clean) session; the CONNACK is in `.connack`.
    commit_barrier(broker, uid)   wait until what the broker did is on disk (fsync: always).
    publish_many(...)             pipelined QoS 1 publishes over a raw connection.
    receive_publishes(...)        read and acknowledge n PUBLISH packets.
    proc_status_kb(...)           a field of /proc/<pid>/status (VmRSS, RssAnon...), in kB.
    wait_for(pred, timeout)       poll until a predicate holds.
    wait_for_log(broker, text)    poll the broker's log for a line.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fluxmq.storage.lmdb_store import LMDBStore
from tests.brokerproc import BrokerProc, deep_merge
from tests.protocol.rawmqtt import V5, Packet, PacketType, Prop, RawClient, puback, publish

WAIT = 5.0  # how long to wait for something that must happen
QUIET = 0.5  # how long to watch for something that must not happen
EXPIRY = 300  # session expiry of the persistent sessions of these tests


def lmdb_config(fsync: str = "always", extra: dict | None = None) -> dict:
    """The config of a broker on LMDB with `storage.fsync: fsync`, `extra` merged over it."""
    return deep_merge({"storage": {"type": "lmdb", "fsync": fsync}}, extra or {})


@pytest.fixture
def store(tmp_path) -> Iterator[LMDBStore]:
    """An LMDB store opened in-process (`fsync: never`), for driving its hooks directly."""
    s = LMDBStore(str(tmp_path / "data"), fsync="never")
    s.open()
    yield s
    s.close()


@pytest.fixture
def uid() -> str:
    return "s" + uuid.uuid4().hex[:10]


@pytest.fixture
def lmdb_broker(broker_factory) -> Callable[..., BrokerProc]:
    """lmdb_broker(fsync="always", config=None, name=None) starts a broker on LMDB storage."""

    def start(fsync: str = "always", config: dict | None = None, name: str | None = None):
        return broker_factory(lmdb_config(fsync, config), name=name)

    return start


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every raw and paho client a test left open."""
    yield
    for c in list(Paho.live):
        c.close()
    for r in list(RawClient.live):
        r.close()


# -- paho-mqtt -------------------------------------------------------------------------------


def props(packet_type: int, **values: Any) -> Properties:
    """paho Properties, e.g. props(PacketTypes.PUBLISH, MessageExpiryInterval=10)."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class Paho:
    """A connected paho-mqtt 2.x client.

    `version` 4 (3.1.1) or 5; `clean` is Clean Session (3.1.1) or Clean Start (5); `expiry` is
    the v5 Session Expiry Interval; `will` is will_set()'s keyword arguments."""

    live: ClassVar[set[Paho]] = set()

    def __init__(
        self,
        broker: BrokerProc,
        client_id: str,
        *,
        version: int = V5,
        clean: bool = True,
        expiry: int | None = None,
        will: dict[str, Any] | None = None,
        expect_rc: int | None = 0,
        timeout: float = WAIT,
    ) -> None:
        self.version = version
        self.timeout = timeout
        self.client_id = client_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311,
            clean_session=None if version == V5 else clean,
            reconnect_on_failure=False,
        )
        self.client.max_inflight_messages_set(100)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_rc: int | None = None
        self.session_present: bool | None = None
        self._acks: dict[int, Any] = {}
        self._cv = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_publish = self._on_publish
        if will is not None:
            self.client.will_set(**will)
        kw: dict[str, Any] = {"keepalive": 60}
        if version == V5:
            kw["clean_start"] = clean
            if expiry is not None:
                kw["properties"] = props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)
        Paho.live.add(self)
        self.client.connect("127.0.0.1", broker.port, **kw)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            raise AssertionError(f"{client_id}: no CONNACK within {timeout}s")
        if expect_rc is not None and self.connack_rc != expect_rc:
            self.close()
            raise AssertionError(f"{client_id}: CONNACK {self.connack_rc}, expected {expect_rc}")

    # network-thread callbacks
    def _on_connect(self, client, userdata, flags, rc, properties) -> None:
        self.connack_rc = rc.value
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, rc, properties) -> None:
        self.disconnected.set()

    def _on_message(self, client, userdata, msg) -> None:
        self.messages.put(msg)

    def _on_ack(self, client, userdata, mid, rcs, properties) -> None:
        with self._cv:
            self._acks[mid] = [r.value for r in rcs]
            self._cv.notify_all()

    def _on_publish(self, client, userdata, mid, rc, properties) -> None:
        with self._cv:
            self._acks[mid] = rc.value if rc is not None else 0
            self._cv.notify_all()

    def _wait(self, mid: int, what: str) -> Any:
        with self._cv:
            ok = self._cv.wait_for(lambda: mid in self._acks, self.timeout)
            assert ok, f"{self.client_id}: no {what} for mid {mid} within {self.timeout}s"
            return self._acks.pop(mid)

    # operations
    def subscribe(
        self,
        topic: str,
        qos: int = 1,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        sub_id: int | None = None,
    ) -> list[int]:
        """Subscribe and wait for the SUBACK; returns its reason codes (3.1.1: granted QoS)."""
        if self.version == V5:
            p = (
                None
                if sub_id is None
                else props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id)
            )
            opts = SubscribeOptions(
                qos=qos, noLocal=no_local, retainAsPublished=retain_as_published
            )
            rc, mid = self.client.subscribe(topic, options=opts, properties=p)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait(mid, "SUBACK")

    def unsubscribe(self, topic: str) -> list[int]:
        """Unsubscribe and wait for the UNSUBACK; returns its reason codes (3.1.1: [])."""
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait(mid, "UNSUBACK")

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Publish and wait for the end of the QoS flow (PUBACK, PUBCOMP; QoS 0: written);
        returns the v5 reason code of the acknowledgement (0 for 3.1.1 and QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish refused by paho: {info.rc}"
        return self._wait(info.mid, "PUBACK/PUBCOMP")

    def get(self, timeout: float | None = None) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message received") from None

    def take(self, n: int, timeout: float | None = None) -> list[mqtt.MQTTMessage]:
        """The next n messages (AssertionError with what came if fewer arrive in time)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[mqtt.MQTTMessage] = []
        while len(out) < n:
            left = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                got = [m.payload for m in out]
                raise AssertionError(
                    f"{self.client_id}: {len(out)} of {n} messages: {got}"
                ) from None
        return out

    def expect_nothing(self, window: float = QUIET) -> None:
        try:
            msg = self.messages.get(timeout=window)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {msg.topic} {msg.payload!r}")

    def disconnect(self) -> None:
        """DISCONNECT (reason 0: no will) and wait for the close."""
        self.client.disconnect()
        self.disconnected.wait(self.timeout)
        self.close()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (its will is due)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        Paho.live.discard(self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()
        Paho.live.discard(self)


# -- raw clients -----------------------------------------------------------------------------


def raw_session(
    broker: BrokerProc,
    client_id: str,
    *,
    version: int = V5,
    clean: bool = False,
    expiry: int | None = EXPIRY,
    timeout: float = WAIT,
    expect_rc: int | None = 0,
    **kw: Any,
) -> RawClient:
    """A raw client connected with Clean Start/Clean Session `clean` and (v5) a Session Expiry
    Interval of `expiry`; the CONNACK is in `.connack` (its reason asserted unless None)."""
    c = RawClient(broker, version=version, timeout=timeout)
    if version == V5 and expiry is not None:
        p = dict(kw.pop("properties", None) or {})
        p[Prop.SESSION_EXPIRY_INTERVAL] = expiry
        kw["properties"] = p
    ack = c.connect(client_id, clean=clean, **kw)
    if expect_rc is not None:
        assert ack.reason_code == expect_rc, f"CONNACK {ack!r}"
    return c


def commit_barrier(broker: BrokerProc, uid: str) -> None:
    """With `fsync: always`, return once everything the broker has done so far is on disk.

    The CONNACK of a persistent session is written only after the commit of its turn, and the
    writer commits in order, so every change of an earlier turn (a will removed at DISCONNECT,
    a deadline stored when a connection dropped...) is on disk by then. What a client merely
    sent may not have been processed: wait for the broker to close the connection first."""
    raw_session(broker, f"{uid}-barrier", clean=True, expiry=EXPIRY).close()


def publish_many(
    client: RawClient,
    topic: str,
    payloads: list[bytes],
    *,
    window: int = 200,
    timeout: float = 30.0,
) -> None:
    """Publish every payload at QoS 1 with up to `window` unacknowledged at a time; asserts a
    successful PUBACK for each."""
    deadline = time.monotonic() + timeout
    pending: set[int] = set()
    sent = 0
    while sent < len(payloads) or pending:
        batch = bytearray()
        while sent < len(payloads) and len(pending) < window:
            pid = client.next_packet_id()
            pending.add(pid)
            batch += publish(topic, payloads[sent], qos=1, packet_id=pid, version=client.version)
            sent += 1
        if batch:
            client.send(bytes(batch))
        left = deadline - time.monotonic()
        assert left > 0, f"publish_many: {len(pending)} PUBACKs missing after {timeout}s"
        pkt = client.recv(left)
        assert pkt.type == PacketType.PUBACK, pkt
        assert (pkt.reason_code or 0) < 0x80, f"PUBACK refused: {pkt!r}"
        pending.discard(pkt.packet_id)


def receive_publishes(
    client: RawClient, n: int, *, ack: bool = True, timeout: float = 30.0, gap: float = WAIT
) -> list[Packet]:
    """Read n PUBLISH packets (anything else fails) within `timeout`, none more than `gap`
    seconds after the previous one, acknowledging QoS 1 ones when `ack`."""
    deadline = time.monotonic() + timeout
    out: list[Packet] = []
    while len(out) < n:
        left = deadline - time.monotonic()
        try:
            pkt = client.recv(max(min(left, gap), 0.001))
        except TimeoutError:
            raise AssertionError(
                f"{len(out)} of {n} PUBLISH received, then none for {min(left, gap):.1f}s"
            ) from None
        assert pkt.type == PacketType.PUBLISH, f"expected PUBLISH, got {pkt!r}"
        if ack and pkt.qos == 1:
            client.send(puback(pkt.packet_id, version=client.version))
        out.append(pkt)
    return out


# -- processes, logs, polling --------------------------------------------------------------------


def proc_status_kb(pid: int, field: str = "VmRSS") -> int:
    """A `kB` field of /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_for(pred: Callable[[], bool], timeout: float = WAIT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_log(broker: BrokerProc, text: str, timeout: float = WAIT, after: int = 0) -> bool:
    """True once `text` appears in the broker's log past character `after`."""
    return wait_for(lambda: text in broker.logs()[after:], timeout)
