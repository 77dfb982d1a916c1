"""A client that stops reading (`broker.max_pending_bytes`): once that much output waits for its
full socket, new QoS 0 messages to it are dropped and counted, while its QoS 1 messages wait
and every other subscriber gets everything."""

from __future__ import annotations

import socket
import time

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.pubsub_helpers import PahoClient, RawClient, broker_fixture, unique_topic

pytestmark = pytest.mark.fluxmq_only

SMALL = 16384
LARGE = 8 << 20
small_broker = broker_fixture({"broker": {"max_pending_bytes": SMALL, "sys_interval": "1s"}})
large_broker = broker_fixture({"broker": {"max_pending_bytes": LARGE}})

PAYLOAD = b"p" * 16384
FLOOD = 3000  # 48 MiB: far more than the kernel's socket buffers and either bound


def _count_publishes(sock: socket.socket, version: int, quiet: float = 1.0) -> tuple[int, list]:
    """Read until `quiet` seconds pass with no data; count QoS 0 PUBLISHes and return the
    payloads of QoS 1 ones (acknowledged). Walks the framing in place: megabytes arrive."""
    buf = bytearray()
    pos, qos0, qos1 = 0, 0, []
    sock.settimeout(quiet)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            return qos0, qos1
        assert chunk, "the broker closed the slow subscriber"
        buf += chunk
        while True:
            if len(buf) - pos < 2:
                break
            mult, length, i = 1, 0, pos + 1
            while i < len(buf):
                b = buf[i]
                length += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult *= 128
            else:
                break
            if len(buf) < i + length:
                break
            first = buf[pos]
            if first >> 4 == 3:
                qos = (first >> 1) & 3
                if qos == 0:
                    qos0 += 1
                else:
                    tlen = int.from_bytes(buf[i : i + 2], "big")
                    pid = buf[i + 2 + tlen : i + 4 + tlen]
                    qos1.append(bytes(buf[i + 4 + tlen + 1 : i + length]))  # v5: empty props
                    sock.sendall(b"\x40\x02" + bytes(pid))
            pos = i + length
        del buf[:pos]
        pos = 0


def _stall_and_flood(broker: BrokerProc) -> tuple[int, list, int]:
    """A slow subscriber (QoS 0 on the flood topic, QoS 1 on another) stops reading; a QoS 1
    publisher floods; then 20 QoS 1 messages follow; the slow one reads again. Returns what it
    got (QoS 0 count, QoS 1 payloads) and what a paho subscriber reading all along got."""
    flood, important = unique_topic("flood"), unique_topic("important")
    slow = RawClient(broker, version=5)
    slow.connect()
    slow.subscribe([(flood, 0), (important, 1)])
    healthy = PahoClient(broker, version=5)
    healthy.subscribe(flood, qos=1)
    received = []
    healthy.c.on_message = lambda _c, _u, m: received.append(len(m.payload))
    with RawClient(broker, version=5) as pub:
        pub.connect()
        for _ in range(FLOOD):
            pub.publish(flood, PAYLOAD, qos=1)
        for n in range(20):
            pub.publish(important, b"%d" % n, qos=1)
    deadline = time.monotonic() + 30
    while len(received) < FLOOD and time.monotonic() < deadline:
        time.sleep(0.05)
    qos0, qos1 = _count_publishes(slow.sock, 5)
    healthy.disconnect()
    slow.close()
    return qos0, qos1, len(received)


def test_stalled_client_loses_only_qos0_and_others_get_everything(
    small_broker: BrokerProc, large_broker: BrokerProc
) -> None:
    got_small, qos1_small, healthy_small = _stall_and_flood(small_broker)
    got_large, qos1_large, healthy_large = _stall_and_flood(large_broker)
    # Every other subscriber, and every QoS 1 message of the stalled one, arrive.
    assert healthy_small == healthy_large == FLOOD
    assert qos1_small == qos1_large == [b"%d" % n for n in range(20)]
    # QoS 0 beyond the bound was dropped; the bound is the configured one: 8 MiB more output
    # kept is about 512 more 16 KiB messages (the kernel's buffers are the same for both).
    assert got_small < FLOOD and got_large < FLOOD
    assert got_large - got_small >= (LARGE - SMALL) // len(PAYLOAD) // 2, (got_small, got_large)


def test_drops_are_counted(small_broker: BrokerProc) -> None:
    """The drops show in `$SYS/broker/publish/messages/dropped` (and in the metrics as
    `fluxmq_messages_dropped_total{reason="slow_subscriber"}`)."""
    watcher = PahoClient(small_broker, version=5)
    watcher.subscribe("$SYS/broker/publish/messages/dropped")
    before = int(watcher.get(timeout=5).payload)
    _stall_and_flood(small_broker)
    deadline = time.monotonic() + 5
    after = before
    while after <= before and time.monotonic() < deadline:
        after = int(watcher.get(timeout=5).payload)
    watcher.disconnect()
    assert after > before
