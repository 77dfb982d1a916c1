"""QueueManager: the broker's entry point to the durable queues.

- `publish(msg)`: the dispatcher hands it every `$queue/...` publish: an append to queue
  `<queue>` (created with `queue.defaults` when `queue.auto_create`), or an acknowledgement
  (`$queue/<queue>/$ack`, `$nack`, `$reject` with the user properties `message-id` and
  `group-id`). Returns None when taken, else (reason code, reason string).
- `subscribe(...)` / `unsubscribe(...)`: `$queue/<queue>[/<pattern>]` subscriptions (the
  protocol layer's SUBSCRIBE handler calls them), with the `consumer-group` and `cursor` user
  properties.
- session hooks from the broker: a consumer's connection ended (what it held is redelivered),
  came back, or its session ended.
- the end of every loop turn (`end_turn`): the turn's appends and state changes are written
  before its output, through QueueState.
- the admin operations (list, create, delete, stats, seek, purge, read, replay).

Queues listing ordinary topics in `topics` capture them through a subscription of their own
(a session with a CallbackOutlet) in the broker's topic trie.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from fluxmq._speedups.message import Message
from fluxmq._speedups.session import CallbackOutlet, Session, Subscription
from fluxmq.config import ConfigError, queue_name_problem
from fluxmq.queue import dlq, retention
from fluxmq.queue.durable import (
    IMPLEMENTATION_SPECIFIC,
    QUOTA_EXCEEDED,
    TOPIC_NAME_INVALID,
    DurableQueue,
)
from fluxmq.queue.group import DELIVERED, DONE, Consumer, Group
from fluxmq.queue.settings import definition
from fluxmq.queue.state import QueueState
from fluxmq.queue.topics import ACK_VERBS, PREFIX, matcher, split

log = logging.getLogger("fluxmq.queue")

UNSPECIFIED = 0x80
TOPIC_FILTER_INVALID = 0x8F
TICK = 0.1  # seconds between checks of visibility timeouts and retry backoffs


class ManagerStats:
    __slots__ = ("acks", "bad_acks", "nacks", "rejects")

    def __init__(self) -> None:
        self.acks = self.nacks = self.rejects = self.bad_acks = 0


def _dir_name(name: str) -> str:
    """A queue name as a directory name (percent-encoded beyond [A-Za-z0-9_-] and inner dots)."""
    out = []
    for i, ch in enumerate(name):
        if ch.isascii() and (ch.isalnum() or ch in "_-" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def parse_cursor(text: str | None) -> str | int | float | None:
    """`earliest`, `latest`, an offset or an RFC 3339 time (-> epoch seconds, a float)."""
    if text is None:
        return None
    t = text.strip()
    if t.lower() in ("earliest", "latest"):
        return t.lower()
    if t.isdigit():
        return int(t)
    try:
        dt = datetime.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"cursor {text!r}: expected earliest, latest, an offset or an RFC 3339 time"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return float(dt.timestamp())


class QueueManager:
    """Every durable queue of the broker."""

    def __init__(self, cfg, broker, store, loop) -> None:
        self.cfg = cfg
        self.qcfg = cfg.queue
        self.broker = broker
        self.dispatcher = broker.dispatcher
        self.store = store  # the broker's LMDB store (or None: storage.type memory)
        self.loop = loop
        self.fsync = cfg.storage.fsync if store is not None else "never"
        self.root: Path | None = None
        self._tmp_root: str | None = None
        self.state: QueueState | None = None
        self.queues: dict[str, DurableQueue] = {}
        self.consumers: dict[str, list[Consumer]] = {}  # by client id
        self.stats = ManagerStats()
        self.flusher = None
        self._cursors: set = set()  # group partitions whose cursor moved this turn
        self._sink_sessions: set = set()
        self._tick_handle = None
        self._retention_handle = None
        self._prev_barrier = None
        self._read_check = None

    def clock(self) -> float:
        return self.loop.time()

    # -- start and stop ----------------------------------------------------------------------------

    def start(self, flusher) -> None:
        """Open what is kept (queue definitions, logs, group state) and the queues of the
        configuration. Runs once, after the broker loaded its sessions."""
        self.flusher = flusher
        persisted = self.store is not None and (Path(self.cfg.storage.path) / "queues").exists()
        if not persisted and not self.cfg.queues:
            return  # opened when the first queue is created
        self._open()
        snap = self.state.load()
        configured = {q.name: q for q in self.cfg.queues}
        for name, data in sorted(snap.queues.items()):
            if name in configured:
                continue
            try:
                d = definition(name, data, self.qcfg.defaults, f"stored queue {name}")
            except ConfigError as e:
                log.error("stored queue definition unusable, queue not opened: %s", e)
                continue
            self._add(d, persist=False)
        for d in self.cfg.queues:
            self._add(d, persist=True)
        for (qname, gname), rec in snap.groups.items():
            q = self.queues.get(qname)
            if q is None:
                continue
            g = Group(q, gname, rec.get("pattern", ""), rec.get("created_at", time.time()))
            q.groups[gname] = g
            for p in range(len(q.logs)):
                g.restore(p, snap.cursors.get((qname, gname, p)),
                          snap.pending.get((qname, gname, p), []))  # fmt: skip
        for client, qname, pattern, gname, qos, auto in snap.consumers:
            # Queue subscriptions of persistent sessions, back for when their clients return.
            session = self.broker.sessions.get(client)
            q = self.queues.get(qname)
            g = q.groups.get(gname) if q is not None else None
            if session is None or g is None or session.store is None:
                self.state.delete_consumer(client, qname, pattern)
                continue
            c = Consumer(session, g, pattern, qos, auto)
            self.consumers.setdefault(client, []).append(c)
            g.consumers.append(c)

    def _open(self) -> None:
        if self.state is not None:
            return
        if self.store is None:
            self._tmp_root = tempfile.mkdtemp(prefix="fluxmq-queues-")
            self.root = Path(self._tmp_root)
            self.state = QueueState(None, "never")
        else:
            self.root = Path(self.cfg.storage.path) / "queues"
            self.root.mkdir(parents=True, exist_ok=True)
            self.state = QueueState(self.root, self.fsync)
        if self.flusher is not None:
            self.state.request = self.flusher.request
            if self.store is not None and hasattr(self.store, "turn_hooks"):
                self.store.turn_hooks.append(self.end_turn)
            else:
                self._prev_barrier = self.flusher.barrier
                self.flusher.barrier = self._barrier
        self.state.start_interval_sync(self.cfg.storage.fsync_interval)
        self._tick_handle = self.loop.call_later(TICK, self._tick)
        self._retention_handle = self.loop.call_later(self.qcfg.retention_interval, self._retain)

    def close(self) -> None:
        """Write and fsync everything; close the files."""
        if self.state is None:
            return
        for h in (self._tick_handle, self._retention_handle):
            if h is not None:
                h.cancel()
        try:
            self.end_turn_cursors()
            self.state.flush_now()
        except OSError as e:
            log.error("queues not fully written at shutdown: %s", e)
        for q in self.queues.values():
            q.close()
        self.state.close()
        hooks = getattr(self.store, "turn_hooks", None)
        if hooks is not None and self.end_turn in hooks:
            hooks.remove(self.end_turn)
        if self._tmp_root is not None:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
        self.state = None

    # -- the end of a loop turn --------------------------------------------------------------------

    def cursor_moved(self, gp) -> None:
        if not self._cursors and self.state is not None and self.state.request is not None:
            self.state.request()
        self._cursors.add(gp)

    def end_turn_cursors(self) -> None:
        cursors, self._cursors = self._cursors, set()
        for gp in cursors:
            self.state.put_cursor(gp.group._pfx, gp.index, gp.next)

    def end_turn(self):
        """The storage's turn hook: see QueueState.end_turn."""
        if self._cursors:
            self.end_turn_cursors()
        return self.state.end_turn()

    def _barrier(self, dirty: list) -> list:
        """The flusher's barrier without durable storage: write the turn's appends first."""
        try:
            self.end_turn()
        except OSError as e:
            log.error("queue write failed: %s", e)
            for buf in dirty:
                buf.abort()
            dirty = []
        return self._prev_barrier(dirty) if self._prev_barrier is not None else dirty

    # -- timers ------------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        try:
            for q in list(self.queues.values()):
                for g in list(q.groups.values()):
                    g.expire_due(now)
        finally:
            self._tick_handle = self.loop.call_later(TICK, self._tick)

    def _retain(self) -> None:
        try:
            for q in list(self.queues.values()):
                retention.apply(q)
        except Exception:
            log.exception("queue retention failed")
        finally:
            self._retention_handle = self.loop.call_later(self.qcfg.retention_interval,
                                                          self._retain)  # fmt: skip

    # -- queues --------------------------------------------------------------------------------------

    def _add(self, d, persist: bool) -> DurableQueue:
        self._open()
        directory = self.root / _dir_name(d.name)
        q = DurableQueue(self, d, directory)
        cut = q.open()
        if cut:
            log.warning("queue %s: %d damaged bytes cut off", d.name, cut)
        self.queues[d.name] = q
        if persist:
            self.state.put_queue(d.name, d.to_dict())
        if d.topics:
            self._capture(q)
        return q

    def create(self, name: str, data: dict | None = None) -> DurableQueue:
        """A new queue: `data` holds any settings of a `queues` item (the rest from
        `queue.defaults`). Raises ConfigError (bad settings) or ValueError (it exists)."""
        if name in self.queues:
            raise ValueError(f"queue {name!r} exists")
        d = definition(name, data, self.qcfg.defaults)
        q = self._add(d, persist=True)
        log.info("queue created", extra={"queue": name, "partitions": d.partitions})
        return q

    def _auto(self, name: str) -> DurableQueue | tuple[int, str]:
        problem = queue_name_problem(name)
        if problem:
            return (TOPIC_NAME_INVALID, f"{PREFIX}{name}: {problem}")
        if not self.qcfg.auto_create:
            return (TOPIC_NAME_INVALID, f"no queue named {name!r} (queue.auto_create is false)")
        return self.create(name)

    def delete(self, name: str) -> bool:
        q = self.queues.pop(name, None)
        if q is None:
            return False
        if q.capture is not None:
            s = q.capture
            for sub in list(s.subscriptions.values()):
                self.dispatcher.unsubscribe(s, sub.topic_filter)
            self._sink_sessions.discard(s)
        for g in q.groups.values():
            for c in list(g.consumers):
                lst = self.consumers.get(c.client_id)
                if lst and c in lst:
                    lst.remove(c)
                self.state.delete_consumer(c.client_id, name, c.pattern)
            g.consumers.clear()
            for gp in g.parts:  # deliveries still in flight are settled by nothing any more
                for p in gp.pending.values():
                    p.state = DONE
                gp.pending.clear()
        self._cursors = {gp for gp in self._cursors if gp.group.queue is not q}
        self.state.delete_queue(name)
        self.state.forget_logs(q.logs)
        q.close()
        shutil.rmtree(q.dir, ignore_errors=True)
        log.info("queue deleted", extra={"queue": name})
        return True

    def _capture(self, q: DurableQueue) -> None:
        """Subscribe a capturing session to the queue's `topics`."""
        s = Session(f"{PREFIX}capture/{q.name}", 0, 65535, 1, False)

        def take(msg, qos, pid, dup, retain, sub_ids, q=q):
            if q.append(msg, None, 0) is not None:
                q.stats.capture_dropped += 1
            return True

        s.outlet = CallbackOutlet(take)
        for f in q.settings.topics:
            sub = Subscription(s, f, 0)
            s.subscriptions[f] = sub
            self.dispatcher.subscribe(sub)
        q.capture = s
        self._sink_sessions.add(s)
        self.wrap_read_check()

    def wrap_read_check(self) -> None:
        """Capturing sessions read every topic their queue lists, whatever the ACL says (the ACL
        applies to who may subscribe to the queue). Called again when the ACL changes."""
        d = self.dispatcher
        rc = d.read_check
        if rc is None or rc is self._read_check or not self._sink_sessions:
            return
        sinks = self._sink_sessions

        def read_check(session, topic, rc=rc):
            return session in sinks or rc(session, topic)

        self._read_check = read_check
        d.read_check = read_check
        d.clear_cache()

    # -- publishing ------------------------------------------------------------------------------------

    def publish(self, msg: Message):
        """A `$queue/...` publish (see the module docstring)."""
        name, rk, rk_start = split(msg.topic)
        if rk in ACK_VERBS:
            return self._ack(name, rk, msg)
        if self.state is not None and self.state.failed:
            return (QUOTA_EXCEEDED, "queue storage cannot write right now")
        q = self.queues.get(name)
        if q is None:
            q = self._auto(name)
            if isinstance(q, tuple):
                return q
        return q.append(msg, None, rk_start)

    def _ack(self, name: str, verb: str, msg: Message):
        q = self.queues.get(name)
        if q is None:
            self.stats.bad_acks += 1
            return (TOPIC_NAME_INVALID, f"no queue named {name!r}")
        mid = gid = reason = None
        for k, v in msg.user_properties or ():
            if k == "message-id":
                mid = v
            elif k == "group-id":
                gid = v
            elif k == "reason":
                reason = v
        if mid is None or gid is None:
            self.stats.bad_acks += 1
            return (IMPLEMENTATION_SPECIFIC,
                    f"{verb} needs the user properties message-id and group-id")  # fmt: skip
        parts = mid.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != name or not parts[1].isdigit() or not parts[2].isdigit():
            self.stats.bad_acks += 1
            return (IMPLEMENTATION_SPECIFIC, f"message-id {mid!r} is not one of queue {name!r}")
        g = q.groups.get(gid)
        if g is None:
            self.stats.bad_acks += 1
            return (IMPLEMENTATION_SPECIFIC, f"queue {name!r} has no consumer group {gid!r}")
        p = g.find(int(parts[1]), int(parts[2]))
        if p is None:
            self.stats.bad_acks += 1
            return (
                IMPLEMENTATION_SPECIFIC,
                f"message {mid} is not pending in group {gid!r} (already settled?)",
            )
        if verb == "$ack":
            self.stats.acks += 1
            g.ack(p)
        elif verb == "$nack":
            if p.state != DELIVERED:
                self.stats.bad_acks += 1
                return (IMPLEMENTATION_SPECIFIC, f"message {mid} is not delivered right now")
            self.stats.nacks += 1
            g.nack(p)
        else:
            self.stats.rejects += 1
            g.reject(p, reason)
        return None

    def dead_letter(self, q: DurableQueue, group, partition: int, entry, reason: str,
                    count: int, client: str | None) -> None:  # fmt: skip
        if not q.settings.dlq.enabled:
            log.info(
                "message dropped (dlq.enabled is false)",
                extra={"queue": q.name, "offset": entry.offset, "reason": reason},
            )
            return
        name, rk = dlq.target(q)
        target = self.queues.get(name)
        if target is None:
            if queue_name_problem(name):
                return
            target = self.create(name)
        if target is q:
            log.warning(
                "dead letter of the dead-letter queue itself dropped",
                extra={"queue": q.name, "offset": entry.offset},
            )
            return
        m = dlq.dead_message(entry, q.name, partition, group.name, client, count, reason)
        refused = target.append(m, rk, 0)
        if refused is not None:
            log.error(
                "dead letter dropped: %s",
                refused[1],
                extra={"queue": q.name, "offset": entry.offset},
            )

    # -- subscriptions -------------------------------------------------------------------------------

    def subscribe(self, session, topic_filter: str, qos: int, user_properties, v5: bool):
        """A `$queue/<queue>[/<pattern>]` subscription. Returns (granted QoS or reason code,
        reason string or None, a function to call once the SUBACK is sent, or None)."""
        name, pattern, _ = split(topic_filter)
        if "+" in name or "#" in name or not name:
            return TOPIC_FILTER_INVALID, "a queue subscription names one queue", None
        group = cursor = ack_mode = None
        for k, v in user_properties or ():
            if k == "consumer-group":
                group = v
            elif k == "cursor":
                cursor = v
            elif k == "ack-mode":
                ack_mode = v.lower()
        group = group or session.client_id
        try:
            start = parse_cursor(cursor)
        except ValueError as e:
            return IMPLEMENTATION_SPECIFIC, str(e), None
        if ack_mode not in (None, "auto", "manual"):
            return IMPLEMENTATION_SPECIFIC, "ack-mode: expected auto or manual", None
        q = self.queues.get(name)
        if q is None:
            q = self._auto(name)
            if isinstance(q, tuple):
                return UNSPECIFIED, q[1], None
        g = q.groups.get(group)
        if g is None:
            g = Group(q, group, pattern, time.time())
            q.groups[group] = g
            g.start_at(start)
            self.state.put_group(q.name, group, {"pattern": pattern, "created_at": g.created_at})
        elif g.pattern != pattern:
            others = [c for c in g.consumers if c.session is not session]
            if others:
                return (
                    UNSPECIFIED,
                    f"group {group!r} of queue {name!r} filters {g.pattern or '#'!r}: "
                    "subscribe with the same pattern, or use another consumer-group",
                    None,
                )
            g.pattern = pattern
            g.match = matcher(pattern)
            self.state.put_group(q.name, group, {"pattern": pattern, "created_at": g.created_at})
        granted = 1 if qos >= 1 else 0
        auto = (not v5) if ack_mode is None else ack_mode == "auto"
        lst = self.consumers.setdefault(session.client_id, [])
        for old in lst:
            if old.group.queue is q and old.pattern == pattern:
                # The same subscription again: its options change, its deliveries stay.
                if old.group is not g:
                    old.group.leave(old)
                    lst.remove(old)
                    break
                old.qos = granted
                old.auto_ack = auto
                if session.store is not None:
                    self.state.put_consumer(session.client_id, q.name, pattern, group, granted,
                                            auto)  # fmt: skip
                return granted, None, None
        c = Consumer(session, g, pattern, granted, auto)
        lst.append(c)
        g.consumers.append(c)
        if session.store is not None:
            self.state.put_consumer(session.client_id, q.name, pattern, group, granted, auto)

        def begin() -> None:
            if c in g.consumers and session.outlet is not None and not c.active:
                g.activate(c, session.window)

        return granted, None, begin

    def unsubscribe(self, session, topic_filter: str) -> bool:
        name, pattern, _ = split(topic_filter)
        lst = self.consumers.get(session.client_id)
        if not lst:
            return False
        for c in lst:
            if c.group.queue.name == name and c.pattern == pattern:
                lst.remove(c)
                c.group.leave(c)
                self.state.delete_consumer(session.client_id, name, pattern)
                return True
        return False

    # -- session hooks (the broker) ----------------------------------------------------------------

    def session_detached(self, session) -> None:
        """The session's connection ended (or was taken over): what its consumers held goes to
        other consumers (or to them when they come back)."""
        session.take_tokens()
        for c in self.consumers.get(session.client_id, ()):
            if c.session is session:
                c.group.deactivate(c)

    def session_resumed(self, session) -> None:
        for c in self.consumers.get(session.client_id, ()):
            if c.session is session:
                c.group.activate(c, session.window)

    def session_ended(self, session) -> None:
        lst = self.consumers.get(session.client_id)
        if not lst:
            return
        for c in [c for c in lst if c.session is session]:
            lst.remove(c)
            c.group.leave(c)
            self.state.delete_consumer(session.client_id, c.group.queue.name, c.pattern)
        if not lst:
            del self.consumers[session.client_id]

    # -- admin -----------------------------------------------------------------------------------------

    def get(self, name: str) -> DurableQueue | None:
        return self.queues.get(name)

    def list(self) -> list[dict]:
        return [self.queues[n].info(groups=False) for n in sorted(self.queues)]

    def seek(self, name: str, group: str, partition: int | None = None,
             offset: int | None = None, ts: float | None = None) -> dict[int, int]:  # fmt: skip
        """Move a group's cursor to an offset or a time (epoch seconds). KeyError if unknown."""
        q = self.queues[name]
        g = q.groups[group]
        if partition is not None and not 0 <= partition < len(q.logs):
            raise ValueError(f"partition {partition}: queue {name!r} has {len(q.logs)}")
        return g.seek(partition, offset, ts)

    def delete_group(self, name: str, group: str) -> bool:
        q = self.queues[name]
        g = q.groups.pop(group, None)
        if g is None:
            return False
        for c in list(g.consumers):
            lst = self.consumers.get(c.client_id)
            if lst and c in lst:
                lst.remove(c)
            g.deactivate(c)
            self.state.delete_consumer(c.client_id, name, c.pattern)
        for gp in g.parts:
            for p in list(gp.pending.values()):
                g._drop(p)
        self._cursors = {gp for gp in self._cursors if gp.group is not g}
        self.state.delete_group(name, group)
        return True

    def purge(self, name: str) -> int:
        """Remove every message of a queue; groups continue from its end. Returns how many."""
        q = self.queues[name]
        n = sum(plog.end - plog.start for plog in q.logs)
        for plog in q.logs:
            plog.active.flush()  # this turn's appends go too
            self.state.roll(plog)
            self.state.remove_segments(plog, list(plog.segments[:-1]))
            plog.purge()
        for g in q.groups.values():
            g.seek(None, offset=max(plog.end for plog in q.logs))
        return n

    def read(self, name: str, partition: int = 0, offset: int = 0, limit: int = 100) -> list:
        q = self.queues[name]
        if not 0 <= partition < len(q.logs):
            raise ValueError(f"partition {partition}: queue {name!r} has {len(q.logs)}")
        out = []
        for e in q.logs[partition].read(offset, limit):
            m = e.msg
            out.append({
                "partition": partition,
                "offset": e.offset,
                "timestamp": datetime.datetime.fromtimestamp(e.ts_ms / 1000, datetime.UTC)
                .isoformat(timespec="milliseconds"),
                "topic": m.topic,
                "routing_key": e.rkey,
                "partition_key": e.key,
                "payload": base64.b64encode(m.payload).decode(),
                "payload_size": m.payload_size,
                "user_properties": [list(kv) for kv in m.user_properties or ()],
                "content_type": m.content_type,
            })  # fmt: skip
        return out

    def replay(self, name: str, partition: int | None = None, offset: int = 0,
               limit: int = 1000, to: str | None = None) -> dict:  # fmt: skip
        """Append the dead letters of queue `name` (from `offset`, at most `limit` per
        partition) to the queue each came from (or to queue `to`)."""
        q = self.queues[name]
        done = skipped = 0
        for plog in q.logs:
            if partition is not None and plog.partition != partition:
                continue
            for e in plog.read(offset, limit):
                r = dlq.revived(e)
                if r is None and to is None:
                    skipped += 1
                    continue
                if r is None:
                    origin, m, rkey, start = to, e.msg.copy(), None, 0
                else:
                    origin, m, rkey, start = r
                    if to is not None:
                        origin = to
                target = self.queues.get(origin)
                if target is None or target.append(m, rkey, start) is not None:
                    skipped += 1
                    continue
                done += 1
        return {"replayed": done, "skipped": skipped}

    def info(self) -> dict:
        return {"queues": len(self.queues), **{k: getattr(self.stats, k)
                                              for k in ManagerStats.__slots__}}  # fmt: skip

    @property
    def data_dir(self) -> str | None:
        return os.fspath(self.root) if self.root is not None else None
