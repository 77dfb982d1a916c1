"""Walking MQTT framing over large reads, with the receive-side hot path of the load tool.

A worker process reads each socket into one shared, preallocated buffer (``RecvBuffer``); the
``Scanner`` then walks the packets in place: it counts PUBLISH packets, reads the 8-byte
monotonic-ns timestamp at the start of each payload (or of every n-th one) into a latency
histogram, appends the acknowledgements a subscriber owes (PUBACK, PUBREC, PUBCOMP) to that
connection's output buffer, and retires a publisher's in-flight packet ids on PUBACK/PUBREC/
PUBCOMP. Other packets go to a slow-path callback. No object is made per packet apart from the
integers Python needs; an incomplete packet at the end of a read is left for the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from bench.mqttwire import STAMP, decode_varint

# Latency histogram: 1 µs buckets up to 100 ms, then 1 ms buckets up to 100 s.
HIST_US = 100_000
HIST_MS = 100_000
MAX_LATENCY_US = HIST_MS * 1_000

# Slow-path callback: (first byte, buffer, packet start, body start, packet end).
OtherFn = Callable[[int, bytearray, int, int, int], None]


def packet_bounds(
    buf: bytes | bytearray | memoryview, pos: int, end: int
) -> tuple[int, int] | None:
    """Return ``(body_start, packet_end)`` of the packet at ``pos``, or None if incomplete.

    Raises ``ValueError`` on a malformed remaining-length field.
    """
    if end - pos < 2:
        return None
    try:
        rl, n = decode_varint(buf, pos + 1)
    except IndexError:
        return None
    if pos + 1 + n > end:
        return None
    body = pos + 1 + n
    pe = body + rl
    if pe > end:
        return None
    return body, pe


def iter_packets(buf: bytes | bytearray, pos: int = 0) -> Iterator[tuple[int, int, int]]:
    """Yield ``(start, body_start, end)`` of each complete packet in ``buf`` from ``pos``."""
    end = len(buf)
    while True:
        b = packet_bounds(buf, pos, end)
        if b is None:
            return
        yield pos, b[0], b[1]
        pos = b[1]


class Scanner:
    """Walks packets in a buffer, counting and time-stamping PUBLISHes and handling acks.

    One scanner serves all the connections of a worker process (it holds the process's latency
    histogram and counters); the per-connection state (output buffer, in-flight table) is passed
    to ``scan``.
    """

    def __init__(self, version: int, lat_every: int = 1) -> None:
        self.v5 = version == 5
        self.lat_every = max(0, lat_every)  # 0: no latency, 1: every message, n: every n-th
        self._countdown = 1
        self.hist_us = [0] * HIST_US
        self.hist_ms = [0] * HIST_MS
        self.publishes = 0  # PUBLISH packets received
        self.stamped = 0  # latencies recorded
        self.bad_stamps = 0  # payloads whose first 8 bytes were no plausible timestamp
        # Results of the last scan() call, for the caller's per-connection bookkeeping.
        self.last_publishes = 0
        self.last_acked = 0
        self.last_ack_errors = 0
        self.last_unexpected = 0

    def scan(
        self,
        buf: bytearray,
        pos: int,
        end: int,
        now: int,
        out: bytearray,
        inflight: bytearray | None,
        other: OtherFn,
    ) -> int:
        """Walk complete packets in ``buf[pos:end]``; return the offset of the first incomplete one.

        ``now`` is the monotonic-ns time of the read. ``out`` gets the acknowledgements to send;
        ``inflight`` (publishers only) has a nonzero byte per packet id awaiting an ack (2 while a
        QoS 2 message awaits PUBCOMP after PUBREC).
        """
        v5 = self.v5
        every = self.lat_every
        countdown = self._countdown
        hist_us = self.hist_us
        hist_ms = self.hist_ms
        unpack = STAMP.unpack_from
        npub = 0
        nlat = 0
        nbad = 0
        nack = 0
        nackerr = 0
        nunexp = 0
        while end - pos >= 2:
            h = buf[pos]
            b = buf[pos + 1]
            if b < 0x80:
                p = pos + 2
                pe = p + b
            else:
                if end - pos < 3:
                    break
                b2 = buf[pos + 2]
                if b2 < 0x80:
                    p = pos + 3
                    pe = p + ((b & 0x7F) | (b2 << 7))
                else:
                    bounds = packet_bounds(buf, pos, end)
                    if bounds is None:
                        break
                    p, pe = bounds
            if pe > end:
                break
            t = h >> 4
            if t == 3:  # PUBLISH
                npub += 1
                p += 2 + ((buf[p] << 8) | buf[p + 1])
                q = h & 0x06
                if q:
                    if q == 2:
                        out.extend((0x40, 2, buf[p], buf[p + 1]))
                    else:
                        out.extend((0x50, 2, buf[p], buf[p + 1]))
                    p += 2
                if v5:
                    pl = buf[p]
                    if pl < 0x80:
                        p += 1 + pl
                    else:
                        pl, n = decode_varint(buf, p)
                        p += n + pl
                if every:
                    if every > 1:
                        countdown -= 1
                        if countdown:
                            pos = pe
                            continue
                        countdown = every
                    if pe - p >= 8:
                        d = (now - unpack(buf, p)[0]) // 1000
                        if 0 <= d < HIST_US:
                            hist_us[d] += 1
                            nlat += 1
                        elif HIST_US <= d < MAX_LATENCY_US:
                            hist_ms[d // 1000] += 1
                            nlat += 1
                        else:
                            nbad += 1
            elif t == 4 or t == 7:  # PUBACK / PUBCOMP: a publisher's slot is free again
                pid = (buf[p] << 8) | buf[p + 1]
                if inflight is not None and inflight[pid]:
                    inflight[pid] = 0
                    nack += 1
                    if pe - p > 2 and buf[p + 2] >= 0x80:
                        nackerr += 1
                else:
                    nunexp += 1
            elif t == 5:  # PUBREC: answer PUBREL unless the broker refused the message
                pid = (buf[p] << 8) | buf[p + 1]
                if inflight is not None and inflight[pid] == 1:
                    if pe - p > 2 and buf[p + 2] >= 0x80:
                        inflight[pid] = 0
                        nack += 1
                        nackerr += 1
                    else:
                        inflight[pid] = 2
                        out.extend((0x62, 2, buf[p], buf[p + 1]))
                else:
                    nunexp += 1
            elif t == 6:  # PUBREL (subscriber side of QoS 2): answer PUBCOMP
                out.extend((0x70, 2, buf[p], buf[p + 1]))
            else:
                other(h, buf, pos, p, pe)
            pos = pe
        self._countdown = countdown
        self.publishes += npub
        self.stamped += nlat
        self.bad_stamps += nbad
        self.last_publishes = npub
        self.last_acked = nack
        self.last_ack_errors = nackerr
        self.last_unexpected = nunexp
        return pos

    def histogram(self) -> dict[int, int]:
        """The latency histogram as ``{microseconds: count}`` (ms buckets at their lower bound)."""
        out = {i: c for i, c in enumerate(self.hist_us) if c}
        for i, c in enumerate(self.hist_ms):
            if c:
                out[i * 1000] = out.get(i * 1000, 0) + c
        return out


class RecvBuffer:
    """One preallocated read buffer per process, with a small carried tail per connection.

    ``fill`` copies the connection's unfinished packet (if any) to the start of the buffer and
    reads after it with ``recv_into``; the caller walks ``buf[0:end]`` and hands what is left
    back with ``carry``.
    """

    def __init__(self, size: int = 1 << 20) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)

    def ensure(self, need: int) -> None:
        """Grow the buffer (contents not kept) so that ``need`` bytes fit twice over."""
        if need * 2 > len(self.buf):
            self.view.release()
            self.buf = bytearray(need * 2)
            self.view = memoryview(self.buf)

    def grow(self, keep: int) -> None:
        """Double the buffer, keeping its first ``keep`` bytes."""
        new = bytearray(len(self.buf) * 2)
        new[:keep] = self.view[:keep]
        self.view.release()
        self.buf = new
        self.view = memoryview(new)
