"""A 2.04 for a QoS 1 CoAP publish means the message is stored where storage is durable: with
`storage.fsync: always`, a broker killed with SIGKILL right after the 2.04s still delivers every
acknowledged message to a persistent subscriber after the restart (as the HTTP bridge's 200)."""

from __future__ import annotations

import signal
import threading
import time

import aiocoap
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.coap.conftest import HOST, RawCoAP, wait_listening


def _persistent(port: int, on_message, connected: threading.Event):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="coap-durable-sub",
                    protocol=mqtt.MQTTv311, clean_session=False)  # fmt: skip
    c.on_connect = lambda *a: connected.set()
    c.on_message = on_message
    c.connect(HOST, port)
    c.loop_start()
    return c


def test_coap_qos1_publish_acknowledged_then_kill9_is_delivered_after_restart(coap_broker):
    b = coap_broker(config={"storage": {"type": "lmdb", "fsync": "always"}})
    payloads = [f"c{i}".encode() for i in range(20)]
    got: list[bytes] = []
    done = threading.Event()

    def on_message(_c, _u, m) -> None:
        got.append(m.payload)
        if len(got) >= len(payloads):
            done.set()

    up = threading.Event()
    sub = _persistent(b.tcp, on_message, up)
    assert up.wait(5)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe("durable/#", qos=1)
    assert subscribed.wait(5)
    sub.loop_stop()
    sub.disconnect()  # offline: the messages must be stored for it
    time.sleep(0.3)  # the broker has taken the DISCONNECT (the session is offline)

    c = RawCoAP(b.coap)
    try:
        for p in payloads:
            r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/durable/x", p, uri_query=("qos=1",)))
            assert r.code == aiocoap.CHANGED
    finally:
        c.close()
    b.proc.stop(signal.SIGKILL)
    b.proc.start()
    wait_listening(b.proc, ["coap"])

    up.clear()
    sub = _persistent(b.tcp, on_message, up)
    assert up.wait(5)
    assert done.wait(10), f"only {len(got)} of {len(payloads)} acknowledged messages arrived: {got}"
    sub.loop_stop()
    sub.disconnect()
    assert got == payloads
