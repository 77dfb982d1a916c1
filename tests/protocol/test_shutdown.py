"""Graceful shutdown on SIGTERM (`BrokerProc.stop()`), MQTT 5.0 3.14 and 3.1.2.5.

What the spec says for a server-initiated close: the Server MAY send DISCONNECT with 0x8B
(Server shutting down) to v5 clients (3.14.2.1); closing a connection without having received
DISCONNECT 0x00 publishes its Will Message (3.1.2.5: "The Server closes the Network Connection
without first receiving a DISCONNECT packet with a Reason Code 0x00") once the Will Delay has
passed or the Session ends, whichever is first; "In the case of a Server shutdown or failure,
the Server MAY defer publication of Will Messages until a subsequent restart". With the in-memory
store every Session ends at shutdown, so deferring would lose the wills: they are published
before the subscribers' connections are closed (Mosquitto does the same).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol import rawmqtt as r
from tests.protocol.conftest import PahoClient, assert_disconnect, assert_only_disconnect
from tests.protocol.rawmqtt import V5, V311, PacketType, Prop, RawClient, Will

STOP_WITHIN = 5.0  # seconds from SIGTERM to exit


def sigterm(broker: BrokerProc) -> int | None:
    """SIGTERM the broker, assert it exits promptly, return its exit code."""
    t0 = time.monotonic()
    rc = broker.stop(signal.SIGTERM)
    assert time.monotonic() - t0 < STOP_WITHIN, "broker did not exit promptly on SIGTERM"
    return rc


def test_sigterm_exits_zero_and_closes_connections(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """SIGTERM is a graceful stop: the process exits with status 0 and every client connection is
    closed (v5 clients may first get a DISCONNECT 0x8B - nothing else)."""
    b = broker_factory()
    v5 = RawClient.connected(b, f"{uid}5")
    v3 = RawClient.connected(b, f"{uid}3", version=V311)
    assert sigterm(b) == 0
    assert_only_disconnect(v5.wait_closed(), {r.RC.SERVER_SHUTTING_DOWN})
    assert v3.wait_closed() == []


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 closes without DISCONNECT
def test_sigterm_v5_clients_get_server_shutting_down(
    broker_factory: Callable[..., BrokerProc], paho_connect: Callable, uid: str
) -> None:
    """5.0 3.14.2.1 reason 0x8B (Server shutting down): every connected v5 client gets DISCONNECT
    0x8B before the close (raw check, and paho-mqtt's on_disconnect sees the reason code); v3.1.1
    clients are just closed."""
    b = broker_factory()
    raws = [RawClient.connected(b, f"{uid}r{i}") for i in range(3)]
    v3 = RawClient.connected(b, f"{uid}3", version=V311)
    paho: PahoClient = paho_connect(b, f"{uid}p", version=V5)
    assert sigterm(b) == 0
    for c in raws:
        assert_disconnect(c.wait_closed(), {r.RC.SERVER_SHUTTING_DOWN})
    assert v3.wait_closed() == []
    assert paho.disconnected.wait(3.0)
    assert paho.disconnect_rc == r.RC.SERVER_SHUTTING_DOWN


def test_sigterm_publishes_wills_of_connected_clients(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """5.0 3.1.2.5 / 3.1.1 [MQTT-3.1.2-8]: the shutdown closes the connections without a
    DISCONNECT 0x00 from the clients, so their wills are published - to subscribers still
    connected, before their own close. A will with a Will Delay is published too, because the
    (in-memory) Session ends at shutdown ([MQTT-3.1.2-8]: delay elapsed "or the Session ends").
    A client that disconnected normally earlier has no will left [MQTT-3.14.4-3]."""
    b = broker_factory()
    sub = RawClient.connected(b, f"{uid}s", version=V311)
    assert sub.subscribe(f"will/{uid}/#", 1).reason_codes == [1]
    RawClient.connected(b, f"{uid}a", will=Will(f"will/{uid}/v5", b"v5-will", 1))
    RawClient.connected(b, f"{uid}b", version=V311, will=Will(f"will/{uid}/v311", b"v311-will", 1))
    RawClient.connected(
        b,
        f"{uid}c",
        clean=False,
        properties={Prop.SESSION_EXPIRY_INTERVAL: 60},
        will=Will(
            f"will/{uid}/delayed", b"delayed-will", 1, properties={Prop.WILL_DELAY_INTERVAL: 30}
        ),
    )
    gone = RawClient.connected(b, f"{uid}d", will=Will(f"will/{uid}/normal", b"no", 1))
    gone.disconnect()
    assert sigterm(b) == 0
    got = sub.wait_closed()
    assert all(p.type == PacketType.PUBLISH for p in got), got
    assert sorted((p.topic, p.payload) for p in got) == sorted(
        [
            (f"will/{uid}/v5", b"v5-will"),
            (f"will/{uid}/v311", b"v311-will"),
            (f"will/{uid}/delayed", b"delayed-will"),
        ]
    )


def test_restart_after_sigterm_serves_clients(
    broker_factory: Callable[..., BrokerProc], uid: str
) -> None:
    """After a graceful stop the broker starts again on the same port and serves a publish /
    subscribe round trip (nothing left behind blocks the restart)."""
    b = broker_factory()
    RawClient.connected(b, f"{uid}x")
    assert sigterm(b) == 0
    b.start()
    sub = RawClient.connected(b, f"{uid}s")
    sub.subscribe(f"t/{uid}", 1)
    RawClient.connected(b, f"{uid}p").publish(f"t/{uid}", b"again", 1)
    assert sub.expect(PacketType.PUBLISH).payload == b"again"
