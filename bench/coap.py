"""CoAP bridge numbers: publish rate (non-confirmable and confirmable) into the broker and
end-to-end CoAP -> MQTT latency, over plain UDP and DTLS 1.2.

    python -m bench.coap [--count 20000] [--window 64] [--latency-count 2000]

It starts its own FluxMQ (`fluxmq serve`, memory storage, CoAP plain and DTLS listeners on free
loopback ports, certificates made with openssl in a temporary directory), then:

- rate: one client endpoint keeps `--window` POST /mqtt/publish/bench/rate requests
  outstanding (NON, then CON) and counts the 2.04 answers: publishes the broker took per second;
- latency: one CON publish at a time to /mqtt/publish/bench/lat with the send time in the
  payload; an MQTT (paho) subscriber on the same broker notes when each arrives: p50/p99/max.

The client encodes with aiocoap's codec once per run and patches message ids; DTLS is a
pyOpenSSL client over memory BIOs. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiocoap
from aiocoap.message import Message
from OpenSSL import SSL

HOST = "127.0.0.1"


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _certs(d: Path) -> tuple[str, str, str]:
    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    (d / "s.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "s.key", "-out", "s.csr", "-subj",
        "/CN=bench")  # fmt: skip
    run("x509", "-req", "-in", "s.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "s.crt", "-days", "2", "-extfile", "s.ext")  # fmt: skip
    return str(d / "s.crt"), str(d / "s.key"), str(d / "ca.crt")


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.tcp = _free(socket.SOCK_STREAM)
        self.coap = _free(socket.SOCK_DGRAM)
        self.dtls = _free(socket.SOCK_DGRAM)
        cert, key, self.ca = _certs(workdir)
        cfg = workdir / "fluxmq.yaml"
        cfg.write_text(
            "server:\n"
            f"  tcp: {{plain: {{addr: '{HOST}:{self.tcp}'}}}}\n"
            "  websocket: {plain: {addr: ''}}\n  http: {plain: {addr: ''}}\n  health_addr: ''\n"
            "  coap:\n"
            f"    plain: {{addr: '{HOST}:{self.coap}'}}\n"
            f"    dtls: {{addr: '{HOST}:{self.dtls}', cert_file: '{cert}', key_file: '{key}'}}\n"
            "storage: {type: memory}\nlog: {level: warn}\n"
        )
        self.log = open(workdir / "broker.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "fluxmq", "serve", "-c", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.tcp), 0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


class UDP:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.connect((HOST, port))

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout: float) -> list[bytes]:
        r, _, _ = select.select([self.sock], [], [], timeout)
        out = []
        if r:
            while True:
                try:
                    out.append(self.sock.recv(65536, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    break
        return out


class DTLSClient(UDP):
    """A DTLS 1.2 client over a connected UDP socket (pyOpenSSL, memory BIOs)."""

    def __init__(self, port: int, ca: str) -> None:
        super().__init__(port)
        ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        ctx.load_verify_locations(ca)
        ctx.set_verify(SSL.VERIFY_PEER, None)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                self._out()
                if time.monotonic() > deadline:
                    raise TimeoutError("DTLS handshake") from None
                for d in UDP.recv(self, 0.5):
                    self.conn.bio_write(d)
        self._out()

    def _out(self) -> None:
        while True:
            try:
                UDP.send(self, self.conn.bio_read(65536))
            except SSL.WantReadError:
                return

    def send(self, data: bytes) -> None:
        self.conn.send(data)
        self._out()

    def recv(self, timeout: float) -> list[bytes]:
        out = []
        for d in UDP.recv(self, timeout):
            self.conn.bio_write(d)
            while True:
                try:
                    out.append(self.conn.recv(65536))
                except SSL.WantReadError:
                    break
        return out


def _template(path: str, mtype, payload: bytes = b"x" * 16) -> bytearray:
    m = Message(code=aiocoap.POST, payload=payload)
    m.opt.uri_path = tuple(path.strip("/").split("/"))
    m.mtype = mtype
    m.mid = 0
    m.token = b"\0\0\0\0"
    return bytearray(m.encode())


def rate(client: UDP, mtype, count: int, window: int, limit: float = 60.0) -> float:
    """Publishes answered 2.04 per second, keeping `window` requests outstanding."""
    tpl = _template("/mqtt/publish/bench/rate", mtype)
    outstanding: set[int] = set()
    sent = done = 0
    mid = random.getrandbits(16)
    start = time.perf_counter()
    deadline = start + limit
    last_progress = start
    while done < count and time.perf_counter() < deadline:
        while sent < count and len(outstanding) < window:
            mid = (mid + 1) & 0xFFFF
            tpl[2], tpl[3] = mid >> 8, mid & 0xFF
            tpl[4:8] = sent.to_bytes(4, "big")
            client.send(bytes(tpl))
            outstanding.add(sent)
            sent += 1
        for d in client.recv(0.2):
            if len(d) >= 8 and d[1] == 0x44:
                tok = int.from_bytes(d[4:8], "big")
                if tok in outstanding:
                    outstanding.discard(tok)
                    done += 1
                    last_progress = time.perf_counter()
        if time.perf_counter() - last_progress > 1.0 and outstanding:
            outstanding.clear()  # lost (NON): carry on, the rate counts answered ones only
            last_progress = time.perf_counter()
    return done / (time.perf_counter() - start)


def latency(client: UDP, tcp_port: int, count: int, limit: float = 60.0) -> list[float]:
    """CoAP CON publish -> MQTT subscriber, one at a time; seconds."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    arrived: dict[int, float] = {}
    ev = threading.Event()

    def on_message(_c, _u, m) -> None:
        arrived[int.from_bytes(m.payload[:4], "big")] = time.perf_counter()
        ev.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    ready = threading.Event()
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = on_message
    sub.connect(HOST, tcp_port)
    sub.loop_start()
    sub.subscribe("bench/lat", 0)
    ready.wait(5)
    tpl = _template("/mqtt/publish/bench/lat", aiocoap.CON, b"\0" * 16)
    out = []
    mid = random.getrandbits(16)
    end = time.monotonic() + limit
    for i in range(count):
        if time.monotonic() > end:
            break
        mid = (mid + 1) & 0xFFFF
        tpl[2], tpl[3] = mid >> 8, mid & 0xFF
        tpl[-16:-12] = i.to_bytes(4, "big")
        ev.clear()
        t0 = time.perf_counter()
        client.send(bytes(tpl))
        if ev.wait(2) and i in arrived:
            out.append(arrived[i] - t0)
        client.recv(0)  # drain the 2.04s
    sub.loop_stop()
    sub.disconnect()
    return out


def _percentile(lat: list[float]):
    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6

    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.coap", description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="publishes per rate run")
    ap.add_argument("--window", type=int, default=64, help="requests outstanding")
    ap.add_argument("--latency-count", type=int, default=2000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        b = Broker(Path(tmp))
        try:
            rows = []
            for name, make in (("plain", lambda: UDP(b.coap)),
                               ("DTLS", lambda: DTLSClient(b.dtls, b.ca))):  # fmt: skip
                rows.append((name, "NON publish rate", f"{rate(make(), aiocoap.NON, args.count, args.window):,.0f} msg/s"))  # fmt: skip
                rows.append((name, "CON publish rate", f"{rate(make(), aiocoap.CON, args.count, args.window):,.0f} msg/s"))  # fmt: skip
                lat = sorted(latency(make(), b.tcp, args.latency_count))
                if lat:
                    p = _percentile(lat)
                    rows.append((name, "CoAP -> MQTT latency",
                                 f"p50 {p(0.5):.0f} us, p99 {p(0.99):.0f} us, "
                                 f"mean {statistics.mean(lat) * 1e6:.0f} us ({len(lat)})"))  # fmt: skip
        finally:
            b.stop()
    print(f"FluxMQ CoAP bridge, {os.cpu_count()} CPUs, loopback, payload 16 bytes, "
          f"window {args.window}")  # fmt: skip
    print("| transport | measure | result |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
