"""TLS and mTLS on the MQTT-over-TCP, WebSocket and HTTP listeners, with certificates made by
openssl (see conftest.certs): Mosquitto's clients, paho, curl and `openssl s_client`."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from websockets.exceptions import WebSocketException

from tests.brokerproc import free_port
from tests.protocol.rawmqtt import PacketType, connect
from tests.transport.conftest import HOST, wait_until
from tests.transport.inproc import InProcessNode
from tests.transport.wsmqtt import WSMQTT

pytestmark = pytest.mark.timeout(90)


def _tls_args(certs, client=None) -> list[str]:
    args = ["--cafile", certs.ca]
    if client is not None:
        args += ["--cert", client[0], "--key", client[1]]
    return args


def s_client(port: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """`openssl s_client` to the listener: returncode 0 only if the handshake completed."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-brief", *args],
        input="", capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_mosquitto_clients_over_tls(mqtt_broker, certs, mosquitto):
    _, ports = mqtt_broker({"tcp_tls": certs.tls()})
    port = str(ports["tcp_tls"])
    sub = mosquitto.sub_ready("-p", port, *_tls_args(certs), "-t", "tls/#", "-C", "1", "-W", "8",
                              "-v")  # fmt: skip
    r = mosquitto.pub("-p", port, *_tls_args(certs), "-t", "tls/a", "-m", "secret", "-q", "1")
    assert r.returncode == 0, r.stderr
    assert mosquitto.payloads(sub) == ["tls/a secret"]
    # and across doors: plain TCP publisher, TLS subscriber
    sub = mosquitto.sub_ready("-p", port, *_tls_args(certs), "-t", "tls/#", "-C", "1", "-W", "8")
    r = mosquitto.pub("-p", str(ports["tcp"]), "-t", "tls/b", "-m", "plain")
    assert r.returncode == 0, r.stderr
    assert mosquitto.payloads(sub) == ["plain"]


def test_tls_listener_does_not_speak_plain_mqtt(mqtt_broker, certs, mosquitto):
    _, ports = mqtt_broker({"tcp_tls": certs.tls()})
    r = mosquitto.pub("-p", str(ports["tcp_tls"]), "-t", "x", "-m", "y", timeout=15)
    assert r.returncode != 0


def test_mtls_accepts_a_client_certificate_of_the_ca_and_refuses_others(
    mqtt_broker, certs, mosquitto
):
    _, ports = mqtt_broker({"tcp_mtls": certs.mtls()})
    port = str(ports["tcp_mtls"])
    sub = mosquitto.sub_ready("-p", port, *_tls_args(certs, certs.client), "-t", "m/#", "-C",
                              "1", "-W", "8")  # fmt: skip
    ok = mosquitto.pub("-p", port, *_tls_args(certs, certs.client), "-t", "m/1", "-m", "hi")
    assert ok.returncode == 0, ok.stderr
    assert mosquitto.payloads(sub) == ["hi"]
    no_cert = mosquitto.pub("-p", port, *_tls_args(certs), "-t", "m/1", "-m", "x", timeout=15)
    assert no_cert.returncode != 0
    rogue = mosquitto.pub("-p", port, *_tls_args(certs, certs.rogue_client), "-t", "m/1",
                          "-m", "x", timeout=15)  # fmt: skip
    assert rogue.returncode != 0
    # in TLS 1.2 the refusal is part of the handshake itself
    r = s_client(ports["tcp_mtls"], "-CAfile", certs.ca, "-tls1_2")
    assert r.returncode != 0, r.stderr
    r = s_client(ports["tcp_mtls"], "-CAfile", certs.ca, "-tls1_2", "-cert", certs.client[0],
                 "-key", certs.client[1])  # fmt: skip
    assert r.returncode == 0, r.stderr


class Paho:
    def __init__(self, port, client_id, certs, client=None, transport="tcp"):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, transport=transport)  # fmt: skip
        kw = {"ca_certs": certs.ca}
        if client:
            kw.update(certfile=client[0], keyfile=client[1])
        self.c.tls_set(**kw)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.got = threading.Event()
        self.messages = []
        self.c.on_connect = lambda *a: self.connected.set()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = lambda c, u, m: (self.messages.append(m), self.got.set())
        self.c.connect(HOST, port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(8), "paho did not connect over TLS"

    def subscribe(self, topic):
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_paho_over_mtls_and_wss(mqtt_broker, certs, mosquitto):
    _, ports = mqtt_broker({"tcp_mtls": certs.mtls(), "ws_tls": certs.tls()})
    a = Paho(ports["tcp_mtls"], "paho-mtls", certs, certs.client)
    b = Paho(ports["ws_tls"], "paho-wss", certs, transport="websockets")
    try:
        a.subscribe("paho/tls/#")
        b.subscribe("paho/tls/#")
        a.c.publish("paho/tls/1", b"over mtls", qos=1)
        assert a.got.wait(5) and b.got.wait(5)
        assert b.messages[0].payload == b"over mtls"
    finally:
        a.close()
        b.close()


def test_wss_mtls_refuses_a_client_without_certificate(mqtt_broker, certs):
    _, ports = mqtt_broker({"ws_mtls": certs.mtls()})
    ctx = ssl.create_default_context(cafile=certs.ca)
    with pytest.raises((ssl.SSLError, OSError, EOFError, WebSocketException)):
        c = WSMQTT(ports["ws_mtls"], scheme="wss", ssl=ctx)
        c.send(connect("nocert"))
        c.expect(PacketType.CONNACK)
    good = ssl.create_default_context(cafile=certs.ca)
    good.load_cert_chain(*certs.client)
    c = WSMQTT(ports["ws_mtls"], scheme="wss", ssl=good)
    try:
        c.send(connect("withcert"))
        assert c.expect(PacketType.CONNACK).reason_code == 0
    finally:
        c.close()


def test_min_version_tls13_refuses_a_tls12_client(mqtt_broker, certs):
    _, ports = mqtt_broker({"tcp_tls": certs.tls(min_version="TLS1.3")})
    old = s_client(ports["tcp_tls"], "-CAfile", certs.ca, "-tls1_2")
    assert old.returncode != 0, old.stdout + old.stderr
    new = s_client(ports["tcp_tls"], "-CAfile", certs.ca, "-tls1_3")
    assert new.returncode == 0, new.stderr
    assert "TLSv1.3" in new.stdout + new.stderr


def test_default_min_version_accepts_tls12(mqtt_broker, certs):
    _, ports = mqtt_broker({"tcp_tls": certs.tls()})
    r = s_client(ports["tcp_tls"], "-CAfile", certs.ca, "-tls1_2")
    assert r.returncode == 0, r.stderr


def test_cipher_suites_are_honoured(mqtt_broker, certs):
    _, ports = mqtt_broker({
        "tcp_tls": certs.tls(cipher_suites=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
                             prefer_server_cipher_suites=True)
    })  # fmt: skip
    port = ports["tcp_tls"]
    refused = s_client(
        port, "-CAfile", certs.ca, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"
    )
    assert refused.returncode != 0
    ok = s_client(port, "-CAfile", certs.ca, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
    assert ok.returncode == 0, ok.stderr
    assert "ECDHE-RSA-AES128-GCM-SHA256" in ok.stdout + ok.stderr


def test_https_bridge_with_curl(mqtt_broker, certs, mosquitto):
    _, ports = mqtt_broker({"http_tls": certs.tls(), "http_mtls": certs.mtls()})
    sub = mosquitto.sub_ready("-p", str(ports["tcp"]), "-t", "https/#", "-C", "2", "-W", "8")

    def curl(port, *extra):
        return subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", certs.ca, *extra,
             "-H", "Content-Type: application/json", "-d", '{"topic":"https/x","payload":"p"}',
             "-w", "%{http_code}", "-o", "/dev/null", f"https://localhost:{port}/publish"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip

    assert curl(ports["http_tls"]).stdout == "200"
    assert (
        curl(ports["http_mtls"], "--cert", certs.client[0], "--key", certs.client[1]).stdout
        == "200"
    )
    assert curl(ports["http_mtls"]).returncode != 0  # no client certificate
    assert curl(ports["http_mtls"], "--cert", certs.rogue_client[0],
                "--key", certs.rogue_client[1]).returncode != 0  # fmt: skip
    assert mosquitto.payloads(sub) == ["p", "p"]


def test_certificates_are_reloaded_on_sighup_without_dropping_clients(
    mqtt_broker, certs, tmp_path, mosquitto
):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(certs.server[0], cert)
    shutil.copy(certs.server[1], key)
    b, ports = mqtt_broker({"tcp_tls": {"cert_file": str(cert), "key_file": str(key)}})
    port = ports["tcp_tls"]
    assert "CN = server-a" in s_client(port, "-CAfile", certs.ca).stderr
    client = Paho(port, "stays", certs)
    try:
        client.subscribe("reload/#")
        shutil.copy(certs.server_b[0], cert)
        shutil.copy(certs.server_b[1], key)
        b.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "certificates reloaded" in b.logs(), 5)
        after = s_client(port, "-CAfile", certs.ca)
        assert after.returncode == 0 and "CN = server-b" in after.stderr, after.stderr
        # the client connected before the reload is still there
        r = mosquitto.pub("-p", str(ports["tcp"]), "-t", "reload/1", "-m", "still here", "-q", "1")
        assert r.returncode == 0
        assert client.got.wait(5)
        assert client.messages[0].payload == b"still here"
        # a bad file on reload: the error is logged and the current certificate stays
        key.write_text("not a key\n")
        b.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "certificates not reloaded" in b.logs(), 5)
        assert "server.tcp.tls.key_file" in b.logs()
        assert "CN = server-b" in s_client(port, "-CAfile", certs.ca).stderr
        assert b.alive
    finally:
        client.close()


# -- configuration errors: exit code 2, the key named -----------------------------------------


def _serve(tmp_path, section: dict, path=("tcp", "tls")) -> subprocess.CompletedProcess:
    cfg = {
        "server": {
            "tcp": {"plain": {"addr": f"{HOST}:{free_port()}"}},
            "websocket": {"plain": {"addr": ""}},
            "http": {"plain": {"addr": ""}},
            "coap": {"plain": {"addr": ""}},
            "health_addr": "",
        },
        "log": {"level": "error"},
    }
    cfg["server"].setdefault(path[0], {})[path[1]] = {"addr": f"{HOST}:{free_port()}", **section}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "fluxmq", "serve", "-c", str(f)],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("make", "path", "key", "words"),
    [
        (lambda c, t: {"cert_file": str(t / "missing.crt"), "key_file": c.server[1]},
         ("tcp", "tls"), "server.tcp.tls.cert_file", "cannot read"),
        (lambda c, t: {"cert_file": c.server[1], "key_file": c.server[1]},
         ("tcp", "tls"), "server.tcp.tls.cert_file", "no PEM certificate"),
        (lambda c, t: {"cert_file": c.server[0]},
         ("tcp", "tls"), "server.tcp.tls.key_file", "required"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server_b[1]},
         ("tcp", "tls"), "server.tcp.tls.key_file", "does not match"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server[1],
                       "cipher_suites": ["TLS_NOT_A_SUITE"]},
         ("websocket", "tls"), "server.websocket.tls.cipher_suites", "unknown cipher suite"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server[1],
                       "cipher_suites": ["TLS_AES_128_GCM_SHA256"]},
         ("tcp", "tls"), "server.tcp.tls.cipher_suites", "TLS 1.3"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server[1]},
         ("tcp", "mtls"), "server.tcp.mtls.ca_file", "required"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server[1],
                       "ca_file": str(t / "nope.pem")},
         ("http", "mtls"), "server.http.mtls.ca_file", "cannot read"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server[1],
                       "client_auth": "require"},
         ("tcp", "tls"), "server.tcp.tls.ca_file", "required"),
        (lambda c, t: {"cert_file": c.server[0], "key_file": c.server[1],
                       "min_version": "TLS1.0"},
         ("tcp", "tls"), "server.tcp.tls.min_version", "expected one of"),
    ],
    ids=["missing-cert", "not-a-cert", "no-key", "mismatched-key", "unknown-cipher",
         "tls13-cipher", "mtls-without-ca", "unreadable-ca", "require-without-ca", "old-tls"],
)  # fmt: skip
def test_tls_config_errors_exit_2_naming_the_key(tmp_path, certs, make, path, key, words):
    r = _serve(tmp_path, make(certs, tmp_path), path)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"fluxmq: config error: {key}"), line
    assert words in line


def test_check_config_reports_tls_errors(tmp_path, certs):
    f = tmp_path / "c.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "tcp": {
                        "tls": {
                            "addr": ":8883",
                            "cert_file": certs.server[0],
                            "key_file": certs.server_b[1],
                        }
                    }
                }
            }
        )
    )
    r = subprocess.run([sys.executable, "-m", "fluxmq", "check-config", str(f)],
                       capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert r.returncode == 2
    assert "server.tcp.tls.key_file" in r.stderr


# -- the client certificate's identity ---------------------------------------------------------


def _inproc_cfg() -> dict:
    server = {"tcp": {"plain": {"addr": ""}}, "websocket": {"plain": {"addr": ""}},
              "http": {"plain": {"addr": ""}}, "coap": {"plain": {"addr": ""}},
              "health_addr": ""}  # fmt: skip
    return {"server": server, "log": {"level": "warning"}}


def _node(tmp_path, kind, mode, settings):
    port = free_port()
    cfg = _inproc_cfg()
    cfg["server"].setdefault(kind, {})[mode] = {"addr": f"{HOST}:{port}", **settings}
    if kind != "tcp":
        cfg["server"]["tcp"]["plain"]["addr"] = f"{HOST}:{free_port()}"
    return InProcessNode(tmp_path, cfg), port


def test_client_certificate_identity_reaches_authentication(tmp_path, certs, mosquitto):
    node, port = _node(tmp_path, "tcp", "mtls", certs.mtls(use_identity_as_username=True))
    with node as n:
        r = mosquitto.pub("-p", str(port), *_tls_args(certs, certs.client), "-i", "idc",
                          "-u", "ignored", "-t", "id/1", "-m", "x")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: n.hooks.infos, 5)
        info = n.hooks.infos[-1]
        assert info.client_id == "idc"
        assert info.cert_identity == "client1"
        assert "DNS:client1.example" in info.cert_sans
        assert "email:client1@example.com" in info.cert_sans
        assert info.username == "client1"  # use_identity_as_username
        assert info.listener == "tcp.mtls"


def test_identity_without_use_identity_as_username_keeps_the_username(tmp_path, certs, mosquitto):
    node, port = _node(tmp_path, "tcp", "mtls", certs.mtls())
    with node as n:
        r = mosquitto.pub("-p", str(port), *_tls_args(certs, certs.client), "-u", "alice",
                          "-t", "id/1", "-m", "x")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: n.hooks.infos, 5)
        assert (n.hooks.infos[-1].username, n.hooks.infos[-1].cert_identity) == ("alice", "client1")


def test_client_auth_request_takes_any_certificate_and_none(tmp_path, certs, mosquitto):
    node, port = _node(tmp_path, "tcp", "tls", certs.tls(client_auth="request"))
    with node as n:
        rogue = mosquitto.pub("-p", str(port), *_tls_args(certs, certs.rogue_client), "-t", "r",
                              "-m", "x")  # fmt: skip
        assert rogue.returncode == 0, rogue.stderr  # asked for, not verified
        assert wait_until(lambda: n.hooks.infos, 5)
        assert n.hooks.infos[-1].cert_identity == "rogue"
        none = mosquitto.pub("-p", str(port), *_tls_args(certs), "-t", "r", "-m", "x")
        assert none.returncode == 0, none.stderr
        assert wait_until(lambda: len(n.hooks.infos) == 2, 5)
        assert n.hooks.infos[-1].cert_identity is None


def test_require_any_needs_a_certificate_but_does_not_verify_it(tmp_path, certs, mosquitto):
    node, port = _node(tmp_path, "tcp", "tls", certs.tls(client_auth="require_any"))
    with node:
        none = mosquitto.pub("-p", str(port), *_tls_args(certs), "-t", "r", "-m", "x", timeout=15)
        assert none.returncode != 0
        rogue = mosquitto.pub("-p", str(port), *_tls_args(certs, certs.rogue_client), "-t", "r",
                              "-m", "x")  # fmt: skip
        assert rogue.returncode == 0, rogue.stderr


def test_verify_if_given_verifies_only_a_given_certificate(tmp_path, certs, mosquitto):
    node, port = _node(tmp_path, "tcp", "tls",
                       certs.mtls(client_auth="verify_if_given", use_identity_as_username=True))  # fmt: skip
    with node:
        none = mosquitto.pub("-p", str(port), *_tls_args(certs), "-t", "r", "-m", "x", "-V", "5")
        assert none.returncode != 0  # the handshake passes, but no identity: CONNACK 0x87
        assert "not authori" in (none.stderr + none.stdout).lower()
        good = mosquitto.pub("-p", str(port), *_tls_args(certs, certs.client), "-t", "r", "-m", "x")
        assert good.returncode == 0, good.stderr
        rogue = mosquitto.pub("-p", str(port), *_tls_args(certs, certs.rogue_client), "-t", "r",
                              "-m", "x", timeout=15)  # fmt: skip
        assert rogue.returncode != 0
