"""Fixtures for the spec-driven end-to-end protocol tests (tests/protocol).

Fixtures
    module_broker       one default-config broker shared by the tests of a module (fast); tests
                        using it must pick unique client ids and topics (see `uid`).
    uid                 a short unique string for client ids and topics of one test.
    raw_open            raw_open(broker, version=5) -> RawClient (TCP only, no CONNECT).
    raw_connect         raw_connect(broker, client_id, version=5, **connect_kwargs) -> RawClient
                        connected (CONNACK success asserted; it is in `.connack`).
    paho_connect        paho_connect(broker, client_id, version=5, ...) -> PahoClient (paho-mqtt
                        2.x, CallbackAPIVersion.VERSION2, network loop in a thread).
    mosquitto_cli       runs Debian's mosquitto_pub / mosquitto_sub against a broker.

Every client and process made by these fixtures is closed/killed at teardown.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.brokerproc import BrokerProc
from tests.protocol.rawmqtt import V5, Packet, PacketType, RawClient

WAIT = 3.0  # how long to wait for something that must happen
QUIET = 0.4  # how long to watch for something that must not happen


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    """A broker with the default configuration, shared by one test module."""
    b = BrokerProc(tmp_path_factory.mktemp("modbroker"), None)
    b.start()
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    """Close every RawClient a test left open (sockets must not leak between tests)."""
    yield
    for c in list(RawClient.live):
        c.close()


@pytest.fixture
def uid() -> str:
    """A short unique token (valid in client ids of every MQTT version and in topics)."""
    return "u" + uuid.uuid4().hex[:10]


@pytest.fixture
def raw_open() -> Iterator[Callable[..., RawClient]]:
    made: list[RawClient] = []

    def open_(broker: BrokerProc, version: int = V5, timeout: float = WAIT) -> RawClient:
        c = RawClient(broker, version=version, timeout=timeout)
        made.append(c)
        return c

    yield open_
    for c in made:
        c.close()


@pytest.fixture
def raw_connect() -> Iterator[Callable[..., RawClient]]:
    made: list[RawClient] = []

    def connect_(
        broker: BrokerProc, client_id: str, version: int = V5, timeout: float = WAIT, **kw: Any
    ) -> RawClient:
        c = RawClient.connected(broker, client_id, version=version, timeout=timeout, **kw)
        made.append(c)
        return c

    yield connect_
    for c in made:
        c.close()


# -- paho-mqtt -------------------------------------------------------------------------------


def paho_props(packet_type: int, **values: Any) -> Properties:
    """paho Properties for `packet_type` (PacketTypes.CONNECT, .PUBLISH, .WILLMESSAGE, ...), e.g.
    paho_props(PacketTypes.CONNECT, SessionExpiryInterval=10)."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class PahoClient:
    """A connected paho-mqtt 2.x client whose received messages queue up in `messages`."""

    def __init__(
        self,
        broker: BrokerProc,
        client_id: str,
        *,
        version: int = V5,
        clean: bool = True,
        keepalive: int = 60,
        session_expiry: int | None = None,
        will: dict[str, Any] | None = None,
        connect_properties: Properties | None = None,
        expect_success: bool = True,
        timeout: float = WAIT,
    ):
        self.version = version
        self.timeout = timeout
        proto = mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if version == V5 else clean,
            protocol=proto,
            reconnect_on_failure=False,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connect_rc: Any = None
        self.session_present: bool | None = None
        self.connack_properties: Properties | None = None
        self.disconnect_rc: Any = None
        self._subacks: dict[int, list[Any]] = {}
        self._sub_event = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if will is not None:
            self.client.will_set(**will)
        props = connect_properties
        if version == V5 and session_expiry is not None:
            props = props or Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if version == V5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = props
        self.client.connect(broker.host, broker.port, **kwargs)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            raise AssertionError(f"paho {client_id!r}: no CONNACK within {timeout}s")
        if expect_success and self.connect_rc != 0:
            self.close()
            raise AssertionError(f"paho {client_id!r}: CONNECT refused: {self.connect_rc}")

    # callbacks (network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connect_rc = rc
        self.session_present = bool(flags.session_present)
        self.connack_properties = props
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnect_rc = rc
        self.disconnected.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._sub_event:
            self._subacks[mid] = list(rcs)
            self._sub_event.notify_all()

    # API
    def subscribe(
        self, topic: str, qos: int = 0, *, no_local: bool = False, properties: Any = None
    ) -> list[Any]:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        if self.version == V5:
            rc, mid = self.client.subscribe(
                topic, options=SubscribeOptions(qos=qos, noLocal=no_local), properties=properties
            )
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None, f"subscribe failed: {rc}"
        deadline = time.monotonic() + self.timeout
        with self._sub_event:
            while mid not in self._subacks:
                left = deadline - time.monotonic()
                assert left > 0, f"no SUBACK for {topic!r}"
                self._sub_event.wait(left)
            return self._subacks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait until the QoS flow is complete (QoS 0: until written)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(self.timeout)
        assert info.is_published(), f"publish to {topic!r} not completed"

    def get(self, timeout: float | None = None) -> mqtt.MQTTMessage:
        """The next received message; AssertionError if none arrives in time."""
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise AssertionError("no message received") from None

    def get_topic(self, topic: str, timeout: float | None = None) -> mqtt.MQTTMessage:
        """The next message on `topic`, skipping others."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message on {topic!r}")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                raise AssertionError(f"no message on {topic!r}") from None
            if msg.topic == topic:
                return msg

    def expect_nothing(self, window: float = QUIET) -> None:
        try:
            msg = self.messages.get(timeout=window)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic!r}: {msg.payload!r}")

    def drain(self) -> list[mqtt.MQTTMessage]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.messages.get_nowait())
        return out

    def roundtrip(self, topic: str, payload: bytes = b"ping") -> None:
        """Publish `payload` to `topic` (which this client subscribes to) and assert it comes
        back: proves the broker still serves this connection."""
        self.publish(topic, payload, qos=1)
        msg = self.get_topic(topic)
        assert msg.payload == payload

    def disconnect(self, reason: Any = None, properties: Properties | None = None) -> None:
        self.client.disconnect(reason, properties)
        self.disconnected.wait(self.timeout)
        self.client.loop_stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()

    def drop(self) -> None:
        """Kill the TCP connection without DISCONNECT (the Will fires)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def paho_connect() -> Iterator[Callable[..., PahoClient]]:
    made: list[PahoClient] = []

    def connect_(broker: BrokerProc, client_id: str, **kw: Any) -> PahoClient:
        c = PahoClient(broker, client_id, **kw)
        made.append(c)
        return c

    yield connect_
    for c in made:
        c.close()


@pytest.fixture
def bystander(
    paho_connect: Callable[..., PahoClient], uid: str
) -> Callable[[BrokerProc], Callable[[], None]]:
    """bystander(broker) connects an unrelated v3.1.1 client subscribed to its own topic and
    returns check(); check() asserts the broker process is alive, that client still gets a
    publish/subscribe round trip, and a brand-new v5 connection works (spec 4.13.1: "There are
    no consequences for other Sessions")."""

    def make(broker: BrokerProc) -> Callable[[], None]:
        topic = f"bystander/{uid}"
        c = paho_connect(broker, f"{uid}-by", version=4)
        c.subscribe(topic, qos=1)

        def check() -> None:
            assert broker.alive, "broker process died"
            c.roundtrip(topic, b"still-here")
            with RawClient.connected(broker, f"{uid}-new") as fresh:
                assert fresh.ping().type == PacketType.PINGRESP

        return check

    return make


# -- Debian's mosquitto clients --------------------------------------------------------------


class MosquittoCli:
    """mosquitto_pub / mosquitto_sub against a test broker."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for tool in ("mosquitto_pub", "mosquitto_sub"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} not installed (make peers)")

    def pub(self, broker: BrokerProc, *args: str, timeout: float = 10.0) -> None:
        """Run mosquitto_pub to completion and assert it exits 0."""
        cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), *args]
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        assert r.returncode == 0, f"{cmd} -> {r.returncode}: {r.stderr!r}"

    def sub(
        self, broker: BrokerProc, *args: str, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run mosquitto_sub to completion (give it -C/-W) and return the result."""
        cmd = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), *args]
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)

    def spawn(self, tool: str, broker: BrokerProc, *args: str) -> subprocess.Popen[bytes]:
        """Start mosquitto_pub/mosquitto_sub in the background; killed at teardown."""
        cmd = [tool, "-h", broker.host, "-p", str(broker.port), *args]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(5)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def mosquitto_cli() -> Iterator[MosquittoCli]:
    cli = MosquittoCli()
    yield cli
    cli.kill_all()


def wait_until(pred: Callable[[], bool], timeout: float = WAIT, interval: float = 0.02) -> bool:
    """Poll `pred` until true or `timeout`; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- assertions shared by the protocol tests --------------------------------------------------


def assert_no_success_connack(got: list[Packet], version: int) -> None:
    """After a refused CONNECT: MQTT 3.1.1 closes without CONNACK [MQTT-3.1.4-1]; MQTT 5 MAY send a
    CONNACK with a Reason Code >= 0x80 first (spec 3.1.4 step 2, 4.13.1) - nothing else."""
    if version != V5:
        assert got == [], f"3.1.1 server must close without sending anything, got {got}"
        return
    assert len(got) <= 1, got
    for p in got:
        assert p.type == PacketType.CONNACK and (p.reason_code or 0) >= 0x80, p
        assert p.session_present is False, p  # [MQTT-3.2.2-6]


def assert_only_disconnect(got: list[Packet], codes: set[int] | None = None) -> None:
    """What a v5 client may see before the server closes the connection on an error: nothing,
    or exactly one DISCONNECT whose reason code is in `codes` (4.13.1: SHOULD send)."""
    assert len(got) <= 1, f"expected at most one DISCONNECT, got {got}"
    for p in got:
        assert p.type == PacketType.DISCONNECT, f"expected DISCONNECT, got {p}"
        if codes is not None:
            assert p.reason_code in codes, f"reason 0x{p.reason_code:02x} not in {codes}"


def assert_disconnect(got: list[Packet], codes: set[int]) -> None:
    """Exactly one DISCONNECT, with a reason code in `codes`, then the close."""
    assert len(got) == 1 and got[0].type == PacketType.DISCONNECT, f"expected DISCONNECT: {got}"
    assert got[0].reason_code in codes, (
        f"DISCONNECT reason 0x{got[0].reason_code:02x}, expected one of "
        + ", ".join(f"0x{c:02x}" for c in sorted(codes))
    )
