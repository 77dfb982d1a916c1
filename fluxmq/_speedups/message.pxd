# The domain's application message: what a publisher sent, whichever door it came through.
# It knows no wire format; the protocol layer keeps its encode cache in the `wire_*` slots.

cdef class Message:
    cdef public str topic
    # The payload is bytes [_poff, _poff + _plen) of _pbuf: while a message is routed, _pbuf is
    # the receive chunk it arrived in (no copy); detach() gives it bytes of its own.
    cdef bytes _pbuf
    cdef Py_ssize_t _poff
    cdef Py_ssize_t _plen
    cdef public int qos
    cdef public bint retain
    # MQTT 5 application properties; None when absent.
    cdef public object payload_format     # None, 0 (bytes) or 1 (UTF-8)
    cdef public double expires_at         # wall-clock deadline (time.time()); 0.0 = never expires
    cdef public str content_type
    cdef public str response_topic
    cdef public object correlation_data   # bytes or None
    cdef public list user_properties      # [(name, value), ...] in order, or None
    # Routing metadata.
    cdef public str origin                # client id of the publisher (for No Local); None for bridges
    cdef public double timestamp          # wall-clock time the broker received it
    # Encode cache owned by the protocol layer: the last wire form and its key.
    cdef public long wire_key
    cdef public object wire_bytes
    cdef public Py_ssize_t wire_pid_at    # where the packet identifier sits in wire_bytes
    cdef public int fanout                # deliveries of this publish (caching pays when > 1)
    cdef public unsigned long long store_id   # durable storage's id of its shared body (0: none)

    cdef int detach(self) except -1
    cdef int set_payload(self, object payload) except -1
    cpdef Message copy(self)
    cpdef long remaining_expiry(self, double now)
    cpdef bint expired(self, double now)

cdef Message new_message(str topic, bytes buf, Py_ssize_t off, Py_ssize_t n, int qos, bint retain)
