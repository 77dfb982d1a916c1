# cython: language_level=3
"""Segment files of a durable queue partition.

A partition's log is a list of segments, each a file `<base offset:020d>.seg` of batches:

    batch header (48 bytes, little-endian)
      0  magic  b"FLXQ"
      4  CRC-32C of bytes 8 .. batch_len
      8  batch_len            u32, header included
     12  version (1), flags (0), reserved u16
     16  base_offset          u64
     24  count                u32, records in the batch
     28  last_offset_delta    u32 (offsets may have gaps after compaction)
     32  base_ts              i64, ms since the epoch (the first record's)
     40  max_ts               i64, ms
    records, each
      varint  length of the rest of the record
      varint  offset - base_offset
      varint  zigzag(ts - base_ts)
      u8      attributes: bits 0-1 QoS, bit 2 payload format present, bit 3 its value,
              bit 4 expiry present, bit 5 explicit routing key
      varint  partition key length + 1 (0: no key), key (UTF-8)
      varint  topic length, topic (UTF-8)
      varint  routing key: explicit -> length, UTF-8; else where it starts in the topic
      f64     expiry (epoch seconds), if present
      varint  properties length, properties: (id u8, value)* with 0x03 content type, 0x08
              response topic, 0x09 correlation data, 0x26 user property (varint-prefixed)
      varint  payload length, payload

Appends of one loop turn gather into one batch, written by `flush()` with a single writev: the
record headers are encoded into a buffer, payloads of 1 KiB or more are not copied at all (the
iovec points into the bytes they arrived in). A torn tail (a crash in the middle of a write) is
found by the CRC when the segment is opened and cut off.

A sparse index maps offsets to file positions (an entry every 4 KiB of batches) and a time
index maps times to offsets (the largest timestamp written before each indexed batch, so that
it never decreases). Both live in memory while the segment is written and go to `.idx` / `.tix`
files when it is sealed; a sealed segment opens from them without reading its data.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.errno cimport errno, EINTR
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from posix.unistd cimport close, pread, fsync, ftruncate
from posix.uio cimport iovec, writev

from fluxmq._speedups.message cimport Message, new_message

import os

cdef enum:
    HEADER = 48
    VERSION = 1
    INDEX_EVERY = 4096          # bytes of batches between two index entries
    ZERO_COPY_MIN = 1024        # payloads at least this long are written from where they are
    IOV_MAX_ = 1024
    READ_CHUNK = 262144
    IDX_HEADER = 48

cdef bytes MAGIC = b"FLXQ"
cdef bytes IDX_MAGIC = b"FLXI"
cdef bytes TIX_MAGIC = b"FLXT"


class SegmentError(Exception):
    """A damaged segment (bad CRC, impossible length) where data must be sound."""


# -- CRC-32C (Castagnoli), slicing by 8 ----------------------------------------------------------

cdef uint32_t _crc_tab[8][256]


cdef void _crc_init() noexcept:
    cdef uint32_t c
    cdef int i, j, k
    for i in range(256):
        c = i
        for j in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        _crc_tab[0][i] = c
    for i in range(256):
        c = _crc_tab[0][i]
        for k in range(1, 8):
            c = _crc_tab[0][c & 0xFF] ^ (c >> 8)
            _crc_tab[k][i] = c


_crc_init()


cdef inline uint32_t _crc(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil:
    cdef uint64_t v
    crc = ~crc
    while n and (<size_t>p & 7):
        crc = _crc_tab[0][(crc ^ p[0]) & 0xFF] ^ (crc >> 8)
        p += 1
        n -= 1
    while n >= 8:
        memcpy(&v, p, 8)
        v ^= crc
        crc = (_crc_tab[7][v & 0xFF] ^ _crc_tab[6][(v >> 8) & 0xFF]
               ^ _crc_tab[5][(v >> 16) & 0xFF] ^ _crc_tab[4][(v >> 24) & 0xFF]
               ^ _crc_tab[3][(v >> 32) & 0xFF] ^ _crc_tab[2][(v >> 40) & 0xFF]
               ^ _crc_tab[1][(v >> 48) & 0xFF] ^ _crc_tab[0][v >> 56])
        p += 8
        n -= 8
    while n:
        crc = _crc_tab[0][(crc ^ p[0]) & 0xFF] ^ (crc >> 8)
        p += 1
        n -= 1
    return ~crc


cpdef unsigned int crc32c(object data, unsigned int crc=0):
    """CRC-32C of bytes (continuing `crc`); also the stable hash of partition keys."""
    cdef const char* s
    cdef Py_ssize_t n
    if type(data) is str:
        s = PyUnicode_AsUTF8AndSize(data, &n)
        return _crc(crc, <const unsigned char*>s, n)
    cdef bytes b = data if type(data) is bytes else bytes(data)
    return _crc(crc, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# -- little-endian and varint helpers --------------------------------------------------------------

cdef inline void _put32(char* p, uint32_t v) noexcept:
    p[0] = <char>(v & 0xFF)
    p[1] = <char>((v >> 8) & 0xFF)
    p[2] = <char>((v >> 16) & 0xFF)
    p[3] = <char>((v >> 24) & 0xFF)


cdef inline void _put64(char* p, uint64_t v) noexcept:
    _put32(p, <uint32_t>(v & 0xFFFFFFFF))
    _put32(p + 4, <uint32_t>(v >> 32))


cdef inline uint32_t _get32(const unsigned char* p) noexcept:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _get64(const unsigned char* p) noexcept:
    return _get32(p) | (<uint64_t>_get32(p + 4) << 32)


cdef inline Py_ssize_t _varint_len(uint64_t v) noexcept:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t _put_varint(char* p, uint64_t v) noexcept:
    cdef Py_ssize_t n = 0
    while v >= 0x80:
        p[n] = <char>((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    p[n] = <char>v
    return n + 1


cdef struct Reader:
    const unsigned char* p
    Py_ssize_t pos
    Py_ssize_t end


cdef inline uint64_t _rv(Reader* r) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if r.pos >= r.end or shift > 63:
            raise SegmentError("record runs past its end")
        b = r.p[r.pos]
        r.pos += 1
        v |= (<uint64_t>(b & 0x7F)) << shift
        if not (b & 0x80):
            return v
        shift += 7


cdef inline str _rs(Reader* r, Py_ssize_t n):
    if n < 0 or r.pos + n > r.end:
        raise SegmentError("record runs past its end")
    cdef str s = PyUnicode_DecodeUTF8(<char*>r.p + r.pos, n, NULL)
    r.pos += n
    return s


cdef inline const char* _utf8(object s, Py_ssize_t* n) except NULL:
    return PyUnicode_AsUTF8AndSize(s, n)


# -- file handles ------------------------------------------------------------------------------------

cdef class FileHandle:
    """An open descriptor, closed when its last holder lets go: a segment rolled or removed by
    the loop while a writer thread still fsyncs it keeps a valid descriptor."""

    def __cinit__(self, int fd):
        self.fd = fd

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def fsync(self):
        cdef int fd = self.fd
        cdef int r
        if fd < 0:
            return
        with nogil:
            r = fsync(fd)
        if r != 0:
            raise OSError(errno, os.strerror(errno))

    def sync_upto(self, long long turn):
        """fsync unless an fsync since the write of `turn` already covers it (fsyncs of
        several turns queued behind each other become one: a group commit)."""
        cdef long long w
        if self.synced >= turn:
            return
        w = self.written        # every write up to turn `w` is done: this fsync covers them
        self.fsync()
        if w > self.synced:
            self.synced = w

    def close(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1


cdef class Entry:
    """One record read back or just appended."""

    def __repr__(self):
        return f"Entry(offset={self.offset}, key={self.key!r}, topic={self.msg.topic!r})"


cdef Entry _decode(bytes chunk, Py_ssize_t start, Py_ssize_t end, long long base,
                   long long base_ts):
    """The record at chunk[start:end] (its length prefix already read)."""
    cdef Reader r
    cdef Entry e = Entry.__new__(Entry)
    cdef Message m
    cdef uint64_t d, ts, klen, n
    cdef int attrs
    cdef Py_ssize_t tstart, tlen, rk, plen, pend, payload_end
    cdef double expiry = 0.0
    cdef int pid
    cdef str topic
    cdef list ups = None
    r.p = <const unsigned char*>PyBytes_AS_STRING(chunk)
    r.pos = start
    r.end = end
    d = _rv(&r)
    ts = _rv(&r)
    if r.pos >= r.end:
        raise SegmentError("record runs past its end")
    attrs = r.p[r.pos]
    r.pos += 1
    klen = _rv(&r)
    e.key = None if klen == 0 else _rs(&r, <Py_ssize_t>klen - 1)
    tlen = <Py_ssize_t>_rv(&r)
    tstart = r.pos
    topic = _rs(&r, tlen)
    if attrs & 0x20:
        n = _rv(&r)
        e.rkey = _rs(&r, <Py_ssize_t>n)
    else:
        rk = <Py_ssize_t>_rv(&r)
        e.rkey = topic[rk:] if rk else topic
    if attrs & 0x10:
        if r.pos + 8 > r.end:
            raise SegmentError("record runs past its end")
        memcpy(&expiry, r.p + r.pos, 8)
        r.pos += 8
    plen = <Py_ssize_t>_rv(&r)
    pend = r.pos + plen
    if pend > r.end:
        raise SegmentError("record runs past its end")
    payload_end = r.end
    r.end = pend
    ctype = None
    rtopic = None
    corr = None
    while r.pos < pend:
        pid = r.p[r.pos]
        r.pos += 1
        n = _rv(&r)
        if pid == 0x26:
            k = _rs(&r, <Py_ssize_t>n)
            v = _rs(&r, <Py_ssize_t>_rv(&r))
            if ups is None:
                ups = [(k, v)]
            else:
                ups.append((k, v))
        elif pid == 0x09:
            if r.pos + <Py_ssize_t>n > r.end:
                raise SegmentError("record runs past its end")
            corr = PyBytes_FromStringAndSize(<const char*>r.p + r.pos, <Py_ssize_t>n)
            r.pos += <Py_ssize_t>n
        elif pid == 0x03:
            ctype = _rs(&r, <Py_ssize_t>n)
        elif pid == 0x08:
            rtopic = _rs(&r, <Py_ssize_t>n)
        else:
            raise SegmentError(f"unknown property {pid:#x} in a record")
    r.end = payload_end
    n = _rv(&r)
    if r.pos + <Py_ssize_t>n != r.end:
        raise SegmentError("record payload length does not match the record")
    m = new_message(topic, chunk, r.pos, <Py_ssize_t>n, attrs & 3, False)
    if attrs & 0x04:
        m.payload_format = 1 if attrs & 0x08 else 0
    m.expires_at = expiry
    m.content_type = ctype
    m.response_topic = rtopic
    m.correlation_data = corr
    m.user_properties = ups
    e.offset = base + <long long>d
    e.ts_ms = base_ts + <long long>((ts >> 1) ^ (-(<int64_t>(ts & 1))))
    m.timestamp = e.ts_ms / 1000.0
    e.msg = m
    e.size = end - start
    return e


cdef inline int _check_batch(const unsigned char* p, Py_ssize_t avail, Py_ssize_t* blen) except -1:
    """0 if a whole valid batch starts at p, 1 if it may be valid but is cut off at avail,
    -1... never: raises SegmentError for a batch that cannot be valid."""
    cdef uint32_t n
    if avail < HEADER:
        return 1
    if p[0] != b'F' or p[1] != b'L' or p[2] != b'X' or p[3] != b'Q':
        raise SegmentError("bad batch magic")
    n = _get32(p + 8)
    if n < HEADER or p[12] != VERSION:
        raise SegmentError("bad batch header")
    blen[0] = n
    if n > avail:
        return 1
    if _crc(0, p + 8, n - 8) != _get32(p + 4):
        raise SegmentError("batch CRC mismatch")
    return 0


cdef class Segment:
    """One segment file: appended while active, read at any time, sealed when the log rolls."""

    def __cinit__(self):
        self.refs = []
        self.cap_idx = 0

    def __dealloc__(self):
        if self.buf != NULL:
            free(self.buf)
        if self.idx_rel != NULL:
            free(self.idx_rel)
            free(self.idx_pos)
            free(self.idx_ts)

    @staticmethod
    def create(str path, long long base):
        """A new, empty segment whose first record will have offset `base`."""
        cdef Segment s = Segment.__new__(Segment)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        s.path = path
        s.base = base
        s.next_offset = base
        s.fh = FileHandle(fd)
        return s

    @staticmethod
    def open(str path, long long base, bint verify):
        """An existing segment. With `verify` (the last segment of a log, written when the
        broker stopped or crashed) every batch is read and checked and a torn or damaged tail
        is cut off; otherwise the index files are used when they are sound. Returns
        (segment, bytes cut off)."""
        cdef Segment s = Segment.__new__(Segment)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        s.path = path
        s.base = base
        s.next_offset = base
        s.fh = FileHandle(fd)
        s.size = os.fstat(fd).st_size
        if not verify and s._load_index():
            s.sealed = True
            return s, 0
        return s, s._scan(0)

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self.blen + n
        cdef Py_ssize_t cap
        cdef char* p
        if need <= self.bcap:
            return 0
        cap = self.bcap if self.bcap else 65536
        while cap < need:
            cap *= 2
        p = <char*>realloc(self.buf, cap)
        if p == NULL:
            raise MemoryError()
        self.buf = p
        self.bcap = cap
        return 0

    cdef int _index(self, long long rel, long long pos, long long ts) except -1:
        cdef Py_ssize_t cap
        if self.n_idx == self.cap_idx:
            cap = self.cap_idx * 2 if self.cap_idx else 64
            self.idx_rel = <uint32_t*>realloc(self.idx_rel, cap * sizeof(uint32_t))
            self.idx_pos = <uint32_t*>realloc(self.idx_pos, cap * sizeof(uint32_t))
            self.idx_ts = <int64_t*>realloc(self.idx_ts, cap * sizeof(int64_t))
            if self.idx_rel == NULL or self.idx_pos == NULL or self.idx_ts == NULL:
                raise MemoryError()
            self.cap_idx = cap
        self.idx_rel[self.n_idx] = <uint32_t>rel
        self.idx_pos[self.n_idx] = <uint32_t>pos
        self.idx_ts[self.n_idx] = ts
        self.n_idx += 1
        self.last_idx_pos = pos
        return 0

    cdef long long _scan(self, long long pos) except -1:
        """Read every batch from `pos` on, (re)building the index; cut off what is not a whole
        valid batch. Returns the bytes cut off."""
        cdef bytes chunk
        cdef const unsigned char* p
        cdef Py_ssize_t off, avail, blen = 0
        cdef int st
        cdef long long base_off, last, bts, mts
        cdef uint32_t cnt
        cdef long long cut = 0
        if pos == 0:
            self.n_idx = 0
            self.count = 0
            self.first_ts = 0
            self.max_ts = 0
            self.next_offset = self.base
        while pos < self.size:
            chunk = os.pread(self.fh.fd, min(READ_CHUNK, self.size - pos), pos)
            p = <const unsigned char*>PyBytes_AS_STRING(chunk)
            avail = PyBytes_GET_SIZE(chunk)
            off = 0
            st = 0
            while off < avail:
                try:
                    st = _check_batch(p + off, avail - off, &blen)
                except SegmentError:
                    st = -1
                if st == 1:
                    if off == 0:
                        if pos + blen <= self.size and blen > avail:
                            # A batch larger than the chunk: read exactly it.
                            chunk = os.pread(self.fh.fd, blen, pos)
                            p = <const unsigned char*>PyBytes_AS_STRING(chunk)
                            avail = PyBytes_GET_SIZE(chunk)
                            continue
                        st = -1      # cut off at the end of the file
                    break
                if st == -1:
                    break
                base_off = <long long>_get64(p + off + 16)
                cnt = _get32(p + off + 24)
                last = base_off + _get32(p + off + 28)
                bts = <long long><int64_t>_get64(p + off + 32)
                mts = <long long><int64_t>_get64(p + off + 40)
                if base_off < self.next_offset or cnt == 0:
                    st = -1
                    break
                if self.n_idx == 0 or pos + off - self.last_idx_pos >= INDEX_EVERY:
                    self._index(base_off - self.base, pos + off, self.max_ts)
                if self.first_ts == 0:
                    self.first_ts = bts
                if mts > self.max_ts:
                    self.max_ts = mts
                self.count += cnt
                self.next_offset = last + 1
                off += blen
            pos += off
            if st == -1:
                break
            if off == 0:
                st = -1
                break
        if pos < self.size:
            cut = self.size - pos
            if ftruncate(self.fh.fd, pos) != 0:
                raise OSError(errno, os.strerror(errno), self.path)
            self.size = pos
        return cut

    # -- index files -------------------------------------------------------------------------------

    def write_index(self):
        """Write the .idx and .tix files (when the segment is sealed)."""
        cdef Py_ssize_t i
        cdef bytearray idx = bytearray(IDX_HEADER + 8 * self.n_idx)
        cdef bytearray tix = bytearray(8 + 12 * self.n_idx)
        cdef char* p = idx
        cdef char* q = tix
        memcpy(p, PyBytes_AS_STRING(IDX_MAGIC), 4)
        _put32(p + 4, VERSION)
        _put64(p + 8, <uint64_t>self.size)
        _put64(p + 16, <uint64_t>self.next_offset)
        _put64(p + 24, <uint64_t>self.count)
        _put64(p + 32, <uint64_t>self.first_ts)
        _put64(p + 40, <uint64_t>self.max_ts)
        for i in range(self.n_idx):
            _put32(p + IDX_HEADER + 8 * i, self.idx_rel[i])
            _put32(p + IDX_HEADER + 8 * i + 4, self.idx_pos[i])
        memcpy(q, PyBytes_AS_STRING(TIX_MAGIC), 4)
        _put32(q + 4, VERSION)
        for i in range(self.n_idx):
            _put64(q + 8 + 12 * i, <uint64_t>self.idx_ts[i])
            _put32(q + 8 + 12 * i + 8, self.idx_rel[i])
        stem = self.path[:-4]
        for suffix, data in ((".idx", idx), (".tix", tix)):
            tmp = stem + suffix + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, stem + suffix)

    cdef bint _load_index(self) except -1:
        cdef bytes idx, tix
        cdef const unsigned char* p
        cdef const unsigned char* q
        cdef Py_ssize_t n, i
        stem = self.path[:-4]
        try:
            with open(stem + ".idx", "rb") as f:
                idx = f.read()
            with open(stem + ".tix", "rb") as f:
                tix = f.read()
        except OSError:
            return False
        if len(idx) < IDX_HEADER or idx[:4] != IDX_MAGIC or (len(idx) - IDX_HEADER) % 8:
            return False
        n = (len(idx) - IDX_HEADER) // 8
        if len(tix) != 8 + 12 * n or tix[:4] != TIX_MAGIC:
            return False
        p = <const unsigned char*>PyBytes_AS_STRING(idx)
        q = <const unsigned char*>PyBytes_AS_STRING(tix)
        if _get32(p + 4) != VERSION or <long long>_get64(p + 8) != self.size:
            return False
        self.next_offset = <long long>_get64(p + 16)
        self.count = <long long>_get64(p + 24)
        self.first_ts = <long long><int64_t>_get64(p + 32)
        self.max_ts = <long long><int64_t>_get64(p + 40)
        self.n_idx = 0
        for i in range(n):
            if <long long>_get32(p + IDX_HEADER + 8 * i + 4) >= self.size \
                    or _get32(q + 8 + 12 * i + 8) != _get32(p + IDX_HEADER + 8 * i):
                self.n_idx = 0
                return False
            self._index(_get32(p + IDX_HEADER + 8 * i), _get32(p + IDX_HEADER + 8 * i + 4),
                        <long long><int64_t>_get64(q + 8 + 12 * i))
        if self.next_offset < self.base or (self.size and not n):
            return False
        return True

    # -- appending -------------------------------------------------------------------------------------

    cpdef Py_ssize_t append(self, long long offset, long long ts_ms, Message msg, object key,
                            str rkey, Py_ssize_t rk_start) except -1:
        """Add a record to this turn's batch (written by flush()). `rkey`: an explicit routing
        key, or None when it is the topic from `rk_start` on. Returns the record's size."""
        cdef const char* topic
        cdef Py_ssize_t tn, kn = 0, rn = 0, props = 0, body, total, n1, n2
        cdef const char* kp = NULL
        cdef const char* rp = NULL
        cdef const char* s
        cdef const char* s2
        cdef Py_ssize_t ln, ln2
        cdef int attrs = msg.qos & 3
        cdef uint64_t zz
        cdef long long dts
        cdef char* w
        cdef Py_ssize_t plen = msg._plen
        cdef bint zc = plen >= ZERO_COPY_MIN
        if self.pending == 0:
            self.pend_base = offset
            self.pend_base_ts = ts_ms
            self.pend_max_ts = ts_ms
            self._reserve(HEADER)
            self.blen = HEADER           # the header is filled in by flush()
            self.pending_bytes = HEADER
        elif offset <= self.pend_last:
            raise ValueError(f"offset {offset} is not after {self.pend_last}")
        if offset - self.pend_base > 0xFFFFFFFF:
            raise ValueError("offsets of one batch must be within 2**32")
        if ts_ms > self.pend_max_ts:
            self.pend_max_ts = ts_ms
        topic = _utf8(msg.topic, &tn)
        if key is not None:
            kp = _utf8(key, &kn)
        if rkey is not None:
            attrs |= 0x20
            rp = _utf8(rkey, &rn)
        if msg.payload_format is not None:
            attrs |= 0x04
            if msg.payload_format:
                attrs |= 0x08
        if msg.expires_at != 0.0:
            attrs |= 0x10
        if msg.content_type is not None:
            _utf8(msg.content_type, &ln)
            props += 1 + _varint_len(ln) + ln
        if msg.response_topic is not None:
            _utf8(msg.response_topic, &ln)
            props += 1 + _varint_len(ln) + ln
        if msg.correlation_data is not None:
            ln = len(msg.correlation_data)
            props += 1 + _varint_len(ln) + ln
        if msg.user_properties is not None:
            for k, v in msg.user_properties:
                _utf8(k, &ln)
                _utf8(v, &ln2)
                props += 1 + _varint_len(ln) + ln + _varint_len(ln2) + ln2
        dts = ts_ms - self.pend_base_ts
        zz = (<uint64_t>dts << 1) ^ <uint64_t>(dts >> 63)
        body = (_varint_len(<uint64_t>(offset - self.pend_base)) + _varint_len(zz) + 1
                + _varint_len(kn + 1 if key is not None else 0) + kn
                + _varint_len(tn) + tn
                + (_varint_len(rn) + rn if rkey is not None else _varint_len(rk_start))
                + (8 if attrs & 0x10 else 0)
                + _varint_len(props) + props + _varint_len(plen) + plen)
        total = _varint_len(body) + body
        self._reserve(total - (plen if zc else 0))
        w = self.buf + self.blen
        w += _put_varint(w, body)
        w += _put_varint(w, <uint64_t>(offset - self.pend_base))
        w += _put_varint(w, zz)
        w[0] = <char>attrs
        w += 1
        if key is not None:
            w += _put_varint(w, kn + 1)
            memcpy(w, kp, kn)
            w += kn
        else:
            w += _put_varint(w, 0)
        w += _put_varint(w, tn)
        memcpy(w, topic, tn)
        w += tn
        if rkey is not None:
            w += _put_varint(w, rn)
            memcpy(w, rp, rn)
            w += rn
        else:
            w += _put_varint(w, rk_start)
        if attrs & 0x10:
            memcpy(w, &msg.expires_at, 8)
            w += 8
        w += _put_varint(w, props)
        if msg.content_type is not None:
            s = _utf8(msg.content_type, &ln)
            w[0] = 0x03
            w += 1
            w += _put_varint(w, ln)
            memcpy(w, s, ln)
            w += ln
        if msg.response_topic is not None:
            s = _utf8(msg.response_topic, &ln)
            w[0] = 0x08
            w += 1
            w += _put_varint(w, ln)
            memcpy(w, s, ln)
            w += ln
        if msg.correlation_data is not None:
            cd = bytes(msg.correlation_data)
            ln = len(cd)
            w[0] = 0x09
            w += 1
            w += _put_varint(w, ln)
            memcpy(w, PyBytes_AS_STRING(cd), ln)
            w += ln
        if msg.user_properties is not None:
            for k, v in msg.user_properties:
                s = _utf8(k, &ln)
                s2 = _utf8(v, &ln2)
                w[0] = 0x26
                w += 1
                w += _put_varint(w, ln)
                memcpy(w, s, ln)
                w += ln
                w += _put_varint(w, ln2)
                memcpy(w, s2, ln2)
                w += ln2
        w += _put_varint(w, plen)
        if zc:
            # Zero copy: the payload is written from the bytes it arrived in.
            self.blen = w - self.buf
            self.refs.append((self.blen, msg._pbuf, msg._poff, plen))
        else:
            memcpy(w, PyBytes_AS_STRING(msg._pbuf) + msg._poff, plen)
            w += plen
            self.blen = w - self.buf
        self.pending += 1
        self.pend_last = offset
        self.pending_bytes += total
        return total

    cpdef long long flush(self) except -1:
        """Write this turn's batch with one writev. Returns the bytes written (0: nothing was
        pending). On an error the file is cut back and the batch kept for another try."""
        cdef long long total = self.pending_bytes
        cdef Py_ssize_t nref = len(self.refs)
        cdef iovec* iov
        cdef Py_ssize_t niov = 0, at = 0, i, k
        cdef uint32_t crc
        cdef long long written = 0
        cdef ssize_t r
        cdef int fd = self.fh.fd
        cdef char* h = self.buf
        cdef bytes pb
        if self.pending == 0:
            return 0
        if total > 0xFFFFFFFF:
            raise ValueError("a batch must be under 4 GiB")
        memcpy(h, PyBytes_AS_STRING(MAGIC), 4)
        _put32(h + 8, <uint32_t>total)
        h[12] = VERSION
        h[13] = 0
        h[14] = 0
        h[15] = 0
        _put64(h + 16, <uint64_t>self.pend_base)
        _put32(h + 24, <uint32_t>self.pending)
        _put32(h + 28, <uint32_t>(self.pend_last - self.pend_base))
        _put64(h + 32, <uint64_t>self.pend_base_ts)
        _put64(h + 40, <uint64_t>self.pend_max_ts)
        iov = <iovec*>malloc((2 * nref + 1) * sizeof(iovec))
        if iov == NULL:
            raise MemoryError()
        try:
            crc = 0
            for i in range(nref):
                ref = self.refs[i]
                k = ref[0]
                pb = ref[1]
                iov[niov].iov_base = h + at
                iov[niov].iov_len = k - at
                niov += 1
                iov[niov].iov_base = PyBytes_AS_STRING(pb) + <Py_ssize_t>ref[2]
                iov[niov].iov_len = <Py_ssize_t>ref[3]
                niov += 1
                at = k
            iov[niov].iov_base = h + at
            iov[niov].iov_len = self.blen - at
            niov += 1
            # The CRC covers everything after its own field, in write order.
            crc = _crc(0, <const unsigned char*>h + 8, iov[0].iov_len - 8)
            for i in range(1, niov):
                crc = _crc(crc, <const unsigned char*>iov[i].iov_base, iov[i].iov_len)
            _put32(h + 4, crc)
            i = 0
            while i < niov:
                k = niov - i if niov - i < IOV_MAX_ else IOV_MAX_
                with nogil:
                    r = writev(fd, iov + i, <int>k)
                if r < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    ftruncate(fd, self.size)
                    raise OSError(err, os.strerror(err), self.path)
                written += r
                # Skip what was written; a short write continues inside an iovec.
                while i < niov and r >= <ssize_t>iov[i].iov_len:
                    r -= iov[i].iov_len
                    i += 1
                if r > 0:
                    iov[i].iov_base = <char*>iov[i].iov_base + r
                    iov[i].iov_len -= r
        finally:
            free(iov)
        if self.n_idx == 0 or self.size - self.last_idx_pos >= INDEX_EVERY:
            self._index(self.pend_base - self.base, self.size, self.max_ts)
        if self.first_ts == 0:
            self.first_ts = self.pend_base_ts
        if self.pend_max_ts > self.max_ts:
            self.max_ts = self.pend_max_ts
        self.size += total
        self.count += self.pending
        self.next_offset = self.pend_last + 1
        self.pending = 0
        self.pending_bytes = 0
        self.blen = 0
        self.refs = []
        if self.bcap > 1048576:
            free(self.buf)
            self.buf = NULL
            self.bcap = 0
        return total

    # -- reading ---------------------------------------------------------------------------------

    cdef Py_ssize_t _seek(self, long long offset) noexcept:
        """The index entry to start reading at for `offset` (-1: none, read from 0)."""
        cdef Py_ssize_t lo = 0, hi = self.n_idx, mid
        cdef long long rel = offset - self.base
        while lo < hi:
            mid = (lo + hi) >> 1
            if <long long>self.idx_rel[mid] <= rel:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def read(self, long long offset, Py_ssize_t max_bytes=65536, Py_ssize_t max_count=1000):
        """The records with offsets >= `offset` (written by flush()), whole batches at a time
        until `max_bytes` or `max_count`; [] at the end."""
        cdef Py_ssize_t k
        cdef long long pos
        if offset >= self.next_offset or self.size == 0:
            return []
        k = self._seek(offset)
        pos = self.idx_pos[k] if k >= 0 else 0
        return self._read_from(pos, offset, max_bytes, max_count)

    cdef list _read_from(self, long long pos, long long offset, Py_ssize_t max_bytes,
                         Py_ssize_t max_count):
        cdef list out = []
        cdef bytes chunk
        cdef const unsigned char* p
        cdef Py_ssize_t avail, off, blen = 0, rs, rend, got = 0
        cdef int st
        cdef long long base, bts
        cdef Reader r
        cdef uint64_t n
        cdef Entry e
        while pos < self.size and len(out) < max_count and got < max_bytes:
            chunk = os.pread(self.fh.fd, min(max(max_bytes, READ_CHUNK // 4), self.size - pos), pos)
            p = <const unsigned char*>PyBytes_AS_STRING(chunk)
            avail = PyBytes_GET_SIZE(chunk)
            off = 0
            while off < avail:
                st = _check_batch(p + off, avail - off, &blen)
                if st == 1:
                    if off == 0:
                        chunk = os.pread(self.fh.fd, blen, pos)
                        p = <const unsigned char*>PyBytes_AS_STRING(chunk)
                        avail = PyBytes_GET_SIZE(chunk)
                        if avail < blen:
                            raise SegmentError(f"{self.path}: batch at {pos} cut off")
                        continue
                    break
                base = <long long>_get64(p + off + 16)
                bts = <long long><int64_t>_get64(p + off + 32)
                if base + _get32(p + off + 28) >= offset:
                    r.p = p
                    r.pos = off + HEADER
                    r.end = off + blen
                    while r.pos < r.end:
                        n = _rv(&r)
                        rs = r.pos
                        rend = rs + <Py_ssize_t>n
                        if rend > r.end:
                            raise SegmentError(f"{self.path}: record past its batch")
                        e = _decode(chunk, rs, rend, base, bts)
                        r.pos = rend
                        if e.offset >= offset:
                            out.append(e)
                            got += e.size
                off += blen
                if len(out) >= max_count or got >= max_bytes:
                    break
            pos += off
            if off == 0:
                break
        return out

    def offset_for_time(self, long long ts_ms):
        """The first offset whose record was appended at `ts_ms` or later, or -1."""
        cdef Py_ssize_t lo = 0, hi = self.n_idx, mid
        cdef long long pos = 0
        cdef long long off
        if self.size == 0 or self.max_ts < ts_ms:
            return -1
        while lo < hi:          # the last entry whose running maximum is before ts_ms
            mid = (lo + hi) >> 1
            if self.idx_ts[mid] < ts_ms:
                lo = mid + 1
            else:
                hi = mid
        if lo > 0:
            pos = self.idx_pos[lo - 1]
            off = self.base + self.idx_rel[lo - 1]
        else:
            off = self.base
        while True:
            entries = self._read_from(pos, off, 262144, 4096)
            if not entries:
                return -1
            for e in entries:
                if (<Entry>e).ts_ms >= ts_ms:
                    return (<Entry>e).offset
            off = (<Entry>entries[-1]).offset + 1
            k = self._seek(off)
            pos = self.idx_pos[k] if k >= 0 else 0

    def fsync(self):
        self.fh.fsync()

    def close(self):
        self.fh.close()

    def __repr__(self):
        return (f"Segment({self.path!r}, base={self.base}, next={self.next_offset}, "
                f"size={self.size}, sealed={self.sealed})")

    @property
    def index_entries(self) -> int:
        return self.n_idx
