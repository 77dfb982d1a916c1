"""Starting and stopping the brokers under comparison, each on a free loopback port.

Mosquitto runs from a generated configuration (anonymous, no persistence, large queues, log
to a file); FluxMQ runs as ``<repo>/.venv/bin/python -m fluxmq serve --config <yaml>``. A
broker that exits or does not listen in time raises ``BrokerStartError`` with the end of its
log, so the comparison can report the failure and go on.

Either broker can also get a WebSocket listener (``ws=True``: path ``/mqtt``) and a TLS
listener (``tls=TLSFiles``, from ``make_certs``: a CA and a server certificate for 127.0.0.1
made with ``openssl``), each on its own free loopback port (``ws_port``, ``tls_port``).

Mosquitto 2.0.11 (Debian) notes: its WebSocket listener is libwebsockets' (statically linked
here), which keeps the listening socket to itself, so a configuration whose *only* listener is
a WebSocket one exits with "Unable to start any listening sockets" (eclipse-mosquitto/mosquitto
issues 2284, 2578); with the plain TCP listener next to it, it starts. Without
``socket_domain ipv4`` libwebsockets ignores the 127.0.0.1 of ``listener PORT 127.0.0.1`` and
binds ``[::]`` (every interface; the address ends up in ``sin6_flowinfo``): with it, it binds
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.conn import raise_nofile

REPO = Path(__file__).resolve().parent.parent

SERVER_EXT = (
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    "basicConstraints=CA:FALSE\n"
)


@dataclass(frozen=True)
class TLSFiles:
    """A CA certificate and a server certificate and key signed by it (PEM paths)."""

    ca: str
    cert: str
    key: str


def make_certs(d: Path) -> TLSFiles:
    """Make a CA and a server certificate for 127.0.0.1/localhost in ``d`` with openssl."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if shutil.which("openssl") is None:
        raise BrokerStartError("openssl not found: needed for the TLS listeners' certificate")

    def run(*args: str) -> None:
        p = subprocess.run(
            ["openssl", *args], cwd=d, capture_output=True, text=True, timeout=60, check=False
        )
        if p.returncode:
            raise BrokerStartError(f"openssl {args[0]} failed: {p.stderr.strip()[-300:]}")

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "3", "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    (d / "server.ext").write_text(SERVER_EXT)
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "3", "-extfile", "server.ext")  # fmt: skip
    return TLSFiles(str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"))


class BrokerStartError(RuntimeError):
    """The broker could not be started (exited, or never listened)."""


def free_port(avoid: tuple[int | None, ...] = ()) -> int:
    """A TCP port free on 127.0.0.1 right now (and not one of ``avoid``)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


class Broker:
    """A broker process listening on ``127.0.0.1:port``."""

    name = "broker"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tcp_nodelay: bool = False,
        ws: bool = False,
        tls: TLSFiles | None = None,
    ) -> None:
        self.tcp_nodelay = tcp_nodelay  # Mosquitto only: set_tcp_nodelay (FluxMQ always sets it)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.ws_port = free_port((self.port,)) if ws else None  # WebSocket, path /mqtt
        self.tls = tls
        self.tls_port = free_port((self.port, self.ws_port)) if tls else None  # MQTT over TLS
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        """The command line (after writing any configuration file)."""
        raise NotImplementedError

    def cwd(self) -> Path:
        """Where the broker runs."""
        return self.workdir

    @property
    def pid(self) -> int | None:
        """The broker's pid while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.pid is not None

    def start(self, timeout: float = 20.0) -> Broker:
        """Start the broker and wait until it accepts TCP connections."""
        raise_nofile()  # the child inherits the raised limit
        cmd = self.command()
        if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
            raise BrokerStartError(f"{self.name}: {cmd[0]} not found")
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the child's exit
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.cwd()
            )
        except OSError as e:
            raise BrokerStartError(f"{self.name}: cannot run {cmd[0]}: {e}") from None
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerStartError(
                    f"{self.name} exited with code {self.proc.returncode} before listening: "
                    f"{self.log_tail()}"
                )
            if all(_listening(p) for p in self.ports()):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerStartError(
            f"{self.name} did not listen on ports {self.ports()} in {timeout:.0f} s: "
            f"{self.log_tail()}"
        )

    def ports(self) -> list[int]:
        """Every port the broker must listen on."""
        return [p for p in (self.port, self.ws_port, self.tls_port) if p]

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def log_tail(self, n: int = 8) -> str:
        """The last lines of the broker's log, on one line."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:]) or "(empty log)"

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto(Broker):
    """Debian's ``mosquitto`` with a benchmark configuration."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tcp_nodelay: bool = False,
        max_inflight: int = 100,
        persistence: bool = False,
        ws: bool = False,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(workdir, port, tcp_nodelay, ws, tls)
        self.max_inflight = max_inflight
        self.persistence = persistence

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        persistence = (
            ["persistence true", f"persistence_location {self.workdir}/"]
            if self.persistence
            else ["persistence false"]
        )
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    *persistence,
                    "max_queued_messages 1000000",
                    f"max_inflight_messages {self.max_inflight}",
                    "max_connections -1",
                    f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}",
                    # run as whoever runs the bench, like FluxMQ: started as root, Mosquitto
                    # would become user "mosquitto", who cannot read the workdir (log file,
                    # certificate key)
                    f"user {getpass.getuser()}",
                    f"log_dest file {self.workdir / 'mosquitto-file.log'}",
                    "log_type error",
                    "log_type warning",
                    *self._extra_listeners(),
                    "",
                ]
            )
        )
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return [exe, "-c", str(conf)]

    def _extra_listeners(self) -> list[str]:
        """The WebSocket and TLS listeners (after the plain one and the global settings)."""
        lines: list[str] = []
        if self.ws_port:
            # socket_domain ipv4: else libwebsockets binds [::] whatever the address says
            lines += [
                f"listener {self.ws_port} 127.0.0.1",
                "protocol websockets",
                "socket_domain ipv4",
                "max_connections -1",
            ]
        if self.tls_port and self.tls:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
                "max_connections -1",
            ]
        return lines


class FluxMQ(Broker):
    """FluxMQ from this repository's virtual environment."""

    name = "fluxmq"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tcp_nodelay: bool = False,
        max_inflight: int = 100,
        storage: str = "memory",
        fsync: str = "interval",
        max_queue: int = 1000,
        ws: bool = False,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(workdir, port, tcp_nodelay, ws, tls)
        self.max_inflight = max_inflight
        self.storage = storage  # memory | lmdb
        self.fsync = fsync
        self.max_queue = max_queue  # session.max_offline_queue_size

    def command(self) -> list[str]:
        cfg = self.workdir / "fluxmq.yaml"
        cfg.write_text(
            "server:\n"
            "  tcp:\n"
            "    plain:\n"
            f'      addr: "127.0.0.1:{self.port}"\n'
            "      max_connections: 0\n"
            f"{self._tls_listener()}"
            "  websocket:\n"
            "    plain:\n"
            f'      addr: "{f"127.0.0.1:{self.ws_port}" if self.ws_port else ""}"\n'
            "      max_connections: 0\n"
            "  http:\n"
            "    plain:\n"
            '      addr: ""\n'
            "  coap:\n"
            "    plain:\n"
            '      addr: ""\n'
            '  health_addr: ""\n'
            "log:\n"
            "  level: warning\n"
            "storage:\n"
            f"  type: {self.storage}\n"
            f'  path: "{self.workdir / "data"}"\n'
            f"  fsync: {self.fsync}\n"
            "session:\n"
            f"  max_offline_queue_size: {self.max_queue}\n"
            "broker:\n"
            f"  max_inflight: {self.max_inflight}\n"
        )
        py = REPO / ".venv" / "bin" / "python"
        exe = str(py) if py.exists() else sys.executable
        return [exe, "-m", "fluxmq", "serve", "--config", str(cfg)]

    def _tls_listener(self) -> str:
        if not (self.tls_port and self.tls):
            return ""
        return (
            "    tls:\n"
            f'      addr: "127.0.0.1:{self.tls_port}"\n'
            f'      cert_file: "{self.tls.cert}"\n'
            f'      key_file: "{self.tls.key}"\n'
            "      max_connections: 0\n"
        )

    def cwd(self) -> Path:
        """The repository, so that ``python -m fluxmq`` finds the package."""
        return REPO

    def start(self, timeout: float = 30.0) -> Broker:
        """FluxMQ imports more than Mosquitto; give it longer."""
        os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        return super().start(timeout)


BROKERS: dict[str, type[Broker]] = {"mosquitto": Mosquitto, "fluxmq": FluxMQ}
