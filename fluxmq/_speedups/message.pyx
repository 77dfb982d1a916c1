# cython: language_level=3
"""The application message that travels from a publisher to every subscriber, on any door."""

from libc.math cimport ceil


cdef class Message:
    """One application message.

    While it is being routed, the payload may be a slice of the receive chunk it arrived in;
    whoever keeps the message beyond that (retained store, session queues, wills, storage) calls
    `detach()` first, which gives it bytes of its own (copying once, however many keep it).
    """

    def __init__(self, str topic, object payload=b"", int qos=0, bint retain=False, *,
                 object payload_format=None, double expires_at=0.0, str content_type=None,
                 str response_topic=None, object correlation_data=None, list user_properties=None,
                 str origin=None, double timestamp=0.0):
        self.topic = topic
        self.set_payload(payload)
        self.qos = qos
        self.retain = retain
        self.payload_format = payload_format
        self.expires_at = expires_at
        self.content_type = content_type
        self.response_topic = response_topic
        self.correlation_data = correlation_data
        self.user_properties = user_properties
        self.origin = origin
        self.timestamp = timestamp
        self.wire_key = -1
        self.wire_bytes = None

    cdef int set_payload(self, object payload) except -1:
        if type(payload) is not bytes:
            payload = bytes(payload)
        self._pbuf = <bytes>payload
        self._poff = 0
        self._plen = len(<bytes>payload)
        return 0

    cdef int detach(self) except -1:
        if self._poff != 0 or self._plen != len(self._pbuf):
            self._pbuf = self._pbuf[self._poff:self._poff + self._plen]
            self._poff = 0
        return 0

    @property
    def payload(self) -> bytes:
        """The payload as bytes (the message keeps its own copy from then on)."""
        self.detach()
        return self._pbuf

    @payload.setter
    def payload(self, value):
        self.set_payload(value)

    @property
    def payload_size(self) -> int:
        return self._plen

    def freeze(self):
        """Python spelling of detach(): make the payload an independent bytes object."""
        self.detach()
        return self

    cpdef Message copy(self):
        """A copy with the same properties and its own (empty) encode cache."""
        cdef Message m = Message.__new__(Message)
        self.detach()
        m.topic = self.topic
        m._pbuf = self._pbuf
        m._poff = 0
        m._plen = self._plen
        m.qos = self.qos
        m.retain = self.retain
        m.payload_format = self.payload_format
        m.expires_at = self.expires_at
        m.content_type = self.content_type
        m.response_topic = self.response_topic
        m.correlation_data = self.correlation_data
        m.user_properties = None if self.user_properties is None else list(self.user_properties)
        m.origin = self.origin
        m.timestamp = self.timestamp
        m.wire_key = -1
        m.wire_bytes = None
        return m

    cpdef long remaining_expiry(self, double now):
        """Seconds left before expiry, rounded up (at least 1 while not expired); -1 = never."""
        cdef double left
        if self.expires_at == 0.0:
            return -1
        left = self.expires_at - now
        if left <= 0:
            return 0
        left = ceil(left)
        # The interval is a four-byte integer: rounding up must not carry past its maximum.
        return 4294967295 if left > 4294967295.0 else <long>left

    cpdef bint expired(self, double now):
        return self.expires_at != 0.0 and now >= self.expires_at

    def __repr__(self):
        cdef bytes head = self._pbuf[self._poff:self._poff + min(self._plen, 32)]
        return (f"Message(topic={self.topic!r}, qos={self.qos}, retain={self.retain}, "
                f"payload={head!r}{'...' if self._plen > 32 else ''})")

    def __reduce__(self):
        self.detach()
        return (_rebuild, (self.topic, self.payload, self.qos, self.retain, self.payload_format,
                           self.expires_at, self.content_type, self.response_topic,
                           self.correlation_data, self.user_properties, self.origin,
                           self.timestamp))


def _rebuild(topic, payload, qos, retain, payload_format, expires_at, content_type,
             response_topic, correlation_data, user_properties, origin, timestamp):
    return Message(topic, payload, qos, retain, payload_format=payload_format,
                   expires_at=expires_at, content_type=content_type,
                   response_topic=response_topic, correlation_data=correlation_data,
                   user_properties=user_properties, origin=origin, timestamp=timestamp)


cdef Message new_message(str topic, bytes buf, Py_ssize_t off, Py_ssize_t n, int qos,
                         bint retain):
    """A Message whose payload is buf[off:off + n], without going through __init__ (hot path)."""
    cdef Message m = Message.__new__(Message)
    m.topic = topic
    m._pbuf = buf
    m._poff = off
    m._plen = n
    m.qos = qos
    m.retain = retain
    m.wire_key = -1
    return m
