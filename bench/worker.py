"""A worker process: one epoll loop driving a slice of a run's connections (one role each).

The parent (``bench.runner``) starts workers with ``multiprocessing`` and talks to them through
shared memory: a control array it writes (phase: connect -> go -> stop) and one row of counters
per worker that the worker refreshes every few milliseconds (connected, sent, received, acked,
errors, state). When the worker ends it sends its detailed result (latency histogram, errors by
kind, per-topic sent counts, connection timings, CPU) through a pipe.
"""

from __future__ import annotations

import collections
import os
import resource
import select
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from bench.client import CLOSED, CLOSING, READY, Client, ConnOptions, make_ssl_context
from bench.conn import IdleClient, raise_nofile
from bench.framing import RecvBuffer, Scanner
from bench.pub import Publisher, PubScheduler, PubSpec
from bench.sub import Subscriber, SubSpec

# Control array (parent -> workers).
PHASE = 0
PHASE_CONNECT = 0
PHASE_GO = 1
PHASE_STOP = 2
CTL_SIZE = 4

# Counter row (worker -> parent).
C_CONNECTED = 0  # connections currently established
C_SENT = 1
C_RECV = 2
C_ACKED = 3
C_ERRORS = 4
C_STATE = 5
C_FAILED = 6  # connections that failed to establish
C_INFLIGHT = 7
C_STARTED = 8  # connection attempts made
C_EVER = 9  # connections ever established
ROW = 10

# Worker states.
S_STARTING = 0
S_CONNECTED = 1  # every connection attempt is resolved (established or failed)
S_DONE = 2  # publishers: done sending and settled; others: never set before stop
S_EXITED = 3

HOUSEKEEPING_NS = 10_000_000
PRECISE_SLEEP_S = 0.002


@dataclass
class WorkerTask:
    """One worker's share of a run."""

    wid: int
    role: str  # "pub" | "sub" | "conn"
    opts: ConnOptions
    indices: list[int]
    duration: float  # publishing time after GO (pub role)
    cap: float  # hard limit on the worker's lifetime, seconds
    conn_rate: float = 0.0  # connections/s started by this worker; 0 = as fast as the window allows
    conn_window: int = 32  # connection handshakes in progress at most
    pub: PubSpec | None = None
    sub: SubSpec | None = None
    limits: list[int] = field(default_factory=list)  # per-publisher message limits
    lat_every: int = 1
    run_tag: str = ""


class Worker:
    """The event loop of one worker process."""

    def __init__(self, task: WorkerTask, ctl: Any, counters: Any) -> None:
        self.task = task
        self.opts = task.opts
        self.ctl = ctl
        self.counters = counters
        self.base = task.wid * ROW
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.rbuf = RecvBuffer()
        self.scanner = Scanner(task.opts.version, task.lat_every)
        self.now = time.monotonic_ns()
        self.sent = 0
        self.acked = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.n_errors = 0
        self.connected = 0
        self.ever_connected = 0
        self.failed = 0
        self.started = 0
        self.handshaking: collections.deque[Client] = collections.deque()
        self.first_start_ns = 0
        self.last_ready_ns = 0
        self._ssl_ctx: ssl.SSLContext | None = None
        self.clients: list[Client] = self._make_clients()
        self.pubs = [c for c in self.clients if isinstance(c, Publisher)]
        self.sched = PubScheduler(self.pubs, task.pub.interval_ms) if task.pub else None

    def _make_clients(self) -> list[Client]:
        t = self.task
        prefix = f"{self.opts.prefix}{t.run_tag}"
        out: list[Client] = []
        for k, i in enumerate(t.indices):
            cid = f"{prefix}_{t.role}_{i}"
            if t.role == "pub":
                assert t.pub is not None
                limit = t.limits[k] if t.limits else 0
                out.append(Publisher(self, i, cid, t.pub, limit))
            elif t.role == "sub":
                assert t.sub is not None
                out.append(Subscriber(self, i, cid, t.sub))
            else:
                out.append(IdleClient(self, i, cid))
        return out

    # -- services for clients ---------------------------------------------------------------
    def register(self, c: Client, mask: int) -> None:
        """Add a client's socket to epoll."""
        self.ep.register(c.fd, mask)
        c.mask = mask
        self.by_fd[c.fd] = c

    def modify(self, c: Client, mask: int) -> None:
        """Change a client's event mask."""
        if c.mask != mask and c.fd in self.by_fd:
            self.ep.modify(c.fd, mask)
            c.mask = mask

    def unregister(self, c: Client) -> None:
        """Remove a client's socket from epoll."""
        if self.by_fd.pop(c.fd, None) is not None:
            try:
                self.ep.unregister(c.fd)
            except (OSError, ValueError):
                pass
        c.mask = 0

    def error(self, kind: str, n: int = 1) -> None:
        """Count ``n`` errors of ``kind``."""
        self.errors[kind] += n
        self.n_errors += n

    def client_ready(self, c: Client) -> None:
        """A connection finished its set-up."""
        self.connected += 1
        self.ever_connected += 1
        self.last_ready_ns = c.ready_ns

    def client_failed(self, c: Client, was_ready: bool) -> None:
        """A connection failed (before or after it was established)."""
        if was_ready:
            self.connected -= 1
        else:
            self.failed += 1

    def ssl_context(self) -> ssl.SSLContext:
        """The worker's shared client TLS context."""
        if self._ssl_ctx is None:
            self._ssl_ctx = make_ssl_context(self.opts)
        return self._ssl_ctx

    # -- the loop ------------------------------------------------------------------------------
    def _start_connections(self, now: int) -> None:
        t = self.task
        interval = int(1e9 / t.conn_rate) if t.conn_rate > 0 else 0
        clients = self.clients
        while self.started < len(clients) and len(self.handshaking) < t.conn_window:
            if interval and now < self.first_start_ns + self.started * interval:
                break
            c = clients[self.started]
            if not self.first_start_ns:
                self.first_start_ns = now
            self.started += 1
            c.start(now)
            if c.state != CLOSED:
                self.handshaking.append(c)

    def _reap_handshakes(self, now: int) -> None:
        hs = self.handshaking
        timeout = int(self.opts.connect_timeout * 1e9)
        while hs and (hs[0].state in (READY, CLOSED) or now - hs[0].started_ns > timeout):
            c = hs.popleft()
            if c.state not in (READY, CLOSED):
                c.fail("connect_timeout")
        # Clients further back may be done too; drop them lazily only when at the front.
        if hs and len(hs) >= self.task.conn_window:
            self.handshaking = collections.deque(c for c in hs if c.state not in (READY, CLOSED))

    def _publish_counters(self) -> None:
        c = self.counters
        b = self.base
        c[b + C_CONNECTED] = self.connected
        c[b + C_SENT] = self.sent
        c[b + C_RECV] = self.scanner.publishes
        c[b + C_ACKED] = self.acked
        c[b + C_ERRORS] = self.n_errors
        c[b + C_FAILED] = self.failed
        c[b + C_STARTED] = self.started
        c[b + C_EVER] = self.ever_connected

    def run(self) -> dict[str, Any]:
        """Run until the parent says stop or the cap is reached; return the result."""
        t = self.task
        ctl = self.ctl
        ep = self.ep
        by_fd = self.by_fd
        sched = self.sched
        state = S_STARTING
        deadline = time.monotonic_ns() + int(t.cap * 1e9)
        next_house = 0
        next_ping = 0
        ka_ns = int(self.opts.keepalive * 1e9 / 2)
        ppid = os.getppid()
        while True:
            now = self.now = time.monotonic_ns()
            timeout = 0.01
            if self.started < len(self.clients) or self.handshaking:
                self._reap_handshakes(now)
                self._start_connections(now)
                if self.started < len(self.clients):
                    timeout = 0.003
            elif state == S_STARTING:
                state = S_CONNECTED
                self.counters[self.base + C_STATE] = state
            if sched is not None:
                if sched.going:
                    timeout = min(timeout, sched.tick(now))
                elif ctl[PHASE] == PHASE_GO and state >= S_CONNECTED:
                    sched.go(now, int(t.duration * 1e9))
                    timeout = 0.0
            if now >= next_house:
                next_house = now + HOUSEKEEPING_NS
                self._publish_counters()
                if ctl[PHASE] == PHASE_STOP or now >= deadline:
                    break
                if (
                    sched is not None
                    and sched.going
                    and state == S_CONNECTED
                    and sched.finished()
                    and sched.settled()
                ):
                    state = S_DONE
                    self.counters[self.base + C_STATE] = state
                if self.pubs:
                    self.counters[self.base + C_INFLIGHT] = sum(p.n_inflight for p in self.pubs)
                if now >= next_ping:
                    next_ping = now + 1_000_000_000
                    if os.getppid() != ppid:
                        break  # the parent is gone
                    if ka_ns:
                        for cl in self.clients:
                            cl.ping_if_idle(now, ka_ns)
            if timeout > PRECISE_SLEEP_S:
                events = ep.poll(timeout - 0.001)
            else:
                events = ep.poll(0)
                if not events and timeout > 0:
                    time.sleep(timeout)  # nanosleep: finer than epoll's millisecond timeout
                    continue
            for fd, ev in events:
                cl = by_fd.get(fd)
                if cl is not None:
                    cl.on_event(ev)
        return self._finish()

    def _ws_close_all(self, timeout: float = 2.0) -> None:
        """WebSocket close handshakes: DISCONNECT and a close frame from every established
        client, then poll until each broker answer (or end of stream) or the deadline."""
        closing = [c for c in self.clients if c.begin_ws_close()]
        deadline = time.monotonic() + timeout
        by_fd = self.by_fd
        while closing and time.monotonic() < deadline:
            self.now = time.monotonic_ns()
            for fd, ev in self.ep.poll(0.05):
                cl = by_fd.get(fd)
                if cl is not None:
                    cl.on_event(ev)
            closing = [c for c in closing if c.state == CLOSING]
        if closing:
            self.error("ws_close_timeout", len(closing))

    def _finish(self) -> dict[str, Any]:
        if self.opts.ws:
            self._ws_close_all()
        for c in self.clients:
            c.close(graceful=True)
        self._publish_counters()
        self.counters[self.base + C_STATE] = S_EXITED
        ru = resource.getrusage(resource.RUSAGE_SELF)
        sent_by_topic: dict[str, int] = {}
        for p in self.pubs:
            sent_by_topic[p.topic] = sent_by_topic.get(p.topic, 0) + p.sent
        return {
            "wid": self.task.wid,
            "role": self.task.role,
            "clients": len(self.clients),
            "started": self.started,
            "ever_connected": self.ever_connected,
            "failed": self.failed,
            "errors": dict(self.errors),
            "sent": self.sent,
            "acked": self.acked,
            "inflight_end": sum(p.n_inflight for p in self.pubs),
            "received": self.scanner.publishes,
            "hist": self.scanner.histogram(),
            "stamped": self.scanner.stamped,
            "bad_stamps": self.scanner.bad_stamps,
            "window_stalls": self.sched.window_stalls if self.sched else 0,
            "first_start_ns": self.first_start_ns,
            "last_ready_ns": self.last_ready_ns,
            "sent_by_topic": sent_by_topic,
            "filters": [c.filter for c in self.clients if isinstance(c, Subscriber)],
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "ws_frames": sum(c.wsr.frames for c in self.clients if c.wsr is not None),
        }


def worker_main(task: WorkerTask, ctl: Any, counters: Any, conn: Any) -> None:
    """Process entry point: raise the fd limit, run the worker, send the result to the parent."""
    raise_nofile()
    try:
        result = Worker(task, ctl, counters).run()
    except BaseException as e:  # report, never hang the parent
        counters[task.wid * ROW + C_STATE] = S_EXITED
        conn.send({"wid": task.wid, "role": task.role, "crash": f"{e.__class__.__name__}: {e}"})
        raise
    conn.send(result)
    conn.close()
