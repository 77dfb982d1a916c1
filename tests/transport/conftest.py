"""Fixtures for the transport tests (WebSocket, TLS/mTLS, HTTP bridge, health, limits).

    certs           certificates made by `openssl` once per test session (per xdist worker):
                    a CA, server certificates for 127.0.0.1/localhost (`server`, and `server_b`
                    for the reload test), a client certificate from the CA (CN client1, SAN
                    DNS:client1.example) and one from another CA (`rogue_client`).
    mqtt_broker     mqtt_broker(config) -> (BrokerProc, ports): a broker whose listeners named
                    in `config` get free loopback ports (see `start_broker`).
    mosquitto       runs mosquitto_pub / mosquitto_sub with a timeout.

Every broker listens on 127.0.0.1 only and is stopped by the fixture that made it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokerproc import free_port, wait_port

HOST = "127.0.0.1"


# -- certificates --------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str, cn: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.crt", "-days", "3", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "3", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip


SERVER_EXT = (
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    "basicConstraints=CA:FALSE\n"
)
CLIENT_EXT = (
    "subjectAltName=DNS:client1.example,email:client1@example.com\n"
    "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
)


@dataclass(frozen=True)
class Certs:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    @property
    def server(self) -> tuple[str, str]:
        return self.path("server.crt"), self.path("server.key")

    @property
    def server_b(self) -> tuple[str, str]:
        return self.path("server_b.crt"), self.path("server_b.key")

    @property
    def client(self) -> tuple[str, str]:
        return self.path("client.crt"), self.path("client.key")

    @property
    def rogue_client(self) -> tuple[str, str]:
        return self.path("rogue_client.crt"), self.path("rogue_client.key")

    @property
    def other_ca(self) -> str:
        return self.path("other_ca.crt")

    def tls(self, **extra) -> dict:
        """A TLS listener's certificate settings (server certificate of the CA)."""
        cert, key = self.server
        return {"cert_file": cert, "key_file": key, **extra}

    def mtls(self, **extra) -> dict:
        cert, key = self.server
        return {"cert_file": cert, "key_file": key, "ca_file": self.ca, **extra}


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required (scripts/install-peers.sh test installs it)")
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "ca", "FluxMQ Test CA")
    _ca(d, "other_ca", "Some Other CA")
    _leaf(d, "server", "ca", "server-a", SERVER_EXT)
    _leaf(d, "server_b", "ca", "server-b", SERVER_EXT)
    _leaf(d, "client", "ca", "client1", CLIENT_EXT)
    _leaf(d, "rogue_client", "other_ca", "rogue", CLIENT_EXT)
    return Certs(d)


# -- brokers -------------------------------------------------------------------------------------

LISTENER_PATHS = {
    "tcp_tls": ("tcp", "tls"),
    "tcp_mtls": ("tcp", "mtls"),
    "ws": ("websocket", "plain"),
    "ws_tls": ("websocket", "tls"),
    "ws_mtls": ("websocket", "mtls"),
    "http": ("http", "plain"),
    "http_tls": ("http", "tls"),
    "http_mtls": ("http", "mtls"),
}


def start_broker(
    broker_factory, listeners: dict[str, dict] | None = None, config=None, health: bool = False
):
    """Start a broker with plain TCP plus `listeners` ({"ws": {...settings}, "tcp_tls": {...}})
    on free ports; returns (BrokerProc, ports) with ports["tcp"], ports["ws"], ..."""
    from tests.brokerproc import deep_merge

    ports: dict[str, int] = {}
    server: dict = {}
    for name, settings in (listeners or {}).items():
        kind, mode = LISTENER_PATHS[name]
        ports[name] = free_port()
        server.setdefault(kind, {})[mode] = {"addr": f"{HOST}:{ports[name]}", **settings}
    if health:
        ports["health"] = free_port()
        server["health_addr"] = f"{HOST}:{ports['health']}"
    cfg = deep_merge({"server": server}, config or {})
    b = broker_factory(cfg)
    ports["tcp"] = b.port
    for port in ports.values():
        wait_port(HOST, port, 10, b.proc)
    return b, ports


@pytest.fixture
def mqtt_broker(broker_factory):
    def start(listeners=None, config=None, health=False):
        return start_broker(broker_factory, listeners, config, health)

    return start


# -- command-line peers ---------------------------------------------------------------------------


class Mosquitto:
    """mosquitto_pub / mosquitto_sub runs; every background process is killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def pub(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["mosquitto_pub", "-h", HOST, *args], capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def sub(self, *args: str) -> subprocess.Popen:
        """A background mosquitto_sub (pass -C N -W secs so it ends by itself)."""
        # stdbuf: line-buffered output, so that `sub_ready` sees the SUBACK line as it comes
        p = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", HOST, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.procs.append(p)
        return p

    def sub_ready(self, *args: str, timeout: float = 5.0) -> subprocess.Popen:
        """A background `mosquitto_sub -d ...`, returned once its SUBACK has arrived; read what
        it printed with `payloads(proc)`."""
        p = self.sub("-d", *args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            if "received SUBACK" in line:
                return p
        raise AssertionError(
            f"mosquitto_sub did not subscribe: {p.stderr.read() if p.poll() is not None else ''}"
        )

    @staticmethod
    def payloads(p: subprocess.Popen, timeout: float = 10.0) -> list[str]:
        """The message lines a `sub_ready` process printed (its debug lines left out)."""
        out, _ = p.communicate(timeout=timeout)
        return [ln for ln in out.splitlines() if not ln.startswith(("Client ", "Subscribed ("))]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.communicate(timeout=5)


@pytest.fixture
def mosquitto() -> Mosquitto:
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (scripts/install-peers.sh test installs it)")
    m = Mosquitto()
    yield m
    m.close()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def http_request(port: int, raw: bytes, timeout: float = 5.0, read_until_close=True) -> bytes:
    """Send raw bytes to a loopback HTTP server and return everything it answers."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if not read_until_close:
                break
        return b"".join(chunks)
