"""A partition's log: its segment files, the entries appended lately, reads by offset and time.

Offsets start at 0 and grow by one per append; retention removes whole segments from the front
(`start` moves up) and compaction leaves gaps inside written segments, so a read at an offset
returns the first entry at or after it. The entries appended lately (and every entry not yet
written) stay in memory, so consumers that keep up never read the files; others read them in
chunks of whole batches.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections import deque
from pathlib import Path

from fluxmq._speedups.segment import Entry, Segment, SegmentError

log = logging.getLogger("fluxmq.queue")

CACHE_ENTRIES = 4096  # recent entries kept in memory per partition
CACHE_BYTES = 16 << 20


def segment_path(directory: Path, base: int) -> Path:
    return directory / f"{base:020d}.seg"


class PartitionLog:
    """One partition of one queue."""

    def __init__(self, directory: Path, partition: int, segment_bytes: int, segment_age: float):
        self.dir = directory
        self.partition = partition
        self.segment_bytes = segment_bytes
        self.segment_age = segment_age
        self.segments: list[Segment] = []
        self.end = 0  # the next offset to assign
        self.cache: deque[Entry] = deque()
        self.cache_start = 0  # offset of cache[0] (the cache holds consecutive offsets)
        self.cache_bytes = 0
        self.dirty = False  # appended this turn (QueueState flushes it at the end of the turn)
        self.appended = 0  # counters
        self.appended_bytes = 0
        self.latest: dict[str, int] | None = None  # partition key -> newest offset (compaction)
        self.compacting = False

    # -- opening ----------------------------------------------------------------------------------

    def open(self) -> int:
        """Open the segment files (the last one is checked batch by batch and a torn or damaged
        tail cut off). Returns the bytes cut off."""
        self.dir.mkdir(parents=True, exist_ok=True)
        bases = []
        for name in os.listdir(self.dir):
            if name.endswith(".seg") and name[:-4].isdigit():
                bases.append(int(name[:-4]))
            elif name.endswith(".tmp") or ".compact." in name:
                os.unlink(self.dir / name)  # an unfinished index or compaction
        bases.sort()
        cut = 0
        for i, base in enumerate(bases):
            last = i == len(bases) - 1
            seg, n = Segment.open(str(segment_path(self.dir, base)), base, last)
            if n:
                log.warning(
                    "queue segment: damaged or torn tail cut off",
                    extra={"path": seg.path, "bytes": n, "next_offset": seg.next_offset},
                )
                cut += n
            if self.segments and seg.base < self.segments[-1].next_offset:
                raise SegmentError(f"{seg.path}: overlaps the segment before it")
            self.segments.append(seg)
        if not self.segments:
            self.segments.append(Segment.create(str(segment_path(self.dir, 0)), 0))
        elif self.segments[-1].sealed:
            # The last segment opens unsealed (it is the one written to).
            self.segments[-1].sealed = False
        self.end = self.segments[-1].next_offset
        self.cache_start = self.end
        return cut

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def start(self) -> int:
        """The first offset still kept."""
        return self.segments[0].base

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments) + self.active.pending_bytes

    @property
    def first_ts(self) -> int:
        for s in self.segments:
            if s.first_ts:
                return s.first_ts
        return self.cache[0].ts_ms if self.cache else 0

    # -- appending --------------------------------------------------------------------------------

    def append(self, msg, key, rkey, rk_start: int, ts_ms: int) -> Entry:
        """Through QueueState.append only."""
        offset = self.end
        e = Entry()
        e.offset = offset
        e.ts_ms = ts_ms
        e.key = key
        e.rkey = rkey if rkey is not None else msg.topic[rk_start:]
        e.msg = msg
        e.size = self.active.append(offset, ts_ms, msg, key, rkey, rk_start)
        self.end = offset + 1
        if not self.cache:
            self.cache_start = offset
        self.cache.append(e)
        self.cache_bytes += e.size
        self.appended += 1
        self.appended_bytes += e.size
        if self.latest is not None and key is not None:
            self.latest[key] = offset
        return e

    def flush(self) -> list:
        """Write this turn's batch; roll the segment when it is full or old. Returns the file
        handles that now need an fsync."""
        seg = self.active
        n = seg.pending
        seg.flush()
        # The entries written no longer pin the buffers they arrived in.
        if n:
            for i in range(len(self.cache) - n, len(self.cache)):
                self.cache[i].msg.freeze()
        handles = [seg.fh]
        if seg.size >= self.segment_bytes or (
            seg.size and time.time() * 1000 - seg.first_ts >= self.segment_age * 1000
        ):
            self.roll()
        self._trim_cache()
        return handles

    def roll(self) -> None:
        """Seal the active segment (it has no pending records) and start a new one."""
        seg = self.active
        if seg.size == 0:
            return
        seg.write_index()
        seg.sealed = True
        self.segments.append(Segment.create(str(segment_path(self.dir, self.end)), self.end))

    def _trim_cache(self) -> None:
        pending = self.active.pending
        while (
            self.cache
            and len(self.cache) > pending
            and (len(self.cache) > CACHE_ENTRIES or self.cache_bytes > CACHE_BYTES)
        ):
            e = self.cache.popleft()
            self.cache_bytes -= e.size
            self.cache_start = e.offset + 1

    # -- reading ------------------------------------------------------------------------------------

    def cached(self, offset: int) -> Entry | None:
        """The entry at `offset` if it is in memory."""
        i = offset - self.cache_start
        if 0 <= i < len(self.cache):
            return self.cache[i]
        return None

    def read(self, offset: int, max_count: int = 256, max_bytes: int = 262144) -> list[Entry]:
        """Entries from `offset` on (the first at or after it), up to about max_count."""
        if offset < self.start:
            offset = self.start
        if offset >= self.end:
            return []
        if self.cache and offset >= self.cache_start:
            i = offset - self.cache_start
            return [self.cache[j] for j in range(i, min(len(self.cache), i + max_count))]
        k = bisect.bisect_right([s.base for s in self.segments], offset) - 1
        out: list[Entry] = []
        for seg in self.segments[max(k, 0) :]:
            try:
                got = seg.read(offset, max_bytes, max_count - len(out))
            except SegmentError as e:
                log.error("queue segment unreadable, skipped: %s", e, extra={"path": seg.path})
                got = []
            out.extend(got)
            if len(out) >= max_count:
                break
            offset = max(offset, seg.next_offset)
        if self.cache:
            # From the memory copy on, its entries (already decoded, shared by every group).
            out = [e for e in out if e.offset < self.cache_start]
            if not out:
                return self.read(self.cache_start, max_count, max_bytes)
        return out

    def entry_at(self, offset: int) -> Entry | None:
        """The entry at exactly `offset` (None if retention or compaction removed it)."""
        e = self.cached(offset)
        if e is not None:
            return e
        got = self.read(offset, 1)
        return got[0] if got and got[0].offset == offset else None

    def offset_for_time(self, ts_ms: int) -> int:
        """The first offset appended at `ts_ms` or later (`end` if none)."""
        for seg in self.segments:
            if seg.max_ts >= ts_ms:
                off = seg.offset_for_time(ts_ms)
                if off >= 0:
                    return off
        for e in self.cache:
            if e.ts_ms >= ts_ms and e.offset >= self.active.next_offset:
                return e.offset
        return self.end

    # -- removing -------------------------------------------------------------------------------------

    def remove(self, segments: list[Segment]) -> None:
        """Through QueueState.remove_segments: delete sealed segments (the files go; their
        descriptors close once nothing fsyncs them any more)."""
        for seg in segments:
            if seg is self.active:
                continue
            self.segments.remove(seg)
            stem = seg.path[:-4]
            for suffix in (".seg", ".idx", ".tix"):
                try:
                    os.unlink(stem + suffix)
                except FileNotFoundError:
                    pass
        if self.cache and self.cache_start < self.start:
            while self.cache and self.cache[0].offset < self.start:
                e = self.cache.popleft()
                self.cache_bytes -= e.size
            self.cache_start = self.cache[0].offset if self.cache else self.end

    def purge(self) -> None:
        """After every written segment was removed: forget the entries in memory too (the next
        append continues at `end`)."""
        self.cache.clear()
        self.cache_bytes = 0
        self.cache_start = self.end
        if self.latest is not None:
            self.latest.clear()

    def replace(self, old: Segment, new: Segment) -> None:
        """Compaction: `new` (same base) takes the place of `old`."""
        i = self.segments.index(old)
        self.segments[i] = new
        # Entries of that segment still in memory would show what compaction removed.
        while self.cache and self.cache[0].offset < old.next_offset:
            e = self.cache.popleft()
            self.cache_bytes -= e.size
        self.cache_start = self.cache[0].offset if self.cache else self.end

    def rebuild_latest(self) -> None:
        """The newest offset of every partition key (for compaction), from the files."""
        latest: dict[str, int] = {}
        off = self.start
        while off < self.end:
            entries = self.read(off, 4096, 4 << 20)
            if not entries:
                break
            for e in entries:
                if e.key is not None:
                    latest[e.key] = e.offset
            off = entries[-1].offset + 1
        self.latest = latest

    def close(self) -> None:
        for seg in self.segments:
            seg.close()
