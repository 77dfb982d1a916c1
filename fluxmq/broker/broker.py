"""The broker: the domain every door (MQTT, and later WebSocket, HTTP, CoAP) talks to.

It owns the sessions (and their takeover: the "cm" of EMQX), the dispatcher that routes
publishes, the retained store, pending wills and session expiry. It knows no socket and no wire
format: a connected client is an `Outlet` (`fluxmq._speedups.session.Outlet`) that a protocol
layer attaches to a session, and whose `takeover()`/`shutdown()` the broker may call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from fluxmq._speedups.dispatch import Dispatcher
from fluxmq._speedups.message import Message
from fluxmq._speedups.session import Session, Subscription, discard_congested
from fluxmq.broker.hooks import Hooks
from fluxmq.broker.retained import RetainedStore
from fluxmq.broker.session_expiry import SessionExpiry
from fluxmq.broker.will import Will, WillScheduler

log = logging.getLogger("fluxmq.broker")

NEVER_EXPIRES = 0xFFFFFFFF


@dataclass(slots=True)
class SessionSettings:
    """The session limits of `session.*` and `broker.max_inflight`."""

    max_inflight: int = 100
    max_queue: int = 1000
    drop_new: bool = False  # offline_queue_policy: reject
    default_expiry_interval: int = 7200
    max_expiry_interval: int = NEVER_EXPIRES


@dataclass(slots=True)
class ConnectResult:
    session: Session
    present: bool


@dataclass(slots=True)
class BrokerStats:
    started_at: float = field(default_factory=time.time)
    connections_total: int = 0
    sessions_expired: int = 0


class Broker:
    """Sessions, routing, retained messages and wills."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: SessionSettings | None = None,
        max_retained: int = 0,
        hooks: Hooks | None = None,
        store=None,
    ) -> None:
        self.loop = loop
        self.settings = settings or SessionSettings()
        self.hooks = hooks or Hooks()
        self.store = store  # durable storage (fluxmq.storage), or None for memory
        self.dispatcher = Dispatcher()
        self.retained = RetainedStore(max_retained, store)
        self.dispatcher.on_retain = self.retained.set
        self.sessions: dict[str, Session] = {}
        self.wills = WillScheduler(self.publish, loop)
        if store is not None:
            self.wills.on_fired = store.will_removed
        self.expiry = SessionExpiry(loop, self._expire_session)
        self.stats = BrokerStats()
        self.outlets: set = set()  # every connected client's outlet
        self.queues = None  # the durable queues (fluxmq.queue.manager.QueueManager), if any

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, msg: Message) -> int:
        """Route a message from any door; returns the number of deliveries."""
        if msg.timestamp == 0.0:
            msg.timestamp = time.time()
        n = self.dispatcher.publish(msg)
        discard_congested()  # only an MQTT channel can pause its publisher (back-pressure)
        return n

    @property
    def counters(self):
        return self.dispatcher.counters

    # -- connecting and disconnecting ----------------------------------------------------------

    def connect(
        self,
        outlet,
        client_id: str,
        clean_start: bool,
        expiry_interval: int,
        window: int,
        will: Will | None,
    ) -> ConnectResult:
        """Attach a newly connected client to its session, taking over from an older
        connection with the same client id. The caller sends CONNACK, then `resume_session`."""
        old = self.sessions.get(client_id)
        session = None
        present = False
        if old is not None:
            # The old session ends if the client asks for a clean start or it was never to
            # outlive its connection; otherwise this connection continues it.
            ends = clean_start or old.expiry_interval == 0
            if old.outlet is not None:
                self._take_over(old, ends)
            if ends:
                self.wills.fire_now(client_id)
                self._end_session(old)
            else:
                self.wills.cancel(client_id)
                self.expiry.cancel(client_id)
                session = old
                present = True
        if session is None:
            session = Session(
                client_id,
                expiry_interval,
                window,
                self.settings.max_queue,
                self.settings.drop_new,
            )
            self.sessions[client_id] = session
        session.expiry_interval = expiry_interval
        session.window = window
        session.will = will
        session.outlet = outlet
        session.disconnected_at = 0.0
        self._persist_connected(session)
        self.outlets.add(outlet)
        self.stats.connections_total += 1
        return ConnectResult(session, present)

    def _persist_connected(self, session: Session) -> None:
        """A persistent session is written with its will (which goes if the broker dies while
        the client is connected); one that no longer outlives its connection is forgotten."""
        store = self.store
        if store is None:
            return
        if session.expiry_interval == 0:
            if session.store is not None:
                store.session_removed(session)
                session.store = None
            return
        if session.store is None:
            session.store = store
            for sub in session.subscriptions.values():
                store.sub_added(session, sub)
        store.session_saved(session)
        if session.will is not None:
            store.will_saved(session.client_id, session.will, 0.0)
        else:
            store.will_removed(session.client_id)

    def resume_session(self, session: Session, outlet) -> None:
        """After CONNACK: re-send what is unacknowledged and start the queue."""
        session.resume(outlet)
        if self.queues is not None:
            self.queues.session_resumed(session)

    def _take_over(self, old: Session, ends_session: bool) -> None:
        """A new connection claims a connected session: the old one is closed (MQTT 5 gets
        DISCONNECT 0x8E). Its will goes now if the old session ends with it."""
        outlet = old.outlet
        will = old.will
        old.will = None
        self.outlets.discard(outlet)
        old.detach()
        outlet.takeover()
        if will is not None and ends_session:
            self.publish(will.to_message())
        self._redistribute_shared(old)

    def disconnect(self, outlet, session: Session | None, send_will: bool) -> None:
        """A connection ended. `send_will` is False only after DISCONNECT with reason 0x00."""
        self.outlets.discard(outlet)
        if session is None or session.outlet is not outlet:
            return  # never attached, or already taken over
        session.detach()
        will = session.will
        session.will = None
        ends_now = session.expiry_interval == 0
        store = session.store
        if will is not None and send_will:
            ends_in = None if session.expiry_interval == NEVER_EXPIRES else session.expiry_interval
            left = self.wills.schedule(session.client_id, will, 0 if ends_now else ends_in)
            if store is not None and left > 0:
                store.will_saved(session.client_id, will, time.time() + left)
        elif store is not None:
            store.will_removed(session.client_id)
        self._redistribute_shared(session)
        if ends_now:
            self._end_session(session)
            return
        if store is not None:
            store.session_saved(session)
        if session.expiry_interval != NEVER_EXPIRES:
            self.expiry.schedule(session.client_id, session.expiry_interval)

    def _redistribute_shared(self, session: Session) -> None:
        if self.queues is not None:  # its durable-queue deliveries go back to their groups
            self.queues.session_detached(session)
        entries = session.take_shared()
        if entries:
            self.dispatcher.redeliver_shared(session, entries)

    def _expire_session(self, client_id: str) -> None:
        session = self.sessions.get(client_id)
        if session is None or session.outlet is not None:
            return
        self.stats.sessions_expired += 1
        self.wills.fire_now(client_id)
        self._end_session(session)

    def _end_session(self, session: Session) -> None:
        """Discard a session: its subscriptions and messages go."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        self.expiry.cancel(session.client_id)
        if self.queues is not None:
            self.queues.session_ended(session)
        if session.store is not None:
            session.store.session_removed(session)
            session.store = None
        for sub in list(session.subscriptions.values()):
            self.dispatcher.unsubscribe(session, sub.topic_filter, sub.share_group)
        session.subscriptions.clear()
        session.clear()
        self.hooks.session_ended(session)

    def set_expiry(self, session: Session, expiry_interval: int) -> None:
        """DISCONNECT changed the Session Expiry Interval (written when the connection ends)."""
        session.expiry_interval = expiry_interval

    # -- subscriptions ---------------------------------------------------------------------------

    def subscribe(self, session: Session, sub: Subscription) -> bool:
        """Add or replace a subscription; True if it is new."""
        new = self.dispatcher.subscribe(sub) == 1
        session.subscriptions[sub.full_filter] = sub
        if session.store is not None:
            session.store.sub_added(session, sub)
        self.hooks.subscription_created(session.client_id, sub)
        return new

    def unsubscribe(self, session: Session, topic_filter: str, share_group: str | None) -> bool:
        removed = self.dispatcher.unsubscribe(session, topic_filter, share_group)
        full = topic_filter if share_group is None else f"$share/{share_group}/{topic_filter}"
        if session.subscriptions.pop(full, None) is not None and session.store is not None:
            session.store.sub_removed(session, full)
        if removed is not None:
            self.hooks.subscription_removed(session.client_id, full)
        return removed is not None

    def send_retained(self, session: Session, sub: Subscription) -> int:
        """Deliver the retained messages matching a new subscription (retain flag set)."""
        n = 0
        sub_ids = None if sub.identifier is None else [sub.identifier]
        for msg in self.retained.match(sub.topic_filter):
            qos = min(msg.qos, sub.qos)
            n += self.dispatcher.publish_to(session, msg, qos, True, sub_ids)
        return n

    # -- shutdown --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Server going down: the server closes every connection, so every connected client's
        will is due [MQTT-3.1.2-8]. With durable storage, sessions outlive the process: a will
        with a delay is stored with its deadline and goes when it is due, after the restart.
        In memory, every session ends with the process, so every will goes now."""
        outlets = list(self.outlets)
        for outlet in outlets:
            session = getattr(outlet, "session", None)
            if session is None or session.outlet is not outlet:
                continue
            if self.store is None or session.store is None:
                if session.will is not None:
                    will = session.will
                    session.will = None
                    self.publish(will.to_message())
            else:
                self.disconnect(outlet, session, True)
                self.outlets.add(outlet)  # still to be told below
        if self.store is None:
            self.wills.fire_all()
        for outlet in outlets:
            outlet.shutdown()
        self.expiry.cancel_all()

    # -- start-up from durable storage -------------------------------------------------------------

    def load(self, loaded) -> None:
        """Rebuild the state read from storage, as if the broker had stayed up: sessions and
        wills whose deadlines passed while it was down are handled now."""
        now = time.time()
        due_wills = []
        expired = []
        for ls in loaded.sessions:
            s = ls.session
            if ls.was_connected:
                s.disconnected_at = now  # it lost its connection when the broker stopped
            self.sessions[s.client_id] = s
            for sub in ls.subscriptions:
                self.dispatcher.subscribe(sub)
                s.subscriptions[sub.full_filter] = sub
            left = None
            if s.expiry_interval != NEVER_EXPIRES:
                left = s.disconnected_at + s.expiry_interval - now
                if left <= 0:
                    expired.append(s)
            if ls.will is not None:
                # Stored with a deadline once its connection ended; a connection alive when
                # the broker stopped ended now.
                delay = ls.will_deadline - now if ls.will_deadline else float(ls.will.delay)
                if left is not None:
                    delay = min(delay, max(left, 0.0))
                due_wills.append((s.client_id, ls.will, delay))
            if left is not None and left > 0:
                self.expiry.schedule(s.client_id, left)
            s.store.session_saved(s)
        for msg in loaded.retained:
            if msg.expired(now):
                self.store.retained_clear(msg.topic)
            else:
                self.retained.load(msg)
        # Wills after every subscription is back, so persistent subscribers get them.
        for client_id, will, delay in due_wills:
            left = self.wills.schedule(client_id, will, None, delay=max(delay, 0.0))
            if left > 0:
                self.store.will_saved(client_id, will, now + left)
        for s in expired:
            self.stats.sessions_expired += 1
            self._end_session(s)
        log.info(
            "state loaded from storage",
            extra={
                "sessions": len(self.sessions),
                "retained": len(self.retained),
                "expired": len(expired),
                "wills": len(due_wills),
            },
        )

    def client_count(self) -> tuple[int, int]:
        """(connected, total sessions)."""
        return len(self.outlets), len(self.sessions)
