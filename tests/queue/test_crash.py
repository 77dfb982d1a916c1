"""kill -9 with `fsync: always`: nothing acknowledged is lost, every unacknowledged delivery comes
again; a damaged segment tail is cut off at start."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.queue.conftest import qconfig, wait_for

DURABLE = {"storage": {"type": "lmdb", "fsync": "always"}}


def test_kill9_during_publish_and_consume_loses_nothing_acknowledged(broker_factory, clients):
    cfg = {**qconfig([{"name": "jobs", "partitions": 2, "limits": {"max_depth": 0}}]), **DURABLE}
    b = broker_factory(cfg)
    received_before: set[bytes] = set()
    ack_sent: dict[int, bytes] = {}  # mid of our $ack -> payload it acknowledges
    ack_confirmed: set[bytes] = set()
    lock = threading.Lock()

    def consume(cl, rec):
        with lock:
            received_before.add(rec["payload"])
        mid = cl.settle("ack", rec, wait=False)
        with lock:
            ack_sent[mid] = rec["payload"]

    con = clients(b.port, "worker")
    con.on_message_cb = consume
    con.subscribe("$queue/jobs", consumer_group="g")

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
    sent: dict[int, bytes] = {}
    early: set[int] = set()  # PUBACKs that came before publish() returned
    acked: set[bytes] = set()

    def on_publish(c, u, mid, rc, props):
        if getattr(rc, "value", rc) != 0:
            return
        with lock:
            if mid in sent:
                acked.add(sent[mid])
            else:
                early.add(mid)

    pub.on_publish = on_publish
    pub.max_inflight_messages_set(50)
    pub.connect("127.0.0.1", b.port)
    pub.loop_start()
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set() and i < 20000:
            payload = f"m{i:06d}".encode()
            info = pub.publish("$queue/jobs/x", payload, qos=1)  # not under `lock` (paho's own)
            with lock:
                sent[info.mid] = payload
                if info.mid in early:
                    acked.add(payload)
            i += 1
            if i % 50 == 0:
                time.sleep(0.002)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    wait_for(lambda: len(acked) > 800 and len(received_before) > 300, timeout=30,
             what="traffic before the crash")  # fmt: skip
    b.stop(signal.SIGKILL)
    stop.set()
    t.join(5)
    pub.loop_stop()
    # What the consumer's own acknowledgements confirmed before the crash (their PUBACK).
    with lock:
        for mid, (code, _) in con.acks.items():
            if code == 0 and mid in ack_sent:
                ack_confirmed.add(ack_sent[mid])
        acked_before = set(acked)
        unsettled = received_before - ack_confirmed
    con.close()
    b.start()
    after = clients(b.port, "worker")
    after.on_message_cb = lambda cl, rec: cl.settle("ack", rec, qos=0)
    after.subscribe("$queue/jobs", consumer_group="g")
    wait_for(lambda: acked_before - ack_confirmed <= set(after.payloads()), timeout=30,
             what="every acknowledged message not yet settled")  # fmt: skip
    got_after = set(after.payloads())
    lost = acked_before - received_before - got_after
    assert not lost, f"{len(lost)} acknowledged messages lost"
    again = unsettled - got_after
    assert not again, f"{len(again)} unacknowledged deliveries not delivered again"
    print(
        f"published and acknowledged before kill -9: {len(acked_before)}; delivered before: "
        f"{len(received_before)} (acknowledgements confirmed {len(ack_confirmed)}); "
        f"delivered after the restart: {len(got_after)}; lost: 0"
    )


def test_a_damaged_segment_tail_is_cut_off_at_start(broker_factory, clients):
    b = broker_factory({**qconfig([{"name": "q"}]), **DURABLE})
    pub = clients(b.port, "pub")
    for i in range(20):
        assert pub.publish("$queue/q/x", f"m{i:02d}".encode()) == (0, None)
    pub.close()
    b.stop(signal.SIGKILL)
    seg = Path(b.workdir) / "data" / "queues" / "q" / "0" / f"{0:020d}.seg"
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0xFF  # the last batch (the last message) is damaged
    data += b"FLXQ\x00\x01torn write"  # and a torn batch after it
    seg.write_bytes(bytes(data))
    b.start()
    con = clients(b.port, "c")
    con.subscribe("$queue/q", consumer_group="g", cursor="earliest")
    wait_for(lambda: len(con.got()) == 19)
    time.sleep(0.3)
    assert con.payloads() == [f"m{i:02d}".encode() for i in range(19)]
    assert "damaged or torn tail cut off" in b.logs()
    pub = clients(b.port, "pub2")
    assert pub.publish("$queue/q/x", b"after") == (0, None)
    wait_for(lambda: con.payloads()[-1:] == [b"after"])
    assert con.got()[-1]["props"]["offset"] == "19"
