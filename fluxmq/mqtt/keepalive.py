"""Keep-alive and connection timeouts, checked by one periodic scan of every connection.

- Keep-alive: a connected client silent for 1.5 x its keep-alive is disconnected (MQTT 5:
  DISCONNECT 0x8D) [MQTT-3.1.2-22]; its will is published.
- `read_timeout`: a connection must send CONNECT within it, and a packet that started arriving
  must be complete within it.
- `write_timeout`: a client that has accepted no data for that long while we have output for it
  is disconnected.
- `broker.retry_interval`: MQTT 3.1.1 clients get unacknowledged QoS 1/2 messages again after
  it (MQTT 5 forbids resending within a connection [MQTT-4.4.0-1]).
- Back-pressure: a publisher paused because a subscriber's queue is full resumes after at most
  BLOCK_MAX seconds even if the queue did not drain (then the queue's bound and policy apply);
  this also breaks any cycle of clients waiting on each other. A paused client is not held to
  its keep-alive (we are not reading it).

One scan of all connections every half second costs far less than a timer per connection that
is re-armed on every packet.
"""

from __future__ import annotations

import logging

from fluxmq._speedups.channel import now as monotonic_now
from fluxmq.mqtt import reason_codes as rc
from fluxmq.periodic import Periodic

log = logging.getLogger("fluxmq.mqtt")

ST_CONNECTED = 2
ST_CLOSING = 3
BLOCK_MAX = 2.0


class Timeouts(Periodic):
    """The periodic scan over the connections of some listeners."""

    def __init__(self, listeners, interval: float = 0.5) -> None:
        super().__init__()
        self.listeners = listeners
        self.interval = interval

    def tick(self, late: float) -> None:
        self.scan()

    def scan(self) -> None:
        now = monotonic_now()
        for listener in self.listeners:
            s = listener.settings
            for conn in list(listener.connections):
                state = conn.state
                if state >= ST_CLOSING:
                    continue
                if conn.blocked:
                    if now - conn.blocked_since > BLOCK_MAX:
                        conn.release_all()
                    continue
                idle = now - conn.last_rx
                if state == ST_CONNECTED:
                    ka = conn.keepalive
                    if ka and idle > ka * 1.5:
                        conn.close_reason = rc.KEEP_ALIVE_TIMEOUT
                        conn.close(rc.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
                        continue
                    if conn.version < 5 and s.retry_interval and conn.session.inflight_count:
                        conn.session.retry_due(now, s.retry_interval)
                elif now - conn.opened_at > s.read_timeout:
                    conn.close(-1, "no CONNECT within the read timeout")
                    continue
                if conn.decoder.pending and idle > s.read_timeout:
                    conn.close_reason = rc.KEEP_ALIVE_TIMEOUT
                    conn.close(-1, "incomplete packet for longer than the read timeout")
                    continue
                out = conn.out
                if out is not None and out.paused and now - out.last_progress > s.write_timeout:
                    conn.close(-1, "client accepted no data for longer than the write timeout")
