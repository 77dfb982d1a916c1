"""QueueState: every durable change of the queues goes through here.

This is the seam where replication plugs in. Each method below is one command: an append to a
partition's log (or a segment of it rolled, removed by retention or rewritten by compaction), or
a change of a queue definition or of a consumer group's state (its cursor, a pending delivery
with its delivery count and deadline, a consumer's registration). The local
implementation applies them at once: appends go to the segment files, state changes to an LMDB
environment beside the broker's (`<storage.path>/queues/state`), both made durable at the end of
the loop turn, before the turn's output (its PUBACKs) is written. A Raft-replicated
implementation would propose the same commands to the leader and apply them on every replica
once committed; nothing else in fluxmq.queue writes durable state.

Keys of the state database:

    q <queue>                                   queue definition (JSON)
    g <queue> 0 <group>                         group (JSON: pattern, created_at)
    c <queue> 0 <group> 0 <partition u16>       cursor: next offset to deliver (u64)
    p <queue> 0 <group> 0 <partition u16> <offset u64>
                                                pending delivery: count u16, state u8,
                                                deadline f64 (epoch seconds)
    m <client id> 0 <queue> 0 <pattern>         a persistent session's consumer: group name
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from fluxmq._speedups.segment import Entry

log = logging.getLogger("fluxmq.queue")

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_PENDING = struct.Struct(">HBd")
_MAP = 16 << 20


def _k(*parts: str) -> bytes:
    return b"\0".join(p.encode() for p in parts)


class Snapshot:
    """Everything the state database holds, as read at start."""

    def __init__(self) -> None:
        self.queues: dict[str, dict] = {}
        self.groups: dict[tuple[str, str], dict] = {}
        self.cursors: dict[tuple[str, str, int], int] = {}
        self.pending: dict[tuple[str, str, int], list[tuple[int, int, int, float]]] = {}
        # client, queue, pattern, group, QoS, auto-ack
        self.consumers: list[tuple[str, str, str, str, int, bool]] = []


class _MemoryKV:
    """The state of `storage.type: memory`: nothing survives a restart."""

    durable = False

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def commit(self, changes: dict[bytes, bytes | None], sync: bool) -> None:
        for k, v in changes.items():
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v

    def items(self):
        return sorted(self.data.items())

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class _LMDBKV:
    """An LMDB environment of its own (the broker's database is not shared: its record formats
    and journal stay as they are)."""

    durable = True

    def __init__(self, path: Path, fsync: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path), map_size=_MAP, subdir=True, sync=fsync == "always",
            metasync=fsync == "always", readahead=False, max_dbs=0,
        )  # fmt: skip

    def commit(self, changes: dict[bytes, bytes | None], sync: bool) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in changes.items():
                        if v is None:
                            txn.delete(k)
                        else:
                            txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def items(self):
        with self.env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()


class QueueState:
    """The local (single-node) implementation of the queue state commands."""

    def __init__(self, directory: Path | None, fsync: str) -> None:
        self.fsync = fsync
        self.kv = _LMDBKV(directory / "state", fsync) if directory is not None else _MemoryKV()
        self._changes: dict[bytes, bytes | None] = {}
        self._dirty_logs: list = []  # logs with appends this turn
        self._unsynced: dict[int, object] = {}  # id -> FileHandle written, not yet fsynced
        self._state_unsynced = False
        self._turn = 0  # end_turn calls, numbering the writes for FileHandle.sync_upto
        # fsync: always: state changes waiting for the writer thread, (turn, changes) in order;
        # the first sync to run commits all of them at once (a group commit)
        self._commits: collections.deque = collections.deque()
        self._committed_turn = 0
        self.request: Callable[[], None] | None = None  # asks for an end-of-turn run
        self.failed = False  # the last turn could not be written
        self._sync_task: asyncio.Task | None = None

    # -- log appends ------------------------------------------------------------------------------

    def append(self, plog, msg, key, rkey, rk_start: int, ts_ms: int) -> Entry:
        """Append a message to a partition's log; written at the end of the turn."""
        if not plog.dirty:
            plog.dirty = True
            if not self._dirty_logs and not self._changes and self.request is not None:
                self.request()
            self._dirty_logs.append(plog)
        return plog.append(msg, key, rkey, rk_start, ts_ms)

    def remove_segments(self, plog, segments: list) -> None:
        """Retention and purge: whole segments leave a log."""
        plog.remove(segments)

    def roll(self, plog) -> None:
        """Seal a log's active segment and start the next (segment age, purge; a full segment
        rolls in end_turn)."""
        plog.roll()

    def replace_segment(self, plog, old, new) -> None:
        """Compaction: a sealed segment rewritten without superseded messages."""
        plog.replace(old, new)

    def forget_logs(self, logs: list) -> None:
        """A deleted queue's logs: nothing more to write."""
        self._dirty_logs = [pl for pl in self._dirty_logs if pl not in logs]

    # -- queue definitions ---------------------------------------------------------------------

    def put_queue(self, name: str, definition: dict) -> None:
        self._set(b"q" + name.encode(), json.dumps(definition, sort_keys=True).encode())

    def delete_queue(self, name: str) -> None:
        prefix = name.encode() + b"\0"
        self._set(b"q" + name.encode(), None)
        for key, _ in self.kv.items():
            if key[:1] in b"gcp" and key[1:].startswith(prefix):
                self._set(key, None)
        for key in list(self._changes):
            if key[:1] in b"gcp" and key[1:].startswith(prefix):
                self._changes[key] = None

    # -- consumer groups -------------------------------------------------------------------------

    def put_group(self, queue: str, group: str, record: dict) -> None:
        self._set(b"g" + _k(queue, group), json.dumps(record, sort_keys=True).encode())

    def delete_group(self, queue: str, group: str) -> None:
        """A group and its cursors and pending deliveries."""
        self._set(b"g" + _k(queue, group), None)
        prefix = self.group_prefix(queue, group)
        for key, _ in self.kv.items():
            if key[:1] in b"cp" and key[1:].startswith(prefix):
                self._set(key, None)
        for key in list(self._changes):
            if key[:1] in b"cp" and key[1:].startswith(prefix):
                self._changes[key] = None

    @staticmethod
    def group_prefix(queue: str, group: str) -> bytes:
        """The key prefix of a group's cursors and pending deliveries (computed once)."""
        return _k(queue, group) + b"\0"

    def put_cursor(self, prefix: bytes, partition: int, next_offset: int) -> None:
        self._set(b"c" + prefix + _U16.pack(partition), _U64.pack(next_offset))

    def put_pending(self, prefix: bytes, partition: int, offset: int, count: int, state: int,
                    deadline: float) -> None:  # fmt: skip
        """A delivery (state 0, deadline: its visibility timeout), a retry (1, deadline: when)
        or a redelivery due at once (2)."""
        self._set(
            b"p" + prefix + _U16.pack(partition) + _U64.pack(offset),
            _PENDING.pack(min(count, 65535), state, deadline),
        )

    def delete_pending(self, prefix: bytes, partition: int, offset: int) -> None:
        self._set(b"p" + prefix + _U16.pack(partition) + _U64.pack(offset), None)

    def put_consumer(self, client_id: str, queue: str, pattern: str, group: str, qos: int,
                     auto_ack: bool) -> None:  # fmt: skip
        """A persistent session's queue subscription (it outlives a restart like the session)."""
        self._set(
            b"m" + _k(client_id, queue, pattern), _k(group, str(qos), "1" if auto_ack else "0")
        )

    def delete_consumer(self, client_id: str, queue: str, pattern: str) -> None:
        self._set(b"m" + _k(client_id, queue, pattern), None)

    def _set(self, key: bytes, value: bytes | None) -> None:
        if not self._changes and not self._dirty_logs and self.request is not None:
            self.request()
        self._changes[key] = value

    # -- reading at start ------------------------------------------------------------------------

    def load(self) -> Snapshot:
        s = Snapshot()
        for key, val in self.kv.items():
            kind, rest = key[:1], key[1:]
            try:
                if kind == b"q":
                    s.queues[rest.decode()] = json.loads(val)
                elif kind == b"g":
                    q, g = rest.decode().split("\0", 1)
                    s.groups[(q, g)] = json.loads(val)
                elif kind == b"c":
                    head, p = rest[:-3], _U16.unpack(rest[-2:])[0]
                    q, g = head.decode().split("\0", 1)
                    s.cursors[(q, g, p)] = _U64.unpack(val)[0]
                elif kind == b"p":
                    head = rest[:-11]
                    p = _U16.unpack(rest[-10:-8])[0]
                    off = _U64.unpack(rest[-8:])[0]
                    q, g = head.decode().split("\0", 1)
                    count, st, deadline = _PENDING.unpack(val)
                    s.pending.setdefault((q, g, p), []).append((off, count, st, deadline))
                elif kind == b"m":
                    c, q, pat = rest.decode().split("\0", 2)
                    g, qos, auto = val.decode().split("\0")
                    s.consumers.append((c, q, pat, g, int(qos), auto == "1"))
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                log.error(
                    "queue state: skipping a damaged record",
                    extra={"key": key.hex(), "error": str(e)},
                )
        return s

    # -- the end of a loop turn --------------------------------------------------------------------

    def end_turn(self) -> Callable[[], None] | None:
        """Write this turn's appends (one writev per partition) and state changes. With
        `fsync: always` the returned function (run before the turn's output is released, in
        the storage writer thread) fsyncs them; otherwise None. Raises OSError when the appends
        cannot be written: the turn's acknowledgements must then not go out (the appends stay
        for the next turn)."""
        logs, self._dirty_logs = self._dirty_logs, []
        handles = []
        failed = None
        for plog in logs:
            try:
                for fh in plog.flush():
                    handles.append(fh)
                plog.dirty = False
            except OSError as e:
                failed = e
                self._dirty_logs.append(plog)  # kept: tried again next turn
        changes, self._changes = self._changes, {}
        if failed is not None:
            self.failed = True
            self._changes = {**changes, **self._changes}
            if self.request is not None:
                asyncio.get_event_loop().call_later(1.0, self.request)
            raise failed
        self.failed = False
        if self.fsync == "always" and self.kv.durable:
            if not handles and not changes:
                return None
            kv = self.kv
            self._turn += 1
            turn = self._turn
            for fh in handles:
                fh.written = turn

            if changes:
                self._commits.append((turn, changes))

            def sync() -> None:
                for fh in handles:
                    fh.sync_upto(turn)
                self._commit_upto(turn, kv)

            return sync
        if changes:
            self.kv.commit(changes, False)
            self._state_unsynced = True
        for fh in handles:
            self._unsynced[id(fh)] = fh
        return None

    def _commit_upto(self, turn: int, kv) -> None:
        """In the storage writer thread (in turn order): commit, with one fsync, every state
        change queued so far, unless a commit after this turn's changes already did."""
        if self._committed_turn >= turn:
            return
        batch: dict[bytes, bytes | None] = {}
        last = turn
        while self._commits:
            t, changes = self._commits.popleft()
            batch.update(changes)
            last = max(last, t)
        if batch:
            kv.commit(batch, True)
        self._committed_turn = last

    def flush_now(self) -> None:
        """Write and fsync everything (at shutdown)."""
        sync = self.end_turn()
        if sync is not None:
            sync()
        self.sync_all()

    def sync_all(self) -> None:
        handles, self._unsynced = list(self._unsynced.values()), {}
        for fh in handles:
            fh.fsync()
        if self._state_unsynced:
            self._state_unsynced = False
            self.kv.sync()

    def start_interval_sync(self, interval: float) -> None:
        """`fsync: interval`: fsync what was written, every `interval`, in a worker thread."""
        if self.fsync != "interval" or not self.kv.durable:
            return

        async def run() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(interval)
                if self._unsynced or self._state_unsynced:
                    try:
                        await loop.run_in_executor(None, self.sync_all)
                    except OSError as e:
                        log.error("queue fsync failed: %s", e)

        self._sync_task = asyncio.get_event_loop().create_task(run())

    def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            self._sync_task = None
        self.kv.close()

    @staticmethod
    def now() -> float:
        return time.time()
