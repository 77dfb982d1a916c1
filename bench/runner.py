"""The parent side of a run: start worker processes, sequence the phases, print rates, summarise.

Phases: every worker connects its clients (subscribers also subscribe) -> the parent samples
counters and CPU and says GO -> publishers publish for the duration or up to their limit ->
the measurement window closes (second sample) -> the parent waits for deliveries still on the
way (drain) -> STOP; workers disconnect and send their results. Rates are taken over the
measurement window; totals (sent, received, lost) after the drain.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench import procstats, report, topics
from bench.client import ConnOptions
from bench.conn import DEFAULT_PER_PROCESS, raise_nofile, split
from bench.pub import PubSpec
from bench.sub import SubSpec
from bench.worker import (
    C_CONNECTED,
    C_ERRORS,
    C_EVER,
    C_FAILED,
    C_RECV,
    C_SENT,
    C_STATE,
    CTL_SIZE,
    PHASE,
    PHASE_GO,
    PHASE_STOP,
    ROW,
    S_CONNECTED,
    S_DONE,
    WorkerTask,
    worker_main,
)

HARD_CAP_S = 60.0  # default bound on the measured phase of any run


@dataclass
class RunPlan:
    """Everything one run needs."""

    opts: ConnOptions
    pub: PubSpec | None = None
    sub: SubSpec | None = None
    conns: int = 0  # idle connections (the `conn` command)
    duration: float = 10.0  # publishing / holding time, seconds
    cap: float = HARD_CAP_S
    conn_rate: float = 0.0  # total connections/s; 0 = as fast as the window allows
    conn_window: int = 64  # total handshakes in progress at once
    connect_timeout: float = 60.0  # for the whole connection phase
    pub_procs: int = 0  # 0 = automatic
    sub_procs: int = 0
    conn_procs: int = 0
    per_process: int = DEFAULT_PER_PROCESS
    lat_every: int = 1
    drain_idle: float = 0.5  # stop waiting for deliveries after this long without one
    drain_max: float = 10.0
    broker_pid: int | None = None
    quiet: bool = False
    label: str = ""
    run_tag: str = ""  # client ids' tag; "" = a new one per run (a fixed one resumes sessions)
    extra: dict[str, Any] = field(default_factory=dict)


class RunError(RuntimeError):
    """A run could not be carried out (workers did not start, nothing connected...)."""


def _procs(n: int, wanted: int, per_process: int) -> int:
    if n <= 0:
        return 0
    return max(1, min(n, wanted or math.ceil(n / per_process)))


def build_tasks(plan: RunPlan) -> list[WorkerTask]:
    """Split the plan's clients into worker tasks (subscribers first)."""
    roles: list[tuple[str, int, int]] = []
    if plan.sub is not None and plan.sub.count:
        roles.append(
            ("sub", plan.sub.count, _procs(plan.sub.count, plan.sub_procs, plan.per_process))
        )
    if plan.pub is not None and plan.pub.count:
        roles.append(
            ("pub", plan.pub.count, _procs(plan.pub.count, plan.pub_procs, plan.per_process))
        )
    if plan.conns:
        roles.append(("conn", plan.conns, _procs(plan.conns, plan.conn_procs, plan.per_process)))
    nworkers = sum(r[2] for r in roles)
    if not nworkers:
        raise RunError("nothing to run: no publishers, subscribers or connections")
    tag = plan.run_tag or f"{os.getpid() % 100000}x{int(time.time() * 1000) % 1000000}"
    per_rate = plan.conn_rate / nworkers if plan.conn_rate else 0.0
    per_window = max(1, plan.conn_window // nworkers)
    self_cap = plan.connect_timeout + min(plan.duration, plan.cap) + plan.drain_max + 15
    tasks: list[WorkerTask] = []
    for role, count, procs in roles:
        limits: list[int] = []
        if role == "pub" and plan.pub is not None and plan.pub.limit:
            limits = split(plan.pub.limit, count)
            if any(x == 0 for x in limits):
                raise RunError("--limit must be at least the number of publishers")
        start = 1
        for share in split(count, procs):
            idx = list(range(start, start + share))
            tasks.append(
                WorkerTask(
                    wid=len(tasks),
                    role=role,
                    opts=plan.opts,
                    indices=idx,
                    duration=min(plan.duration, plan.cap),
                    cap=self_cap,
                    conn_rate=per_rate,
                    conn_window=per_window,
                    pub=plan.pub if role == "pub" else None,
                    sub=plan.sub if role == "sub" else None,
                    limits=limits[start - 1 : start - 1 + share] if limits else [],
                    lat_every=plan.lat_every,
                    run_tag=tag,
                )
            )
            start += share
    return tasks


class _Counters:
    """Sums over the workers' shared counter rows."""

    def __init__(self, arr: Any, n: int) -> None:
        self.arr = arr
        self.n = n

    def total(
        self, col: int, role: str | None = None, tasks: list[WorkerTask] | None = None
    ) -> int:
        arr = self.arr
        if role is None or tasks is None:
            return sum(arr[i * ROW + col] for i in range(self.n))
        return sum(arr[t.wid * ROW + col] for t in tasks if t.role == role)

    def states(self) -> list[int]:
        return [self.arr[i * ROW + C_STATE] for i in range(self.n)]


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        s = procstats.sample(pid)
        if s is not None:
            total += s.cpu_s
    return total


def run(plan: RunPlan) -> dict[str, Any]:
    """Carry out one run and return its summary (see ``summarise``)."""
    raise_nofile()
    tasks = build_tasks(plan)
    ctx = mp.get_context("fork")
    ctl = ctx.RawArray("q", CTL_SIZE)
    arr = ctx.RawArray("q", ROW * len(tasks))
    counters = _Counters(arr, len(tasks))
    broker_pid = plan.broker_pid or procstats.find_pid_by_port(plan.opts.port)
    procs: list[Any] = []
    pipes: list[Any] = []
    log = (lambda _s: None) if plan.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    self_ru0 = resource.getrusage(resource.RUSAGE_SELF)
    b_start = procstats.sample(broker_pid) if broker_pid else None
    t_start = time.monotonic()
    try:
        for t in tasks:
            r, wconn = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_main, args=(t, ctl, arr, wconn), daemon=True)
            p.start()
            wconn.close()
            procs.append(p)
            pipes.append(r)
        pids = [p.pid for p in procs]
        ticker = _Ticker(counters, log, t_start)

        # Phase 1: connections.
        deadline = t_start + plan.connect_timeout
        while time.monotonic() < deadline:
            if all(s >= S_CONNECTED for s in counters.states()):
                break
            if any(not p.is_alive() for p in procs):
                break
            time.sleep(0.01)
            ticker.maybe_tick()
        t_connected = time.monotonic()
        connect_phase_timed_out = not all(s >= S_CONNECTED for s in counters.states())

        # Phase 2: GO and the measurement window.
        max_rss = 0
        b0 = procstats.sample(broker_pid) if broker_pid else None
        tool0 = _cpu(pids)
        sent0 = counters.total(C_SENT)
        recv0 = counters.total(C_RECV)
        t0 = time.monotonic()
        ctl[PHASE] = PHASE_GO
        has_pub = plan.pub is not None and plan.pub.count > 0
        window = min(plan.duration, plan.cap)
        sub_limit = plan.sub.limit if plan.sub is not None else 0
        pub_tasks = [t for t in tasks if t.role == "pub"]
        while True:
            time.sleep(0.01)
            now = time.monotonic()
            if ticker.maybe_tick() and broker_pid:
                s = procstats.sample(broker_pid)
                max_rss = max(max_rss, s.rss_kb if s else 0)
            if has_pub:
                st = [arr[t.wid * ROW + C_STATE] for t in pub_tasks]
                if all(x >= S_DONE for x in st):
                    break
                # Publishers stop at the deadline by themselves; give stragglers a moment.
                if now - t0 > window + 0.1:
                    break
            elif now - t0 >= window:
                break
            if sub_limit and counters.total(C_RECV) >= sub_limit:
                break
            if all(not p.is_alive() for p in procs):
                break
        t1 = time.monotonic()
        sent1 = counters.total(C_SENT)
        recv1 = counters.total(C_RECV)
        tool1 = _cpu(pids)
        b1 = procstats.sample(broker_pid) if broker_pid else None

        # Phase 3: drain deliveries still under way.
        if has_pub and plan.sub is not None and plan.sub.count:
            drain_end = time.monotonic() + plan.drain_max
            last = counters.total(C_RECV)
            last_change = time.monotonic()
            while time.monotonic() < drain_end:
                time.sleep(0.02)
                ticker.maybe_tick()
                cur = counters.total(C_RECV)
                pubs_done = all(arr[t.wid * ROW + C_STATE] >= S_DONE for t in pub_tasks)
                if cur != last:
                    last, last_change = cur, time.monotonic()
                elif pubs_done and time.monotonic() - last_change >= plan.drain_idle:
                    break
        elif has_pub:
            drain_end = time.monotonic() + plan.drain_max
            while time.monotonic() < drain_end and not all(
                arr[t.wid * ROW + C_STATE] >= S_DONE for t in pub_tasks
            ):
                time.sleep(0.02)
        b_end = procstats.sample(broker_pid) if broker_pid else None
        tool_end = _cpu(pids)
    finally:
        ctl[PHASE] = PHASE_STOP
    results = _collect(procs, pipes, arr)
    self_ru1 = resource.getrusage(resource.RUSAGE_SELF)
    parent_cpu = (self_ru1.ru_utime + self_ru1.ru_stime) - (self_ru0.ru_utime + self_ru0.ru_stime)
    return summarise(
        plan,
        results,
        window_s=t1 - t0,
        sent_window=sent1 - sent0,
        recv_window=recv1 - recv0,
        connect_s=t_connected - t_start,
        connect_timed_out=connect_phase_timed_out,
        tool_cpu_window=tool1 - tool0,
        tool_cpu_total=tool_end + parent_cpu,
        broker_pid=broker_pid,
        broker=(b_start, b0, b1, b_end, max_rss),
    )


class _Ticker:
    """Prints the rate line once a second."""

    def __init__(self, counters: _Counters, log: Any, t_start: float) -> None:
        self.c = counters
        self.log = log
        self.t_start = t_start
        self.t_last = t_start
        self.last = (0, 0, 0)

    def maybe_tick(self) -> bool:
        now = time.monotonic()
        dt = now - self.t_last
        if dt < 1.0:
            return False
        c = self.c
        cur = (c.total(C_SENT), c.total(C_RECV), c.total(C_EVER))
        rates = [(a - b) / dt for a, b in zip(cur, self.last, strict=True)]
        self.log(
            report.rate_line(
                now - self.t_start,
                rates[0],
                rates[1],
                rates[2],
                c.total(C_CONNECTED),
                c.total(C_ERRORS) + c.total(C_FAILED),
            )
        )
        self.last = cur
        self.t_last = now
        return True


def _collect(procs: list[Any], pipes: list[Any], arr: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    for p, r in zip(procs, pipes, strict=True):
        res: dict[str, Any] | None = None
        left = max(0.1, deadline - time.monotonic())
        try:
            if r.poll(left):
                res = r.recv()
        except (EOFError, OSError):
            res = None
        if res is None:
            res = {"crash": "no result from worker (timed out or died)"}
        results.append(res)
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(1)
    return results


def _cpu_by_role(results: list[dict[str, Any]]) -> dict[str, float]:
    """Each role's worker CPU seconds over the workers' whole lives (connect to close)."""
    out: dict[str, float] = {}
    for r in results:
        out[r["role"]] = round(out.get(r["role"], 0.0) + r.get("cpu_s", 0.0), 2)
    return out


def summarise(
    plan: RunPlan,
    results: list[dict[str, Any]],
    *,
    window_s: float,
    sent_window: int,
    recv_window: int,
    connect_s: float,
    connect_timed_out: bool,
    tool_cpu_window: float,
    tool_cpu_total: float,
    broker_pid: int | None,
    broker: tuple[Any, Any, Any, Any, int],
) -> dict[str, Any]:
    """The JSON summary of a run."""
    ok = [r for r in results if "crash" not in r]
    crashes = [r["crash"] for r in results if "crash" in r]
    errors: dict[str, int] = {}
    for r in ok:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    for c in crashes:
        errors[f"worker_crash: {c}"] = errors.get(f"worker_crash: {c}", 0) + 1
    sent = sum(r["sent"] for r in ok)
    received = sum(r["received"] for r in ok)
    acked = sum(r["acked"] for r in ok)
    hist = report.merge_hist(r["hist"] for r in ok)
    lat = report.percentiles(hist)
    stamped = sum(r["stamped"] for r in ok)
    starts = [r["first_start_ns"] for r in ok if r["first_start_ns"]]
    readies = [r["last_ready_ns"] for r in ok if r["last_ready_ns"]]
    target = sum(r["clients"] for r in ok)
    connected = sum(r["ever_connected"] for r in ok)
    failed = sum(r["failed"] for r in ok)
    conn_span = (max(readies) - min(starts)) / 1e9 if starts and readies else 0.0
    expected = None
    lost = None
    if plan.pub is not None and plan.sub is not None:
        sent_by_topic: dict[str, int] = {}
        for r in ok:
            for t, n in r["sent_by_topic"].items():
                sent_by_topic[t] = sent_by_topic.get(t, 0) + n
        filters = [f for r in ok for f in r["filters"]]
        expected = topics.expected_deliveries(sent_by_topic, filters)
        lost = expected - received
    qos = None
    if plan.pub is not None:
        qos = plan.pub.qos if plan.sub is None else min(plan.pub.qos, plan.sub.qos)
    elif plan.sub is not None:
        qos = plan.sub.qos
    b_start, b0, b1, b_end, max_rss = broker
    broker_info: dict[str, Any] = {"pid": broker_pid}
    if b0 is not None and b1 is not None:
        broker_info["cpu_s"] = round(b1.cpu_s - b0.cpu_s, 2)
        broker_info["cpu_pct"] = (
            round(100 * (b1.cpu_s - b0.cpu_s) / window_s, 1) if window_s else None
        )
        broker_info["rss_kb"] = b1.rss_kb
        broker_info["rss_max_kb"] = max(max_rss, b1.rss_kb, b_end.rss_kb if b_end else 0)
    if b_start is not None:
        broker_info["rss_before_kb"] = b_start.rss_kb
    if b_start is not None and b_end is not None:
        broker_info["cpu_s_total"] = round(b_end.cpu_s - b_start.cpu_s, 2)
    out: dict[str, Any] = {
        "label": plan.label,
        "window_s": round(window_s, 3),
        "sent": sent,
        "received": received,
        "acked": acked,
        "sent_per_s": round(sent_window / window_s) if window_s else 0,
        "recv_per_s": round(recv_window / window_s) if window_s else 0,
        "expected": expected,
        "lost": lost,
        "lost_note": (
            None
            if lost is None
            else "sent-but-not-received (QoS > 0: a real loss)"
            if qos
            else "QoS 0 difference expected - received (dropping is allowed at QoS 0)"
        ),
        "qos": qos,
        "latency_us": lat,
        "latency_sampling": (
            "off"
            if plan.lat_every == 0
            else "every message"
            if plan.lat_every == 1
            else f"every {plan.lat_every}th message"
        ),
        "latency_stamped": stamped,
        "connections": {
            "target": target,
            "connected": connected,
            "failed": failed,
            "conn_per_s": round(connected / conn_span) if conn_span > 0 else None,
            "connect_phase_s": round(connect_s, 3),
            "connect_phase_timed_out": connect_timed_out,
        },
        "errors": {"total": sum(errors.values()), "by_kind": errors},
        "inflight_unacked_at_end": sum(r.get("inflight_end", 0) for r in ok),
        "window_stalls": sum(r.get("window_stalls", 0) for r in ok),
        "tool_cpu_s": round(tool_cpu_window, 2),
        "tool_cpu_pct": round(100 * tool_cpu_window / window_s, 1) if window_s else None,
        "tool_cpu_s_total": round(tool_cpu_total, 2),
        "tool_cpu_s_by_role": _cpu_by_role(ok),
        "ws_frames_received": sum(r.get("ws_frames", 0) for r in ok) if plan.opts.ws else None,
        "broker": broker_info,
        "workers": len(results),
    }
    out.update(plan.extra)
    return out
