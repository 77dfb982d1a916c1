"""Durable queue tests: real paho clients against a broker process on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.brokerproc import TARGET

if TARGET == "mosquitto":
    pytest.skip("durable queues are FluxMQ's own", allow_module_level=True)

V5 = mqtt.MQTTv5
V311 = mqtt.MQTTv311


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def props(kind: int, **user: str) -> Properties:
    p = Properties(kind)
    p.UserProperty = [(k.replace("_", "-"), str(v)) for k, v in user.items()]
    return p


class Client:
    """A paho client that records deliveries and PUBACK reason codes."""

    def __init__(self, port: int, client_id: str, version: int = V5, clean: bool = True,
                 receive_maximum: int | None = None) -> None:  # fmt: skip
        self.version = version
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
            clean_session=None if version == V5 else clean,
        )  # fmt: skip
        self.lock = threading.Lock()
        self.messages: list[dict] = []
        self.acks: dict[int, tuple[int, str | None]] = {}
        self.subacks: list = []
        self.on_message_cb: Callable[[Client, dict], None] | None = None
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.port = port
        kw = {}
        if version == V5:
            cp = Properties(PacketTypes.CONNECT)
            if not clean:
                cp.SessionExpiryInterval = 3600
            if receive_maximum:
                cp.ReceiveMaximum = receive_maximum
            kw = {"clean_start": clean, "properties": cp}
        self.c.connect("127.0.0.1", port, keepalive=30, **kw)
        self.c.loop_start()

    def _on_message(self, c, u, m) -> None:
        up = {}
        if self.version == V5 and hasattr(m.properties, "UserProperty"):
            up = dict(m.properties.UserProperty)
        rec = {"topic": m.topic, "payload": m.payload, "props": up, "qos": m.qos,
               "mid": m.mid, "t": time.monotonic()}  # fmt: skip
        with self.lock:
            self.messages.append(rec)
        if self.on_message_cb is not None:
            self.on_message_cb(self, rec)

    def _on_publish(self, c, u, mid, rc, properties) -> None:
        code = rc.value if hasattr(rc, "value") else int(rc)
        why = getattr(properties, "ReasonString", None) if properties is not None else None
        with self.lock:
            self.acks[mid] = (code, why)

    def _on_subscribe(self, c, u, mid, codes, properties) -> None:
        why = getattr(properties, "ReasonString", None) if properties is not None else None
        with self.lock:
            self.subacks.append(([getattr(x, "value", x) for x in codes], why))

    def subscribe(self, topic: str, qos: int = 1, **user: str) -> tuple[list[int], str | None]:
        n = len(self.subacks)
        if self.version == V5 and user:
            self.c.subscribe(topic, qos=qos, properties=props(PacketTypes.SUBSCRIBE, **user))
        else:
            self.c.subscribe(topic, qos=qos)
        wait_for(lambda: len(self.subacks) > n, what=f"SUBACK of {topic}")
        return self.subacks[n]

    def publish(self, topic: str, payload: bytes = b"", qos: int = 1, wait: bool = True,
                **user: str) -> tuple[int, str | None] | int:  # fmt: skip
        p = props(PacketTypes.PUBLISH, **user) if user and self.version == V5 else None
        info = self.c.publish(topic, payload, qos=qos, properties=p)
        if not wait or qos == 0:
            return info.mid
        wait_for(lambda: info.mid in self.acks, what=f"PUBACK of {topic}")
        return self.acks[info.mid]

    def settle(self, verb: str, rec: dict, qos: int = 1, wait: bool = True, **extra: str):
        """$ack / $nack / $reject of a delivery."""
        q = rec["props"]["queue"]
        return self.publish(
            f"$queue/{q}/${verb}", b"", qos=qos, wait=wait,
            message_id=rec["props"]["message-id"], group_id=rec["props"]["group-id"], **extra,
        )  # fmt: skip

    def got(self) -> list[dict]:
        with self.lock:
            return list(self.messages)

    def payloads(self) -> list[bytes]:
        return [m["payload"] for m in self.got()]

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(port: int, client_id: str, **kw) -> Client:
        c = Client(port, client_id, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def qconfig(queues: list[dict] | None = None, **queue: object) -> dict:
    """A broker config with queues (memory storage unless a test asks for LMDB)."""
    cfg: dict = {"queues": queues or []}
    if queue:
        cfg["queue"] = queue
    return cfg
