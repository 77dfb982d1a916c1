"""Start a real broker process for a test: FluxMQ (`python -m fluxmq serve`) or, to check that a
test itself is right, Mosquitto (FLUXMQ_TEST_BROKER=mosquitto).

Every broker listens on 127.0.0.1 on a free port and is stopped by the fixture that made it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TARGET = os.environ.get("FLUXMQ_TEST_BROKER", "fluxmq")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def wait_port(
    host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class BrokerProc:
    """One broker process. `config` is FluxMQ's YAML tree (as a dict) for this broker."""

    def __init__(
        self, workdir: Path, config: dict[str, Any] | None = None, port: int | None = None
    ):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        base = {
            "server": {
                "tcp": {"plain": {"addr": f"{self.host}:{self.port}"}},
                # The other default listeners (WebSocket :8083, HTTP :8080, health :8081) are off
                # unless a test turns them on with ports of its own.
                "websocket": {"plain": {"addr": ""}},
                "http": {"plain": {"addr": ""}},
                "coap": {"plain": {"addr": ""}},
                "health_addr": "",
            },
            "log": {"level": "debug"},
            "storage": {"type": "memory", "path": str(self.workdir / "data")},
        }
        self.config = deep_merge(base, config or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "broker.log"
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> BrokerProc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        if TARGET == "mosquitto":
            cmd = ["mosquitto", "-c", str(self._write_mosquitto_conf())]
        else:
            cfg = self.workdir / "fluxmq.yaml"
            cfg.write_text(yaml.safe_dump(self.config))
            cmd = [sys.executable, "-m", "fluxmq", "serve", "--config", str(cfg)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the broker with `sig` (SIGTERM: graceful; SIGKILL: crash) and return its exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    rc = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait(5)
            else:
                rc = self.proc.returncode
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def restart(self, sig: int = signal.SIGTERM) -> BrokerProc:
        self.stop(sig)
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")
        return ""

    # -- Mosquitto, to check the tests themselves -------------------------------------------
    def _write_mosquitto_conf(self) -> Path:
        b = self.config.get("broker", {})
        s = self.config.get("session", {})
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            f"sys_interval {int(_seconds(b.get('sys_interval', '10s')))}",
        ]
        if "max_qos" in b:
            lines.append(f"max_qos {b['max_qos']}")
        if "max_keepalive" in b:
            lines.append(f"max_keepalive {b['max_keepalive']}")
        if "max_message_size" in b:
            lines.append(f"max_packet_size {b['max_message_size']}")
        if "max_inflight" in b:
            lines.append(f"max_inflight_messages {b['max_inflight']}")
        if "max_topic_alias" in b:
            lines.append(f"max_topic_alias {b['max_topic_alias']}")
        if "max_offline_queue_size" in s:
            lines.append(f"max_queued_messages {s['max_offline_queue_size']}")
        if "max_retained_messages" in b:
            pass  # Mosquitto has no such limit
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path


def _seconds(v: Any) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    v = str(v).strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * units[suffix]
    return float(v)
