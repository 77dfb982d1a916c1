"""Helpers shared by tests/security and tests/ops: brokers with extra listeners on free
loopback ports, a paho-mqtt 2.x client (MQTT 3.1.1 or 5, TCP or WebSocket) that records what the
broker answered, mosquitto_pub/mosquitto_sub runs, HTTP requests, password files, and a local HTTP
server that records what it is sent."""

from __future__ import annotations

import base64
import hashlib
import http.server as http_server
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokerproc import BrokerProc, deep_merge, free_port, wait_port

HOST = "127.0.0.1"
WAIT = 5.0


def start(broker_factory, config: dict | None = None, *, health=False, api=False, http=False,
          ws=False) -> tuple[BrokerProc, dict[str, int]]:  # fmt: skip
    """A broker (plain TCP on a free port) plus the listeners asked for; (proc, ports)."""
    ports: dict[str, int] = {}
    server: dict[str, Any] = {}
    if health:
        ports["health"] = free_port()
        server["health_addr"] = f"{HOST}:{ports['health']}"
    if api:
        ports["api"] = free_port()
        server["api"] = {"addr": f"{HOST}:{ports['api']}", "token": "s3cret"}
    if http:
        ports["http"] = free_port()
        server["http"] = {"plain": {"addr": f"{HOST}:{ports['http']}"}}
    if ws:
        ports["ws"] = free_port()
        server["websocket"] = {"plain": {"addr": f"{HOST}:{ports['ws']}"}}
    b = broker_factory(deep_merge({"server": server}, config or {}))
    ports["tcp"] = b.port
    for p in ports.values():
        wait_port(HOST, p, 10, b.proc)
    return b, ports


def wait_until(predicate, timeout: float = WAIT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Paho:
    """A paho-mqtt client; `connect()` returns the CONNACK code (paho maps MQTT 3.1.1 return
    codes to MQTT 5 reason codes: 4 -> 0x86, 5 -> 0x87)."""

    def __init__(self, client_id: str, version: int = 5, transport: str = "tcp") -> None:
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto,
                             transport=transport)  # fmt: skip
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        self.version = version
        self.connack: queue.Queue = queue.Queue()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc.value)
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(
            mid, [r.value for r in rcs]
        )
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc.value)

    def connect(self, port: int, username: str | None = None, password: str | None = None) -> int:
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.connect(HOST, port, keepalive=30)
        self.c.loop_start()
        try:
            return self.connack.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("no CONNACK") from None

    def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        _, mid = self.c.subscribe([(f, qos) for f in filters])
        assert wait_until(lambda: mid in self.subacks), "no SUBACK"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes | str = b"x", qos: int = 0, retain=False) -> int:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            info.wait_for_publish(WAIT)
            return 0
        assert wait_until(lambda: info.mid in self.acks), "no acknowledgement"
        return self.acks[info.mid]

    def got(self, timeout: float = WAIT) -> mqtt.MQTTMessage | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def topics(self, window: float = 0.8) -> list[str]:
        """Topics of the messages that arrive within `window` seconds."""
        out = []
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            m = self.got(left)
            if m is None:
                break
            out.append(m.topic)
        return out

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


@pytest.fixture
def clients():
    made: list[Paho] = []

    def make(client_id: str, version: int = 5, transport: str = "tcp") -> Paho:
        p = Paho(client_id, version, transport)
        made.append(p)
        return p

    yield make
    for p in made:
        try:
            p.close()
        except Exception:
            pass


def mosquitto_pub(port: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto_pub is required (scripts/install-peers.sh test installs it)")
    return subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def mosquitto_passwd(path: Path, user: str, password: str) -> None:
    """A user added by Debian's mosquitto_passwd (batch mode; it writes $7$ hashes)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is required (scripts/install-peers.sh test installs it)")
    args = ["mosquitto_passwd", "-b"]
    if not path.exists():
        args.append("-c")
    subprocess.run([*args, str(path), user, password], check=True, capture_output=True,
                   timeout=20)  # fmt: skip


def sha512_line(user: str, password: str, salt: bytes | None = None) -> str:
    """A `$6$` line as Mosquitto 1.x's mosquitto_passwd wrote it: base64 salt, then base64 of
    SHA-512(password + salt)."""
    salt = salt or os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def http(method: str, url: str, body: Any = None, headers: dict | None = None,
         timeout: float = 5) -> tuple[int, Any, dict]:  # fmt: skip
    """(status, JSON body or text, headers) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


class Recorder:
    """A local HTTP server (127.0.0.1, a thread) that records every POST. `answer(path, body)`
    returns (status, JSON body) and may sleep."""

    def __init__(self, answer=None) -> None:
        self.posts: list[tuple[str, dict, dict]] = []
        self.arrivals: list[tuple[str, float]] = []
        self.answer = answer or (lambda path, body: (200, {"ok": True}))
        outer = self

        class Handler(http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                outer.posts.append((self.path, body, dict(self.headers)))
                outer.arrivals.append((self.path, time.monotonic()))
                status, reply = outer.answer(self.path, body)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str | None = None) -> list[dict]:
        return [b for p, b, _ in list(self.posts) if path is None or p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(answer=None) -> Recorder:
        r = Recorder(answer)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
