# Output buffers: a growable C buffer that packets are encoded into, a pool of them so idle
# connections hold none, and the flusher that writes each dirty connection once per loop turn.

cdef class WriteBuffer:
    cdef char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity

    cdef int reserve(self, Py_ssize_t extra) except -1
    cdef int put(self, const char* p, Py_ssize_t n) except -1
    cdef int put_byte(self, unsigned char b) except -1
    cdef int put_u16(self, unsigned int v) except -1
    cdef int put_u32(self, unsigned long v) except -1
    cdef int put_varint(self, unsigned long v) except -1
    cdef int put_bytes(self, object b) except -1
    cdef int put_prefixed(self, object b) except -1
    cdef int set_u16(self, Py_ssize_t at, unsigned int v) except -1
    cdef bytes take(self)
    cdef void release(self)


cdef class OutBuffer(WriteBuffer):
    """A connection's pending output: coalesced, written with one transport.write() per turn."""
    cdef object transport
    cdef Flusher flusher
    cdef bint dirty
    cdef public bint paused            # the transport asked us to pause writing
    cdef public bint closed
    cdef public unsigned long long bytes_out
    cdef public double last_progress   # loop time when the transport last drained (write_timeout)
    cdef public int held               # snapshots of its output waiting for a storage commit
    cdef bint close_when_drained
    cdef public bint ordered           # its pending output must not overtake the turn's commit

    cdef int mark(self) except -1
    cdef int mark_delivery(self) except -1
    cpdef int flush(self) except -1
    cpdef bytes take_held(self)
    cpdef int write_held(self, bytes data) except -1
    cpdef int close(self) except -1
    cdef int _finish(self) except -1


cdef class Flusher:
    cdef list _dirty
    cdef bint _scheduled
    cdef object _call_soon
    cdef object _run
    cdef public object barrier          # storage: callable(dirty) -> the buffers to write now

    cdef int add(self, OutBuffer b) except -1
    cdef list _write_deliveries(self, list dirty)
    cpdef int request(self) except -1
    cpdef object call_soon(self, object callback)
    cpdef int flush_all(self) except -1


cdef Py_ssize_t varint_size(unsigned long v)
