# cython: language_level=3
"""Token buckets for the rate limits.

`TokenBucket` holds up to `burst` tokens and gains `rate` tokens a second; each allowed event
takes one. The channel keeps one for its client's PUBLISH packets (`ChannelCore.msg_limit`) and
one for its SUBSCRIBE filters (`sub_limit`): they go with the connection, so a disconnected
client leaves no limiter state behind.

`KeyedLimiter` keeps a bucket per key (a source IP address for the connection rate limit and the
HTTP bridge). `sweep()` drops every bucket that has refilled completely: a full bucket behaves
exactly like a missing one, so forgetting it changes nothing but the memory held.
"""

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef inline double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def now() -> float:
    """The clock the buckets run on (CLOCK_MONOTONIC, as the channels' `last_rx`)."""
    return monotonic()


cdef class TokenBucket:
    """`rate` tokens a second, at most `burst`; starts full."""

    def __init__(self, double rate, double burst):
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = monotonic()

    cdef bint take(self, double now) noexcept:
        cdef double t = self.tokens
        if now > self.stamp:
            t += (now - self.stamp) * self.rate
            if t > self.burst:
                t = self.burst
            self.stamp = now
        if t >= 1.0:
            self.tokens = t - 1.0
            return True
        self.tokens = t
        return False

    cdef bint full_at(self, double now) noexcept:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def allow(self, double now=-1.0) -> bool:
        """Take a token if there is one (`now`: monotonic time; default: the clock)."""
        return self.take(monotonic() if now < 0 else now)

    def __repr__(self):
        return f"<TokenBucket rate={self.rate} burst={self.burst} tokens={self.tokens:.2f}>"


cdef class KeyedLimiter:
    """One `TokenBucket(rate, burst)` per key, made on first use, dropped by `sweep` once full."""

    def __init__(self, double rate, double burst):
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.buckets = {}

    cpdef bint allow(self, object key, double now=-1.0):
        cdef TokenBucket b = self.buckets.get(key)
        if now < 0:
            now = monotonic()
        if b is None:
            b = TokenBucket.__new__(TokenBucket)
            b.rate = self.rate
            b.burst = self.burst
            b.tokens = self.burst
            b.stamp = now
            self.buckets[key] = b
        return b.take(now)

    cpdef int sweep(self, double now=-1.0):
        """Forget the buckets that are full again; returns how many were dropped."""
        cdef list done
        cdef TokenBucket b
        if now < 0:
            now = monotonic()
        done = [k for k, b in self.buckets.items() if b.full_at(now)]
        for k in done:
            del self.buckets[k]
        return len(done)

    def __len__(self):
        return len(self.buckets)

    def __contains__(self, key):
        return key in self.buckets
