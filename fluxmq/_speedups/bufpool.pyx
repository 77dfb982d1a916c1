# cython: language_level=3
"""Output buffers and the per-loop-turn flush.

Why: a broker on this machine is limited by system calls per message, not by the kernel or by
Python (see docs/performance.md). Every packet for a connection is encoded into that
connection's `OutBuffer`; the first packet of a loop turn registers the buffer with the
`Flusher`, which writes each dirty buffer with a single `transport.write()` at the end of the
turn. Storage for the buffers comes from a small pool, so an idle connection holds no buffer.

Durable storage sets `Flusher.barrier`: at the end of a turn it commits what the turn changed
before the buffers it is given are written, and with `storage.fsync: always` it takes the turn's
output (`take_held`) and writes it (`write_held`) only once the commit is on disk, in order.
A buffer holding only QoS 0/1 PUBLISH packets (`mark_delivery`, no `ordered` output) and no
output held for an earlier commit is written before the barrier: a delivery acknowledges
nothing, so a subscriber need not wait for a commit that only publishers' acknowledgements
depend on.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy

import asyncio

cdef enum:
    CHUNK = 16384            # the pooled buffer size
    POOL_MAX = 256           # pooled buffers kept for reuse (4 MiB)

cdef char** _pool = <char**>malloc(POOL_MAX * sizeof(char*))
cdef int _pool_len = 0


cdef inline char* _pool_get():
    global _pool_len
    if _pool_len > 0:
        _pool_len -= 1
        return _pool[_pool_len]
    return <char*>malloc(CHUNK)


cdef inline void _pool_put(char* p, Py_ssize_t cap):
    global _pool_len
    if cap == CHUNK and _pool_len < POOL_MAX:
        _pool[_pool_len] = p
        _pool_len += 1
    else:
        free(p)


def pool_stats():
    """(buffers pooled, bytes pooled): for tests and metrics."""
    return _pool_len, _pool_len * CHUNK


cdef Py_ssize_t varint_size(unsigned long v):
    if v < 128:
        return 1
    if v < 16384:
        return 2
    if v < 2097152:
        return 3
    return 4


cdef class WriteBuffer:
    """A growable byte buffer for encoding packets; storage is taken from the pool lazily."""

    def __dealloc__(self):
        self.release()

    cdef void release(self):
        if self.data != NULL:
            _pool_put(self.data, self.capacity)
            self.data = NULL
        self.length = 0
        self.capacity = 0

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.length + extra
        cdef Py_ssize_t cap
        cdef char* p
        if need <= self.capacity:
            return 0
        if self.data == NULL and need <= CHUNK:
            self.data = _pool_get()
            if self.data == NULL:
                raise MemoryError()
            self.capacity = CHUNK
            return 0
        cap = self.capacity if self.capacity > 0 else CHUNK
        while cap < need:
            cap *= 2
        if self.data == NULL:
            p = <char*>malloc(cap)
        elif self.capacity == CHUNK:
            # Leave pooled storage as pooled: copy into a private larger block.
            p = <char*>malloc(cap)
            if p != NULL:
                memcpy(p, self.data, self.length)
                _pool_put(self.data, self.capacity)
        else:
            p = <char*>realloc(self.data, cap)
        if p == NULL:
            raise MemoryError()
        self.data = p
        self.capacity = cap
        return 0

    cdef int put(self, const char* p, Py_ssize_t n) except -1:
        if self.length + n > self.capacity:
            self.reserve(n)
        memcpy(self.data + self.length, p, n)
        self.length += n
        return 0

    cdef int put_byte(self, unsigned char b) except -1:
        if self.length + 1 > self.capacity:
            self.reserve(1)
        self.data[self.length] = <char>b
        self.length += 1
        return 0

    cdef int put_u16(self, unsigned int v) except -1:
        if self.length + 2 > self.capacity:
            self.reserve(2)
        self.data[self.length] = <char>((v >> 8) & 0xFF)
        self.data[self.length + 1] = <char>(v & 0xFF)
        self.length += 2
        return 0

    cdef int set_u16(self, Py_ssize_t at, unsigned int v) except -1:
        self.data[at] = <char>((v >> 8) & 0xFF)
        self.data[at + 1] = <char>(v & 0xFF)
        return 0

    cdef int put_u32(self, unsigned long v) except -1:
        if self.length + 4 > self.capacity:
            self.reserve(4)
        self.data[self.length] = <char>((v >> 24) & 0xFF)
        self.data[self.length + 1] = <char>((v >> 16) & 0xFF)
        self.data[self.length + 2] = <char>((v >> 8) & 0xFF)
        self.data[self.length + 3] = <char>(v & 0xFF)
        self.length += 4
        return 0

    cdef int put_varint(self, unsigned long v) except -1:
        cdef unsigned char b
        if v > 268435455:
            raise ValueError(f"a variable byte integer is at most 268435455, not {v}")
        if self.length + 4 > self.capacity:
            self.reserve(4)
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.data[self.length] = <char>(b | 0x80)
                self.length += 1
            else:
                self.data[self.length] = <char>b
                self.length += 1
                return 0

    cdef int put_bytes(self, object b) except -1:
        """Append a bytes-like object (bytes, bytearray, memoryview) or str (as UTF-8)."""
        cdef Py_buffer view
        cdef const char* s
        cdef Py_ssize_t n
        if type(b) is bytes:
            return self.put(<const char*>(<bytes>b), len(<bytes>b))
        if type(b) is str:
            s = PyUnicode_AsUTF8AndSize(b, &n)
            return self.put(s, n)
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE)
        try:
            self.put(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef int put_prefixed(self, object b) except -1:
        """Append a two-byte length then the data (MQTT string or binary data)."""
        cdef Py_buffer view
        cdef const char* s
        cdef Py_ssize_t n
        if type(b) is str:
            s = PyUnicode_AsUTF8AndSize(b, &n)
            if n > 65535:
                raise ValueError(f"an MQTT string is at most 65535 bytes, not {n}")
            self.put_u16(<unsigned int>n)
            return self.put(s, n)
        if type(b) is bytes:
            if len(<bytes>b) > 65535:
                raise ValueError(f"MQTT binary data is at most 65535 bytes, not {len(b)}")
            self.put_u16(<unsigned int>len(<bytes>b))
            return self.put(<const char*>(<bytes>b), len(<bytes>b))
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE)
        try:
            if view.len > 65535:
                raise ValueError(f"MQTT binary data is at most 65535 bytes, not {view.len}")
            self.put_u16(<unsigned int>view.len)
            self.put(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef bytes take(self):
        """The content as bytes; the buffer is emptied and its storage returned to the pool."""
        cdef bytes out = PyBytes_FromStringAndSize(self.data, self.length) if self.length else b""
        self.release()
        return out

    # Python-level access, for the codec's standalone encoders and for tests.
    def getvalue(self) -> bytes:
        return PyBytes_FromStringAndSize(self.data, self.length) if self.length else b""

    def __len__(self):
        return self.length


cdef class OutBuffer(WriteBuffer):
    """What a connection will write at the end of this loop turn."""

    def __init__(self, object transport, Flusher flusher):
        self.transport = transport
        self.flusher = flusher

    cdef int mark(self) except -1:
        """Output was added: written at the end of this turn, after the turn's storage commit
        (an acknowledgement may depend on it)."""
        self.ordered = True
        if not self.dirty:
            self.dirty = True
            self.flusher.add(self)
        return 0

    cdef int mark_delivery(self) except -1:
        """A QoS 0 or 1 PUBLISH to this client was added: by itself it may leave before the
        turn's storage commit (if the broker dies before that commit, the message is delivered
        again, which QoS 1 allows; what acknowledges a publisher still waits)."""
        if not self.dirty:
            self.dirty = True
            self.flusher.add(self)
        return 0

    cpdef int flush(self) except -1:
        """Write everything pending with one transport.write(); keep it while paused."""
        cdef bytes chunk
        self.dirty = False
        if self.length == 0 or self.paused:
            if self.close_when_drained and self.held == 0 and self.length == 0 \
                    and self.transport is not None:
                self._finish()
            return 0
        if self.closed or self.transport is None:
            self.release()
            self.ordered = False
            return 0
        chunk = PyBytes_FromStringAndSize(self.data, self.length)
        self.bytes_out += self.length
        # Keep nothing while idle: storage goes back to the pool until the next packet.
        self.release()
        self.ordered = False
        self.transport.write(chunk)
        if self.close_when_drained and self.held == 0:
            self._finish()
        return 0

    cdef int _finish(self) except -1:
        """After the last output: half-close (the client still reads what we sent, e.g. our
        DISCONNECT, even if it keeps writing for a moment), or close where that is impossible."""
        cdef object t = self.transport
        can = getattr(t, "can_write_eof", None)
        if can is not None and can():
            t.write_eof()
        else:
            t.close()
        return 0

    cpdef bytes take_held(self):
        """Take the pending output to write after a storage commit (see write_held)."""
        cdef bytes chunk = PyBytes_FromStringAndSize(self.data, self.length) if self.length else b""
        self.dirty = False
        self.release()
        self.ordered = False
        self.held += 1
        return chunk

    cpdef int write_held(self, bytes data) except -1:
        """The commit this output waited for is on disk: write it (in order)."""
        self.held -= 1
        if self.closed or self.transport is None:
            return 0
        if data:
            self.bytes_out += len(data)
            self.transport.write(data)
        if self.held == 0 and self.close_when_drained and self.length == 0:
            self._finish()
        return 0

    cpdef int close(self) except -1:
        """Close the transport once what is pending (and any held output) is written.

        Always at the end of the loop turn, through the flusher: what this connection was told
        in this turn may depend on the turn's storage commit, and must not overtake it."""
        if self.transport is None:
            return 0
        self.close_when_drained = True
        self.paused = False
        if self.length == 0 and self.held == 0 and not self.dirty:
            self._finish()
            return 0
        self.mark()
        return 0

    def abort(self) -> None:
        """Drop the connection at once, unwritten output and all (its acknowledgements
        depended on a storage commit that failed)."""
        self.release()
        if self.transport is not None:
            self.transport.abort()

    def write(self, data) -> None:
        """Queue bytes for the end of this loop turn (Python protocols: the HTTP bridge)."""
        self.put_bytes(data)
        self.mark()

    def detach_transport(self):
        """The connection is gone: drop pending output and the transport."""
        self.closed = True
        self.transport = None
        self.release()

    @property
    def pending(self) -> int:
        return self.length


cdef inline int _flush(OutBuffer b) except -1:
    try:
        b.flush()
    except Exception:
        # A transport that died under us: drop its output, others still get theirs.
        b.closed = True
        b.release()
    return 0


cdef class Flusher:
    """Writes every dirty OutBuffer once, at the end of the current event-loop turn."""

    def __init__(self, loop=None):
        if loop is None:
            loop = asyncio.get_event_loop()
        self._dirty = []
        self._scheduled = False
        self._call_soon = loop.call_soon
        self._run = self.flush_all

    cdef int add(self, OutBuffer b) except -1:
        self._dirty.append(b)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._run)
        return 0

    cpdef int request(self) except -1:
        """Run flush_all at the end of this turn even if no buffer is dirty (storage work)."""
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._run)
        return 0

    cpdef object call_soon(self, object callback):
        """Schedule `callback` on this flusher's loop (for objects that keep no loop)."""
        return self._call_soon(callback)

    cdef list _write_deliveries(self, list dirty):
        """Write now the buffers holding only QoS 0/1 deliveries (`ordered` unset) with no
        earlier output waiting for a commit; the rest, for the storage barrier. Subscribers
        need not wait for the commit that only publishers' acknowledgements depend on."""
        cdef list rest = []
        cdef OutBuffer b
        cdef Py_ssize_t i
        for i in range(len(dirty)):
            b = <OutBuffer>dirty[i]
            if b.ordered or b.held:
                rest.append(b)
            else:
                _flush(b)
        return rest

    cpdef int flush_all(self) except -1:
        cdef list dirty = self._dirty
        cdef Py_ssize_t i
        self._dirty = []
        self._scheduled = False
        if self.barrier is not None:
            dirty = self._write_deliveries(dirty)
            dirty = self.barrier(dirty)
        for i in range(len(dirty)):
            _flush(<OutBuffer>dirty[i])
        return 0
