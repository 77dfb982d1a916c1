"""``python -m bench compare``: Mosquitto and FluxMQ side by side on the same machine.

For each broker and scenario: start a fresh broker on a free loopback port, run a warm-up,
then ``--reps`` measured runs, and keep the median of every figure. A broker that does not
start, or a scenario that fails for it, is reported as such in the table and the comparison
goes on. Ratios are always "> 1 means FluxMQ is better": FluxMQ/Mosquitto for
higher-is-better figures and Mosquitto/FluxMQ for lower-is-better ones.

The ``ws`` and ``tls`` groups run the 16-byte fan-in over WebSocket (``/mqtt``, subprotocol
``mqtt``) and over TLS: for them each broker also gets a WebSocket listener and a TLS listener
on free loopback ports, with a certificate made by ``openssl`` in the workdir at the start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstats, report
from bench.brokers import BROKERS, Broker, BrokerStartError, TLSFiles, make_certs
from bench.client import ConnOptions
from bench.pub import PubSpec
from bench.runner import RunError, RunPlan, run
from bench.sub import SubSpec

SCENARIO_GROUPS = ("fanin", "fanout", "qos1", "latency", "idle", "p2p", "shared", "ws", "tls")


@dataclass
class Settings:
    """Knobs shared by all scenarios."""

    duration: float = 10.0
    reps: int = 3
    quick: bool = False
    warmup: float = 2.0
    tls_files: TLSFiles | None = None  # made in the workdir when a ws/tls scenario runs


@dataclass
class Figure:
    """One number a scenario reports."""

    label: str
    higher_better: bool
    extract: Callable[[dict[str, Any]], float | None]
    unit: str = ""
    digits: int = 0


@dataclass
class Scenario:
    """A named load shape and the figures read from its summary."""

    name: str
    group: str
    title: str
    plan: Callable[[ConnOptions, Settings], RunPlan]
    figures: list[Figure]
    check: Callable[[dict[str, Any]], str | None] = lambda s: None
    restart_per_rep: bool = False
    warmup: bool = True
    # Mosquitto's set_tcp_nodelay: its best latency; its default (Nagle) is its best throughput.
    tcp_nodelay: bool = False
    transport: str = "tcp"  # "tcp" | "ws" | "tls" (the brokers then get both extra listeners)


@dataclass
class Outcome:
    """One broker's result for one scenario."""

    broker: str
    scenario: str
    values: dict[str, float | None] = field(default_factory=dict)
    failure: str | None = None
    cpu_pct: float | None = None
    rss_kb: float | None = None
    tool_cpu_pct: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)


# -- figures ---------------------------------------------------------------------------------
def _get(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def f(s: dict[str, Any]) -> float | None:
        cur: Any = s
        for p in path:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(p)
        return None if cur is None else float(cur)

    return f


def _rss_per_conn(s: dict[str, Any]) -> float | None:
    b = s.get("broker", {})
    n = s.get("connections", {}).get("connected") or 0
    if "rss_kb" not in b or "rss_before_kb" not in b or not n:
        return None
    return (b["rss_kb"] - b["rss_before_kb"]) / n


def _failures(s: dict[str, Any]) -> float:
    c = s.get("connections", {})
    return float((c.get("target", 0) - c.get("connected", 0)) + s.get("errors", {}).get("total", 0))


RECV = Figure("msg/s received", True, _get("recv_per_s"), "msg/s")
DELIV = Figure("deliveries/s", True, _get("recv_per_s"), "msg/s")
P50 = Figure("latency p50", False, _get("latency_us", "p50"), "µs")
P99 = Figure("latency p99", False, _get("latency_us", "p99"), "µs")
LOST = Figure("lost (QoS 1)", False, _get("lost"), "msgs")


def _no_loss(s: dict[str, Any]) -> str | None:
    if s.get("lost"):
        return f"{s['lost']} QoS 1 messages lost"
    return _received(s)


def _received(s: dict[str, Any]) -> str | None:
    c = s.get("connections", {})
    if c.get("connected", 0) < c.get("target", 0):
        return f"only {c.get('connected')} of {c.get('target')} clients connected"
    if not s.get("received"):
        return "nothing received"
    return None


def _conns_ok(s: dict[str, Any]) -> str | None:
    c = s.get("connections", {})
    if c.get("connected", 0) == 0:
        return "no connection established"
    return None


# -- plans -------------------------------------------------------------------------------------
def _fanin(size: int) -> Callable[[ConnOptions, Settings], RunPlan]:
    def plan(o: ConnOptions, st: Settings) -> RunPlan:
        return RunPlan(
            opts=o,
            pub=PubSpec(count=4, topic="fanin/%i", qos=0, size=size),
            sub=SubSpec(count=1, topic="fanin/#", qos=0),
            duration=st.duration,
            pub_procs=2,
            drain_max=3.0,
        )

    return plan


def _fanout(o: ConnOptions, st: Settings) -> RunPlan:
    return RunPlan(
        opts=o,
        pub=PubSpec(count=1, topic="fanout/t", qos=0, size=16),
        sub=SubSpec(count=50, topic="fanout/t", qos=0),
        duration=st.duration,
        drain_max=3.0,
    )


def _qos1(o: ConnOptions, st: Settings) -> RunPlan:
    return RunPlan(
        opts=o,
        pub=PubSpec(count=4, topic="qos1/%i", qos=1, size=16, inflight=100),
        sub=SubSpec(count=1, topic="qos1/#", qos=1),
        duration=st.duration,
        pub_procs=2,
    )


def _latency(qos: int) -> Callable[[ConnOptions, Settings], RunPlan]:
    def plan(o: ConnOptions, st: Settings) -> RunPlan:
        return RunPlan(
            opts=o,
            pub=PubSpec(count=1, topic="lat/1", qos=qos, size=16, interval_ms=0.2),
            sub=SubSpec(count=1, topic="lat/1", qos=qos),
            duration=st.duration,
        )

    return plan


def _idle(n: int) -> Callable[[ConnOptions, Settings], RunPlan]:
    def plan(o: ConnOptions, st: Settings) -> RunPlan:
        return RunPlan(
            opts=o,
            conns=n,
            duration=1.0 if st.quick else 3.0,
            per_process=5000,
            conn_window=128,
            connect_timeout=90.0,
        )

    return plan


def _p2p(o: ConnOptions, st: Settings) -> RunPlan:
    n = 100 if st.quick else 1000
    return RunPlan(
        opts=o,
        pub=PubSpec(count=n, topic="p2p/%i", qos=1, size=16, interval_ms=100.0, inflight=100),
        sub=SubSpec(count=n, topic="p2p/%i", qos=1),
        duration=st.duration,
        conn_window=128,
    )


def _shared(o: ConnOptions, st: Settings) -> RunPlan:
    return RunPlan(
        opts=o,
        pub=PubSpec(count=8, topic="test/%i", qos=1, size=16, inflight=100),
        sub=SubSpec(count=4, topic="$share/perf/test/#", qos=1),
        duration=st.duration,
        pub_procs=2,
    )


def scenarios(st: Settings) -> list[Scenario]:
    """All scenarios, in report order."""
    small, big = (500, 1000) if st.quick else (5000, 19000)
    idle_figs = [
        Figure("broker RSS per connection", False, _rss_per_conn, "KB", 2),
        Figure("connect rate", True, _get("connections", "conn_per_s"), "conn/s"),
        Figure("failures/resets", False, _failures, ""),
    ]
    return [
        Scenario(
            "fanin-16B",
            "fanin",
            "fan-in QoS 0, 4 pub -> 1 sub, 16 B",
            _fanin(16),
            [RECV],
            _received,
        ),
        Scenario(
            "fanin-256B",
            "fanin",
            "fan-in QoS 0, 4 pub -> 1 sub, 256 B",
            _fanin(256),
            [RECV],
            _received,
        ),
        Scenario(
            "fanout", "fanout", "fan-out QoS 0, 1 pub -> 50 subs, 16 B", _fanout, [DELIV], _received
        ),
        Scenario(
            "fanin-ws",
            "ws",
            "fan-in QoS 0 over WebSocket, 4 pub -> 1 sub, 16 B",
            _fanin(16),
            [RECV],
            _received,
            transport="ws",
        ),
        Scenario(
            "fanin-tls",
            "tls",
            "fan-in QoS 0 over TLS, 4 pub -> 1 sub, 16 B",
            _fanin(16),
            [RECV],
            _received,
            transport="tls",
        ),
        Scenario(
            "qos1",
            "qos1",
            "QoS 1 both legs, 4 pub -> 1 sub, window 100",
            _qos1,
            [RECV, LOST],
            _no_loss,
        ),
        Scenario(
            "latency-q0",
            "latency",
            "latency at 5k msg/s, QoS 0",
            _latency(0),
            [P50, P99],
            _received,
            tcp_nodelay=True,
        ),
        Scenario(
            "latency-q1",
            "latency",
            "latency at 5k msg/s, QoS 1",
            _latency(1),
            [P50, P99, LOST],
            _no_loss,
            tcp_nodelay=True,
        ),
        Scenario(
            f"idle-{small}",
            "idle",
            f"{small:,} idle connections",
            _idle(small),
            idle_figs,
            _conns_ok,
            True,
            False,
        ),
        Scenario(
            f"idle-{big}",
            "idle",
            f"{big:,} idle connections",
            _idle(big),
            idle_figs,
            _conns_ok,
            True,
            False,
        ),
        Scenario(
            "p2p",
            "p2p",
            "p2p QoS 1, 1k pub -> 1k sub on 1k topics, 10 msg/s each"
            if not st.quick
            else "p2p QoS 1, 100 -> 100",
            _p2p,
            [RECV, P50, P99, LOST],
            _no_loss,
        ),
        Scenario(
            "shared",
            "shared",
            "shared sub $share/perf/test/#, 8 pub -> 4 subs, QoS 1",
            _shared,
            [RECV, LOST],
            _no_loss,
        ),
    ]


# -- running -----------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _start(cls: type[Broker], workdir: Path, tcp_nodelay: bool = False, **listeners: Any) -> Broker:
    return cls(workdir, tcp_nodelay=tcp_nodelay, **listeners).start()


def _conn_options(sc: Scenario, st: Settings, broker: Broker, rep: int) -> ConnOptions:
    """How the clients reach ``broker`` for ``sc`` (its plain, WebSocket or TLS listener)."""
    opts = ConnOptions(host="127.0.0.1", port=broker.port, prefix=f"cmp{rep}")
    if sc.transport == "ws":
        assert broker.ws_port is not None
        opts.port = broker.ws_port
        opts.ws = True
    elif sc.transport == "tls":
        assert broker.tls_port is not None and st.tls_files is not None
        opts.port = broker.tls_port
        opts.tls = True
        opts.cafile = st.tls_files.ca
    return opts


def run_scenario(
    broker_name: str,
    sc: Scenario,
    st: Settings,
    workdir: Path,
    start: Callable[..., Broker] = _start,
) -> Outcome:
    """Run one scenario against one broker; failures end up in ``Outcome.failure``."""
    out = Outcome(broker_name, sc.name)
    cls = BROKERS[broker_name]
    broker: Broker | None = None
    try:
        listeners: dict[str, Any] = {}
        if sc.transport != "tcp":
            if st.tls_files is None:
                st.tls_files = make_certs(workdir / "certs")
            listeners = {"ws": True, "tls": st.tls_files}
        reps = max(1, st.reps)
        for rep in range(reps + (1 if sc.warmup else 0)):
            warm = sc.warmup and rep == 0
            if broker is None or (sc.restart_per_rep and not warm and rep > 0):
                if broker is not None:
                    broker.stop()
                broker = start(
                    cls, workdir / f"{broker_name}-{sc.name}-{rep}", sc.tcp_nodelay, **listeners
                )
                time.sleep(0.3)  # let the broker settle before its idle RSS is read
            if not broker.alive():
                raise RunError(f"{broker_name} died: {broker.log_tail()}")
            opts = _conn_options(sc, st, broker, rep)
            plan = sc.plan(opts, st)
            plan.broker_pid = broker.pid
            plan.quiet = True
            plan.label = f"{broker_name}:{sc.name}"
            if warm:
                plan.duration = min(plan.duration, st.warmup)
            s = run(plan)
            if not broker.alive():
                raise RunError(f"{broker_name} died during the run: {broker.log_tail()}")
            if warm:
                _log(
                    f"  {broker_name:9} {sc.name:12} warm-up: recv/s {report.fmt_num(s['recv_per_s'])}"
                )
                continue
            problem = sc.check(s)
            figs = ", ".join(
                f"{f.label} {report.fmt_num(f.extract(s), f.digits)}" for f in sc.figures
            )
            _log(
                f"  {broker_name:9} {sc.name:12} rep {rep if sc.warmup else rep + 1}/{reps}: {figs}; "
                f"broker cpu {s['broker'].get('cpu_pct')}%, tool cpu {s['tool_cpu_pct']}%"
                + (f"  [{problem}]" if problem else "")
            )
            out.runs.append(s)
            if problem:
                out.failure = problem
        ok = out.runs
        for f in sc.figures:
            out.values[f.label] = _median([f.extract(s) for s in ok])
        out.cpu_pct = _median([s["broker"].get("cpu_pct") for s in ok])
        out.rss_kb = _median([s["broker"].get("rss_max_kb") for s in ok])
        out.tool_cpu_pct = _median([s.get("tool_cpu_pct") for s in ok])
    except BrokerStartError as e:
        out.failure = f"start failed: {e}"
    except (RunError, OSError) as e:
        out.failure = f"run failed: {e}"
    finally:
        if broker is not None:
            broker.stop()
    if out.failure:
        _log(f"  {broker_name:9} {sc.name:12} FAILED: {out.failure}")
    return out


def _cell(o: Outcome | None, f: Figure) -> str:
    if o is None:
        return "not run"
    v = o.values.get(f.label)
    if v is None:
        return "FAILED" if o.failure else "-"
    txt = report.fmt_num(v, f.digits)
    return txt + (" (!)" if o.failure else "")


def _res(o: Outcome | None) -> str:
    if o is None or (o.cpu_pct is None and o.rss_kb is None):
        return "-"
    cpu = "-" if o.cpu_pct is None else f"{o.cpu_pct:.0f}%"
    rss = "-" if o.rss_kb is None else f"{o.rss_kb / 1024:.1f} MB"
    return f"{cpu} / {rss}"


def build_table(
    scs: list[Scenario], outcomes: dict[tuple[str, str], Outcome], markdown: bool = True
) -> str:
    """The comparison table (one row per figure)."""
    headers = [
        "scenario",
        "figure",
        "better",
        "Mosquitto",
        "FluxMQ",
        "ratio (>1: FluxMQ better)",
        "Mosquitto CPU / RSS",
        "FluxMQ CPU / RSS",
        "tool CPU (M / F)",
    ]
    rows: list[list[str]] = []
    for sc in scs:
        m = outcomes.get(("mosquitto", sc.name))
        fl = outcomes.get(("fluxmq", sc.name))
        for i, f in enumerate(sc.figures):
            mv = m.values.get(f.label) if m else None
            fv = fl.values.get(f.label) if fl else None
            r = report.ratio(fv, mv, f.higher_better)
            unit = f" ({f.unit})" if f.unit else ""
            first = i == 0
            rows.append(
                [
                    sc.title if first else "",
                    f.label + unit,
                    ("higher: F/M" if f.higher_better else "lower: M/F"),
                    _cell(m, f),
                    _cell(fl, f),
                    "-" if r is None else f"{r:.2f}x",
                    _res(m) if first else "",
                    _res(fl) if first else "",
                    (
                        f"{_pct(m.tool_cpu_pct if m else None)} / {_pct(fl.tool_cpu_pct if fl else None)}"
                        if first
                        else ""
                    ),
                ]
            )
    return report.table(headers, rows, markdown)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def failures_text(outcomes: dict[tuple[str, str], Outcome]) -> str:
    """One line per failed (broker, scenario)."""
    lines = [f"- {o.broker} / {o.scenario}: {o.failure}" for o in outcomes.values() if o.failure]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the ``compare`` sub-command."""
    p.add_argument(
        "--only", default="", help=f"comma-separated groups: {','.join(SCENARIO_GROUPS)}"
    )
    p.add_argument("--reps", type=int, default=None, help="measured repetitions (3; quick: 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (10; quick: 2)")
    p.add_argument("--brokers", default="mosquitto,fluxmq", help="mosquitto,fluxmq")
    p.add_argument(
        "--quick", action="store_true", help="short runs, fewer connections (smoke test)"
    )
    p.add_argument("--json", dest="json_out", default=None, help="save all results as JSON")
    p.add_argument("--markdown", default=None, help="write the table (Markdown) here")
    p.add_argument("--workdir", default=None, help="broker configs and logs (a temp dir)")


def main(a: argparse.Namespace) -> int:
    """Run the comparison; print the machine, then the table."""
    brokers = [b.strip() for b in a.brokers.split(",") if b.strip()]
    unknown = [b for b in brokers if b not in BROKERS]
    if unknown or not brokers:
        print(f"error: unknown broker(s) {unknown}; choose from {list(BROKERS)}", file=sys.stderr)
        return 2
    st = Settings(
        duration=a.duration or (2.0 if a.quick else 10.0),
        reps=a.reps or (1 if a.quick else 3),
        quick=a.quick,
        warmup=0.5 if a.quick else 2.0,
    )
    if st.duration > 60:
        print("error: --duration is capped at 60 s", file=sys.stderr)
        return 2
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    bad = only - set(SCENARIO_GROUPS)
    if bad:
        print(
            f"error: unknown scenario group(s) {sorted(bad)}; use {SCENARIO_GROUPS}",
            file=sys.stderr,
        )
        return 2
    scs = [s for s in scenarios(st) if not only or s.group in only]
    machine = procstats.machine_info()
    header = "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items())
    print(header, flush=True)
    _log(f"settings: duration {st.duration:g} s, reps {st.reps} (median), warm-up {st.warmup:g} s")
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fluxmq-bench-"))
    outcomes: dict[tuple[str, str], Outcome] = {}
    for sc in scs:
        _log(f"== {sc.title}")
        for b in brokers:
            outcomes[(b, sc.name)] = run_scenario(b, sc, st, workdir)
    text = build_table(scs, outcomes, markdown=True)
    fails = failures_text(outcomes)
    print()
    print(text)
    if fails:
        print("\nfailures:\n" + fails)
    print(f"\nbroker logs and configs: {workdir}")
    if a.markdown:
        Path(a.markdown).write_text(
            f"{header}\n\n{text}\n" + (f"\nfailures:\n{fails}\n" if fails else "")
        )
    if a.json_out:
        data = {
            "machine": machine,
            "settings": st.__dict__,
            "results": [
                {
                    "broker": o.broker,
                    "scenario": o.scenario,
                    "values": o.values,
                    "failure": o.failure,
                    "broker_cpu_pct": o.cpu_pct,
                    "broker_rss_kb": o.rss_kb,
                    "tool_cpu_pct": o.tool_cpu_pct,
                    "runs": o.runs,
                }
                for o in outcomes.values()
            ],
        }
        Path(a.json_out).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0
