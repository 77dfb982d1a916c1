"""DurableQueue: one queue, its partition logs, its consumer groups and its counters."""

from __future__ import annotations

import time
from pathlib import Path

from fluxmq.queue.group import Group
from fluxmq.queue.log import PartitionLog
from fluxmq.queue.partition import for_key, key_of
from fluxmq.queue.state import QueueState

# Reason codes of refused publishes (MQTT 5 PUBACK/PUBREC; the protocol layer maps them).
IMPLEMENTATION_SPECIFIC = 0x83
TOPIC_NAME_INVALID = 0x90
QUOTA_EXCEEDED = 0x97


class QueueStats:
    __slots__ = ("appended", "capture_dropped", "refused_full", "refused_size")

    def __init__(self) -> None:
        self.appended = 0
        self.refused_full = 0
        self.refused_size = 0
        self.capture_dropped = 0


class DurableQueue:
    """A queue: `settings` is its validated definition (fluxmq.config.QueueDefinition)."""

    def __init__(self, manager, settings, directory: Path) -> None:
        self.manager = manager
        self.name: str = settings.name
        self.settings = settings
        self.dir = directory
        self.state: QueueState = manager.state
        r = settings.retention
        self.logs = [
            PartitionLog(directory / str(p), p, r.segment_bytes, r.segment_age)
            for p in range(settings.partitions)
        ]
        self.groups: dict[str, Group] = {}
        self.stats = QueueStats()
        self.capture = None  # the session capturing `settings.topics`, if any
        self._rr = 0
        self._max_size = settings.limits.max_message_size
        self._max_depth = settings.limits.max_depth

    def open(self) -> int:
        """Open every partition's files; returns the bytes cut off damaged tails."""
        cut = 0
        for plog in self.logs:
            cut += plog.open()
            if self.settings.retention.compaction:
                plog.rebuild_latest()
        return cut

    # -- helpers for the groups ------------------------------------------------------------------

    def clock(self) -> float:
        return self.manager.clock()

    def wall(self, due: float) -> float:
        """A monotonic deadline as epoch seconds (kept in the queue state)."""
        return time.time() + (due - self.manager.clock())

    def state_prefix(self, group: str) -> bytes:
        return QueueState.group_prefix(self.name, group)

    def cursor_moved(self, gp) -> None:
        self.manager.cursor_moved(gp)

    def dead_letter(self, group, partition: int, entry, reason: str, count: int,
                    client: str | None) -> None:  # fmt: skip
        self.manager.dead_letter(self, group, partition, entry, reason, count, client)

    # -- appending --------------------------------------------------------------------------------

    def append(self, msg, rkey: str | None, rk_start: int):
        """Append a message (refusals: (reason code, reason string)); deliver it to the groups
        that are waiting for it. `rkey`: an explicit routing key, or None for the topic from
        `rk_start` on."""
        if self._max_size and msg.payload_size > self._max_size:
            self.stats.refused_size += 1
            return (IMPLEMENTATION_SPECIFIC,
                    f"message of {msg.payload_size} bytes is larger than queue {self.name!r} "
                    f"accepts (limits.max_message_size {self._max_size})")  # fmt: skip
        if self._max_depth and self.depth() >= self._max_depth:
            self.stats.refused_full += 1
            return (
                QUOTA_EXCEEDED,
                f"queue {self.name!r} is full (limits.max_depth {self._max_depth})",
            )
        key = key_of(msg)
        n = len(self.logs)
        if n == 1:
            p = 0
        elif key is not None:
            p = for_key(key, n)
        else:
            p = self._rr
            self._rr = (p + 1) % n
        self.state.append(self.logs[p], msg, key, rkey, rk_start, int(time.time() * 1000))
        self.stats.appended += 1
        for g in self.groups.values():
            if g.consumers:
                g.offer(p)
        return None

    def depth(self) -> int:
        """Messages not yet acknowledged by the slowest group (every message kept, without
        groups)."""
        total = 0
        groups = list(self.groups.values())
        for i, plog in enumerate(self.logs):
            low = min((g.parts[i].committed for g in groups), default=plog.start)
            total += plog.end - max(low, plog.start)
        return total

    # -- introspection ---------------------------------------------------------------------------

    def partition_info(self) -> list[dict]:
        now = time.time() * 1000
        out = []
        for plog in self.logs:
            first = plog.first_ts
            out.append({
                "partition": plog.partition,
                "start": plog.start,
                "end": plog.end,
                "messages": plog.end - plog.start,
                "bytes": plog.size,
                "segments": len(plog.segments),
                "oldest_age_seconds": round((now - first) / 1000, 3) if first and plog.end > plog.start else 0,
            })  # fmt: skip
        return out

    def info(self, groups: bool = True) -> dict:
        parts = self.partition_info()
        out = {
            "name": self.name,
            "topics": list(self.settings.topics),
            "partitions": parts,
            "depth": self.depth(),
            "messages": sum(p["messages"] for p in parts),
            "bytes": sum(p["bytes"] for p in parts),
            "oldest_age_seconds": max((p["oldest_age_seconds"] for p in parts), default=0),
            "stats": {k: getattr(self.stats, k) for k in QueueStats.__slots__},
        }
        if groups:
            out["groups"] = [g.info() for g in self.groups.values()]
            out["settings"] = self.settings.to_dict()
        else:
            out["groups"] = {g.name: g.lag for g in self.groups.values()}
        return out

    def close(self) -> None:
        for plog in self.logs:
            plog.close()
