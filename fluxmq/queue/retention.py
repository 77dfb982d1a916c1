"""Segment age, retention and compaction, applied every `queue.retention_interval`.

- A partition's segment being written is sealed once its first message is older than
  `retention.segment_age` (so that retention can remove it), as it is once it holds
  `retention.segment_bytes`.
- `retention.max_age`: sealed segments whose newest message is older are removed, oldest first.
- `retention.max_bytes`: while the queue's partitions hold more, the oldest sealed segment (of
  any partition) is removed.
- `retention.compaction`: a sealed segment holding messages whose `partition-key` has a newer
  message is rewritten without them (offsets keep their numbers; messages without a key stay).
  One segment per partition per run, in the event loop.

Removal is by whole segments; the segment being written always stays. Groups whose cursor was
in a removed segment continue from the first message kept.
"""

from __future__ import annotations

import logging
import os
import time

from fluxmq._speedups.segment import Segment, SegmentError

log = logging.getLogger("fluxmq.queue")


def apply(queue) -> dict:
    """One retention run over a queue; returns what it did."""
    r = queue.settings.retention
    now_ms = time.time() * 1000
    done = {"rolled": 0, "removed": 0, "removed_bytes": 0, "compacted": 0}
    for plog in queue.logs:
        seg = plog.active
        if seg.pending == 0 and seg.size and now_ms - seg.first_ts >= r.segment_age * 1000:
            queue.state.roll(plog)
            done["rolled"] += 1
    if r.max_age:
        limit = now_ms - r.max_age * 1000
        for plog in queue.logs:
            old = []
            for seg in plog.segments[:-1]:
                if seg.max_ts >= limit:
                    break
                old.append(seg)
            _remove(queue, plog, old, done)
    if r.max_bytes:
        total = sum(plog.size for plog in queue.logs)
        while total > r.max_bytes:
            candidates = [plog for plog in queue.logs if len(plog.segments) > 1]
            if not candidates:
                break
            plog = min(candidates, key=lambda pl: pl.segments[0].max_ts)
            seg = plog.segments[0]
            total -= seg.size
            _remove(queue, plog, [seg], done)
    if r.compaction:
        for plog in queue.logs:
            if compact_one(plog, queue.state):
                done["compacted"] += 1
    return done


def _remove(queue, plog, segments: list, done: dict) -> None:
    if not segments:
        return
    done["removed"] += len(segments)
    done["removed_bytes"] += sum(s.size for s in segments)
    queue.state.remove_segments(plog, segments)
    log.info(
        "queue segments removed by retention",
        extra={"queue": queue.name, "partition": plog.partition, "segments": len(segments),
               "start": plog.start},
    )  # fmt: skip


def compact_one(plog, state) -> bool:
    """Rewrite the oldest sealed segment that has messages superseded by a newer message of
    the same partition key. Returns True if one was rewritten."""
    if plog.latest is None or plog.compacting:
        return False
    done = getattr(plog, "compacted", None)
    if done is None:
        done = plog.compacted = {}
    for seg in plog.segments[:-1]:
        if done.get(seg.base) == plog.end:
            continue
        entries = _entries(seg)
        if entries is None:
            continue
        keep = [e for e in entries if e.key is None or plog.latest.get(e.key) == e.offset]
        done[seg.base] = plog.end
        if len(keep) == len(entries):
            continue
        plog.compacting = True
        try:
            new = _rewrite(seg, keep)
        except (OSError, SegmentError) as e:
            log.error("queue compaction failed: %s", e, extra={"path": seg.path})
            return False
        finally:
            plog.compacting = False
        state.replace_segment(plog, seg, new)
        log.info(
            "queue segment compacted",
            extra={"path": seg.path, "kept": len(keep), "removed": len(entries) - len(keep)},
        )
        return True
    return False


def _entries(seg) -> list | None:
    out = []
    off = seg.base
    try:
        while off < seg.next_offset:
            got = seg.read(off, 4 << 20, 100000)
            if not got:
                break
            out.extend(got)
            off = got[-1].offset + 1
    except SegmentError as e:
        log.error("queue segment unreadable, not compacted: %s", e, extra={"path": seg.path})
        return None
    return out


def _rewrite(seg, keep: list) -> Segment:
    """Write `keep` to a new file with the same base offset and swap it in."""
    stem = seg.path[:-4]
    tmp = stem + ".compact.seg"
    for suffix in (".seg", ".idx", ".tix"):
        try:
            os.unlink(stem + ".compact" + suffix)
        except FileNotFoundError:
            pass
    new = Segment.create(tmp, seg.base)
    size = 0
    for e in keep:
        topic = e.msg.topic
        if e.rkey == topic:
            rkey, start = None, 0
        elif topic.endswith("/" + e.rkey) or (e.rkey == "" and topic.startswith("$queue/")):
            rkey, start = None, len(topic) - len(e.rkey)
        else:
            rkey, start = e.rkey, 0
        size += new.append(e.offset, e.ts_ms, e.msg, e.key, rkey, start)
        if size >= 1 << 20:
            new.flush()
            size = 0
    new.flush()
    new.fsync()
    new.write_index()
    new.close()
    for suffix in (".idx", ".tix", ".seg"):  # the data file last: it decides what is there
        os.replace(stem + ".compact" + suffix, stem + suffix)
    fresh, _ = Segment.open(seg.path, seg.base, False)
    return fresh
