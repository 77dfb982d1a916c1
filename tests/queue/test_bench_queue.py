"""`python -m bench queue` runs end to end (FluxMQ only here: the peers are benchmarks' business)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.brokerproc import ROOT


def test_bench_queue_runs_and_reports(tmp_path):
    out = tmp_path / "q.json"
    md = tmp_path / "q.md"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "queue", "-n", "400", "--latency-count", "20",
         "--peers", "fluxmq-interval", "--json", str(out), "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["results"][0]
    assert res["failure"] is None and res["publish_per_s"] > 0 and res["consume_ack_per_s"] > 0
    assert res["latency_us"]["p50"] > 0
    assert "| FluxMQ (fsync: interval) |" in md.read_text()
    bad = subprocess.run([sys.executable, "-m", "bench", "queue", "--peers", "kafka"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "unknown peers" in bad.stderr
