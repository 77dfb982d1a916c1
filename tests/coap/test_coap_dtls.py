"""CoAP over DTLS 1.2 (`server.coap.dtls`) and mutual DTLS (`server.coap.mdtls`) with
coap-client-openssl and certificates made by openssl; the cookie exchange with raw datagrams."""

from __future__ import annotations

import socket
import time

import pytest
from OpenSSL import SSL

from fluxmq.config import ConfigError, load_config
from tests.coap.conftest import HOST, mqtt_publish


def _client_hello() -> bytes:
    """A DTLS 1.2 ClientHello without a cookie, as a client's first flight."""
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


def _run(libcoap, url: str, *args: str):
    return libcoap.run(*args, url, tls=True)


def test_dtls_publish_reaches_mqtt_and_observer_gets_mqtt(coap_broker, certs, libcoap, mqtt_sub):
    b = coap_broker(plain=False, dtls=certs.dtls())
    sub = mqtt_sub(b.tcp, "secure/#")
    r = _run(libcoap, f"coaps://{HOST}:{b.dtls}/mqtt/publish/secure/a/b?qos=1", "-C", certs.ca,
             "-m", "post", "-e", "over-dtls")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sub.wait(1) == [("secure/a/b", b"over-dtls", 1, False, None)]
    obs = libcoap.observe("-C", certs.ca, f"coaps://{HOST}:{b.dtls}/mqtt/subscribe/down/%2B",
                          seconds=3, tls=True)  # fmt: skip
    time.sleep(1.0)
    mqtt_publish(b.tcp, "down/1", b"to-dtls", qos=1)
    out, err = obs.communicate(timeout=15)
    assert b"to-dtls" in out, err


def test_mdtls_accepts_a_client_certificate_of_the_ca(coap_broker, certs, libcoap, mqtt_sub):
    b = coap_broker(plain=False, mdtls=certs.mdtls())
    sub = mqtt_sub(b.tcp, "m/#")
    cert, key = certs.pair("client")
    r = _run(libcoap, f"coaps://{HOST}:{b.mdtls}/mqtt/publish/m/x", "-c", cert, "-j", key,
             "-C", certs.ca, "-m", "post", "-e", "mutual")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sub.wait(1)[0][:2] == ("m/x", b"mutual")
    assert "identity=client1" in b.logs()


def test_mdtls_refuses_no_certificate_and_a_foreign_one_others_unaffected(
    coap_broker, certs, libcoap
):
    b = coap_broker(plain=False, mdtls=certs.mdtls())
    url = f"coaps://{HOST}:{b.mdtls}/health"
    good = certs.pair("client")
    rogue = certs.pair("rogue")
    assert _run(libcoap, url, "-c", good[0], "-j", good[1], "-C", certs.ca).stdout.strip() == \
        b"healthy"  # fmt: skip
    assert b"healthy" not in _run(libcoap, url, "-C", certs.ca).stdout  # no certificate
    assert b"healthy" not in _run(libcoap, url, "-c", rogue[0], "-j", rogue[1],
                                  "-C", certs.ca).stdout  # fmt: skip
    assert _run(libcoap, url, "-c", good[0], "-j", good[1], "-C", certs.ca).stdout.strip() == \
        b"healthy"  # fmt: skip
    b.proc.stop()
    logs = b.logs()
    assert logs.count("CoAP DTLS handshake failed") == 1  # logged once for this address
    assert "peer did not return a certificate" in logs
    stopped = next(ln for ln in logs.splitlines() if "listener=coap.mdtls" in ln
                   and "CoAP listener stopped" in ln)  # fmt: skip
    assert "handshake_failures=2" in stopped


def test_dtls_answers_hellos_without_cookie_statelessly(coap_broker, certs, libcoap):
    """ClientHellos without a cookie get a HelloVerifyRequest and leave no state: with room for
    a single session, 30 of them do not keep a real client out."""
    b = coap_broker(plain=False, dtls=certs.dtls(), coap={"max_peers": 1})
    hello = _client_hello()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
    try:
        for s in socks:
            s.settimeout(3)
            s.sendto(hello, (HOST, b.dtls))
        for s in socks:
            data, _ = s.recvfrom(65536)
            assert data[0] == 22 and data[13] == 3  # handshake: HelloVerifyRequest
    finally:
        for s in socks:
            s.close()
    r = _run(libcoap, f"coaps://{HOST}:{b.dtls}/health", "-C", certs.ca)
    assert r.stdout.strip() == b"healthy", r.stderr


def test_dtls_garbage_is_dropped_and_counted(coap_broker, certs, libcoap):
    b = coap_broker(plain=False, dtls=certs.dtls())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(500):
            s.sendto(bytes([22, 0xFE, 0xFD]) + bytes(i % 40), (HOST, b.dtls))
            s.sendto(b"\x17\xfe\xfd" + bytes(30), (HOST, b.dtls))
            if i % 50 == 49:
                time.sleep(0.02)  # within the socket's receive buffer
    r = _run(libcoap, f"coaps://{HOST}:{b.dtls}/health", "-C", certs.ca)
    assert r.stdout.strip() == b"healthy"
    b.proc.stop()
    stopped = next(ln for ln in b.logs().splitlines() if "CoAP listener stopped" in ln)
    assert int(stopped.split("garbage=")[1].split()[0]) >= 900


@pytest.mark.parametrize(
    ("mode", "settings", "key"),
    [
        ("mdtls", {"ca_file": ""}, "server.coap.mdtls.ca_file"),
        ("dtls", {"cert_file": "/nonexistent.pem"}, "server.coap.dtls.cert_file"),
        ("dtls", {"cipher_suites": ["TLS_NOPE"]}, "server.coap.dtls.cipher_suites"),
    ],
)
def test_dtls_config_errors_name_the_key(certs, tmp_path, mode, settings, key):
    import yaml

    section = {"addr": "127.0.0.1:15999", **(certs.mdtls() if mode == "mdtls" else certs.dtls())}
    section.update(settings)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"server": {"coap": {mode: section}}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key


def test_coap_plain_rejects_dtls_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  coap:\n    plain:\n      cert_file: x.pem\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "unknown key server.coap.plain.cert_file" in str(info.value)
