"""Starting and stopping the brokers under comparison, each on a free loopback port.

Mosquitto runs from a generated configuration (anonymous, no persistence, large queues, log
to a file); FluxMQ runs as ``<repo>/.venv/bin/python -m fluxmq serve --config <yaml>``. A
broker that exits or does not listen in time raises ``BrokerStartError`` with the end of its
log, so the comparison can report the failure and go on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.conn import raise_nofile

REPO = Path(__file__).resolve().parent.parent


class BrokerStartError(RuntimeError):
    """The broker could not be started (exited, or never listened)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A broker process listening on ``127.0.0.1:port``."""

    name = "broker"

    def __init__(self, workdir: Path, port: int | None = None, tcp_nodelay: bool = False) -> None:
        self.tcp_nodelay = tcp_nodelay  # Mosquitto only: set_tcp_nodelay (FluxMQ always sets it)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
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
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerStartError(f"{self.name} did not listen on port {self.port} in {timeout:.0f} s")

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
    ) -> None:
        super().__init__(workdir, port, tcp_nodelay)
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
                    f"log_dest file {self.workdir / 'mosquitto-file.log'}",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return [exe, "-c", str(conf)]


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
    ) -> None:
        super().__init__(workdir, port, tcp_nodelay)
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
            "  websocket:\n"
            "    plain:\n"
            '      addr: ""\n'
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

    def cwd(self) -> Path:
        """The repository, so that ``python -m fluxmq`` finds the package."""
        return REPO

    def start(self, timeout: float = 30.0) -> Broker:
        """FluxMQ imports more than Mosquitto; give it longer."""
        os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        return super().start(timeout)


BROKERS: dict[str, type[Broker]] = {"mosquitto": Mosquitto, "fluxmq": FluxMQ}
