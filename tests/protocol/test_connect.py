"""CONNECT / CONNACK handling (MQTT 3.1.1 section 3.1-3.2, MQTT 5.0 section 3.1-3.2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.brokerproc import BrokerProc
from tests.protocol import rawmqtt as r
from tests.protocol.conftest import (
    WAIT,
    MosquittoCli,
    PahoClient,
    assert_disconnect,
    assert_no_success_connack,
    assert_only_disconnect,
)
from tests.protocol.rawmqtt import V5, V31, V311, PacketType, Prop, RawClient, Will

VERSIONS = [pytest.param(V5, id="v5"), pytest.param(V311, id="v311")]

RawOpen = Callable[..., RawClient]
RawConnect = Callable[..., RawClient]


# -- the first packet -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("first", ["pingreq", "publish", "subscribe", "disconnect"])
def test_first_packet_must_be_connect(
    module_broker: BrokerProc, raw_open: RawOpen, version: int, first: str
) -> None:
    """[MQTT-3.1.0-1]: the first packet from the Client MUST be CONNECT; anything else closes the
    connection, and nothing (no CONNACK, no DISCONNECT) is sent before a CONNACK [MQTT-3.2.0-1]."""
    c = raw_open(module_broker, version)
    data = {
        "pingreq": r.pingreq(),
        "publish": r.publish("t/first", b"x", qos=1, packet_id=1, version=version),
        "subscribe": r.subscribe(1, "t/first", version=version),
        "disconnect": r.disconnect(version=version),
    }[first]
    c.send(data)
    assert c.wait_closed() == []


# -- protocol name and level ------------------------------------------------------------------


@pytest.mark.parametrize(
    "level",
    [
        0,
        1,
        2,
        6,
        7,
        255,
        # Mosquitto treats bit 7 as its private "bridge" flag and accepts 0x84 as 3.1.1
        pytest.param(0x84, marks=pytest.mark.fluxmq_only),
    ],
)
def test_unsupported_protocol_level_refused(
    module_broker: BrokerProc, raw_open: RawOpen, level: int
) -> None:
    """3.1.1 [MQTT-3.1.2-2]: an unsupported Protocol Level gets CONNACK return code 0x01 and the
    connection is closed. MQTT 5 [MQTT-3.1.2-2] allows CONNACK 0x84 (Unsupported Protocol
    Version) instead. Either way the server must not accept, and must close."""
    c = raw_open(module_broker, V311)
    c.send(r.connect("badlevel", version=V311, protocol_level=level))
    got = c.wait_closed()
    assert len(got) == 1 and got[0].type == PacketType.CONNACK, got
    ack = got[0]
    if ack.raw == b"\x20\x02\x00\x01":  # 3.1.1 layout: flags 0, return code 0x01
        return
    # MQTT 5 layout: flags, reason 0x84, properties
    v5 = r.parse_packet(ack.raw, V5)
    assert v5.session_present is False and v5.reason_code == r.RC.UNSUPPORTED_PROTOCOL_VERSION, (
        f"expected CONNACK 0x01 (3.1.1) or 0x84 (5.0), got {ack.raw.hex()}"
    )


@pytest.mark.parametrize("name", ["MQTX", "mqtt", "MQIsdp"])
def test_wrong_protocol_name_not_accepted(
    module_broker: BrokerProc, raw_open: RawOpen, name: str
) -> None:
    """[MQTT-3.1.2-1] (3.1.1 and 5.0): with a Protocol Name other than "MQTT" (for level 4)
    the Server MAY disconnect and MUST NOT continue to process the CONNECT per this
    specification: no successful CONNACK, connection closed. ("MQIsdp" is only valid with
    level 3.)"""
    c = raw_open(module_broker, V311)
    c.send(r.connect("badname", version=V311, protocol_name=name))
    got = c.wait_closed()
    for p in got:
        assert p.type == PacketType.CONNACK and p.reason_code != 0, p


def test_mqtt31_mqisdp_accepted(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str, mosquitto_cli: MosquittoCli
) -> None:
    """MQTT 3.1 clients (protocol name "MQIsdp", level 3) are accepted: CONNACK 0x20 0x02 0x00
    0x00, and they can subscribe and receive (here from Debian's `mosquitto_pub -V mqttv31`)."""
    c = raw_open(module_broker, V31)
    ack = c.connect(uid, version=V31)
    assert ack.raw == b"\x20\x02\x00\x00"
    assert c.subscribe(f"t/{uid}/31", 1).reason_codes == [1]
    mosquitto_cli.pub(
        module_broker, "-V", "mqttv31", "-i", f"{uid}p", "-t", f"t/{uid}/31", "-m", "v31", "-q", "1"
    )
    msg = c.expect(PacketType.PUBLISH)
    assert (msg.topic, msg.payload, msg.qos) == (f"t/{uid}/31", b"v31", 1)
    c.ack(msg)


# -- connect flags ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_reserved_connect_flag_set_closes(
    module_broker: BrokerProc, raw_open: RawOpen, version: int
) -> None:
    """[MQTT-3.1.2-3] (3.1.1 and 5.0): the reserved bit 0 of the Connect Flags must be 0; if it
    is not, the Server closes the connection (3.1.1: without CONNACK [MQTT-3.1.4-1]; 5.0: it is a
    Malformed Packet, a CONNACK >= 0x80 is allowed)."""
    c = raw_open(module_broker, version)
    c.send(r.connect("reserved", version=version, extra_flags=0x01))
    assert_no_success_connack(c.wait_closed(), version)


WILL_FLAG_CASES = [
    # (id, connect kwargs) - each violates a Will flag rule
    pytest.param({"will": Will("w/t", b"x", qos=3)}, id="will-qos-3"),
    pytest.param({"extra_flags": 0x20}, id="will-retain-without-will"),
    pytest.param({"extra_flags": 0x08}, id="will-qos-1-without-will"),
    pytest.param({"extra_flags": 0x10}, id="will-qos-2-without-will"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kwargs", WILL_FLAG_CASES)
def test_will_flag_rules(
    module_broker: BrokerProc, raw_open: RawOpen, version: int, kwargs: dict
) -> None:
    """3.1.1 [MQTT-3.1.2-13] [MQTT-3.1.2-14] [MQTT-3.1.2-15], 5.0 [MQTT-3.1.2-11]
    [MQTT-3.1.2-12] [MQTT-3.1.2-13]: Will QoS 3 is malformed; with the Will Flag 0 the Will QoS
    and Will Retain must be 0. The connection is refused and closed."""
    c = raw_open(module_broker, version)
    c.send(r.connect("willflags", version=version, **kwargs))
    assert_no_success_connack(c.wait_closed(), version)


def test_password_without_username_v311_closes(
    module_broker: BrokerProc, raw_open: RawOpen
) -> None:
    """3.1.1 [MQTT-3.1.2-22]: if the User Name Flag is 0 the Password Flag MUST be 0; the CONNECT
    does not conform, so the Server closes without a CONNACK [MQTT-3.1.4-1]."""
    c = raw_open(module_broker, V311)
    c.send(r.connect("pwonly", version=V311, password=b"secret"))
    assert c.wait_closed() == []


def test_password_without_username_v5_accepted(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str
) -> None:
    """MQTT 5.0 section 3.1.2.9 allows a Password without a User Name (unlike 3.1.1)."""
    c = raw_open(module_broker, V5)
    ack = c.connect(uid, password=b"token")
    assert ack.reason_code == 0
    assert c.ping().type == PacketType.PINGRESP


def test_user_name_and_password_accepted(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """[MQTT-3.1.2-17]/[MQTT-3.1.2-19] (5.0): User Name and Password fields are present when
    flagged; an anonymous-allowing server accepts them (no authentication configured)."""
    c = raw_connect(module_broker, uid, version=V311, username="user", password=b"pw")
    assert c.connack is not None and c.connack.raw == b"\x20\x02\x00\x00"


# -- client identifiers -----------------------------------------------------------------------


def test_empty_client_id_v5_gets_assigned_identifier(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str
) -> None:
    """[MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16]: a zero-length ClientID is replaced by a
    unique server-assigned one, returned as Assigned Client Identifier in the CONNACK; two such
    clients get different identifiers, and the assigned one identifies the Session (it can be
    resumed with it)."""
    a = raw_open(module_broker)
    ack_a = a.connect("", clean=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 30})
    b = raw_open(module_broker)
    ack_b = b.connect("")
    assert ack_a.reason_code == 0 and ack_b.reason_code == 0
    id_a = ack_a.properties.get(Prop.ASSIGNED_CLIENT_IDENTIFIER)
    id_b = ack_b.properties.get(Prop.ASSIGNED_CLIENT_IDENTIFIER)
    assert isinstance(id_a, str) and id_a, ack_a
    assert isinstance(id_b, str) and id_b, ack_b
    assert id_a != id_b
    topic = f"t/{uid}/assigned"
    a.subscribe(topic, 1)
    a.disconnect()
    again = raw_open(module_broker)
    ack = again.connect(id_a, clean=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 0})
    assert ack.reason_code == 0 and ack.session_present is True, ack


def test_client_id_supplied_gets_no_assigned_identifier(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """3.2.2.3.7: the Assigned Client Identifier is only for a zero-length ClientID."""
    c = raw_connect(module_broker, uid)
    assert c.connack is not None
    assert Prop.ASSIGNED_CLIENT_IDENTIFIER not in c.connack.properties


def test_empty_client_id_v311_clean_session_0_rejected(
    module_broker: BrokerProc, raw_open: RawOpen
) -> None:
    """3.1.1 [MQTT-3.1.3-8]: a zero-byte ClientId with CleanSession 0 gets CONNACK return code
    0x02 (Identifier rejected) and the connection is closed [MQTT-3.2.2-5]."""
    c = raw_open(module_broker, V311)
    c.send(r.connect("", version=V311, clean=False))
    got = c.wait_closed()
    assert [p.raw for p in got] == [b"\x20\x02\x00\x02"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "client_id",
    [
        pytest.param("abcdefghijklmnopqrstuvw", id="23-chars"),
        pytest.param("L" * 1000, id="1000-bytes"),
        pytest.param("é" * 30000, id="60000-bytes"),
        pytest.param("客户端-ü-🚀-id", id="utf8"),
        pytest.param("with space/slash#plus+$", id="punctuation"),
    ],
)
def test_client_id_forms_accepted_and_identify_session(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str, version: int, client_id: str
) -> None:
    """[MQTT-3.1.3-5] (23 alphanumerics MUST be allowed); longer and non-alphanumeric UTF-8
    ClientIDs MAY be allowed (3.1.3.1) and FluxMQ, like Mosquitto, allows them. The ClientID is
    used exactly as sent to identify the Session [MQTT-3.1.3-2]: reconnecting with it (clean
    session/start 0) finds the Session again."""
    cid = f"{client_id}{uid}"
    se = {Prop.SESSION_EXPIRY_INTERVAL: 30} if version == V5 else None
    a = raw_open(module_broker, version)
    ack = a.connect(cid, clean=False, properties=se)
    assert ack.reason_code == 0 and ack.session_present is False, ack
    a.disconnect()
    b = raw_open(module_broker, version)
    ack = b.connect(cid, clean=False, properties=se)
    assert ack.reason_code == 0 and ack.session_present is True, ack
    # and a similar-but-different id is a different session
    c = raw_open(module_broker, version)
    ack = c.connect(cid + "x", clean=False, properties=se)
    assert ack.session_present is False, ack
    for cl in (b, c):
        cl.disconnect()
    for x in (cid, cid + "x"):  # do not leave persistent sessions behind
        raw_open(module_broker, version).connect(x, clean=True)


def test_paho_v5_empty_client_id(module_broker: BrokerProc, paho_connect: Callable) -> None:
    """paho-mqtt 2.x with an empty client id over MQTT 5 connects and learns its Assigned Client
    Identifier [MQTT-3.2.2-16]."""
    c: PahoClient = paho_connect(module_broker, "", version=V5)
    props = c.connack_properties
    assert props is not None and getattr(props, "AssignedClientIdentifier", "")


# -- CONNACK layout ---------------------------------------------------------------------------


def test_connack_v311_bytes(module_broker: BrokerProc, raw_open: RawOpen, uid: str) -> None:
    """3.1.1 section 3.2: CONNACK is exactly 0x20 0x02, flags 0x00 (clean session ->
    Session Present 0 [MQTT-3.2.2-1]), return code 0x00 [MQTT-3.1.4-4]."""
    c = raw_open(module_broker, V311)
    assert c.connect(uid, version=V311).raw == b"\x20\x02\x00\x00"


def test_connack_v5_layout(module_broker: BrokerProc, raw_open: RawOpen, uid: str) -> None:
    """5.0 section 3.2: CONNACK flags bits 7-1 are 0 [MQTT-3.2.2-1], Session Present 0 for Clean
    Start 1 [MQTT-3.2.2-2], Reason Code 0x00 [MQTT-3.1.4-5], and a well-formed property block
    with no property the server must not send (no Assigned Client Identifier when an id was
    given, no Authentication Method without one [MQTT-4.12.0-6])."""
    c = raw_open(module_broker, V5)
    ack = c.connect(uid)
    assert ack.raw[0] == 0x20
    assert ack.body[0] == 0x00 and ack.body[1] == 0x00
    assert Prop.AUTHENTICATION_METHOD not in ack.properties
    if Prop.MAXIMUM_QOS in ack.properties:
        assert ack.properties[Prop.MAXIMUM_QOS] in (0, 1)
    if Prop.RECEIVE_MAXIMUM in ack.properties:
        assert ack.properties[Prop.RECEIVE_MAXIMUM] > 0
    for pid, _ in ack.property_list:
        if pid not in r.REPEATABLE:
            assert sum(1 for p, _ in ack.property_list if p == pid) == 1, ack.property_list


# -- a second CONNECT -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_second_connect_closes(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str, version: int
) -> None:
    """[MQTT-3.1.0-2] (3.1.1 and 5.0): a second CONNECT on a connection is a protocol violation
    and the connection is closed; no second CONNACK [MQTT-3.2.0-2] (5.0)."""
    c = raw_connect(module_broker, uid, version=version)
    c.send(r.connect(uid, version=version))
    got = c.wait_closed()
    if version == V5:
        assert_only_disconnect(got, {r.RC.PROTOCOL_ERROR})
    else:
        assert got == []


@pytest.mark.fluxmq_only  # Mosquitto 2.0.11 closes without the DISCONNECT (4.13.1 SHOULD)
def test_second_connect_v5_disconnect_protocol_error(
    module_broker: BrokerProc, raw_connect: RawConnect, uid: str
) -> None:
    """[MQTT-3.1.0-2] + 4.13.1: the second CONNECT is a Protocol Error; the server SHOULD send
    DISCONNECT 0x82 before closing - FluxMQ does."""
    c = raw_connect(module_broker, uid)
    c.send(r.connect(uid))
    assert_disconnect(c.wait_closed(), {r.RC.PROTOCOL_ERROR})


def test_no_packet_processed_after_refused_connect(
    module_broker: BrokerProc, raw_open: RawOpen, paho_connect: Callable, uid: str
) -> None:
    """3.1.1 [MQTT-3.1.4-5] / 5.0 [MQTT-3.1.4-6]: if the Server rejects the CONNECT it MUST NOT
    process data sent after it: a PUBLISH pipelined behind a rejected CONNECT is not delivered."""
    topic = f"t/{uid}/refused"
    sub: PahoClient = paho_connect(module_broker, f"{uid}s")
    sub.subscribe(topic)
    c = raw_open(module_broker, V311)
    c.send(r.connect("", version=V311, clean=False) + r.publish(topic, b"leak", version=V311))
    got = c.wait_closed()
    assert [p.raw for p in got] == [b"\x20\x02\x00\x02"]
    sub.expect_nothing()


def test_connect_timeout_not_applied_to_prompt_clients(
    module_broker: BrokerProc, raw_open: RawOpen, uid: str
) -> None:
    """Sanity for 3.1.4 step 1 (close if no CONNECT "within a reasonable time"): a client that
    sends CONNECT a little late (0.5 s after the TCP connect) is still served."""
    c = raw_open(module_broker, V5)
    c.expect_nothing(0.5)
    assert c.connect(uid).reason_code == 0
    assert c.ping(WAIT).type == PacketType.PINGRESP
