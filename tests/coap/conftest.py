"""Fixtures for the CoAP bridge tests.

coap_broker     coap_broker(plain=True, dtls=None, mdtls=None, config=None) -> CoAPBroker:
                a broker with plain TCP and the CoAP listeners asked for, on free loopback
                ports (`.tcp`, `.coap`, `.dtls`, `.mdtls`).
certs           a CA, a server certificate for 127.0.0.1, a client certificate of the CA
                (CN client1) and one of another CA, made by `openssl` once per session.
libcoap         runs `coap-client-notls` / `coap-client-openssl` with a timeout.
raw             RawCoAP clients: a UDP socket that sends and receives single CoAP messages
                (encoded and decoded with aiocoap), for the message-layer tests.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import paho.mqtt.client as mqtt
import pytest
from aiocoap.message import Message
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokerproc import BrokerProc, deep_merge

HOST = "127.0.0.1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- certificates --------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str, cn: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "3", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip


def _leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "3", "-extfile", f"{name}.ext",
             cwd=d)  # fmt: skip


@dataclass(frozen=True)
class Certs:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    def pair(self, name: str) -> tuple[str, str]:
        return self.path(f"{name}.crt"), self.path(f"{name}.key")

    def dtls(self, **extra) -> dict:
        cert, key = self.pair("server")
        return {"cert_file": cert, "key_file": key, **extra}

    def mdtls(self, **extra) -> dict:
        return self.dtls(ca_file=self.ca, **extra)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required (scripts/install-peers.sh test installs it)")
    d = tmp_path_factory.mktemp("coapcerts")
    _ca(d, "ca", "FluxMQ CoAP Test CA")
    _ca(d, "other_ca", "Another CA")
    _leaf(d, "server", "ca", "coap-server",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")  # fmt: skip
    _leaf(d, "client", "ca", "client1",
          "subjectAltName=DNS:client1.example\nextendedKeyUsage=clientAuth\n")  # fmt: skip
    _leaf(d, "rogue", "other_ca", "rogue",
          "subjectAltName=DNS:rogue.example\nextendedKeyUsage=clientAuth\n")  # fmt: skip
    return Certs(d)


# -- brokers -------------------------------------------------------------------------------------


class CoAPBroker:
    def __init__(self, proc: BrokerProc, ports: dict[str, int]) -> None:
        self.proc = proc
        self.tcp = proc.port
        self.coap = ports.get("plain")
        self.dtls = ports.get("dtls")
        self.mdtls = ports.get("mdtls")

    def logs(self) -> str:
        return self.proc.logs()

    def url(self, path: str, scheme: str = "coap", port: int | None = None) -> str:
        port = port or {"coap": self.coap, "coaps": self.dtls}[scheme]
        return f"{scheme}://{HOST}:{port}{path}"


def wait_listening(proc: BrokerProc, names: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.logs()
        if all(f"listening listener={n} " in text for n in names):
            return
        if not proc.alive:
            break
        time.sleep(0.02)
    raise AssertionError(f"CoAP listeners {names} not up:\n{proc.logs()[-3000:]}")


@pytest.fixture
def coap_broker(broker_factory):
    def start(plain: bool = True, dtls: dict | None = None, mdtls: dict | None = None,
              config: dict | None = None, coap: dict | None = None) -> CoAPBroker:  # fmt: skip
        ports: dict[str, int] = {}
        section: dict = {}
        names = []
        for mode, settings in (("plain", {} if plain else None), ("dtls", dtls), ("mdtls", mdtls)):
            if settings is None:
                continue
            ports[mode] = free_udp_port()
            section[mode] = {"addr": f"{HOST}:{ports[mode]}", **(coap or {}), **settings}
            names.append("coap" if mode == "plain" else f"coap.{mode}")
        proc = broker_factory(deep_merge({"server": {"coap": section}}, config or {}))
        wait_listening(proc, names)
        return CoAPBroker(proc, ports)

    return start


# -- peers ---------------------------------------------------------------------------------------


class LibCoAP:
    """coap-client-notls / coap-client-openssl runs."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def run(self, *args: str, tls: bool = False, timeout: float = 15,
            stdin: bytes | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        tool = "coap-client-openssl" if tls else "coap-client-notls"
        return subprocess.run([tool, "-B", "5", *args], capture_output=True, timeout=timeout,
                              input=stdin, check=False)  # fmt: skip

    def observe(self, *args: str, seconds: int = 5, tls: bool = False) -> subprocess.Popen:
        """A background observer (`-s seconds -w`): what it prints is in `.communicate()`."""
        tool = "coap-client-openssl" if tls else "coap-client-notls"
        p = subprocess.Popen([tool, "-B", str(seconds + 2), "-s", str(seconds), "-w", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.communicate(timeout=5)


@pytest.fixture
def libcoap():
    for tool in ("coap-client-notls", "coap-client-openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (scripts/install-peers.sh test installs libcoap3-bin)")
    c = LibCoAP()
    yield c
    c.close()


class RawCoAP:
    """One UDP endpoint speaking single CoAP messages (aiocoap's codec)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.mid = random.getrandbits(16)

    def next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def request(self, code, path: str, payload: bytes = b"", mtype=aiocoap.CON,
                token: bytes | None = None, mid: int | None = None, **options) -> Message:  # fmt: skip
        m = Message(code=code, payload=payload, **options)
        m.opt.uri_path = tuple(p for p in path.strip("/").split("/"))
        m.mtype = mtype
        m.mid = self.next_mid() if mid is None else mid
        m.token = random.randbytes(4) if token is None else token
        return m

    def send(self, m: Message | bytes) -> None:
        self.sock.sendto(m if isinstance(m, bytes) else m.encode(), (HOST, self.port))

    def recv(self, timeout: float = 3.0) -> Message | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65536)
        except TimeoutError:
            return None
        return Message.decode(data)

    def ask(self, m: Message, timeout: float = 8.0) -> Message:
        """Send a request and return the response with its token (skipping anything else). A
        confirmable request is retransmitted, same message id, as RFC 7252 4.2 has a client do
        (every second here: the test's bound, not the RFC's 2 s back-off), until `timeout`."""
        self.send(m)
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            r = self.recv(max(0.01, min(deadline, resend) - time.monotonic()))
            if r is not None and r.token == m.token and r.code != aiocoap.EMPTY:
                return r
            if m.mtype == aiocoap.CON and time.monotonic() >= resend:
                self.send(m)
                resend = time.monotonic() + 1.0
        raise AssertionError(f"no response to {m}")

    def ack(self, m: Message) -> None:
        a = Message(code=aiocoap.EMPTY)
        a.mtype = aiocoap.ACK
        a.mid = m.mid
        a.token = b""
        self.send(a)

    def rst(self, m: Message) -> None:
        a = Message(code=aiocoap.EMPTY)
        a.mtype = aiocoap.RST
        a.mid = m.mid
        a.token = b""
        self.send(a)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw():
    made: list[RawCoAP] = []

    def make(port: int) -> RawCoAP:
        c = RawCoAP(port)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Subscriber:
    """A paho MQTT 5 subscriber collecting (topic, payload, qos, retain, content_type)."""

    def __init__(self, port: int, topic: str, qos: int = 1) -> None:
        self.got: list[tuple] = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(HOST, port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=qos)
        assert subscribed.wait(5), "MQTT subscriber not subscribed"

    def _on_message(self, _c, _u, m) -> None:
        ct = getattr(m.properties, "ContentType", None) if m.properties else None
        with self.cond:
            self.got.append((m.topic, m.payload, m.qos, bool(m.retain), ct))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.got) >= n, timeout)
            return list(self.got)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def mqtt_sub():
    made: list[Subscriber] = []

    def make(port: int, topic: str, qos: int = 1) -> Subscriber:
        s = Subscriber(port, topic, qos)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def mqtt_publish(port: int, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 content_type: str | None = None) -> None:  # fmt: skip
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(HOST, port)
    c.loop_start()
    props = None
    if content_type:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
    info = c.publish(topic, payload, qos=qos, retain=retain, properties=props)
    info.wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
