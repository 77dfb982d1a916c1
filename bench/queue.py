"""``python -m bench queue``: durable queues, FluxMQ next to RabbitMQ and NATS JetStream.

Every peer runs on this machine, started by the bench with its data in a temporary directory,
and is driven by an asyncio client in Python in the same way:

- publish: N messages of S bytes to one queue with no consumer, at most W unconfirmed at a
  time (FluxMQ: MQTT 5 QoS 1 PUBLISH to `$queue/bench/x`, counted at its PUBACK; RabbitMQ: a
  durable quorum queue, persistent messages with publisher confirms; NATS: a JetStream stream
  with file storage, `js.publish` awaiting each PubAck) -> acknowledged messages per second;
- consume and ack: the same N messages read back and acknowledged one by one, at most W
  unacknowledged (FluxMQ: MQTT 5 consumer group, Receive Maximum W, an `$ack` PUBLISH per
  message; RabbitMQ: prefetch W, basic.ack per message; NATS: a durable pull consumer, fetch of
  W, ack per message) -> messages per second;
- latency: one message at a time from publish to its arrival at a consumer already waiting.

FluxMQ runs twice: `storage.fsync: always` (a PUBACK only after the append is fsynced, like a
quorum queue's confirm) and `interval` (fsynced every second). NATS 2.9 (Debian's) has no
per-message fsync setting: JetStream writes every message to the operating system and fsyncs
on its own schedule, which is `interval`-like durability.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("fluxmq-always", "fluxmq-interval", "rabbitmq", "nats")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


# -- a small MQTT 5 client (asyncio protocol) ------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _user(props: list[tuple[str, str]]) -> bytes:
    return b"".join(b"\x26" + _s(k) + _s(v) for k, v in props)


class MQTT5(asyncio.Protocol):
    """Just enough MQTT 5 for the bench: CONNECT, SUBSCRIBE with user properties, QoS 1
    PUBLISH with a window, deliveries with their user properties."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport = None
        self.connected = asyncio.get_event_loop().create_future()
        self.subacked: asyncio.Future | None = None
        self.next_pid = 1
        self.inflight = 0
        self.room = asyncio.Event()
        self.acked = 0
        self.refused = 0
        self.on_delivery = None  # (payload, message id, group id, packet id) -> None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connect(self, client_id: str, receive_maximum: int) -> None:
        props = b"\x21" + struct.pack(">H", receive_maximum)
        body = _s("MQTT") + bytes((5, 0x02)) + struct.pack(">H", 60)
        body += _varint(len(props)) + props + _s(client_id)
        self.transport.write(_packet(0x10, body))

    def subscribe(self, topic: str, group: str, cursor: str = "earliest") -> asyncio.Future:
        props = _user([("consumer-group", group), ("cursor", cursor)])
        body = struct.pack(">H", 1) + _varint(len(props)) + props + _s(topic) + b"\x01"
        self.subacked = asyncio.get_event_loop().create_future()
        self.transport.write(_packet(0x82, body))
        return self.subacked

    def publish(self, topic: bytes, payload: bytes) -> None:
        pid = self.next_pid
        self.next_pid = pid + 1 if pid < 65535 else 1
        body = _s(topic) + struct.pack(">H", pid) + b"\x00" + payload
        self.inflight += 1
        if self.inflight >= self.window:
            self.room.clear()
        self.transport.write(_packet(0x32, body))

    window = 100

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        out = []
        while pos < n:
            first = buf[pos]
            i = pos + 1
            length = shift = 0
            whole = False
            while i < n:
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    whole = True
                    break
            if not whole or i + length > n:
                break
            end = i + length
            t = first >> 4
            if t == 3:
                self._delivery(buf, first, i, end, out)
            elif t == 4:
                if length > 2 and buf[i + 2] >= 0x80:
                    self.refused += 1
                self.acked += 1
                self.inflight -= 1
                if self.inflight < self.window:
                    self.room.set()
            elif t == 2 and not self.connected.done():
                self.connected.set_result(buf[i + 1])
            elif t == 9 and self.subacked is not None and not self.subacked.done():
                plen, j = _read_varint(buf, i + 2)
                self.subacked.set_result(buf[j + plen])
            pos = end
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))

    def _delivery(self, buf, first, i, end, out) -> None:
        tlen = (buf[i] << 8) | buf[i + 1]
        j = i + 2 + tlen
        qos = (first >> 1) & 3
        pid = 0
        if qos:
            pid = (buf[j] << 8) | buf[j + 1]
            j += 2
        plen, k = _read_varint(buf, j)
        props_end = k + plen
        mid = gid = None
        while k < props_end:
            pid_ = buf[k]
            k += 1
            if pid_ == 0x26:
                kl = (buf[k] << 8) | buf[k + 1]
                key = bytes(buf[k + 2 : k + 2 + kl])
                k += 2 + kl
                vl = (buf[k] << 8) | buf[k + 1]
                val = bytes(buf[k + 2 : k + 2 + vl])
                k += 2 + vl
                if key == b"message-id":
                    mid = val
                elif key == b"group-id":
                    gid = val
            elif pid_ in (0x01,):
                k += 1
            elif pid_ in (0x02,):
                k += 4
            elif pid_ in (0x0B,):
                _, k = _read_varint(buf, k)
            elif pid_ in (0x03, 0x08, 0x09):
                ln = (buf[k] << 8) | buf[k + 1]
                k += 2 + ln
            else:
                raise ValueError(f"unexpected property {pid_:#x}")
        payload = bytes(buf[props_end:end])
        if qos:
            out.append(b"\x40\x02" + struct.pack(">H", pid))
        if self.on_delivery is not None:
            self.on_delivery(payload, mid, gid, out)

    def connection_lost(self, exc) -> None:
        pass


def _read_varint(buf, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def _ack_packet(mid: bytes, gid: bytes) -> bytes:
    """A QoS 0 `$queue/<queue>/$ack` for a delivery (message ids are `<queue>:<p>:<offset>`)."""
    topic = _s(b"$queue/" + mid.rsplit(b":", 2)[0] + b"/$ack")
    props = b"\x26" + _s(b"message-id") + _s(mid) + b"\x26" + _s(b"group-id") + _s(gid)
    return _packet(0x30, topic + _varint(len(props)) + props)


async def _mqtt(port: int, client_id: str, window: int) -> MQTT5:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(MQTT5, "127.0.0.1", port)
    proto.window = window
    proto.room.set()
    proto.connect(client_id, window)
    rc = await asyncio.wait_for(proto.connected, 10)
    if rc:
        raise RuntimeError(f"CONNACK {rc:#x}")
    return proto


class FluxMQDriver:
    def __init__(self, port: int) -> None:
        self.port = port

    async def publish(self, n: int, size: int, window: int) -> float:
        c = await _mqtt(self.port, "bench-pub", window)
        payload = b"x" * size
        topic = b"$queue/bench/x"
        t0 = time.perf_counter()
        for _ in range(n):
            if c.inflight >= window:
                c.room.clear()
                await c.room.wait()
            c.publish(topic, payload)
        while c.acked < n:
            c.room.clear()
            await asyncio.wait_for(c.room.wait(), 30)
        dt = time.perf_counter() - t0
        if c.refused:
            raise RuntimeError(f"{c.refused} publishes refused")
        c.transport.close()
        return n / dt

    async def consume(self, n: int, window: int) -> float:
        c = await _mqtt(self.port, "bench-con", window)
        done = asyncio.get_running_loop().create_future()
        got = 0
        t0 = 0.0

        def on_delivery(payload, mid, gid, out):
            nonlocal got, t0
            if not got:
                t0 = time.perf_counter()
            got += 1
            out.append(_ack_packet(mid, gid))
            if got == n and not done.done():
                done.set_result(time.perf_counter())

        c.on_delivery = on_delivery
        await c.subscribe("$queue/bench", "workers")
        t1 = await asyncio.wait_for(done, 60)
        c.transport.close()
        return (n - 1) / (t1 - t0) if t1 > t0 else 0.0

    async def latency(self, count: int) -> list[float]:
        con = await _mqtt(self.port, "bench-lat-c", 10)
        pub = await _mqtt(self.port, "bench-lat-p", 10)
        arrived = asyncio.Event()
        out: list[float] = []

        def on_delivery(payload, mid, gid, acks):
            out.append(time.perf_counter() - struct.unpack(">d", payload[:8])[0])
            acks.append(_ack_packet(mid, gid))
            arrived.set()

        con.on_delivery = on_delivery
        await con.subscribe("$queue/benchlat", "lat", "latest")
        for _ in range(count):
            arrived.clear()
            pub.publish(b"$queue/benchlat/x", struct.pack(">d", time.perf_counter()) + b"x" * 56)
            await asyncio.wait_for(arrived.wait(), 10)
        con.transport.close()
        pub.transport.close()
        return out


class RabbitDriver:
    def __init__(self, port: int) -> None:
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"

    async def _queue(self, name: str, window: int):
        import aio_pika

        conn = await aio_pika.connect(self.url)
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=window)
        q = await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        return conn, ch, q

    async def publish(self, n: int, size: int, window: int) -> float:
        import aio_pika

        conn, ch, _ = await self._queue("bench", window)
        payload = b"x" * size
        sem = asyncio.Semaphore(window)
        ex = ch.default_exchange

        async def one():
            async with sem:
                await ex.publish(aio_pika.Message(payload, delivery_mode=2), routing_key="bench")

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        dt = time.perf_counter() - t0
        await conn.close()
        return n / dt

    async def consume(self, n: int, window: int) -> float:
        conn, _, q = await self._queue("bench", window)
        done = asyncio.get_running_loop().create_future()
        got = 0
        t0 = 0.0

        async def on_message(message):
            nonlocal got, t0
            if not got:
                t0 = time.perf_counter()
            got += 1
            await message.ack()
            if got == n and not done.done():
                done.set_result(time.perf_counter())

        await q.consume(on_message)
        t1 = await asyncio.wait_for(done, 60)
        await conn.close()
        return (n - 1) / (t1 - t0) if t1 > t0 else 0.0

    async def latency(self, count: int) -> list[float]:
        import aio_pika

        conn, _, q = await self._queue("benchlat", 10)
        arrived = asyncio.Event()
        out: list[float] = []

        async def on_message(message):
            out.append(time.perf_counter() - struct.unpack(">d", message.body[:8])[0])
            await message.ack()
            arrived.set()

        await q.consume(on_message)
        pch = await conn.channel(publisher_confirms=False)
        for _ in range(count):
            arrived.clear()
            body = struct.pack(">d", time.perf_counter()) + b"x" * 56
            await pch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=2), routing_key="benchlat"
            )
            await asyncio.wait_for(arrived.wait(), 10)
        await conn.close()
        return out


class NatsDriver:
    def __init__(self, port: int) -> None:
        self.url = f"nats://127.0.0.1:{port}"

    async def _js(self, stream: str, subject: str):
        import nats
        from nats.js.api import StorageType

        nc = await nats.connect(self.url)
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE)
        return nc, js

    async def publish(self, n: int, size: int, window: int) -> float:
        nc, js = await self._js("BENCH", "bench.>")
        payload = b"x" * size
        sem = asyncio.Semaphore(window)

        async def one():
            async with sem:
                await js.publish("bench.x", payload)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        dt = time.perf_counter() - t0
        await nc.close()
        return n / dt

    async def consume(self, n: int, window: int) -> float:
        nc, js = await self._js("BENCH", "bench.>")
        sub = await js.pull_subscribe("bench.>", durable="workers")
        got = 0
        t0 = time.perf_counter()
        while got < n:
            msgs = await sub.fetch(window, timeout=10)
            for m in msgs:
                await m.ack()
                got += 1
        dt = time.perf_counter() - t0
        await nc.close()
        return n / dt

    async def latency(self, count: int) -> list[float]:
        nc, js = await self._js("BENCHLAT", "benchlat.>")
        arrived = asyncio.Event()
        out: list[float] = []

        async def on_message(m):
            out.append(time.perf_counter() - struct.unpack(">d", m.data[:8])[0])
            await m.ack()
            arrived.set()

        await js.subscribe("benchlat.>", durable="lat", cb=on_message, manual_ack=True)
        for _ in range(count):
            arrived.clear()
            await nc.publish("benchlat.x", struct.pack(">d", time.perf_counter()) + b"x" * 56)
            await asyncio.wait_for(arrived.wait(), 10)
        await nc.close()
        return out


# -- the servers ---------------------------------------------------------------------------------


class Server:
    name = ""
    proc: subprocess.Popen | None = None

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server's processes (its session: RabbitMQ's Erlang VM
        runs under Debian's wrapper)."""
        if self.proc is None:
            return 0.0
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, CPU ticks)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # after the command: state ppid pgrp session ... utime (11) stime (12)
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        total = 0
        for pid, (_, ticks) in stats.items():
            p = pid
            while p in stats and p != self.proc.pid:  # is it the server or a descendant?
                p = stats[p][0]
            if p == self.proc.pid:
                total += ticks
        return total / tick


class FluxMQServer(Server):
    def __init__(self, workdir: Path, fsync: str) -> None:
        super().__init__(workdir)
        self.name = f"FluxMQ (fsync: {fsync})"
        self.fsync = fsync

    def start(self) -> FluxMQDriver:
        import yaml

        cfg = {
            "server": {"tcp": {"plain": {"addr": f"127.0.0.1:{self.port}"}},
                       "websocket": {"plain": {"addr": ""}}, "http": {"plain": {"addr": ""}},
                       "coap": {"plain": {"addr": ""}}, "health_addr": ""},
            "storage": {"type": "lmdb", "path": str(self.workdir / "data"), "fsync": self.fsync},
            "broker": {"max_inflight": 1000},
            "log": {"level": "warning"},
            "queue": {"defaults": {"limits": {"max_depth": 0}}},
        }  # fmt: skip
        path = self.workdir / "fluxmq.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = open(self.workdir / "fluxmq.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxmq", "serve", "--config", str(path)],
            cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_port(self.port, 30, self.proc)
        return FluxMQDriver(self.port)


class RabbitServer(Server):
    name = "RabbitMQ (quorum queue)"

    def env(self) -> dict:
        d = str(self.workdir)
        return {
            **os.environ,
            "RABBITMQ_NODENAME": f"bench{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/plugins",
            "RABBITMQ_FEATURE_FLAGS_FILE": f"{d}/feature_flags",
            "RABBITMQ_PID_FILE": f"{d}/pid",
            "HOME": d,
        }

    def start(self) -> RabbitDriver:
        exe = shutil.which("rabbitmq-server")
        if exe is None:
            raise RuntimeError("rabbitmq-server is not installed (Debian package rabbitmq-server)")
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "plugins").write_text("[].\n")
        if shutil.which("chown") and os.geteuid() == 0:
            # Debian's wrapper runs the server as the rabbitmq user.
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.workdir)], check=False)
        self.env_ = self.env()
        self.log = open(self.workdir / "rabbit.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([exe], env=self.env_, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        wait_port(self.port, 90, self.proc)
        return RabbitDriver(self.port)

    def stop(self) -> None:
        if self.proc is None:
            return
        subprocess.run(["rabbitmqctl", "stop"], env=self.env_, capture_output=True, timeout=60,
                       check=False)  # fmt: skip
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


class NatsServer(Server):
    name = "NATS JetStream (file storage)"

    def start(self) -> NatsDriver:
        exe = shutil.which("nats-server")
        if exe is None:
            raise RuntimeError("nats-server is not installed (Debian package nats-server)")
        self.log = open(self.workdir / "nats.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [exe, "-js", "-sd", str(self.workdir / "js"), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_port(self.port, 30, self.proc)
        return NatsDriver(self.port)


def _client_missing(peer: str) -> str | None:
    import importlib.util

    need = {"rabbitmq": "aio_pika", "nats": "nats"}.get(peer)
    if need and importlib.util.find_spec(need) is None:
        return (f"the Python client {need} is not installed "
                "(pip install -e '.[bench]', or pip install aio-pika nats-py)")  # fmt: skip
    return None


def make_server(peer: str, workdir: Path) -> Server:
    if peer == "fluxmq-always":
        return FluxMQServer(workdir, "always")
    if peer == "fluxmq-interval":
        return FluxMQServer(workdir, "interval")
    if peer == "rabbitmq":
        return RabbitServer(workdir)
    if peer == "nats":
        return NatsServer(workdir)
    raise ValueError(peer)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Result:
    peer: str
    name: str = ""
    publish: list[float] = field(default_factory=list)
    consume: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    cpu_publish: list[float] = field(default_factory=list)  # server CPU µs per message
    cpu_consume: list[float] = field(default_factory=list)
    failure: str | None = None

    def summary(self) -> dict:
        lat = sorted(self.latency)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6) if lat else None

        return {
            "peer": self.peer,
            "name": self.name,
            "publish_per_s": round(statistics.median(self.publish)) if self.publish else None,
            "consume_ack_per_s": round(statistics.median(self.consume)) if self.consume else None,
            "latency_us": {"p50": pct(0.5), "p99": pct(0.99),
                           "mean": round(statistics.mean(lat) * 1e6) if lat else None},
            "server_cpu_us_per_msg": {
                "publish": round(statistics.median(self.cpu_publish), 1) if self.cpu_publish else None,
                "consume_ack": round(statistics.median(self.cpu_consume), 1) if self.cpu_consume else None,
            },
            "runs": {"publish": [round(x) for x in self.publish],
                     "consume": [round(x) for x in self.consume]},
            "failure": self.failure,
        }  # fmt: skip


async def _one(server, driver, n: int, size: int, window: int, lat: int, r: Result) -> None:
    c0 = server.cpu_seconds()
    r.publish.append(await driver.publish(n, size, window))
    c1 = server.cpu_seconds()
    r.consume.append(await driver.consume(n, window))
    c2 = server.cpu_seconds()
    r.cpu_publish.append((c1 - c0) / n * 1e6)
    r.cpu_consume.append((c2 - c1) / n * 1e6)
    if lat:
        r.latency += await driver.latency(lat)


def run(peers: list[str], n: int, size: int, window: int, lat: int, reps: int) -> list[Result]:
    results = []
    for peer in peers:
        r = Result(peer)
        results.append(r)
        for rep in range(reps):
            workdir = Path(tempfile.mkdtemp(prefix=f"bench-queue-{peer}-"))
            server = make_server(peer, workdir)
            r.name = server.name
            try:
                missing = _client_missing(peer)
                if missing:
                    raise RuntimeError(missing)
                _log(f"{server.name}: starting (run {rep + 1}/{reps})")
                driver = server.start()
                asyncio.run(_one(server, driver, n, size, window, lat if rep == 0 else 0, r))
                _log(f"{server.name}: publish {r.publish[-1]:,.0f}/s, "
                     f"consume+ack {r.consume[-1]:,.0f}/s")  # fmt: skip
            except Exception as e:  # a peer that cannot run is reported, not fatal
                r.failure = f"{type(e).__name__}: {e}"
                _log(f"{server.name}: FAILED: {r.failure}")
                break
            finally:
                server.stop()
                shutil.rmtree(workdir, ignore_errors=True)
    return results


def markdown(results: list[Result], n: int, size: int, window: int) -> str:
    rows = [s.summary() for s in results]
    base = {r["peer"]: r for r in rows}
    out = [
        f"{n:,} messages of {size} bytes, window {window}; medians of the runs.",
        "",
        "| peer | publish (msg/s) | consume + ack (msg/s) | latency p50 / p99 (µs) "
        "| server CPU per message, publish / consume + ack (µs) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["failure"]:
            out.append(f"| {r['name']} | failed: {r['failure']} | | |")
            continue
        lat = r["latency_us"]
        cpu = r["server_cpu_us_per_msg"]
        out.append(f"| {r['name']} | {r['publish_per_s']:,} | {r['consume_ack_per_s']:,} | "
                   f"{lat['p50']} / {lat['p99']} | {cpu['publish']} / {cpu['consume_ack']} |")  # fmt: skip
    out.append("")
    for flux in ("fluxmq-always", "fluxmq-interval"):
        f = base.get(flux)
        if not f or f["failure"]:
            continue
        for peer in ("rabbitmq", "nats"):
            p = base.get(peer)
            if not p or p["failure"] or not p["publish_per_s"]:
                continue
            out.append(
                f"- {f['name']} / {p['name']}: publish x{f['publish_per_s'] / p['publish_per_s']:.2f}, "
                f"consume + ack x{f['consume_ack_per_s'] / p['consume_ack_per_s']:.2f}"
            )
    return "\n".join(out) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--count", type=int, default=20000, help="messages per run (20000)")
    p.add_argument("-s", "--size", type=int, default=256, help="payload bytes (256)")
    p.add_argument("-w", "--window", type=int, default=100, help="unconfirmed/unacked (100)")
    p.add_argument("--latency-count", type=int, default=500, help="latency samples (500)")
    p.add_argument("--reps", type=int, default=1, help="runs per peer (1)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated: {','.join(PEERS)}")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    p.add_argument("--markdown", default=None, help="write the Markdown table here")


def main(a: argparse.Namespace) -> int:
    peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    bad = [x for x in peers if x not in PEERS]
    if bad:
        print(f"error: unknown peers {bad} (known: {', '.join(PEERS)})", file=sys.stderr)
        return 2
    if a.count < 2 or a.window < 1 or a.reps < 1:
        print("error: --count >= 2, --window >= 1 and --reps >= 1", file=sys.stderr)
        return 2
    results = run(peers, a.count, a.size, a.window, a.latency_count, a.reps)
    summary = {"count": a.count, "size": a.size, "window": a.window,
               "results": [r.summary() for r in results]}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown(results, a.count, a.size, a.window)
    _log(md)
    if a.markdown:
        Path(a.markdown).write_text(md)
    return 0 if all(r.failure is None for r in results if r.peer.startswith("fluxmq")) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.queue")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
