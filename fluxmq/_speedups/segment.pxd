# The segment files of a durable queue partition (fluxmq.queue.log): batches of records with a
# CRC, written with one writev per loop turn; a sparse offset index and a time index.

from libc.stdint cimport uint32_t, int64_t

from fluxmq._speedups.message cimport Message


cdef class FileHandle:
    cdef public int fd
    cdef public long long written         # the last write (a turn number) made to it
    cdef public long long synced          # the last write an fsync is known to cover


cdef class Entry:
    cdef public long long offset
    cdef public long long ts_ms           # append time, milliseconds since the epoch
    cdef public object key                # the partition key (str) or None
    cdef public str rkey                  # the routing key the subscription patterns filter
    cdef public Message msg               # the message as published (payload without a copy)
    cdef public Py_ssize_t size           # bytes of the record in the segment


cdef class Segment:
    cdef public str path                  # the .seg file
    cdef public long long base            # first offset this segment may hold
    cdef public long long next_offset     # one past the last record written
    cdef public long long size            # bytes written
    cdef public long long first_ts        # ms of the first record (0 while empty)
    cdef public long long max_ts          # ms, the largest timestamp written
    cdef public long long count           # records written
    cdef public bint sealed
    cdef public FileHandle fh
    cdef uint32_t* idx_rel
    cdef uint32_t* idx_pos
    cdef int64_t* idx_ts
    cdef Py_ssize_t n_idx
    cdef Py_ssize_t cap_idx
    cdef long long last_idx_pos
    # the batch being gathered this loop turn
    cdef char* buf
    cdef Py_ssize_t blen
    cdef Py_ssize_t bcap
    cdef list refs
    cdef public long long pending
    cdef long long pend_base
    cdef long long pend_last
    cdef long long pend_base_ts
    cdef long long pend_max_ts
    cdef public long long pending_bytes

    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef int _index(self, long long rel, long long pos, long long ts) except -1
    cdef long long _scan(self, long long pos) except -1
    cdef bint _load_index(self) except -1
    cdef Py_ssize_t _seek(self, long long offset) noexcept
    cdef list _read_from(self, long long pos, long long offset, Py_ssize_t max_bytes,
                         Py_ssize_t max_count)
    cpdef Py_ssize_t append(self, long long offset, long long ts_ms, Message msg, object key,
                            str rkey, Py_ssize_t rk_start) except -1
    cpdef long long flush(self) except -1


cpdef unsigned int crc32c(object data, unsigned int crc=*)
