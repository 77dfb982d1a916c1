"""Authorisation with a Mosquitto ACL file: publish refusals (MQTT 5 0x87, QoS 0 dropped; MQTT
3.1.1 acknowledged and dropped), per-filter SUBACK refusals, the read check at delivery
(retained messages, shared subscriptions, $SYS), patterns, the HTTP bridge, and a reload that
changes the ACL under a connected client."""

from __future__ import annotations

import signal

import pytest

from fluxmq.security.acl import ACL, READ, WRITE, covers
from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import HOST, http, mosquitto_passwd, start, wait_until

pytestmark = pytest.mark.fluxmq_only

ACL_TEXT = """\
# everyone
topic read public/#
topic deny public/secret
pattern readwrite devices/%c/#
pattern read users/%u/#

user alice
topic readwrite sensors/#
topic read $SYS/#
topic readwrite jobs/#

user bob
topic read sensors/+/temp
topic write sensors/bob/#
topic read jobs/#
topic deny jobs/secret/#
"""


@pytest.fixture
def secured(broker_factory, tmp_path):
    """A broker with alice, bob (passwords = names) and ACL_TEXT; (proc, ports, acl path)."""
    pw = tmp_path / "pw"
    mosquitto_passwd(pw, "alice", "alice")
    mosquitto_passwd(pw, "bob", "bob")
    acl = tmp_path / "acl"
    acl.write_text(ACL_TEXT)
    b, ports = start(
        broker_factory,
        {"auth": {"password_file": str(pw), "acl_file": str(acl)},
         "broker": {"sys_interval": "1s"}},
        http=True, health=True,
    )  # fmt: skip
    return b, ports, acl


def test_publish_denied_mqtt5(secured, clients):
    _, ports, _ = secured
    sub = clients("watch", 5)
    assert sub.connect(ports["tcp"], "alice", "alice") == 0
    assert sub.subscribe("sensors/#", "public/#") == [1, 1]
    bob = clients("bob1", 5)
    assert bob.connect(ports["tcp"], "bob", "bob") == 0
    assert bob.publish("sensors/bob/t", qos=1) in (0, 0x10)
    assert bob.publish("sensors/alice/t", qos=1) == 0x87  # PUBACK 0x87
    with RawClient((HOST, ports["tcp"]), version=5) as raw:
        assert raw.connect("bob2", username="bob", password=b"bob").reason_code == 0
        rec = raw.publish("sensors/alice/t", b"x", qos=2)
        assert (rec.type, rec.reason_code) == (5, 0x87)  # PUBREC 0x87
    bob.publish("sensors/alice/q0", qos=0)  # dropped
    bob.publish("sensors/bob/after", qos=0)
    got = sub.topics(1.0)
    assert got == ["sensors/bob/t", "sensors/bob/after"]


def test_publish_denied_mqtt311_is_acknowledged_and_dropped(secured, clients):
    _, ports, _ = secured
    sub = clients("watch3", 4)
    assert sub.connect(ports["tcp"], "alice", "alice") == 0
    sub.subscribe("sensors/#")
    with RawClient((HOST, ports["tcp"]), version=4) as c:
        assert c.connect("bob3", username="bob", password=b"bob").reason_code == 0
        assert c.publish("sensors/alice/x", b"no", qos=1).reason_code == 0  # PUBACK, dropped
        assert c.publish("sensors/alice/y", b"no", qos=2).type == 7  # the QoS 2 flow completes
        c.publish("sensors/bob/ok", b"yes", qos=1)
        assert not c.closed
    assert sub.topics(1.0) == ["sensors/bob/ok"]


@pytest.mark.parametrize("version, refused", [(5, 0x87), (4, 0x80)])
def test_subscribe_refuses_only_the_denied_filters(secured, version, refused):
    _, ports, _ = secured
    with RawClient((HOST, ports["tcp"]), version=version) as c:
        assert c.connect(f"bobsub{version}", username="bob", password=b"bob").reason_code == 0
        ack = c.subscribe([("sensors/+/temp", 1), ("sensors/#", 1), ("#", 0),
                           ("public/news", 0), ("$SYS/#", 0), ("$share/g/jobs/open/#", 1)])  # fmt: skip
        assert ack.reason_codes == [1, refused, refused, 0, refused, 1]


def test_delivery_read_check_and_retained(secured, clients):
    _, ports, _ = secured
    alice = clients("alice-pub", 5)
    assert alice.connect(ports["tcp"], "alice", "alice") == 0
    alice.publish("sensors/a/temp", "21", qos=1, retain=True)
    alice.publish("sensors/a/hum", "40", qos=1, retain=True)
    bob = clients("bob-sub", 5)
    assert bob.connect(ports["tcp"], "bob", "bob") == 0
    assert bob.subscribe("sensors/+/temp", "sensors/+/hum") == [1, 0x87]
    first = bob.got()
    assert first is not None and first.topic == "sensors/a/temp" and first.retain
    alice.publish("sensors/b/temp", "22", qos=1)
    alice.publish("sensors/b/hum", "41", qos=1)
    assert bob.topics(1.0) == ["sensors/b/temp"]
    # A filter granted as a whole still has each message checked: jobs/# minus jobs/secret/#.
    assert bob.subscribe("jobs/#") == [1]
    alice.publish("jobs/open/1", qos=1)
    alice.publish("jobs/secret/1", qos=1)
    alice.publish("jobs/open/2", qos=1)
    assert bob.topics(1.0) == ["jobs/open/1", "jobs/open/2"]


def test_shared_subscription_members_are_checked(secured, clients):
    _, ports, _ = secured
    a = clients("share-alice", 5)
    assert a.connect(ports["tcp"], "alice", "alice") == 0
    b = clients("share-bob", 5)
    assert b.connect(ports["tcp"], "bob", "bob") == 0
    assert a.subscribe("$share/g/jobs/#") == [1]
    assert b.subscribe("$share/g/jobs/#") == [1]  # granted: bob may read most of jobs/#
    pub = clients("share-pub", 5)
    assert pub.connect(ports["tcp"], "alice", "alice") == 0
    for i in range(6):
        pub.publish(f"jobs/open/{i}", qos=1)
    got_a, got_b = a.topics(1.0), b.topics(0.3)
    assert len(got_a) + len(got_b) == 6 and got_a and got_b  # round robin between both
    for i in range(6):
        pub.publish(f"jobs/secret/{i}", qos=1)  # bob may not read these: all go to alice
    assert len(a.topics(1.0)) == 6 and b.topics(0.3) == []
    c = clients("share-bob2", 5)
    assert c.connect(ports["tcp"], "bob", "bob") == 0
    assert c.subscribe("$share/h/sensors/#", "$share/h/jobs/secret/#") == [0x87, 0x87]


def test_sys_topics_only_when_allowed(secured, clients):
    _, ports, _ = secured
    alice = clients("sys-alice", 5)
    assert alice.connect(ports["tcp"], "alice", "alice") == 0
    assert alice.subscribe("$SYS/broker/uptime") == [1]
    m = alice.got(5)
    assert m is not None and m.topic == "$SYS/broker/uptime"
    bob = clients("sys-bob", 5)
    assert bob.connect(ports["tcp"], "bob", "bob") == 0
    assert bob.subscribe("$SYS/#", "#") == [0x87, 0x87]


def test_patterns(secured, clients):
    _, ports, _ = secured
    dev = clients("dev1", 5)
    assert dev.connect(ports["tcp"]) == 0
    assert dev.subscribe("devices/dev1/#", "devices/dev2/#") == [1, 0x87]
    assert dev.publish("devices/dev1/state", qos=1) == 0
    assert dev.publish("devices/dev2/state", qos=1) == 0x87
    assert dev.got().topic == "devices/dev1/state"
    bob = clients("bob-u", 5)
    assert bob.connect(ports["tcp"], "bob", "bob") == 0
    assert bob.subscribe("users/bob/#", "users/alice/#") == [1, 0x87]
    anon = clients("anon-u", 5)
    assert anon.connect(ports["tcp"]) == 0
    assert anon.subscribe("users/+/#") == [0x87]  # %u never applies without a username


def test_http_bridge_obeys_the_acl(secured):
    _, ports, _ = secured
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(b"bob:bob").decode()}
    url = f"http://{HOST}:{ports['http']}/publish"
    assert http("POST", url, {"topic": "sensors/bob/1"}, auth)[0] == 200
    status, body, _ = http("POST", url, {"topic": "sensors/alice/1"}, auth)
    assert status == 403 and "not authorized" in body["error"]


def test_reload_changes_the_acl_for_a_connected_client(secured, clients):
    b, ports, acl = secured
    bob = clients("bob-stays", 5)
    assert bob.connect(ports["tcp"], "bob", "bob") == 0
    assert bob.publish("news/1", qos=1) == 0x87
    acl.write_text(ACL_TEXT + "topic readwrite news/#\n")  # appended to bob's section
    b.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "configuration reloaded" in b.logs())
    assert bob.publish("news/1", qos=1) in (0, 0x10)
    assert bob.subscribe("news/#") == [1]
    assert bob.publish("news/2", qos=1) == 0
    assert bob.got().topic == "news/2"
    # An ACL file with an error: refused, logged, the rules in force stay.
    acl.write_text("topic readwrite news/#\nbogus line\n")
    b.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in b.logs())
    assert "line 2" in b.logs()
    assert bob.publish("news/3", qos=1) == 0
    assert bob.disconnects.empty()  # the same connection all along


def test_acl_parsing_and_conflicts():
    acl = ACL.parse(ACL_TEXT)
    bob = acl.rules_for("bob", "c1")
    assert bob.allows("sensors/x/temp", READ) and not bob.allows("sensors/x/temp", WRITE)
    assert bob.allows("public/a", READ) and not bob.allows("public/secret", READ)
    anon = acl.rules_for(None, "dev9")
    assert anon.allows("devices/dev9/a", WRITE) and not anon.allows("users/x/y", READ)
    # deny wins over allow among topic rules; topic rules before patterns
    both = ACL.parse("topic readwrite a/#\ntopic deny a/b\npattern deny a/c\n").rules_for("u", "c")
    assert not both.allows("a/b", READ) and both.allows("a/c", READ) and both.allows("a/x", WRITE)
    # wildcard client ids get no pattern rules
    assert not acl.rules_for(None, "dev+").allows("devices/dev+/a", WRITE)
    assert covers(("a", "#"), ("a",)) and covers(("#",), ("+", "x"))
    assert not covers(("#",), ("$SYS", "#")) and not covers(("a", "+"), ("a", "#"))
    with pytest.raises(ValueError, match="line 1"):
        ACL.parse("topics read a\n")


def test_everything_allowed_without_an_acl(broker_factory, clients):
    _, ports = start(broker_factory)
    c = clients("free", 5)
    assert c.connect(ports["tcp"]) == 0
    assert c.subscribe("#", "$SYS/#") == [1, 1]
    assert c.publish("any/where", qos=1) == 0
