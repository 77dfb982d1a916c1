# One client's MQTT conversation (the protocol layer): an asyncio/uvloop Protocol whose hot path
# (PUBLISH and its acknowledgements, PINGREQ, deliveries) runs here in C; CONNECT, SUBSCRIBE,
# UNSUBSCRIBE, DISCONNECT and AUTH go to the Python handlers of the subclass (fluxmq.mqtt).

from fluxmq._speedups.bufpool cimport OutBuffer, Flusher
from fluxmq._speedups.codec cimport Decoder, Frame, Packet
from fluxmq._speedups.dispatch cimport Dispatcher, Counters
from fluxmq._speedups.message cimport Message
from fluxmq._speedups.ratelimit cimport TokenBucket
from fluxmq._speedups.session cimport Outlet, Session

cdef enum:
    ST_NEW = 0            # transport up, waiting for CONNECT
    ST_CONNECTING = 1     # CONNECT received, CONNACK not sent yet
    ST_CONNECTED = 2
    ST_CLOSING = 3        # closing: input is ignored
    ST_CLOSED = 4


cdef class Limits:
    """Broker settings the hot path reads (one object shared by every channel)."""
    cdef public int max_qos
    cdef public int max_topic_alias
    cdef public int receive_maximum
    cdef public Py_ssize_t max_packet_size
    cdef public Py_ssize_t max_pending_bytes     # QoS 0 is dropped for a stalled client past this


cdef class ChannelCore(Outlet):
    cdef public object transport
    cdef public OutBuffer out
    cdef public Decoder decoder
    cdef public Dispatcher dispatcher
    cdef public Limits limits
    cdef public Counters counters
    cdef public Flusher flusher
    cdef public Session session
    cdef public int state
    cdef public int version
    cdef public str client_id
    cdef public int keepalive              # agreed keep-alive in seconds (0 = none)
    cdef public double last_rx             # monotonic time of the last bytes received
    cdef public double opened_at           # monotonic time the transport came up
    cdef public double closed_at           # monotonic time close() began (0: open)
    cdef public Py_ssize_t client_max_packet   # the client's Maximum Packet Size (0 = none)
    cdef public int client_alias_max       # the client's Topic Alias Maximum
    cdef public bint problem_info          # the client wants reason strings
    cdef public object authz               # publish authoriser hook: (channel, msg) -> reason
    cdef public set authz_ok               # topics authz allowed (cleared when the ACL changes)
    cdef public object authz_last          # the last topic allowed (the same str: no look-up)
    cdef public int close_reason           # why it ended (MQTT 5 reason code; 0 = normal)
    cdef public bint will_wanted           # publish the will when the connection ends
    cdef bint _ended                       # on_closed() has run
    cdef public TokenBucket msg_limit      # ratelimit.message: PUBLISH packets (None = off)
    cdef public TokenBucket sub_limit      # ratelimit.subscribe: SUBSCRIBE filters (None = off)
    cdef public int blocked                # sessions this publisher waits on (back-pressure)
    cdef public double blocked_since
    cdef list _blockers
    cdef dict in_aliases                   # inbound topic alias -> topic
    cdef dict out_aliases                  # outbound topic -> alias
    cdef int out_alias_next

    cdef int _block(self, list sessions) except -1
    cdef int _on_publish(self, Frame* f) except -1
    cdef int _on_ack(self, Frame* f, int ptype) except -1
    cdef str _why(self, str reason_string)
    cdef int _ack(self, int ptype, int packet_id, int reason, str reason_string) except -1
    cdef int _wire_publish(self, Message msg, int qos, int packet_id, bint dup, bint retain,
                           object sub_ids, long expiry) except -1
    cpdef int send(self, Packet pkt) except -1
    cdef int _end(self, object exc) except -1
    cpdef int close(self, int reason=*, str message=*) except -1
