"""Authentication: Mosquitto password files ($6$ and $7$), refusals for every client kind (paho
3.1.1 and 5.0 over TCP and WebSocket, raw packets for the exact codes, mosquitto_pub -u/-P, the
HTTP bridge), the anonymous rule, and passwords kept out of the logs."""

from __future__ import annotations

import base64

import pytest

from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import (
    HOST,
    http,
    mosquitto_passwd,
    mosquitto_pub,
    sha512_line,
    start,
)

pytestmark = pytest.mark.fluxmq_only


@pytest.fixture
def pwfile(tmp_path):
    """alice (a $7$ hash made by mosquitto_passwd) and bob (a $6$ line, Mosquitto 1.x style)."""
    path = tmp_path / "passwd"
    mosquitto_passwd(path, "alice", "wonderland")
    assert path.read_text().startswith("alice:$7$101$")
    with path.open("a") as f:
        f.write(sha512_line("bob", "builder") + "\n")
    return path


def _auth(pwfile, **extra):
    return {"auth": {"password_file": str(pwfile), **extra}}


@pytest.mark.parametrize("version", [4, 5])
def test_paho_good_and_bad_credentials(broker_factory, clients, pwfile, version):
    _, ports = start(broker_factory, _auth(pwfile, allow_anonymous=False))
    port = ports["tcp"]
    assert clients("a1", version).connect(port, "alice", "wonderland") == 0
    assert clients("b1", version).connect(port, "bob", "builder") == 0
    # paho reports MQTT 3.1.1's return codes 4/5 as the MQTT 5 codes 0x86/0x87
    assert clients("a2", version).connect(port, "alice", "wrong") == 0x86
    assert clients("b2", version).connect(port, "bob", "wrong") == 0x86
    assert clients("u1", version).connect(port, "mallory", "x") == 0x86
    assert clients("anon", version).connect(port) == 0x87


def test_exact_connack_codes(broker_factory, pwfile):
    _, ports = start(broker_factory, _auth(pwfile, allow_anonymous=False))
    addr = (HOST, ports["tcp"])
    for version, bad, anon in ((4, 0x04, 0x05), (5, 0x86, 0x87), (3, 0x04, 0x05)):
        with RawClient(addr, version=version) as c:
            assert c.connect("x", username="alice", password=b"nope").reason_code == bad
            assert c.wait_closed() is not None
        with RawClient(addr, version=version) as c:
            assert c.connect("x").reason_code == anon
        with RawClient(addr, version=version) as c:
            assert c.connect("x", username="bob", password=b"builder").reason_code == 0


def test_mosquitto_pub_with_credentials(broker_factory, pwfile):
    _, ports = start(broker_factory, _auth(pwfile, allow_anonymous=False))
    port = ports["tcp"]
    ok = mosquitto_pub(port, "-u", "alice", "-P", "wonderland", "-t", "t", "-m", "hi", "-q", "1")
    assert ok.returncode == 0, ok.stderr
    for v in ("mqttv311", "mqttv5"):
        bad = mosquitto_pub(port, "-V", v, "-u", "alice", "-P", "bad", "-t", "t", "-m", "hi")
        assert bad.returncode != 0
        assert (
            "bad user name or password" in bad.stderr.lower() or "not authori" in bad.stderr.lower()
        )
    anon = mosquitto_pub(port, "-t", "t", "-m", "hi")
    assert anon.returncode != 0 and "not authori" in anon.stderr.lower()


def test_websocket_clients_are_checked_alike(broker_factory, clients, pwfile):
    _, ports = start(broker_factory, _auth(pwfile, allow_anonymous=False), ws=True)
    assert clients("w1", 5, "websockets").connect(ports["ws"], "alice", "wonderland") == 0
    assert clients("w2", 5, "websockets").connect(ports["ws"], "alice", "x") == 0x86
    assert clients("w3", 4, "websockets").connect(ports["ws"]) == 0x87


def test_http_bridge_basic_credentials(broker_factory, pwfile):
    _, ports = start(broker_factory, _auth(pwfile, allow_anonymous=False), http=True)
    url = f"http://{HOST}:{ports['http']}/publish"

    def basic(user, pw):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    assert http("POST", url, {"topic": "h/1"}, basic("alice", "wonderland"))[0] == 200
    status, body, headers = http("POST", url, {"topic": "h/1"}, basic("alice", "bad"))
    assert status == 401 and "bad username or password" in body["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Basic")
    status, body, _ = http("POST", url, {"topic": "h/1"})
    assert status == 401 and body["error"] == "not authorized"


def test_refusals_are_logged_without_the_password(broker_factory, pwfile):
    b, ports = start(broker_factory, _auth(pwfile, allow_anonymous=False))
    with RawClient((HOST, ports["tcp"]), version=5) as c:
        assert c.connect("leaky", username="alice", password=b"Pa55-secret-xyz").reason_code == 0x86
    from tests.security.helpers import wait_until

    assert wait_until(lambda: "authentication failed" in b.logs())
    logs = b.logs()
    assert "leaky" in logs and "alice" in logs
    assert "Pa55-secret-xyz" not in logs


def test_anonymous_default_on_loopback_listeners(broker_factory, clients):
    """allow_anonymous: auto with every listener on 127.0.0.1: anonymous clients get in."""
    b, ports = start(broker_factory, health=True)
    assert clients("anon", 5).connect(ports["tcp"]) == 0
    status, body, _ = http("GET", f"http://{HOST}:{ports['health']}/ready")
    assert (status, body) == (200, {"status": "ready"})
    assert "SECURITY WARNING" not in b.logs()


def test_quick_start_on_all_interfaces(broker_factory):
    """`make run`: MQTT on every interface and no auth configured. The README quick start
    (mosquitto_sub/mosquitto_pub on localhost) works; a loud warning is logged and shown by
    /ready."""
    from tests.brokerproc import free_port

    port = free_port()
    health = free_port()
    b = broker_factory({"server": {"tcp": {"plain": {"addr": f":{port}"}},
                                   "health_addr": f"{HOST}:{health}"}}, port=port)  # fmt: skip
    import subprocess

    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(port), "-t", "a/#",
                            "-v", "-C", "1", "-W", "10"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        from tests.security.helpers import wait_until

        assert wait_until(lambda: b.logs().count("client connected") >= 1)
        r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "-t", "a/b",
                            "-m", "hi"], capture_output=True, text=True, timeout=10)  # fmt: skip
        assert r.returncode == 0, r.stderr
        out, _ = sub.communicate(timeout=10)
        assert out.strip() == "a/b hi"
    finally:
        if sub.poll() is None:
            sub.kill()
    assert "SECURITY WARNING" in b.logs()
    status, body, _ = http("GET", f"http://{HOST}:{health}/ready")
    assert status == 200 and body["status"] == "ready"
    assert "no authentication" in body["details"]["warnings"][0]


def test_allow_anonymous_rule():
    """The `auto` rule by itself (no other machine can be used in a test)."""
    from fluxmq.security.policy import SecurityConfig, is_loopback

    exposed = SecurityConfig(allow_anonymous="auto", loopback_only=False)
    assert exposed.anonymous_allowed("127.0.0.1:5000")
    assert exposed.anonymous_allowed("127.8.9.10:5000")
    assert exposed.anonymous_allowed("[::1]:5000")
    assert exposed.anonymous_allowed("[::ffff:127.0.0.1]:5000")
    assert not exposed.anonymous_allowed("192.0.2.7:5000")
    assert not exposed.anonymous_allowed("[2001:db8::1]:5000")
    assert not exposed.anonymous_allowed(None)
    local = SecurityConfig(allow_anonymous="auto", loopback_only=True)
    assert local.anonymous_allowed("192.0.2.7:5000")
    assert SecurityConfig(allow_anonymous=True, loopback_only=False).anonymous_allowed(
        "192.0.2.7:1"
    )
    assert not SecurityConfig(allow_anonymous=False).anonymous_allowed("127.0.0.1:1")
    assert is_loopback("127.0.0.1") and not is_loopback("10.0.0.1:1")


def test_bad_password_file_stops_the_start(tmp_path):
    from fluxmq.config import ConfigError, load_config

    bad = tmp_path / "pw"
    bad.write_text("alice:$7$101$notbase64!$xx\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth: {{password_file: {bad}}}\n")
    with pytest.raises(ConfigError, match=r"^auth\.password_file: .*line 1 \(user alice\)"):
        load_config(cfg)
    cfg.write_text(f"auth: {{password_file: {tmp_path / 'missing'}}}\n")
    with pytest.raises(ConfigError, match="password file not found"):
        load_config(cfg)
