"""The load tool (`python -m bench`) against a real Mosquitto started here, plus its pure parts.

Most of these tests do not use the FluxMQ broker fixture in conftest.py: the tool must be right
on its own before it can judge FluxMQ. The WebSocket and TLS clients are also checked against
FluxMQ's WebSocket and TLS listeners (`broker_factory`), and against Mosquitto's.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import compare, mqttwire, procstats, report, topics, ws
from bench.brokers import FluxMQ, Mosquitto, TLSFiles, make_certs
from bench.cli import main as cli_main
from bench.framing import RecvBuffer, Scanner, iter_packets
from bench.target import TargetError, resolve_loopback

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto of our own on a free loopback port."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (make peers)")
    b = Mosquitto(tmp_path_factory.mktemp("mosq"))
    b.start()
    yield b
    b.stop()


def bench_cli(*args: str, timeout: float = 60) -> tuple[int, dict | None, str]:
    """Run `python -m bench ARGS`; return (exit code, parsed JSON summary or None, stderr)."""
    p = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    summary = None
    if p.returncode == 0 and p.stdout.strip().startswith("{"):
        summary = json.loads(p.stdout)
    return p.returncode, summary, p.stderr


# -- the wire and the framing walker ---------------------------------------------------------
def _stream(now: int) -> tuple[bytes, dict[str, int]]:
    """A mixed v3.1.1 stream and what a scanner must find in it."""
    parts: list[bytes] = []
    want = {"publishes": 0, "stamped": 0, "pubacks_out": 0, "pubrecs_out": 0, "others": 0}
    for i in range(300):
        kind = i % 6
        if kind == 0:
            t = mqttwire.publish_template(f"a/{i}", 16, 0)
            parts.append(t.build(0, now - 5_000))
            want["publishes"] += 1
            want["stamped"] += 1
        elif kind == 1:
            t = mqttwire.publish_template("big/topic", 300 + i, 1)  # 2-byte remaining length
            parts.append(t.build(i + 1, now - 7_000))
            want["publishes"] += 1
            want["stamped"] += 1
            want["pubacks_out"] += 1
        elif kind == 2:
            big = 20_000 if i % 60 == 2 else 200  # some with a 3-byte remaining length
            t = mqttwire.publish_template("q2", big, 2)
            parts.append(t.build(i + 1, now - 9_000))
            want["publishes"] += 1
            want["stamped"] += 1
            want["pubrecs_out"] += 1
        elif kind == 3:
            parts.append(mqttwire.publish("short", b"abc"))  # too short for a stamp
            want["publishes"] += 1
        elif kind == 4:
            parts.append(b"\xd0\x00")  # PINGRESP
            want["others"] += 1
        else:
            parts.append(b"\x90\x03\x00\x01\x00")  # SUBACK
            want["others"] += 1
    return b"".join(parts), want


def test_scanner_on_byte_split_input() -> None:
    """Whatever the read boundaries, the walker finds exactly the packets of the stream."""
    now = time.monotonic_ns()
    data, want = _stream(now)
    rng = random.Random(7)
    for trial in range(20):
        sc = Scanner(4, 1)
        rb = RecvBuffer(64 * 1024)
        out = bytearray()
        others: list[int] = []
        carry = b""
        pos = 0
        while pos < len(data):
            step = 1 if trial == 0 else rng.randint(1, 5000)  # trial 0: one byte at a time
            chunk = data[pos : pos + step]
            pos += step
            k = len(carry)
            if k * 2 > len(rb.buf):
                rb.ensure(k)
            rb.buf[:k] = carry
            rb.buf[k : k + len(chunk)] = chunk
            end = k + len(chunk)
            p = sc.scan(rb.buf, 0, end, now, out, None, lambda h, *_, acc=others: acc.append(h))
            carry = bytes(rb.buf[p:end])
        assert carry == b""
        assert sc.publishes == want["publishes"]
        assert sc.stamped == want["stamped"]
        assert len(others) == want["others"]
        acks = list(iter_packets(bytes(out)))
        assert sum(1 for s, _, _ in acks if out[s] == 0x40) == want["pubacks_out"]
        assert sum(1 for s, _, _ in acks if out[s] == 0x50) == want["pubrecs_out"]
        hist = sc.histogram()
        assert set(hist) == {5, 7, 9}  # the stamps were 5, 7 and 9 µs old


def test_publish_template_matches_plain_encoding() -> None:
    """The pre-encoded, stamped packet is byte-identical to a normally encoded one (v3 and v5)."""
    for version in (4, 5):
        for qos in (0, 1, 2):
            t = mqttwire.publish_template("x/y", 64, qos, version)
            stamp = 0x0102030405060708
            payload = stamp.to_bytes(8, "big") + b"x" * 56
            assert t.build(42, stamp) == mqttwire.publish("x/y", payload, qos, 42, version)
            if qos:
                ba = bytearray(t.packet)
                assert t.pid_stamp is not None
                t.pid_stamp.pack_into(ba, t.pid_offset, 42, stamp)
                assert bytes(ba) == t.build(42, stamp)


def test_v5_publish_with_properties_is_walked() -> None:
    """A v5 PUBLISH whose broker-added properties push the payload back is still stamped."""
    now = time.monotonic_ns()
    payload = (now - 3_000).to_bytes(8, "big") + b"pp"
    props = b"\x23\x00\x05" + b"\x02\x00\x00\x00\x3c"  # topic alias, message expiry
    body = mqttwire.utf8("t") + b"\x00\x07" + mqttwire.varint(len(props)) + props + payload
    pkt = mqttwire.fixed(0x32, body)
    sc = Scanner(5, 1)
    out = bytearray()
    sc.scan(bytearray(pkt), 0, len(pkt), now, out, None, lambda *a: None)
    assert sc.publishes == 1 and sc.stamped == 1
    assert sc.histogram() == {3: 1}
    assert bytes(out) == b"\x40\x02\x00\x07"


def test_varint_and_connack() -> None:
    """Variable byte integers round-trip; a v5 CONNACK's Receive Maximum is read."""
    for n in (0, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455):
        enc = mqttwire.varint(n)
        assert mqttwire.decode_varint(enc, 0) == (n, len(enc))
    ack = mqttwire.parse_connack(b"\x00\x00\x03\x21\x00\x14", 5)
    assert ack.reason == 0 and ack.receive_maximum == 20


def test_percentiles_and_expected_deliveries() -> None:
    """Percentiles come from the histogram; shared groups count once per message."""
    hist = {i: 1 for i in range(1, 1001)}
    p = report.percentiles(hist)
    assert (p["p50"], p["p90"], p["p99"], p["p99.9"]) == (500, 900, 990, 999)
    sent = {"test/1": 10, "test/2": 5, "other": 7}
    filters = ["$share/g/test/#", "$share/g/test/#", "test/+", "#"]
    assert topics.expected_deliveries(sent, filters) == 15 * 3 + 7


# -- the loopback-only rule ------------------------------------------------------------------
def test_non_loopback_target_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Anything but a loopback address is refused before a single packet is sent."""
    for ok in ("127.0.0.1", "127.3.2.1", "localhost", "::1"):
        assert resolve_loopback(ok, 1883)
    for bad in ("10.0.0.1", "8.8.8.8", "0.0.0.0", "192.168.1.1"):
        with pytest.raises(TargetError, match="refusing non-loopback"):
            resolve_loopback(bad, 1883)
    assert cli_main(["pub", "-h", "10.1.2.3", "-L", "10", "--quiet"]) == 2
    assert "refusing non-loopback target" in capsys.readouterr().err
    assert cli_main(["pub", "-h", "10.1.2.3", "--ws", "-L", "10", "--quiet"]) == 2
    assert "refusing non-loopback target" in capsys.readouterr().err


# -- real runs against Mosquitto -------------------------------------------------------------
def test_pubsub_qos0_counts_and_latency(mosquitto: Mosquitto) -> None:
    """QoS 0, 2 publishers -> 1 subscriber: every message counted, sane latency, broker stats."""
    rc, s, err = bench_cli(
        "pubsub", "-p", str(mosquitto.port), "-c", "2", "-q", "0", "-s", "32", "-L", "20000",
        "--sub-topic", "bench/#", "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    assert s is not None
    assert s["sent"] == 20000
    assert s["received"] == s["expected"] == 20000
    assert s["lost"] == 0
    lat = s["latency_us"]
    assert lat["samples"] == 20000
    assert 0 < lat["p50"] <= lat["p99"] < 2_000_000
    assert s["broker"]["pid"] == mosquitto.pid
    assert s["broker"]["rss_kb"] > 0
    assert s["errors"]["total"] == 0


def test_pubsub_qos1_no_loss(mosquitto: Mosquitto) -> None:
    """QoS 1 both legs with a window: received == sent, all acknowledged, nothing lost (v5)."""
    rc, s, err = bench_cli(
        "pubsub", "-p", str(mosquitto.port), "-V", "5", "-c", "3", "-q", "1", "-s", "16",
        "-L", "9000", "-F", "50", "--sub-count", "2", "--sub-topic", "bench/#", "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    assert s is not None
    assert s["sent"] == s["acked"] == 9000
    assert s["expected"] == 18000
    assert s["received"] == 18000 and s["lost"] == 0
    assert s["inflight_unacked_at_end"] == 0
    assert 0 < s["latency_us"]["p50"] < 2_000_000
    assert s["connections"]["connected"] == 5 and s["errors"]["total"] == 0


def test_separate_sub_and_pub_commands(mosquitto: Mosquitto) -> None:
    """`sub` and `pub` run as separate commands, like emqtt-bench, and agree on the count."""
    sub = subprocess.Popen(
        [sys.executable, "-m", "bench", "sub", "-p", str(mosquitto.port), "-t", "sep/#",
         "-q", "1", "-L", "5000", "-d", "30"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sub.stderr is not None
        for line in sub.stderr:  # rate lines: wait until the subscription is in place
            if "conns=1 " in line:
                break
        rc, s, err = bench_cli(
            "pub", "-p", str(mosquitto.port), "-t", "sep/%i", "-q", "1", "-L", "5000", "--quiet"
        )
        assert rc == 0, err
        assert s is not None and s["sent"] == s["acked"] == 5000
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
    assert sub.returncode == 0
    summary = json.loads(out)
    assert summary["received"] == 5000
    assert summary["latency_us"]["samples"] == 5000


def test_find_broker_by_port(mosquitto: Mosquitto) -> None:
    """The broker pid is found from its listening port."""
    assert procstats.find_pid_by_port(mosquitto.port) == mosquitto.pid
    assert procstats.sample(mosquitto.pid or -1) is not None


def test_fluxmq_start_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that exits at start becomes a FAILED cell and a failure line, not a crash."""
    monkeypatch.setattr(
        FluxMQ, "command", lambda self: [sys.executable, "-c", "import sys; sys.exit('no serve')"]
    )
    st = compare.Settings(duration=1, reps=1, quick=True, warmup=0.2)
    sc = next(s for s in compare.scenarios(st) if s.name == "fanin-16B")
    out = compare.run_scenario("fluxmq", sc, st, tmp_path)
    assert out.failure is not None and out.failure.startswith("start failed")
    assert "no serve" in out.failure
    table = compare.build_table([sc], {("fluxmq", sc.name): out})
    assert "FAILED" in table


def test_compare_quick_smoke(tmp_path: Path) -> None:
    """`compare --quick --brokers mosquitto --only fanin` prints the machine and a filled table."""
    md = tmp_path / "table.md"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "compare", "--quick", "--brokers", "mosquitto",
         "--only", "fanin", "--duration", "1", "--markdown", str(md), "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("machine: cpu ")
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| fan-in")]
    assert len(rows) == 2
    for row in rows:
        mosq = row.split("|")[4].strip()
        assert int(mosq.replace(",", "")) > 10_000
    assert "FAILED" not in p.stdout
    assert md.read_text().count("| fan-in") == 2


def test_persist_quick_smoke(tmp_path: Path) -> None:
    """`persist` with a small queue and 1 s streams: every variant runs, every message is
    delivered, and the stream table compares LMDB with memory, overall and by round."""
    md = tmp_path / "persist.md"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "persist", "--messages", "2000", "--reps", "1",
         "--stream-reps", "2", "--stream-seconds", "1", "--markdown", str(md),
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("persistent QoS 1 stream"))
    rows = [ln for ln in lines[:at] if ln.startswith("| ")]
    assert sum(ln.endswith("| yes |") for ln in rows) == 4, p.stdout
    stream = [ln for ln in lines[at:] if ln.startswith("| FluxMQ")]
    assert [ln.split("|")[1].strip() for ln in stream] == [
        "FluxMQ, memory",
        "FluxMQ, lmdb fsync interval",
    ]
    for row in stream:
        cells = [c.strip() for c in row.split("|")]
        assert int(cells[2].replace(",", "")) > 1000 and cells[-2] == "0", row
    by_round = [ln for ln in p.stdout.splitlines() if ln.startswith("LMDB interval vs memory")]
    assert len(by_round) == 1 and by_round[0].count(" %") == 3, by_round
    assert "FAILED" not in p.stdout and "stream" in md.read_text()


# -- WebSocket framing (pure) ----------------------------------------------------------------
def _frame_header(b0: int, n: int) -> bytes:
    """A server frame header with first byte ``b0`` (FIN and opcode) and payload length ``n``."""
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big")
    return bytes((b0, 127)) + n.to_bytes(8, "big")


def test_ws_accept_key_and_upgrade_answer() -> None:
    """RFC 6455's example key; a 101 answer is checked header by header."""
    assert ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    key = ws.new_key()
    req = ws.upgrade_request("127.0.0.1", 8083, "/mqtt", key).decode()
    assert req.startswith("GET /mqtt HTTP/1.1\r\n") and req.endswith("\r\n\r\n")
    assert f"Sec-WebSocket-Key: {key}\r\n" in req and "Sec-WebSocket-Protocol: mqtt\r\n" in req

    def answer(status: str = "101 Switching Protocols", **h: str) -> bytes:
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Accept": ws.accept_for(key),
            "Sec-WebSocket-Protocol": "mqtt",
        }
        headers.update(h)
        lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items() if v]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    good = answer()
    assert ws.parse_upgrade(good + b"\x82\x02\x20\x00", key) == len(good)
    assert ws.parse_upgrade(good[:-1], key) == 0  # incomplete
    for bad, kind in [
        (answer("404 Not Found"), "ws_upgrade:http_404"),
        (answer(**{"Sec-WebSocket-Accept": ws.accept_for("other")}), "ws_upgrade:bad_accept"),
        (answer(**{"Sec-WebSocket-Protocol": ""}), "ws_upgrade:no_subprotocol"),
        (answer(Upgrade=""), "ws_upgrade:no_upgrade_header"),
        (answer(Connection="keep-alive"), "ws_upgrade:no_connection_upgrade"),
    ]:
        with pytest.raises(ws.WSError) as e:
            ws.parse_upgrade(bad, key)
        assert e.value.kind == kind


def test_ws_client_frames_are_masked() -> None:
    """Every client frame has the mask bit and a fresh key; unmasked it is the payload. The QoS 0
    batch framer (masking a few packets, then repeating) gives the same bytes as masking all."""
    for n in (0, 1, 125, 126, 65535, 65536, 70000):
        payload = random.randbytes(n)
        f = ws.frame(payload)
        assert f[0] == 0x82 and f[1] & 0x80
        frames, used = ws.iter_client_frames(bytearray(f))
        assert used == len(f) and frames == [(ws.OP_BINARY, payload)]
    keys = {ws.frame(b"x")[2:6] for _ in range(50)}
    assert len(keys) > 40
    for size in range(1, 10):
        pkt = random.randbytes(size)
        fr = ws.RepeatFramer(size)
        for n in (1, 2, 3, 4, 5, 7, 1000, 4096):
            f = fr.frame(pkt, n)
            assert f[1] & 0x80
            frames, used = ws.iter_client_frames(bytearray(f))
            assert used == len(f) and frames == [(ws.OP_BINARY, pkt * n)]


def test_ws_reader_on_frames_split_anywhere() -> None:
    """Server frames of every length encoding, fragmented messages, empty frames and pings in
    between, read with arbitrary boundaries (one byte at a time too), through the client's
    carry logic: the MQTT walker sees exactly the original stream."""
    now = time.monotonic_ns()
    data, want = _stream(now)
    rng = random.Random(11)
    for trial in range(12):
        # the MQTT stream cut into frames at arbitrary points (packets span frames)
        raw = bytearray()
        pings = []
        pos = 0
        while pos < len(data):
            n = rng.choice((0, 1, 5, 37, 125, 126, 500, 4000, 65535, 65536, 70000))
            part = data[pos : pos + n]
            pos += len(part)
            if rng.random() < 0.3 and len(part) > 2:  # a fragmented message: BINARY, CONT, CONT
                a, b = sorted(rng.sample(range(1, len(part)), 2))
                raw += _frame_header(0x02, a) + part[:a]
                ping = rng.randbytes(rng.randint(0, 125))
                raw += _frame_header(0x89, len(ping)) + ping  # control frame between fragments
                pings.append(ping)
                raw += _frame_header(0x00, b - a) + part[a:b]
                raw += _frame_header(0x80, len(part) - b) + part[b:]
            else:
                raw += _frame_header(0x82, len(part)) + part
        raw += _frame_header(0x88, 2) + (1000).to_bytes(2, "big")
        sc = Scanner(4, 1)
        rb = RecvBuffer(64 * 1024)
        wsr = ws.FrameReader()
        out = bytearray()
        got = bytearray()
        carry = b""
        pos = 0
        while pos < len(raw):
            step = 1 if trial == 0 else rng.randint(1, 9000)
            chunk = raw[pos : pos + step]
            pos += step
            k, h = len(carry), len(wsr.raw)
            rb.ensure(k + h + len(chunk))
            rb.buf[:k] = carry
            rb.buf[k : k + h] = wsr.raw
            rb.buf[k + h : k + h + len(chunk)] = chunk
            end = wsr.unframe(rb.buf, rb.view, k, k + h + len(chunk))
            got += rb.buf[k:end]
            p = sc.scan(rb.buf, 0, end, now, out, None, lambda *_: None)
            carry = bytes(rb.buf[p:end])
        assert bytes(got) == data
        assert carry == b"" and wsr.raw == b"" and wsr.left == 0
        assert sc.publishes == want["publishes"] and sc.stamped == want["stamped"]
        assert wsr.controls == [(ws.OP_PING, p) for p in pings] + [
            (ws.OP_CLOSE, (1000).to_bytes(2, "big"))
        ]


def test_ws_reader_refuses_what_a_server_must_not_send() -> None:
    """A masked server frame, a text frame, reserved bits, a long control frame."""
    for bad, kind in [
        (ws.frame(b"abc"), "ws_masked_server_frame"),
        (ws.server_frame(b"abc", ws.OP_TEXT), "ws_text_frame"),
        (bytes((0xC2, 1)) + b"x", "ws_reserved_bits"),
        (_frame_header(0x89, 126) + bytes(126), "ws_bad_control_frame"),
    ]:
        buf = bytearray(bad)
        with pytest.raises(ws.WSError) as e:
            ws.FrameReader().unframe(buf, memoryview(buf), 0, len(buf))
        assert e.value.kind == kind


# -- WebSocket and TLS against FluxMQ's listeners ----------------------------------------------
def _free_ports(n: int) -> list[int]:
    from bench.brokers import free_port

    ports: list[int] = []
    while len(ports) < n:
        ports.append(free_port(tuple(ports)))
    return ports


@pytest.fixture
def fluxmq_ws_tls(broker_factory, tmp_path: Path) -> tuple[dict[str, int], TLSFiles]:
    """FluxMQ with a WebSocket, a TLS and a WebSocket+TLS listener on free loopback ports."""
    from tests.brokerproc import wait_port

    tls = make_certs(tmp_path / "certs")
    ws_port, tls_port, wss_port = _free_ports(3)
    files = {"cert_file": tls.cert, "key_file": tls.key}
    b = broker_factory(
        {
            "log": {"level": "warning"},
            "server": {
                "websocket": {
                    "plain": {"addr": f"127.0.0.1:{ws_port}"},
                    "tls": {"addr": f"127.0.0.1:{wss_port}", **files},
                },
                "tcp": {"tls": {"addr": f"127.0.0.1:{tls_port}", **files}},
            },
        }
    )
    for port in (ws_port, tls_port, wss_port):
        wait_port("127.0.0.1", port, 10, b.proc)
    return {"tcp": b.port, "ws": ws_port, "tls": tls_port, "wss": wss_port}, tls


def _ws_connect(port: int) -> tuple[socket.socket, bytes]:
    """A raw socket after a successful upgrade (with the bytes that followed the answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = ws.new_key()
    s.sendall(ws.upgrade_request("127.0.0.1", port, "/mqtt", key))
    got = b""
    while True:
        data = s.recv(4096)
        assert data, "closed during the upgrade"
        got += data
        n = ws.parse_upgrade(got, key)
        if n:
            return s, got[n:]


def _ws_read(s: socket.socket, rest: bytes, until) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Read server frames until ``until(mqtt_bytes, controls)``; return both."""
    wsr = ws.FrameReader()
    mqtt = bytearray()
    pending = rest
    deadline = time.monotonic() + 5
    while not until(bytes(mqtt), wsr.controls):
        assert time.monotonic() < deadline, (bytes(mqtt), wsr.controls)
        data = pending or s.recv(65536)
        pending = b""
        if not data:
            break
        buf = bytearray(wsr.raw + data)
        end = wsr.unframe(buf, memoryview(buf), 0, len(buf))
        mqtt += buf[:end]
    return bytes(mqtt), wsr.controls


def _types(stream: bytes) -> list[int]:
    return [stream[start] >> 4 for start, _, _ in iter_packets(stream)]


@pytest.mark.fluxmq_only
def test_ws_handshake_and_framing_against_fluxmq(fluxmq_ws_tls) -> None:
    """The hand-written upgrade and masked frames against FluxMQ's WebSocket listener: MQTT
    packets split over frames at arbitrary points (one-byte frames too) are understood, a ping
    gets its pong, the close handshake completes; an unmasked frame is refused (close 1002)."""
    ports, _ = fluxmq_ws_tls
    rng = random.Random(5)
    stream = (
        mqttwire.connect("ws-framing", clean=True, keepalive=30)
        + mqttwire.subscribe(1, [("wsf/#", 1)])
        + mqttwire.publish("wsf/x", b"hello over frames", 1, 7)
    )
    s, rest = _ws_connect(ports["ws"])
    with s:
        cuts = [*sorted(rng.sample(range(1, len(stream)), 12)), len(stream)]
        prev = 0
        for i, c in enumerate(cuts):
            if i < 4:  # the first bytes one frame per byte
                for j in range(prev, c):
                    s.sendall(ws.frame(stream[j : j + 1]))
            else:
                s.sendall(ws.frame(stream[prev:c]))
            prev = c
        s.sendall(ws.frame(b"are you there", ws.OP_PING))
        mqtt, controls = _ws_read(
            s,
            rest,
            lambda m, c: len(_types(m)) >= 4 and (ws.OP_PONG, b"are you there") in c,
        )
        types = _types(mqtt)
        assert types[0] == mqttwire.CONNACK and mqtt[3] == 0
        assert sorted(types[1:4]) == [mqttwire.PUBLISH, mqttwire.PUBACK, mqttwire.SUBACK]
        assert b"hello over frames" in mqtt
        s.sendall(ws.frame(mqttwire.DISCONNECT_BYTES) + ws.frame(ws.close_payload(), ws.OP_CLOSE))
        _, controls = _ws_read(s, b"", lambda m, c: any(op == ws.OP_CLOSE for op, _ in c))
        close = [p for op, p in controls if op == ws.OP_CLOSE]
        assert close and int.from_bytes(close[0][:2], "big") == 1000
    s, rest = _ws_connect(ports["ws"])
    with s:
        pkt = mqttwire.connect("ws-unmasked")
        s.sendall(ws.server_frame(pkt))  # no mask: a protocol error from a client
        _, controls = _ws_read(s, rest, lambda m, c: any(op == ws.OP_CLOSE for op, _ in c))
        close = [p for op, p in controls if op == ws.OP_CLOSE]
        assert int.from_bytes(close[0][:2], "big") == 1002


@pytest.mark.fluxmq_only
@pytest.mark.parametrize("transport", ["ws", "tls", "wss"])
def test_ws_and_tls_pubsub_qos1_against_fluxmq(fluxmq_ws_tls, transport: str) -> None:
    """A short QoS 1 pubsub over WebSocket, TLS and WebSocket + TLS: received == sent, no error,
    and over WebSocket the close handshake ends every connection in time."""
    ports, tls = fluxmq_ws_tls
    args = ["pubsub", "-p", str(ports[transport]), "-c", "3", "-q", "1", "-s", "16",
            "-L", "6000", "-F", "50", "--sub-count", "2", "--sub-topic", "bench/#", "--quiet"]  # fmt: skip
    if transport in ("ws", "wss"):
        args.append("--ws")
    if transport in ("tls", "wss"):
        args += ["--tls", "--cafile", tls.ca]
    rc, s, err = bench_cli(*args)
    assert rc == 0, err
    assert s is not None
    assert s["sent"] == s["acked"] == 6000
    assert s["expected"] == 12000 and s["received"] == 12000 and s["lost"] == 0
    assert s["errors"]["total"] == 0, s["errors"]
    assert s["connections"]["connected"] == 5
    if transport != "tls":
        assert s["ws_frames_received"] > 0
    assert 0 < s["latency_us"]["p50"] < 2_000_000


# -- WebSocket and TLS against Mosquitto, and the tool's own WebSocket relay --------------------
@pytest.fixture(scope="module")
def mosquitto_ws_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Our Mosquitto with its WebSocket and TLS listeners too (as `compare` starts it)."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (make peers)")
    d = tmp_path_factory.mktemp("mosq-ws")
    b = Mosquitto(d / "broker", ws=True, tls=make_certs(d / "certs"))
    b.start()
    yield b
    b.stop()


def _listening_v6(port: int) -> bool:
    """True when something listens on [::]:port (or any IPv6 address)."""
    try:
        lines = Path("/proc/net/tcp6").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A" for ln in lines)


def test_ws_and_tls_pubsub_qos1_against_mosquitto(mosquitto_ws_tls: Mosquitto) -> None:
    """Mosquitto's WebSocket listener starts next to the plain one, on 127.0.0.1 only (not
    [::]), and the tool's WebSocket and TLS clients lose nothing through it at QoS 1."""
    m = mosquitto_ws_tls
    assert m.ws_port and m.tls_port and m.tls is not None
    assert not _listening_v6(m.ws_port)
    for extra in (
        ["-p", str(m.ws_port), "--ws"],
        ["-p", str(m.tls_port), "--tls", "--cafile", m.tls.ca],
    ):
        rc, s, err = bench_cli(
            "pubsub", *extra, "-c", "2", "-q", "1", "-s", "16", "-L", "4000",
            "--sub-topic", "bench/#", "--quiet",
        )  # fmt: skip
        assert rc == 0, err
        assert s is not None
        assert s["sent"] == s["acked"] == s["received"] == 4000 and s["lost"] == 0
        assert s["errors"]["total"] == 0, s["errors"]


def test_ws_relay_ceiling_run() -> None:
    """`relay --ws` and `pubsub --ws` (the tool's WebSocket ceiling): QoS 0 counted exactly."""
    from bench.brokers import free_port
    from tests.brokerproc import wait_port

    port = free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench", "relay", "--port", str(port), "--ws", "-d", "60"], cwd=ROOT
    )
    try:
        wait_port("127.0.0.1", port, 10, relay)
        rc, s, err = bench_cli(
            "pubsub", "-p", str(port), "--ws", "-c", "2", "-q", "0", "-s", "16", "-L", "20000",
            "--sub-topic", "bench/#", "--quiet",
        )  # fmt: skip
    finally:
        relay.terminate()
        relay.wait(10)
    assert rc == 0, err
    assert s is not None
    assert s["sent"] == s["received"] == 20000 and s["errors"]["total"] == 0


def test_compare_ws_tls_quick(tmp_path: Path) -> None:
    """`compare --quick --only ws,tls`: both brokers get WebSocket and TLS listeners and a
    certificate made in the workdir; both rows are filled for both brokers."""
    p = subprocess.run(
        [sys.executable, "-m", "bench", "compare", "--quick", "--only", "ws,tls",
         "--duration", "1", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| fan-in QoS 0 over")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "fan-in QoS 0 over WebSocket, 4 pub -> 1 sub, 16 B",
        "fan-in QoS 0 over TLS, 4 pub -> 1 sub, 16 B",
    ]
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        assert int(cells[4].replace(",", "")) > 10_000, row  # Mosquitto
        assert int(cells[5].replace(",", "")) > 10_000, row  # FluxMQ
    assert "FAILED" not in p.stdout
    assert (tmp_path / "certs" / "server.crt").exists()
