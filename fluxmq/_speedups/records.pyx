# cython: language_level=3
"""Durable storage's records of messages and of queue/in-flight entries, in C.

These are written and read for every QoS 1/2 message kept for a persistent session, so they
are on the hot path of persistent delivery (see docs/performance.md, "persistent QoS 1").
`fluxmq/storage/records.py` documents the whole layout and re-exports these functions.

Message record (format 1):

    u8 version (1) | u8 qos | u8 flags | f64 expires_at | f64 timestamp | u16 topic length |
    topic | optional fields, each present when its flag is set:
        content type (u16 length + UTF-8) | response topic (u16 + UTF-8) |
        correlation data (u16 + bytes) | origin client id (u16 + UTF-8) |
        user properties (u32 count, then u16 + name, u16 + value each)
    | payload (the rest)

flags: 1 retain, 2 payload format set, 4 payload format 1, 8 content type, 16 response topic,
32 correlation data, 64 user properties, 128 origin.

Entry record: u8 qos | u8 state (0 queued, 1 PUBLISH sent, 2 PUBREL sent) | u8 flags (1 retain,
2 inline, 4 packet id) | u64 message id (0: inline) | u16 packet id (when flag 4; format 2
always writes it, 0 while queued) | u8 subscription identifier count | u32 each | the message
record when inline. The state and packet id sit at fixed offsets (1 and 11), so that sending a
queued entry is journaled as a patch of those three bytes rather than the whole record again.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.string cimport memcpy

from fluxmq._speedups.bufpool cimport WriteBuffer
from fluxmq._speedups.message cimport Message, new_message
from fluxmq._speedups.session cimport Inflight

cdef enum:
    F_RETAIN = 1
    F_PFI_SET = 2
    F_PFI_ONE = 4
    F_CT = 8
    F_RT = 16
    F_CD = 32
    F_UP = 64
    F_ORIGIN = 128
    E_RETAIN = 1
    E_INLINE = 2
    E_PID = 4
    MSG_HEAD = 21       # version, qos, flags, expires_at, timestamp, topic length
    ENTRY_HEAD = 12     # qos, state, flags, message id, subscription id count (format 1)
    PID_AT = 11         # offset of the packet id in a record with E_PID
    J_DELETE = 0x80     # journal operation bits, or-ed with the database index
    J_PATCH = 0x40


class RecordError(Exception):
    """Bytes that are not a record of this format (a damaged database)."""


# -- writing -------------------------------------------------------------------------------------

cdef inline int _put_u64(WriteBuffer out, unsigned long long v) except -1:
    """Big-endian, in C (a Python-int mask here once made six PyLongs per record)."""
    cdef char* p
    cdef int i
    out.reserve(8)
    p = out.data + out.length
    for i in range(8):
        p[7 - i] = <char>((v >> (8 * i)) & 0xFF)
    out.length += 8
    return 0


cdef inline int _put_f64(WriteBuffer out, double v) except -1:
    cdef unsigned long long u
    memcpy(&u, &v, 8)
    return _put_u64(out, u)


cdef int write_message(WriteBuffer out, Message m) except -1:
    cdef int flags = F_RETAIN if m.retain else 0
    if m.payload_format is not None:
        flags |= F_PFI_SET | (F_PFI_ONE if m.payload_format else 0)
    if m.content_type is not None:
        flags |= F_CT
    if m.response_topic is not None:
        flags |= F_RT
    if m.correlation_data is not None:
        flags |= F_CD
    if m.user_properties:
        flags |= F_UP
    if m.origin is not None:
        flags |= F_ORIGIN
    out.reserve(MSG_HEAD + m._plen + 64)
    out.put_byte(1)
    out.put_byte(m.qos)
    out.put_byte(flags)
    _put_f64(out, m.expires_at)
    _put_f64(out, m.timestamp)
    out.put_prefixed(m.topic)
    if flags & F_CT:
        out.put_prefixed(m.content_type)
    if flags & F_RT:
        out.put_prefixed(m.response_topic)
    if flags & F_CD:
        out.put_prefixed(m.correlation_data)
    if flags & F_ORIGIN:
        out.put_prefixed(m.origin)
    if flags & F_UP:
        out.put_u32(len(m.user_properties))
        for k, v in m.user_properties:
            out.put_prefixed(k)
            out.put_prefixed(v)
    out.put(PyBytes_AS_STRING(m._pbuf) + m._poff, m._plen)
    return 0


# One buffer to encode records in, reused: a record is encoded for every message a persistent
# session keeps, and a WriteBuffer per record was a measurable part of that. A nested use (none
# is known: encoding calls no Python code) gets a buffer of its own.
cdef WriteBuffer _scratch = WriteBuffer()
cdef bint _scratch_busy = False


cdef inline WriteBuffer _take_scratch():
    global _scratch_busy
    if _scratch_busy:
        return WriteBuffer()
    _scratch_busy = True
    return _scratch


cdef inline bytes _finish(WriteBuffer out):
    """The encoded record; the scratch buffer is free again."""
    global _scratch_busy
    if out is _scratch:
        _scratch_busy = False
    return out.take()


cpdef bytes encode_message(Message msg):
    """The message record of msg."""
    cdef WriteBuffer out = _take_scratch()
    try:
        write_message(out, msg)
    except BaseException:
        _finish(out)
        raise
    return _finish(out)


cdef int write_entry(WriteBuffer out, Inflight e, unsigned long long msg_id) except -1:
    """The entry record of e (format 2: with its packet id `e.pid`)."""
    cdef list ids = e.sub_ids
    cdef int n = len(ids) if ids else 0
    cdef int flags = (E_RETAIN if e.retain else 0) | (E_INLINE if msg_id == 0 else 0) | E_PID
    if n > 255:
        raise ValueError("more than 255 subscription identifiers")
    out.reserve(ENTRY_HEAD + 2 + 4 * n)
    out.put_byte(e.qos)
    out.put_byte(e.state)
    out.put_byte(flags)
    _put_u64(out, msg_id)
    out.put_u16(e.pid)
    out.put_byte(n)
    for i in range(n):
        out.put_u32(ids[i])
    if msg_id == 0 and e.msg is not None:
        write_message(out, e.msg)
    return 0


cpdef bytes encode_entry(Inflight e, unsigned long long msg_id):
    """An entry: QoS, state, retain, packet id, the subscription identifiers, then the message
    inline (msg_id 0) or the id of its shared body."""
    cdef WriteBuffer out = _take_scratch()
    try:
        write_entry(out, e, msg_id)
    except BaseException:
        _finish(out)
        raise
    return _finish(out)


cpdef bytes patch_entry(object data, int state, unsigned int packet_id):
    """A copy of the entry record `data` with a new state and packet id (what the journal's
    patch operation does at recovery)."""
    cdef bytes b = _as_bytes(data)
    cdef bytes out
    cdef char* p
    if PyBytes_GET_SIZE(b) < ENTRY_HEAD + 2 or not (<const unsigned char*>PyBytes_AS_STRING(b))[2] & E_PID:
        raise RecordError("patch of an entry record without a packet id")
    out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    p = PyBytes_AS_STRING(out)
    p[1] = <char>state
    p[PID_AT] = <char>((packet_id >> 8) & 0xFF)
    p[PID_AT + 1] = <char>(packet_id & 0xFF)
    return out


# -- reading -------------------------------------------------------------------------------------

cdef struct Cursor:
    const unsigned char* p
    Py_ssize_t pos
    Py_ssize_t end


cdef inline int _need(Cursor* c, Py_ssize_t n) except -1:
    if c.end - c.pos < n:
        raise RecordError("record shorter than its contents")
    return 0


cdef inline unsigned int _u16(Cursor* c) except? 0xFFFFFFFF:
    _need(c, 2)
    c.pos += 2
    return (c.p[c.pos - 2] << 8) | c.p[c.pos - 1]


cdef inline unsigned long _u32(Cursor* c) except? 0xFFFFFFFF:
    _need(c, 4)
    c.pos += 4
    return ((<unsigned long>c.p[c.pos - 4] << 24) | (c.p[c.pos - 3] << 16)
            | (c.p[c.pos - 2] << 8) | c.p[c.pos - 1])


cdef inline unsigned long long _u64(Cursor* c) except? 0xFFFFFFFFFFFFFFFF:
    cdef unsigned long long hi = _u32(c)
    return (hi << 32) | _u32(c)


cdef inline double _f64(Cursor* c) except? -1.0:
    cdef unsigned long long u = _u64(c)
    cdef double d
    memcpy(&d, &u, 8)
    return d


cdef inline str _str(Cursor* c):
    cdef unsigned int n = _u16(c)
    _need(c, n)
    c.pos += n
    try:
        return PyUnicode_DecodeUTF8(<const char*>(c.p + c.pos - n), n, NULL)
    except UnicodeDecodeError:
        raise RecordError("string in a record is not UTF-8")


cdef inline bytes _bin(Cursor* c):
    cdef unsigned int n = _u16(c)
    _need(c, n)
    c.pos += n
    return PyBytes_FromStringAndSize(<const char*>(c.p + c.pos - n), n)


cdef Message read_message(bytes data, Py_ssize_t start):
    """The message record at data[start:]; its payload is a slice of data (no copy)."""
    cdef Cursor c
    cdef int version, qos, flags
    cdef double expires_at, timestamp
    cdef str topic
    cdef Message m
    cdef unsigned long n
    c.p = <const unsigned char*>PyBytes_AS_STRING(data)
    c.pos = start
    c.end = PyBytes_GET_SIZE(data)
    _need(&c, MSG_HEAD - 2)
    version = c.p[c.pos]
    qos = c.p[c.pos + 1]
    flags = c.p[c.pos + 2]
    c.pos += 3
    if version != 1 or qos > 2:
        raise RecordError(f"message record of version {version}, QoS {qos}")
    expires_at = _f64(&c)
    timestamp = _f64(&c)
    topic = _str(&c)
    ct = _str(&c) if flags & F_CT else None
    rt = _str(&c) if flags & F_RT else None
    cd = _bin(&c) if flags & F_CD else None
    origin = _str(&c) if flags & F_ORIGIN else None
    up = None
    if flags & F_UP:
        n = _u32(&c)
        if n > <unsigned long>(c.end - c.pos) // 4:
            raise RecordError("user property count larger than the record")
        up = []
        for _ in range(n):
            k = _str(&c)
            up.append((k, _str(&c)))
    m = new_message(topic, data, c.pos, c.end - c.pos, qos, flags & F_RETAIN)
    if flags & F_PFI_SET:
        m.payload_format = 1 if flags & F_PFI_ONE else 0
    m.expires_at = expires_at
    m.timestamp = timestamp
    m.content_type = ct
    m.response_topic = rt
    m.correlation_data = cd
    m.origin = origin
    m.user_properties = up
    return m


cdef bytes _as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    return bytes(data)


cpdef Message decode_message(object data):
    """The Message of a message record (bytes or any buffer)."""
    return read_message(_as_bytes(data), 0)


cpdef tuple decode_entry(object data, object bodies):
    """(entry, shared message id or 0). `bodies(msg_id)` returns the shared Message."""
    cdef bytes b = _as_bytes(data)
    cdef Cursor c
    cdef int qos, state, flags, n
    cdef unsigned int pid = 0
    cdef unsigned long long msg_id
    cdef list sub_ids = None
    cdef Inflight e
    c.p = <const unsigned char*>PyBytes_AS_STRING(b)
    c.pos = 0
    c.end = PyBytes_GET_SIZE(b)
    _need(&c, ENTRY_HEAD)
    qos = c.p[0]
    state = c.p[1]
    flags = c.p[2]
    c.pos = 3
    msg_id = _u64(&c)
    if flags & E_PID:
        pid = _u16(&c)
        _need(&c, 1)
    n = c.p[c.pos]
    c.pos += 1
    if qos < 1 or qos > 2 or state > 2:
        raise RecordError(f"queue entry of QoS {qos}, state {state}")
    if n:
        _need(&c, 4 * n)
        sub_ids = [_u32(&c) for _ in range(n)]
    e = Inflight.__new__(Inflight)
    e.qos = qos
    e.state = state
    e.retain = (flags & E_RETAIN) != 0
    e.sub_ids = sub_ids
    e.pid = pid
    if flags & E_INLINE:
        e.msg = read_message(b, c.pos) if c.pos < c.end else None
        return e, 0
    e.msg = bodies(msg_id)
    return e, msg_id


# -- keys ----------------------------------------------------------------------------------------

cpdef bytes client_prefix(str client_id):
    return client_id.encode() + b"\x00"


cdef inline bytes _client_key(str client_id, int tail_len, unsigned long long tail):
    """UTF-8 client id, a zero byte, then `tail` big-endian in `tail_len` bytes: built in
    place in one bytes object (these keys are made several times per persistent message)."""
    cdef Py_ssize_t n
    cdef const char* cid
    if client_id is None:
        raise TypeError("a client id is required")
    cid = PyUnicode_AsUTF8AndSize(client_id, &n)
    cdef bytes key = PyBytes_FromStringAndSize(NULL, n + 1 + tail_len)
    cdef char* p = PyBytes_AS_STRING(key)
    cdef int i
    memcpy(p, cid, n)
    p[n] = 0
    for i in range(tail_len):
        p[n + tail_len - i] = <char>((tail >> (8 * i)) & 0xFF)
    return key


cdef inline int _put_client_key(WriteBuffer b, str client_id, int tail_len,
                                unsigned long long tail) except -1:
    """u16 length, then the key `_client_key` makes, written straight into b."""
    cdef Py_ssize_t n
    cdef const char* cid
    cdef char* p
    cdef int i
    if client_id is None:
        raise TypeError("a client id is required")
    cid = PyUnicode_AsUTF8AndSize(client_id, &n)
    b.reserve(2 + n + 1 + tail_len)
    b.put_u16(n + 1 + tail_len)
    p = b.data + b.length
    memcpy(p, cid, n)
    p[n] = 0
    for i in range(tail_len):
        p[n + tail_len - i] = <char>((tail >> (8 * i)) & 0xFF)
    b.length += n + 1 + tail_len
    return 0


cpdef bytes seq_key(str client_id, unsigned long long seq):
    return _client_key(client_id, 8, seq)


cdef bytes u64(unsigned long long v):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef int i
    for i in range(8):
        p[7 - i] = <char>((v >> (8 * i)) & 0xFF)
    return out


cpdef bytes pid_key(str client_id, unsigned int packet_id):
    return _client_key(client_id, 2, packet_id)


# -- the journal: one record per loop turn of the changes it made ---------------------------------

cdef class Journal:
    """A turn's changes in order, serialized as they happen: for each, u8 database (or-ed with
    0x80 for a delete, 0x40 for a patch of an entry record), u16 key length, key, then for a put
    u32 value length and value, for a patch u8 state and u16 packet id."""

    def __init__(self):
        self._buf = WriteBuffer()
        self.count = 0

    cpdef put(self, int db, bytes key, bytes value):
        cdef WriteBuffer b = self._buf
        b.reserve(7 + len(key) + len(value))
        b.put_byte(db)
        b.put_u16(len(key))
        b.put(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        b.put_u32(len(value))
        b.put(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        self.count += 1

    cpdef delete(self, int db, bytes key):
        cdef WriteBuffer b = self._buf
        b.reserve(3 + len(key))
        b.put_byte(db | J_DELETE)
        b.put_u16(len(key))
        b.put(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        self.count += 1

    # The entries of sessions' queues (database `queue`, key client id NUL seq), written
    # straight into the journal: no key or record object is made for them.

    cdef int put_entry(self, int db, str client_id, unsigned long long seq, Inflight e,
                       unsigned long long msg_id) except -1:
        cdef WriteBuffer b = self._buf
        cdef Py_ssize_t at, start
        cdef unsigned long n
        b.reserve(1)
        b.put_byte(db)
        _put_client_key(b, client_id, 8, seq)
        at = b.length
        b.put_u32(0)
        start = b.length
        write_entry(b, e, msg_id)
        n = b.length - start
        b.data[at] = <char>((n >> 24) & 0xFF)
        b.data[at + 1] = <char>((n >> 16) & 0xFF)
        b.data[at + 2] = <char>((n >> 8) & 0xFF)
        b.data[at + 3] = <char>(n & 0xFF)
        self.count += 1
        return 0

    cdef int patch_entry(self, int db, str client_id, unsigned long long seq, int state,
                         unsigned int packet_id) except -1:
        """The entry's state and packet id changed (see `patch_entry`)."""
        cdef WriteBuffer b = self._buf
        b.reserve(1)
        b.put_byte(db | J_PATCH)
        _put_client_key(b, client_id, 8, seq)
        b.reserve(3)
        b.put_byte(state)
        b.put_u16(packet_id)
        self.count += 1
        return 0

    cdef int delete_entry(self, int db, str client_id, unsigned long long seq) except -1:
        cdef WriteBuffer b = self._buf
        b.reserve(1)
        b.put_byte(db | J_DELETE)
        _put_client_key(b, client_id, 8, seq)
        self.count += 1
        return 0

    cpdef bytes take(self):
        """The serialized changes (the journal is empty afterwards)."""
        self.count = 0
        return self._buf.take()

    def __len__(self):
        return self.count


def replay(object data):
    """The changes of a journal record, in order: (database, key, value), the value None for a
    delete and (state, packet id) for a patch of an entry record."""
    cdef bytes b = _as_bytes(data)
    cdef Cursor c
    cdef int db
    cdef unsigned int klen
    cdef unsigned long vlen
    cdef list out = []
    c.p = <const unsigned char*>PyBytes_AS_STRING(b)
    c.pos = 0
    c.end = PyBytes_GET_SIZE(b)
    while c.pos < c.end:
        db = c.p[c.pos]
        c.pos += 1
        klen = _u16(&c)
        _need(&c, klen)
        key = PyBytes_FromStringAndSize(<const char*>(c.p + c.pos), klen)
        c.pos += klen
        if db & J_DELETE:
            out.append((db & 0x3F, key, None))
            continue
        if db & J_PATCH:
            _need(&c, 3)
            out.append((db & 0x3F, key, (c.p[c.pos], (c.p[c.pos + 1] << 8) | c.p[c.pos + 2])))
            c.pos += 3
            continue
        vlen = _u32(&c)
        _need(&c, vlen)
        out.append((db, key, PyBytes_FromStringAndSize(<const char*>(c.p + c.pos), vlen)))
        c.pos += vlen
    return out
