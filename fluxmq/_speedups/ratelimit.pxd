# Token buckets for the rate limits (`ratelimit.*`). The per-client message limit is checked by
# the channel's PUBLISH path with a C call (`TokenBucket.take`), only when the limit is on.

cdef class TokenBucket:
    cdef public double rate        # tokens added per second
    cdef public double burst       # most tokens held
    cdef public double tokens      # tokens now (as of `stamp`)
    cdef public double stamp       # monotonic time `tokens` was computed at

    cdef bint take(self, double now) noexcept
    cdef bint full_at(self, double now) noexcept


cdef class KeyedLimiter:
    cdef public double rate
    cdef public double burst
    cdef dict buckets

    cpdef bint allow(self, object key, double now=*)
    cpdef int sweep(self, double now=*)
