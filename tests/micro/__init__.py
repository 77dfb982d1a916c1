"""Micro-benchmarks of the Cython core (pytest-benchmark), run by `make microbench`.

Every test here is marked `benchmark`, which the normal run deselects (pyproject addopts).
Rates are reported in each benchmark's `extra_info` (messages, matches or deliveries per
second) and printed in the summary table as operations per second of one round.
"""

from __future__ import annotations

from collections.abc import Callable

from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.channel import ChannelCore, Limits
from fluxmq._speedups.dispatch import Dispatcher
from fluxmq._speedups.session import Session
from pytest_benchmark.fixture import BenchmarkFixture

ST_CONNECTED = 2


class ManualLoop:
    """The loop surface a Flusher needs (call_soon); `turn()` runs what was scheduled, like one
    event-loop iteration, so a benchmark round ends with its writes done."""

    def __init__(self) -> None:
        self.ready: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        self.ready.append((callback, args))

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for callback, args in ready:
            callback(*args)


class NullTransport:
    """A transport that accepts and counts bytes (a client that reads instantly)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def online_session(
    dispatcher: Dispatcher, flusher: Flusher, client_id: str, version: int = 4
) -> tuple[Session, NullTransport]:
    """A session attached to a connected ChannelCore writing to a NullTransport."""
    session = Session(client_id)
    transport = NullTransport()
    ch = ChannelCore(dispatcher, Limits(), flusher)
    ch.connection_made(transport)
    ch.state = ST_CONNECTED
    ch.version = version
    ch.decoder.version = version
    ch.client_id = client_id
    ch.session = session
    session.resume(ch)
    return session, transport


def rate(benchmark: BenchmarkFixture, per_round: int, unit: str) -> float:
    """Record `per_round / median round time` as `<unit>_per_s` in the benchmark's extra_info."""
    per_s = per_round / benchmark.stats.stats.median
    benchmark.extra_info[f"{unit}_per_s"] = round(per_s)
    return per_s
