"""Command line of the load tool, shaped like emqtt-bench.

    python -m bench conn    -c 1000 [--conn-rate 500] [--duration 10]
    python -m bench sub     -c 1 -t 'bench/#' -q 1 [-L 100000] [--duration 10]
    python -m bench pub     -c 4 -t 'bench/%i' -q 0 -s 16 [-I 0] [-L N] [-F 100]
    python -m bench pubsub  (pub and sub options together; reports loss and latency)
    python -m bench compare [--brokers mosquitto,fluxmq] [--only fanin,...] [--quick]

Rate lines go to stderr once a second; the JSON summary goes to stdout (and ``--json FILE``).
Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import report
from bench.client import ConnOptions
from bench.pub import PubSpec
from bench.runner import HARD_CAP_S, RunError, RunPlan, run
from bench.sub import SubSpec
from bench.target import TargetError, resolve_loopback


class UsageError(ValueError):
    """Bad option combination."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-h", "--host", default="127.0.0.1", help="broker host (loopback only)")
    p.add_argument("-p", "--port", type=int, default=1883, help="broker port (1883)")
    p.add_argument(
        "-V",
        "--version",
        type=int,
        default=4,
        choices=(3, 4, 5),
        help="MQTT level: 4 = 3.1.1, 5 = 5.0",
    )
    p.add_argument("-c", "--count", type=int, default=1, help="number of clients")
    p.add_argument("-C", "--clean", type=_bool, default=True, help="clean start (true)")
    p.add_argument("-k", "--keepalive", type=int, default=300, help="keep-alive seconds (300)")
    p.add_argument("--prefix", default="bench", help="client id prefix")
    p.add_argument("-u", "--username", default=None)
    p.add_argument("-P", "--password", default=None)
    p.add_argument("-d", "--duration", type=float, default=None, help="run time, s (10; cap 60)")
    p.add_argument("--cap", type=float, default=HARD_CAP_S, help="hard bound on any run, s (60)")
    p.add_argument("-R", "--conn-rate", type=float, default=0.0, help="connections/s (0 = fast)")
    p.add_argument("--conn-window", type=int, default=64, help="handshakes in progress at most")
    p.add_argument("--procs", type=int, default=0, help="worker processes per role (auto)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--cafile", default=None, help="CA certificates for --tls")
    p.add_argument("--insecure", action="store_true", help="TLS without certificate checks")
    p.add_argument("--ws", action="store_true", help="MQTT over WebSocket (with --tls: wss)")
    p.add_argument("--ws-path", default="/mqtt", help="WebSocket URL path (/mqtt)")
    p.add_argument("--broker-pid", type=int, default=None, help="broker pid for CPU/RSS (by port)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the summary here")
    p.add_argument("-q", "--qos", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--quiet", action="store_true", help="no per-second rate lines")


def _pub_opts(p: argparse.ArgumentParser, topic_default: str) -> None:
    p.add_argument("-t", "--topic", default=topic_default, help="topic; %%i = client index")
    p.add_argument("-s", "--size", type=int, default=256, help="payload bytes (>= 8 for latency)")
    p.add_argument(
        "-I",
        "--interval",
        type=float,
        default=0.0,
        help="ms between messages per publisher (0 = flat out)",
    )
    p.add_argument(
        "-L", "--limit", type=int, default=0, help="messages in total (0 = duration only)"
    )
    p.add_argument("-F", "--inflight", type=int, default=100, help="QoS 1/2 window per publisher")
    p.add_argument("-r", "--retain", action="store_true")
    p.add_argument(
        "--lat-every", type=int, default=1, help="read the timestamp of every n-th message"
    )


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {s}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    subs = top.add_subparsers(dest="cmd", required=True)
    conn = subs.add_parser("conn", add_help=False, help="open N connections and hold them")
    _common(conn)
    sub = subs.add_parser("sub", add_help=False, help="N subscribers")
    _common(sub)
    sub.add_argument("-t", "--topic", default="bench/#", help="filter; %%i = client index")
    sub.add_argument("-L", "--limit", type=int, default=0, help="stop after this many messages")
    sub.add_argument("--lat-every", type=int, default=1)
    pub = subs.add_parser("pub", add_help=False, help="N publishers")
    _common(pub)
    _pub_opts(pub, "bench/%i")
    ps = subs.add_parser("pubsub", add_help=False, help="publishers and subscribers in one run")
    _common(ps)
    _pub_opts(ps, "bench/%i")
    ps.add_argument("--sub-count", type=int, default=1, help="subscribers")
    ps.add_argument("--sub-topic", default="bench/#", help="subscriber filter; %%i = index")
    ps.add_argument("--sub-qos", type=int, default=None, choices=(0, 1, 2), help="(= -q)")
    rl = subs.add_parser("relay", help="a QoS 0 relay to measure the tool's own ceiling")
    rl.add_argument("--host", default="127.0.0.1")
    rl.add_argument("--port", type=int, default=1883)
    rl.add_argument("-d", "--duration", type=float, default=60.0)
    rl.add_argument("--ws", action="store_true", help="a WebSocket relay (any path)")
    per = subs.add_parser("persist", help="persistent QoS 1: Mosquitto vs FluxMQ storage modes")
    from bench import persist

    persist.add_arguments(per)
    qb = subs.add_parser("queue", help="durable queues: FluxMQ vs RabbitMQ and NATS JetStream")
    from bench import queue as queue_bench

    queue_bench.add_arguments(qb)
    cmp = subs.add_parser("compare", help="Mosquitto vs FluxMQ, side by side")
    from bench import compare

    compare.add_arguments(cmp)
    return top


def conn_options(a: argparse.Namespace) -> ConnOptions:
    """Validate the connection options (loopback target, protocol level, transport)."""
    if not a.ws_path.startswith("/"):
        raise UsageError("--ws-path must start with /")
    if a.version == 3:
        raise UsageError("MQTT 3.1 (-V 3) is not supported; use -V 4 (3.1.1) or -V 5")
    if a.cafile and not a.tls:
        raise UsageError("--cafile needs --tls")
    host = resolve_loopback(a.host, a.port)
    return ConnOptions(
        host=host,
        port=a.port,
        version=a.version,
        clean=a.clean,
        keepalive=a.keepalive,
        prefix=a.prefix,
        username=a.username,
        password=a.password,
        tls=a.tls,
        cafile=a.cafile,
        insecure=a.insecure,
        ws=a.ws,
        ws_path=a.ws_path,
    )


def plan_from_args(a: argparse.Namespace) -> RunPlan:
    """Turn parsed ``conn``/``sub``/``pub``/``pubsub`` options into a run plan."""
    opts = conn_options(a)
    if a.count < 1:
        raise UsageError("--count must be >= 1")
    cap = a.cap
    if cap <= 0:
        raise UsageError("--cap must be > 0")
    duration = a.duration
    if duration is None:
        duration = cap if getattr(a, "limit", 0) else min(10.0, cap)
    if duration <= 0:
        raise UsageError("--duration must be > 0")
    if duration > cap:
        raise UsageError(f"--duration {duration} exceeds the cap of {cap} s (raise --cap)")
    plan = RunPlan(
        opts=opts,
        duration=duration,
        cap=cap,
        conn_rate=a.conn_rate,
        conn_window=a.conn_window,
        broker_pid=a.broker_pid,
        quiet=a.quiet,
        label=a.cmd,
    )
    if a.cmd == "conn":
        plan.conns = a.count
        plan.conn_procs = a.procs
    elif a.cmd == "sub":
        plan.sub = SubSpec(count=a.count, topic=a.topic, qos=a.qos, limit=a.limit)
        plan.sub_procs = a.procs
        plan.lat_every = a.lat_every
    else:
        if a.size < 0:
            raise UsageError("--size must be >= 0")
        if a.inflight < 1 or a.inflight > 65535:
            raise UsageError("--inflight must be within 1..65535")
        if a.interval < 0:
            raise UsageError("--interval must be >= 0")
        plan.pub = PubSpec(
            count=a.count,
            topic=a.topic,
            qos=a.qos,
            size=a.size,
            interval_ms=a.interval,
            limit=a.limit,
            inflight=a.inflight,
            retain=a.retain,
        )
        plan.pub_procs = a.procs
        plan.lat_every = a.lat_every
        if a.cmd == "pubsub":
            sq = a.qos if a.sub_qos is None else a.sub_qos
            plan.sub = SubSpec(count=a.sub_count, topic=a.sub_topic, qos=sq)
            plan.sub_procs = a.procs
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.cmd == "persist":
        from bench import persist

        return persist.main(a)
    if a.cmd == "queue":
        from bench import queue as queue_bench

        return queue_bench.main(a)
    if a.cmd == "compare":
        from bench import compare

        return compare.main(a)
    if a.cmd == "relay":
        from bench import relay

        try:
            resolve_loopback(a.host, a.port)
        except TargetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return relay.main(a.host, a.port, min(a.duration, 3600.0), a.ws)
    try:
        plan = plan_from_args(a)
        summary = run(plan)
    except (TargetError, UsageError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = report.to_json(summary)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    if not summary["connections"]["connected"]:
        print(f"error: no connection established: {summary['errors']['by_kind']}", file=sys.stderr)
        return 1
    return 0
