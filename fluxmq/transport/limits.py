"""The rate limits of `ratelimit.*`, as the listeners use them.

- `ratelimit.connection`: one `IPLimiter` shared by every MQTT listener (TCP and WebSocket):
  new connections per source IP.
- `ratelimit.message`: a `TokenBucket` per MQTT connection (`ChannelCore.msg_limit`, checked in
  C on each PUBLISH), and an `IPLimiter` for the HTTP bridge (publishes per source IP).
- `ratelimit.subscribe`: a `TokenBucket` per MQTT connection (`ChannelCore.sub_limit`, one token
  per topic filter).

Per-connection buckets go with their connection. An `IPLimiter` forgets, every
`cleanup_interval`, the addresses whose allowance has refilled completely (a full bucket and no
bucket behave the same), so the state of clients that went away is released.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxmq._speedups.ratelimit import KeyedLimiter, now


class IPLimiter:
    """A token bucket per source IP address, swept every `cleanup_interval` seconds."""

    __slots__ = ("every", "limiter", "next_sweep")

    def __init__(self, rate: float, burst: float, cleanup_interval: float) -> None:
        self.limiter = KeyedLimiter(rate, burst)
        self.every = cleanup_interval
        self.next_sweep = now() + cleanup_interval

    def allow(self, ip: str) -> bool:
        t = now()
        if t >= self.next_sweep:
            self.limiter.sweep(t)
            self.next_sweep = t + self.every
        return self.limiter.allow(ip, t)

    def __len__(self) -> int:
        return len(self.limiter)


@dataclass(slots=True)
class RateLimits:
    """What `ratelimit.*` turns on (None: that limit is off)."""

    connections: IPLimiter | None = None  # shared by the MQTT listeners
    message: tuple[float, float] | None = None  # (rate, burst) of each connection's bucket
    subscribe: tuple[float, float] | None = None
    http_messages: IPLimiter | None = None  # the HTTP bridge's publishes per source IP

    @classmethod
    def from_config(cls, cfg) -> RateLimits:
        rl = cfg.ratelimit
        if not rl.enabled:
            return cls()
        c, m, s = rl.connection, rl.message, rl.subscribe
        return cls(
            connections=IPLimiter(c.rate, c.burst, c.cleanup_interval) if c.enabled else None,
            message=(m.rate, float(m.burst)) if m.enabled else None,
            subscribe=(s.rate, float(s.burst)) if s.enabled else None,
            http_messages=IPLimiter(m.rate, m.burst, c.cleanup_interval) if m.enabled else None,
        )
