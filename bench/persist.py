"""``python -m bench persist``: persistent QoS 1 throughput, side by side.

The shape of issue 3's benchmark: a persistent subscriber (clean session 0, QoS 1) subscribes
and goes offline; 4 publishers send N QoS 1 messages (window 100 each), every one of which the
broker must keep for the subscriber; then the subscriber comes back and drains them. Reported:
the publish rate (acknowledged messages/s), the drain rate (messages/s) and whether all N
arrived, for

- Mosquitto with ``persistence true`` (its defaults: the in-memory database is written to disk at
  ``autosave_interval``, 30 minutes, and at shutdown: it does not write per message),
- FluxMQ with ``storage.type: lmdb`` and ``fsync: always`` (a PUBACK leaves only after the
  message is fsynced) and ``fsync: interval`` (committed every loop turn, fsynced every second),
- FluxMQ with ``storage.type: memory`` (the baseline of "lose no more than 20 %").

Then the second shape issue 3 names, a **stream**: the same 4 publishers (QoS 1, window 100
each, persistent sessions) and one *online* persistent subscriber on ``bench/#`` (QoS 1, the
broker's default in-flight window of 100), for ``--stream-seconds``, against FluxMQ with
``storage.type: memory`` and with LMDB ``fsync: interval``, alternating; reported: the
messages/s the subscriber received, the broker's CPU per message, the loss, and LMDB against
memory, overall (medians) and round by round (``--stream-reps 0`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import mqttwire as w
from bench import procstats, report
from bench.brokers import Broker, BrokerStartError, FluxMQ, Mosquitto
from bench.client import ConnOptions
from bench.pub import PubSpec
from bench.runner import RunError, RunPlan, run
from bench.sub import SubSpec


@dataclass
class Variant:
    label: str
    make: Any  # (workdir, n) -> Broker (not started)


VARIANTS = [
    Variant("Mosquitto, persistence true", lambda d, n: Mosquitto(d, persistence=True)),
    Variant(
        "FluxMQ, lmdb fsync always",
        lambda d, n: FluxMQ(d, storage="lmdb", fsync="always", max_queue=n + 1000),
    ),
    Variant(
        "FluxMQ, lmdb fsync interval",
        lambda d, n: FluxMQ(d, storage="lmdb", fsync="interval", max_queue=n + 1000),
    ),
    Variant("FluxMQ, memory", lambda d, n: FluxMQ(d, storage="memory", max_queue=n + 1000)),
]


@dataclass
class Result:
    label: str
    publish: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)
    failure: str | None = None

    def median(self, xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_run(broker: Broker, n: int, tag: str) -> tuple[float, float, bool]:
    """Subscribe persistently, go offline, publish n QoS 1 messages, drain them."""
    sub_opts = ConnOptions(
        host="127.0.0.1", port=broker.port, version=w.V311, clean=False, prefix="persist"
    )
    pub_opts = ConnOptions(host="127.0.0.1", port=broker.port, version=w.V311, prefix="ppub")
    # 1. The persistent session and its subscription exist; the client leaves.
    run(
        RunPlan(
            opts=sub_opts,
            sub=SubSpec(count=1, topic="persist/#", qos=1),
            duration=0.3,
            run_tag=tag,
            quiet=True,
            broker_pid=broker.pid,
        )
    )
    # 2. Publish n QoS 1 messages for the offline session.
    p = run(
        RunPlan(
            opts=pub_opts,
            pub=PubSpec(count=4, topic="persist/%i", qos=1, size=16, limit=n, inflight=100),
            duration=55.0,
            pub_procs=2,
            quiet=True,
            broker_pid=broker.pid,
        )
    )
    publish_rate = p["sent"] / p["window_s"] if p["window_s"] else 0.0
    # 3. Come back and drain.
    t0 = time.monotonic()
    d = run(
        RunPlan(
            opts=sub_opts,
            sub=SubSpec(count=1, topic="persist/#", qos=1, limit=n),
            duration=55.0,
            run_tag=tag,
            quiet=True,
            broker_pid=broker.pid,
        )
    )
    drain_s = time.monotonic() - t0
    received = d["received"]
    return publish_rate, received / drain_s if drain_s else 0.0, received >= n


@contextlib.contextmanager
def _started(v: Variant, path: Path, n: int) -> Iterator[Broker]:
    """v's broker, started in `path` after a `sync` (the previous run's dirty pages are not
    written back during this one), stopped afterwards."""
    os.sync()
    broker = v.make(path, n).start()
    try:
        time.sleep(0.3)
        yield broker
    finally:
        broker.stop()


def compare(n: int, reps: int, workdir: Path, variants: list[Variant]) -> list[Result]:
    """Round-robin: every variant once per round, so that drift of the machine (and the
    writeback of an earlier run's data) falls on all of them alike; the dirty pages of the
    previous run are flushed (`sync`) before each run."""
    results = [Result(v.label) for v in variants]
    broken: set[int] = set()  # variants that could not run: not tried again
    for rep in range(reps):
        for i, (v, r) in enumerate(zip(variants, results, strict=True)):
            if i in broken:
                continue
            path = workdir / f"{v.label.split(',')[0].lower()}-{i}-{rep}"
            try:
                with _started(v, path, n) as broker:
                    pub, drain, ok = one_run(broker, n, f"r{rep}")
                r.publish.append(pub)
                r.drain.append(drain)
                r.complete.append(ok)
                _log(
                    f"  {v.label:30} rep {rep + 1}/{reps}: publish {report.fmt_num(pub)} msg/s, "
                    f"drain {report.fmt_num(drain)} msg/s, all {n:,} delivered: {ok}"
                )
                if not ok:
                    r.failure = "not every acknowledged message was delivered"
            except (BrokerStartError, RunError, OSError) as e:
                r.failure = f"{type(e).__name__}: {e}"
                _log(f"  {v.label:30} FAILED: {r.failure}")
                broken.add(i)
    return results


@dataclass
class StreamResult:
    label: str
    rate: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    failure: str | None = None


STREAM_VARIANTS = [VARIANTS[3], VARIANTS[2]]  # memory, then lmdb interval


def stream_run(broker: Broker, seconds: float) -> tuple[float, float, int]:
    """The stream: (messages/s received, broker CPU µs per message, messages lost)."""
    opts = ConnOptions(
        host="127.0.0.1", port=broker.port, version=w.V311, clean=False, prefix="stream"
    )
    r = run(
        RunPlan(
            opts=opts,
            pub=PubSpec(count=4, topic="bench/%i", qos=1, size=16, inflight=100),
            sub=SubSpec(count=1, topic="bench/#", qos=1),
            duration=seconds,
            quiet=True,
            broker_pid=broker.pid,
            label="stream",
        )
    )
    received = r["received"]
    cpu = (r.get("broker") or {}).get("cpu_s")
    cpu_us = cpu * 1e6 / received if cpu is not None and received else float("nan")
    return float(r["recv_per_s"]), cpu_us, int(r["lost"])


def compare_stream(reps: int, seconds: float, workdir: Path) -> list[StreamResult]:
    """Memory and LMDB `interval`, one run of each per round (a `sync` before each run)."""
    results = [StreamResult(v.label) for v in STREAM_VARIANTS]
    for rep in range(reps):
        for i, (v, r) in enumerate(zip(STREAM_VARIANTS, results, strict=True)):
            if r.failure is not None:
                continue
            try:
                # n = 0: the default queue bound (1,000), as a deployment has it
                with _started(v, workdir / f"stream-{i}-{rep}", 0) as broker:
                    rate, cpu_us, lost = stream_run(broker, seconds)
                r.rate.append(rate)
                r.cpu_us.append(cpu_us)
                r.lost.append(lost)
                _log(
                    f"  stream {v.label:30} rep {rep + 1}/{reps}: {report.fmt_num(rate)} msg/s, "
                    f"{cpu_us:.2f} µs broker CPU per message, lost {lost}"
                )
            except (BrokerStartError, RunError, OSError) as e:
                r.failure = f"{type(e).__name__}: {e}"
                _log(f"  stream {v.label:30} FAILED: {r.failure}")
    return results


def stream_table(results: list[StreamResult], seconds: float) -> str:
    mem, disk = results
    headers = ["storage", "msg/s received (median)", "range", "broker CPU per message", "lost"]
    rows = []
    for r in results:
        if not r.rate:
            rows.append([r.label, "FAILED", r.failure or "-", "-", "-"])
            continue
        rows.append(
            [
                r.label,
                report.fmt_num(statistics.median(r.rate)),
                f"{report.fmt_num(min(r.rate))}-{report.fmt_num(max(r.rate))}",
                f"{statistics.median(r.cpu_us):.2f} µs",
                str(sum(r.lost)),
            ]
        )
    text = (
        f"persistent QoS 1 stream: 4 publishers to one online persistent subscriber, "
        f"{seconds:g} s per run, median of {len(disk.rate)} rounds\n\n"
        + report.table(headers, rows, True)
    )
    if mem.rate and disk.rate:
        overall = 100 * (statistics.median(disk.rate) / statistics.median(mem.rate) - 1)
        rounds = ", ".join(
            f"{100 * (d / m - 1):+.0f} %" for m, d in zip(mem.rate, disk.rate, strict=False)
        )
        text += f"\n\nLMDB interval vs memory: {overall:+.1f} % (medians); by round: {rounds}"
    return text


def table(results: list[Result], n: int) -> str:
    base = next((r for r in results if r.label.startswith("Mosquitto")), None)
    mem = next((r for r in results if r.label.endswith("memory")), None)
    headers = [
        "broker / storage",
        "publish msg/s",
        "ratio vs Mosquitto",
        "drain msg/s",
        "ratio vs Mosquitto",
        "vs FluxMQ memory (publish)",
        "all delivered",
    ]
    rows = []
    for r in results:
        pub, drain = r.median(r.publish), r.median(r.drain)
        rb = report.ratio(pub, base.median(base.publish), True) if base and r is not base else None
        rd = report.ratio(drain, base.median(base.drain), True) if base and r is not base else None
        vs_mem = "-"
        if mem is not None and r is not mem and r.label.startswith("FluxMQ") and pub is not None:
            mp = mem.median(mem.publish)
            vs_mem = f"{100 * (pub / mp - 1):+.0f} %" if mp else "-"
        rows.append(
            [
                r.label,
                report.fmt_num(pub) if pub is not None else "FAILED",
                "-" if rb is None else f"{rb:.2f}x",
                report.fmt_num(drain) if drain is not None else "FAILED",
                "-" if rd is None else f"{rd:.2f}x",
                vs_mem,
                ("yes" if all(r.complete) else "NO") if r.complete else (r.failure or "-"),
            ]
        )
    return (
        f"persistent QoS 1: {n:,} messages from 4 publishers to one offline persistent "
        f"subscriber, then drained (median of runs)\n\n" + report.table(headers, rows, True)
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--messages", type=int, default=None, help="messages per run (200000; quick 20000)"
    )
    p.add_argument("--reps", type=int, default=None, help="runs per broker (3; quick 1)")
    p.add_argument("--quick", action="store_true", help="smaller and fewer runs")
    p.add_argument(
        "--stream-reps", type=int, default=None, help="stream rounds (the reps; 0 = skip it)"
    )
    p.add_argument("--stream-seconds", type=float, default=8.0, help="seconds per stream run (8)")
    p.add_argument("--markdown", default=None, help="write the table (Markdown) here")
    p.add_argument("--workdir", default=None, help="broker configs, data and logs (a temp dir)")


def main(a: argparse.Namespace) -> int:
    n = a.messages or (20000 if a.quick else 200000)
    reps = a.reps or (1 if a.quick else 3)
    if not 1000 <= n <= 1_000_000:
        print("error: --messages must be between 1,000 and 1,000,000", file=sys.stderr)
        return 2
    machine = procstats.machine_info()
    header = "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items())
    print(header, flush=True)
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fluxmq-persist-"))
    stream_reps = reps if a.stream_reps is None else a.stream_reps
    if not 1.0 <= a.stream_seconds <= 30.0:
        print("error: --stream-seconds must be between 1 and 30", file=sys.stderr)
        return 2
    results = compare(n, reps, workdir, VARIANTS)
    text = table(results, n)
    ok = all(r.failure is None for r in results)
    if stream_reps > 0:
        streams = compare_stream(stream_reps, a.stream_seconds, workdir)
        text += "\n\n" + stream_table(streams, a.stream_seconds)
        ok = ok and all(r.failure is None and not any(r.lost) for r in streams)
    print()
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(f"{header}\n\n{text}\n")
    return 0 if ok else 1
