"""A QoS 1/2 message published the moment a persistent subscriber's connection ends is kept for
its session, not lost: the session is detached from the connection as soon as the broker starts
closing it (after DISCONNECT, a protocol error or a keep-alive timeout), while the socket itself
may stay open a little longer (half-closed, so the client can still read our last packet)."""

from __future__ import annotations

import time

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol.rawmqtt import V5, V311, PacketType, RawClient, disconnect


@pytest.mark.parametrize("version", [V311, V5])
def test_message_published_while_the_subscriber_is_closing_is_queued(broker: BrokerProc, version):
    """[MQTT-3.1.2-4]/[MQTT-4.4.0-1] (session state kept for a persistent session): the
    subscriber sends DISCONNECT but keeps its socket open; a QoS 1 message published right then
    is delivered when it comes back with the same session."""
    cid = f"closing-sub-{version}"
    props = {0x11: 300} if version == V5 else None  # Session Expiry Interval
    sub = RawClient.connected(broker, cid, version=version, clean=False, properties=props)
    assert sub.subscribe([("race/t", 1)]).reason_codes == [1]
    sub.send(disconnect(version=version))  # the socket stays open: the broker closes its side
    time.sleep(0.1)
    pub = RawClient.connected(broker, f"race-pub-{version}", version=version)
    ack = pub.publish("race/t", b"kept", qos=1)
    assert ack is not None and ack.type == PacketType.PUBACK
    pub.disconnect()
    sub.close()

    again = RawClient.connected(broker, cid, version=version, clean=False, properties=props)
    assert again.connack.session_present
    msg = again.expect(PacketType.PUBLISH)
    assert msg.payload == b"kept"
    again.disconnect()
