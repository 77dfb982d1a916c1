"""The load tool (`python -m bench`) against a real Mosquitto started here, plus its pure parts.

These tests do not use the FluxMQ broker fixture in conftest.py: the tool must be right on its
own before it can judge FluxMQ.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import compare, mqttwire, procstats, report, topics
from bench.brokers import FluxMQ, Mosquitto
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
    assert cli_main(["conn", "--ws", "--quiet"]) == 2
    assert "not supported yet" in capsys.readouterr().err


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
