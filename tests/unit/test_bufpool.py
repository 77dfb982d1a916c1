"""Output buffers: WriteBuffer growth, the buffer pool, OutBuffer and the per-turn Flusher.

WriteBuffer has no Python-level writer, so it is exercised the way the broker does: through the
codec's encoders (`encode`, which builds a WriteBuffer and takes its bytes) and through a real
ChannelCore's OutBuffer (`ChannelCore.send`). The Flusher runs on a real asyncio event loop and
writes to a RecordingTransport, which records every `write()` call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fluxmq._speedups.bufpool import Flusher, WriteBuffer, pool_stats
from fluxmq._speedups.channel import ChannelCore
from fluxmq._speedups.codec import Pingresp, Publish, Suback, encode
from fluxmq._speedups.dispatch import Dispatcher
from fluxmq._speedups.session import Session

from tests.unit import V311, RecordingTransport, connected_channel, frame, mstr, run_one_turn, vbi

CHUNK = 16384  # the pooled buffer size (bufpool.pyx)
POOL_MAX = 256  # pooled buffers kept at most


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private event loop driving the Flusher."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def channel(
    loop: asyncio.AbstractEventLoop, flusher: Flusher, name: str = "c", fail: bool = False
) -> tuple[ChannelCore, RecordingTransport]:
    """A connected ChannelCore (3.1.1) whose OutBuffer writes to a RecordingTransport."""
    return connected_channel(
        Dispatcher(), Session(name), flusher, V311, RecordingTransport(fail=fail)
    )


def pooled() -> int:
    """How many buffers the pool holds now."""
    count, size = pool_stats()
    assert size == count * CHUNK
    return count


class CountingLoop:
    """The one loop method a Flusher uses (call_soon), counted, delegating to a real loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.scheduled = 0

    def call_soon(self, callback: object, *args: object) -> asyncio.Handle:
        self.scheduled += 1
        return self.loop.call_soon(callback, *args)


def publish_of_size(total: int) -> tuple[Publish, bytes]:
    """A QoS 0 PUBLISH whose encoding is exactly `total` bytes, and those bytes (reference)."""
    for k in (1, 2, 3, 4):  # bytes of the Remaining Length
        rl = total - 1 - k
        if rl >= 3 and len(vbi(rl)) == k:
            payload = bytes(i % 251 for i in range(rl - 3))  # topic "t" takes 3 bytes
            wire = frame(0x30, mstr("t") + payload)
            assert len(wire) == total
            return Publish("t", payload), wire
    raise ValueError(total)


# ----------------------------------------------------------------------------------------------
# WriteBuffer and the pool


def test_empty_write_buffer() -> None:
    """A new WriteBuffer holds nothing and takes no storage from the pool."""
    before = pooled()
    b = WriteBuffer()
    assert len(b) == 0 and b.getvalue() == b""
    del b
    assert pooled() == before


@pytest.mark.parametrize(
    "total",
    [2, CHUNK - 5, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7, 5 * CHUNK, 1 << 20],
    ids=lambda n: f"{n}B",
)
def test_encoding_across_the_chunk_size(total: int) -> None:
    """Packets smaller than, equal to and larger than the pooled chunk (many times over) are
    encoded byte for byte; the pool is the same afterwards (a chunk taken is given back, a
    larger private block is freed, not pooled)."""
    pkt, wire = publish_of_size(total) if total > 2 else (Pingresp(), b"\xd0\x00")
    encode(Pingresp(), V311)  # make sure the pool holds at least one buffer
    before = pooled()
    assert encode(pkt, V311) == wire
    assert pooled() == before


def test_small_encodes_reuse_one_pooled_buffer() -> None:
    """Encoding many small packets one after the other reuses pooled storage: the pool size
    does not change (no malloc/free per packet)."""
    encode(Pingresp(), V311)
    before = pooled()
    assert before >= 1
    for i in range(500):
        encode(Suback(i + 1, [0, 1, 2]), V311)
        assert pooled() == before


def test_out_buffer_grows_from_a_pooled_chunk(loop: asyncio.AbstractEventLoop) -> None:
    """An OutBuffer that starts in a pooled chunk and outgrows it keeps its content (copied into
    a private block), gives the chunk back to the pool at once, and frees the large block
    after the flush: the pool ends where it started."""
    fl = Flusher(loop)
    ch, tr = channel(loop, fl)
    encode(Pingresp(), V311)
    base = pooled()
    small, small_wire = publish_of_size(100)
    big, big_wire = publish_of_size(3 * CHUNK + 11)
    ch.send(small)
    assert pooled() == base - 1  # the chunk is in use
    ch.send(big)
    assert pooled() == base  # grown: the chunk went back
    for _ in range(10):  # keep growing (realloc path)
        ch.send(big)
    assert ch.pending_output == len(small_wire) + 11 * len(big_wire)
    run_one_turn(loop)
    assert tr.writes == [small_wire + big_wire * 11]
    assert pooled() == base and ch.pending_output == 0


def test_buffers_return_to_the_pool_after_flush(loop: asyncio.AbstractEventLoop) -> None:
    """Every connection with pending output holds one pooled chunk until its flush; then the
    chunk goes back, so idle connections hold no buffer."""
    fl = Flusher(loop)
    channels = [channel(loop, fl, f"c{i}") for i in range(12)]
    encode(Pingresp(), V311)
    base = pooled()
    for ch, _ in channels:
        ch.send(Pingresp())
    assert pooled() == max(0, base - 12)
    run_one_turn(loop)
    assert pooled() == max(base, 12)
    assert all(tr.writes == [b"\xd0\x00"] for _, tr in channels)


def test_pool_is_bounded(loop: asyncio.AbstractEventLoop) -> None:
    """The pool keeps at most POOL_MAX buffers (4 MiB); the rest are freed after the flush."""
    fl = Flusher(loop)
    channels = [channel(loop, fl, f"c{i}") for i in range(POOL_MAX + 40)]
    for ch, _ in channels:
        ch.send(Pingresp())
    run_one_turn(loop)
    assert pooled() == POOL_MAX
    assert pool_stats() == (POOL_MAX, POOL_MAX * CHUNK)


# ----------------------------------------------------------------------------------------------
# Flusher: one write per connection per loop turn


def test_one_write_per_loop_turn(loop: asyncio.AbstractEventLoop) -> None:
    """Packets queued during one loop turn leave with a single transport.write() at the end of
    the turn, in order; nothing is written before the turn ends."""
    fl = Flusher(loop)
    ch, tr = channel(loop, fl)
    packets = [Publish("a", b"1"), Pingresp(), Suback(3, [1]), Publish("b", b"2" * 5000)]
    for p in packets:
        ch.send(p)
    assert tr.writes == []
    run_one_turn(loop)
    assert tr.writes == [b"".join(encode(p, V311) for p in packets)]
    ch.send(Pingresp())
    ch.send(Pingresp())
    run_one_turn(loop)
    assert tr.writes[1:] == [b"\xd0\x00\xd0\x00"]
    run_one_turn(loop)  # an idle turn writes nothing
    assert len(tr.writes) == 2
    assert ch.out.bytes_out == len(tr.data)


def test_each_connection_written_once_in_the_same_turn(loop: asyncio.AbstractEventLoop) -> None:
    """With several dirty connections, one flush at the end of the turn writes each of them
    once (one scheduled callback for all)."""
    counting = CountingLoop(loop)
    fl = Flusher(counting)
    pairs = [channel(loop, fl, f"c{i}") for i in range(5)]
    for n, (ch, _) in enumerate(pairs):
        for _ in range(n + 1):
            ch.send(Pingresp())
    assert counting.scheduled == 1  # one flush callback for all five connections
    run_one_turn(loop)
    assert [tr.writes for _, tr in pairs] == [[b"\xd0\x00" * (n + 1)] for n in range(5)]
    pairs[0][0].send(Pingresp())
    pairs[1][0].send(Pingresp())
    assert counting.scheduled == 2  # the next turn schedules its own
    run_one_turn(loop)
    assert pairs[1][1].writes[-1] == b"\xd0\x00" and len(pairs[2][1].writes) == 1


def test_paused_transport_keeps_output(loop: asyncio.AbstractEventLoop) -> None:
    """While the transport is paused (pause_writing), output accumulates and nothing is written;
    resume_writing() schedules one write of everything."""
    fl = Flusher(loop)
    ch, tr = channel(loop, fl)
    ch.pause_writing()
    ch.send(Pingresp())
    run_one_turn(loop)
    ch.send(Suback(1, [0]))
    run_one_turn(loop)
    assert tr.writes == [] and ch.pending_output == 2 + 5
    ch.resume_writing()
    run_one_turn(loop)
    assert tr.writes == [b"\xd0\x00" + encode(Suback(1, [0]), V311)]


def test_a_failing_transport_does_not_stop_the_others(loop: asyncio.AbstractEventLoop) -> None:
    """A transport whose write() raises is marked closed and its output dropped; the other
    connections of the same turn are still written, and later output for the dead one is
    discarded."""
    fl = Flusher(loop)
    good1, t1 = channel(loop, fl, "g1")
    bad, tb = channel(loop, fl, "bad", fail=True)
    good2, t2 = channel(loop, fl, "g2")
    for ch in (good1, bad, good2):
        ch.send(Pingresp())
    run_one_turn(loop)
    assert t1.writes == [b"\xd0\x00"] and t2.writes == [b"\xd0\x00"] and tb.writes == []
    assert bad.out.closed and bad.pending_output == 0
    assert bad.send(Pingresp()) == 0
    good1.send(Pingresp())
    run_one_turn(loop)
    assert t1.writes == [b"\xd0\x00"] * 2


def test_barrier_sees_each_turn_and_can_hold_output(loop: asyncio.AbstractEventLoop) -> None:
    """Storage's barrier runs once per turn with the dirty buffers and returns those to write
    now; a held snapshot (take_held) is written later by write_held, in order."""
    fl = Flusher(loop)
    ch, tr = channel(loop, fl)
    held: list[bytes] = []
    calls: list[int] = []

    def barrier(dirty: list) -> list:
        calls.append(len(dirty))
        held.extend(b.take_held() for b in dirty)
        return []

    fl.barrier = barrier
    ch.send(Pingresp())
    ch.send(Pingresp())
    run_one_turn(loop)
    assert calls == [1] and tr.writes == [] and held == [b"\xd0\x00" * 2]
    assert ch.out.held == 1
    fl.request()  # storage work without output: the barrier still runs at the end of the turn
    run_one_turn(loop)
    assert calls == [1, 0]
    ch.out.write_held(held.pop())
    assert tr.writes == [b"\xd0\x00" * 2] and ch.out.held == 0


def test_deliveries_leave_before_the_barrier(loop: asyncio.AbstractEventLoop) -> None:
    """Output holding only QoS 0/1 PUBLISHes is written before the storage barrier runs (a
    subscriber does not wait for the turn's commit); any other packet, a QoS 2 PUBLISH, and a
    buffer with output still held for an earlier commit go through the barrier."""
    from fluxmq._speedups.message import Message

    fl = Flusher(loop)
    disp = Dispatcher()
    sub, sub_t = channel(loop, fl, "sub")
    other, other_t = channel(loop, fl, "other")
    seen: list[tuple[int, int, list[str]]] = []
    hold: list[bool] = [False]
    held: list[bytes] = []

    def barrier(dirty: list) -> list:
        names = ["sub" if b is sub.out else "other" for b in dirty]
        seen.append((len(sub_t.writes), len(other_t.writes), names))
        if hold[0]:
            held.extend(b.take_held() for b in dirty)
            return []
        return dirty

    fl.barrier = barrier
    for qos in (0, 1):
        disp.publish_to(sub.session, Message("t", b"m", qos, False), qos, False, None)
    other.send(Pingresp())
    run_one_turn(loop)
    assert seen == [(1, 0, ["other"])]  # the deliveries were out when the barrier ran
    assert len(sub_t.writes) == 1 and len(other_t.writes) == 1

    disp.publish_to(sub.session, Message("t", b"two", 2, False), 2, False, None)
    run_one_turn(loop)
    assert seen[-1] == (1, 1, ["sub"])  # exactly once: after the commit of its state

    disp.publish_to(sub.session, Message("t", b"m", 1, False), 1, False, None)
    sub.send(Pingresp())  # anything else in the same buffer: all of it waits
    run_one_turn(loop)
    assert seen[-1] == (2, 1, ["sub"])

    hold[0] = True  # fsync always: the commit is not on disk at the end of the turn
    sub.send(Pingresp())
    run_one_turn(loop)
    assert sub.out.held == 1 and len(sub_t.writes) == 3
    disp.publish_to(sub.session, Message("t", b"m", 1, False), 1, False, None)
    run_one_turn(loop)
    assert seen[-1] == (3, 1, ["sub"])  # it must not overtake the held output
    assert len(sub_t.writes) == 3
    for data in held:
        sub.out.write_held(data)
    assert len(sub_t.writes) == 5
