# cython: language_level=3
"""One client's MQTT conversation: the uvloop Protocol and its hot path.

Bytes arrive in `data_received`; the codec splits them into frames. PUBLISH, PUBACK, PUBREC,
PUBREL, PUBCOMP and PINGREQ are handled here with C calls into the codec, the session and the
dispatcher. Everything else (CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, AUTH) is decoded into
a packet object and handed to `on_packet()`, which the Python subclass
(`fluxmq.mqtt.connection.Connection`) implements, as it does `on_open()`, `on_closed()` and
`on_error()`.

Output goes into the connection's OutBuffer and leaves with one write per loop turn. A PUBLISH
encoded for one subscriber is kept on the message (`wire_key`/`wire_bytes`) so that every other
subscriber taking the same wire form gets a copy of those bytes, with only its packet
identifier patched in.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fluxmq._speedups.bufpool cimport OutBuffer, Flusher, WriteBuffer, varint_size
from fluxmq._speedups.codec cimport (
    Decoder, Frame, Packet, PublishInfo, write_publish, write_packet, write_ack, publish_size,
    PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ, PINGRESP, CONNECT, DISCONNECT, MQTT_5,
    Disconnect, Properties,
)
from fluxmq._speedups.dispatch cimport Dispatcher, Counters
from fluxmq._speedups.message cimport Message
from fluxmq._speedups.ratelimit cimport TokenBucket
from fluxmq._speedups.session cimport Outlet, Session, take_congested

import asyncio
import time

from fluxmq._speedups.codec import MQTTError, ProtocolError, MalformedPacket

LINGER = 2.0   # seconds a closed connection stays half-open for the client to read our last packet


cdef inline double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def now() -> float:
    """The clock the channels stamp `last_rx` and `opened_at` with (CLOCK_MONOTONIC)."""
    return monotonic()


cdef class Limits:
    def __init__(self, int max_qos=2, int max_topic_alias=10, int receive_maximum=1024,
                 Py_ssize_t max_packet_size=1048576, Py_ssize_t max_pending_bytes=1048576):
        self.max_qos = max_qos
        self.max_topic_alias = max_topic_alias
        self.receive_maximum = receive_maximum
        self.max_packet_size = max_packet_size
        self.max_pending_bytes = max_pending_bytes


UNKNOWN_PID = "packet identifier not found"

cdef bint _storage_full = False


def set_storage_full(bint full):
    """Durable storage cannot write: new QoS 1/2 publishes are refused until it can."""
    global _storage_full
    _storage_full = full


def storage_full() -> bool:
    return _storage_full
RATE_LIMITED = "message rate too high"


cdef inline bint _valid_utf8(Message msg):
    try:
        PyUnicode_DecodeUTF8(PyBytes_AS_STRING(msg._pbuf) + msg._poff, msg._plen, NULL)
    except UnicodeDecodeError:
        return False
    return True


cdef inline Py_ssize_t _header_len(const char* p) noexcept:
    cdef Py_ssize_t i = 1
    while (<unsigned char>p[i]) & 0x80:
        i += 1
    return i + 1


cdef class ChannelCore(Outlet):
    """The C half of a client connection. See the module docstring."""

    def __init__(self, Dispatcher dispatcher, Limits limits, Flusher flusher):
        self.dispatcher = dispatcher
        self.counters = dispatcher.counters
        self.limits = limits
        self.flusher = flusher
        self.decoder = Decoder(0, limits.max_packet_size)
        self.state = ST_NEW
        self.version = 0
        self.problem_info = True
        self.will_wanted = True

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.out = OutBuffer(transport, self.flusher)
        self.opened_at = self.last_rx = monotonic()
        self.on_open()

    def data_received(self, bytes data):
        cdef Frame f
        cdef int ptype
        self.last_rx = monotonic()
        self.counters.bytes_received += PyBytes_GET_SIZE(data)
        if self.state >= ST_CLOSING:
            return
        if self.blocked:
            self.decoder.push(data)     # keep it, unparsed, until the block ends
            self.decoder._carry(0)
            return
        try:
            self.decoder.push(data)
            while self.decoder.next(&f):
                self.counters.messages_received += 1
                ptype = f.first >> 4
                if self.state == ST_CONNECTED:
                    if ptype == PUBLISH:
                        self._on_publish(&f)
                        if self.blocked:
                            # Back-pressure: keep the rest of the chunk until released.
                            self.decoder._carry(0)
                            if self.transport is not None:
                                self.transport.pause_reading()
                            return
                    elif PUBACK <= ptype <= PUBCOMP and f.length == 2:
                        self._on_ack(&f, ptype)
                    elif ptype == PINGREQ and f.first == 0xC0 and f.length == 0:
                        self.out.reserve(2)
                        self.out.put_byte(0xD0)
                        self.out.put_byte(0)
                        self.out.mark()
                        self.counters.messages_sent += 1
                    else:
                        self.on_packet(self.decoder.decode(&f))
                elif self.state == ST_NEW:
                    if ptype != CONNECT:
                        # The first packet must be CONNECT [MQTT-3.1.0-1]: just close.
                        self.close_reason = 0x82
                        self.close(-1, "first packet is not CONNECT")
                        return
                    self.state = ST_CONNECTING
                    self.on_packet(self.decoder.decode(&f))
                    if self.state == ST_CONNECTING:
                        # Authentication goes on elsewhere: keep the rest for later.
                        self.decoder._carry(0)
                        self.transport.pause_reading()
                        return
                elif self.state == ST_CONNECTING:
                    raise ProtocolError("packet before the CONNECT was answered")
                if self.state >= ST_CLOSING:
                    return
        except MQTTError as exc:
            self.protocol_error(exc)
        except Exception as exc:
            self.on_error(exc)
            self.close_reason = 0x80
            self.close(0x80, "internal error")

    def resume_input(self):
        """After an asynchronous CONNECT completes: process what arrived meanwhile."""
        if self.state == ST_CONNECTED and self.transport is not None:
            self.transport.resume_reading()
            self.data_received(b"")

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if self.state == ST_CLOSED:
            return
        if self.state < ST_CLOSING and self.close_reason == 0:
            self.close_reason = 0x80      # the peer went away without DISCONNECT
        self.state = ST_CLOSED
        if self.blocked:
            self.release_all()
        if self.out is not None:
            self.out.detach_transport()
        self._end(exc)
        self.transport = None

    cdef int _end(self, object exc) except -1:
        """The connection is over for the broker (closing began, or the peer went away): the
        session is detached and the will handled now, once, whatever the socket still does."""
        if not self._ended:
            self._ended = True
            self.on_closed(exc)
        return 0

    def _linger_expired(self):
        if self.state == ST_CLOSING and self.transport is not None:
            self.transport.abort()

    def pause_writing(self):
        if self.out is not None:
            self.out.paused = True
            self.out.last_progress = monotonic()

    def resume_writing(self):
        if self.out is not None:
            self.out.paused = False
            self.out.last_progress = monotonic()
            if self.out.length:
                self.out.mark()

    # -- inbound PUBLISH ---------------------------------------------------------------------

    cdef int _on_publish(self, Frame* f) except -1:
        cdef PublishInfo info
        cdef Message msg = self.decoder.decode_publish(f, &info)
        cdef int qos = msg.qos
        cdef int pid = info.packet_id
        cdef int reason = 0
        cdef str why = None
        cdef int n
        cdef str topic
        self.counters.publish_received += 1
        self.counters.pub_in[qos] += 1
        self.counters.pub_in_bytes[qos] += f.length + 1 + varint_size(f.length)
        if self.version == MQTT_5:
            if info.has_sub_ids:
                raise ProtocolError("a client PUBLISH must not carry a subscription identifier")
            if info.topic_alias:
                if info.topic_alias > self.limits.max_topic_alias:
                    raise MQTTError(f"topic alias {info.topic_alias} is above the maximum "
                                    f"{self.limits.max_topic_alias}", 0x94)
                if info.empty_topic:
                    topic = self.in_aliases.get(info.topic_alias) if self.in_aliases else None
                    if topic is None:
                        raise ProtocolError(f"topic alias {info.topic_alias} was never set")
                    msg.topic = topic
                else:
                    if self.in_aliases is None:
                        self.in_aliases = {}
                    self.in_aliases[info.topic_alias] = msg.topic
            elif info.empty_topic:
                raise ProtocolError("empty topic name without a topic alias")
        if qos > self.limits.max_qos:
            raise MQTTError(f"QoS {qos} is above the maximum QoS {self.limits.max_qos}", 0x9B)
        if qos == 2:
            if pid in self.session.awaiting_rel:
                # A re-sent PUBLISH before PUBREL: acknowledge again, do not deliver twice.
                return self._ack(PUBREC, pid, 0, None)
            if len(self.session.awaiting_rel) >= self.limits.receive_maximum:
                raise MQTTError("more unacknowledged QoS 2 messages than the receive maximum",
                                0x93)
        if self.msg_limit is not None and not self.msg_limit.take(self.last_rx):
            # ratelimit.message: MQTT 5 gets 0x97 Quota exceeded (0x96 "Message rate too high"
            # is a DISCONNECT code, not one a PUBACK/PUBREC may carry [MQTT-3.4.2-1]; QoS 0 is
            # dropped and counted); MQTT 3.1.1 cannot refuse a PUBLISH, so it is disconnected.
            self.counters.publish_dropped += 1
            self.counters.dropped_rate_limited += 1
            if self.version != MQTT_5:
                self.close_reason = 0x96
                self.close(-1, RATE_LIMITED)
            elif qos:
                self._ack(PUBACK if qos == 1 else PUBREC, pid, 0x97, self._why(RATE_LIMITED))
            return 0
        if qos and _storage_full:
            if self.version != MQTT_5:
                raise MQTTError("storage is full: QoS 1/2 messages cannot be stored", 0x97)
            reason = 0x97
            why = "storage is full"
        elif msg.payload_format is not None and msg.payload_format == 1 and not _valid_utf8(msg):
            reason = 0x99
            why = "payload is not valid UTF-8"
        elif msg.topic.startswith("$SYS"):
            reason = 0x87
            why = "clients may not publish to $SYS topics"
        elif self.authz is not None and msg.topic is not self.authz_last:
            # The decoder hands out the same str while a publisher keeps its topic: then the
            # check above is all. Otherwise a set look-up, and the hook for a new topic.
            if self.authz_ok is None or msg.topic not in self.authz_ok:
                reason = self.authz(self, msg)
                if reason:
                    why = "not authorized"
                else:
                    if self.authz_ok is None:
                        self.authz_ok = set()
                    elif len(self.authz_ok) >= 4096:
                        self.authz_ok.clear()
                    self.authz_ok.add(msg.topic)
            if reason == 0:
                self.authz_last = msg.topic
        if reason == 0:
            msg.origin = self.client_id
            n = self.dispatcher.publish(msg)
            self.counters.lat_tick += 1
            if n and (self.counters.lat_tick & 15) == 0:
                # One publish in 16: time from its bytes' arrival to its hand-over to every
                # subscriber's connection (or session queue).
                self.counters.observe_latency(monotonic() - self.last_rx)
            if qos:
                congested = take_congested()
                if congested:
                    self._block(congested)
            if n == 0:
                if self.dispatcher.refused:
                    # A durable queue refused it. MQTT 3.1.1 has no refusal: a full queue
                    # disconnects the client (it publishes again later), anything else is
                    # acknowledged and dropped.
                    reason = self.dispatcher.refused
                    why = self.dispatcher.refused_why
                    self.counters.publish_dropped += 1
                    if self.version != MQTT_5:
                        if reason == 0x97 and qos:
                            raise MQTTError(why, 0x97)
                        reason = 0
                elif self.version == MQTT_5:
                    reason = 0x10            # no matching subscribers (still a success)
        else:
            self.counters.publish_dropped += 1
            if reason == 0x87:
                self.counters.dropped_not_authorized += 1
            if self.version != MQTT_5:
                reason = 0               # 3.1.1 has no refusal: acknowledge and drop
        if qos == 1:
            self._ack(PUBACK, pid, reason, self._why(why))
        elif qos == 2:
            if reason < 0x80:
                self.session.add_rel(pid)
            self._ack(PUBREC, pid, reason, self._why(why))
        return 0

    # -- acknowledgements of our deliveries, and PUBREL of theirs ---------------------------------

    cdef int _on_ack(self, Frame* f, int ptype) except -1:
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self.decoder.buf)
        cdef int pid = (p[f.offset] << 8) | p[f.offset + 1]
        cdef int flags = f.first & 0x0F
        if flags != (2 if ptype == PUBREL else 0):
            raise MalformedPacket(f"reserved flags of an acknowledgement are {flags:#x}")
        if pid == 0:
            raise ProtocolError("acknowledgement with packet identifier 0")
        if ptype == PUBACK:
            self.session.on_puback(pid)
        elif ptype == PUBREC:
            if not self.session.on_pubrec(pid, 0):
                self._ack(PUBREL, pid, 0x92, self._why(UNKNOWN_PID))
        elif ptype == PUBREL:
            if self.session.remove_rel(pid):
                self._ack(PUBCOMP, pid, 0, None)
            else:
                self._ack(PUBCOMP, pid, 0x92, self._why(UNKNOWN_PID))
        else:
            self.session.on_pubcomp(pid)
        return 0

    cdef inline str _why(self, str reason_string):
        """A reason string, unless the client asked for none (Request Problem Information 0)."""
        return reason_string if self.problem_info else None

    def on_ack_packet(self, pkt):
        """An acknowledgement with a reason code or properties (the long form)."""
        cdef int ptype = pkt.packet_type
        cdef int pid = pkt.packet_id
        if ptype == PUBACK:
            self.session.on_puback(pid)
        elif ptype == PUBREC:
            if not self.session.on_pubrec(pid, pkt.reason_code):
                self._ack(PUBREL, pid, 0x92, self._why(UNKNOWN_PID))
        elif ptype == PUBREL:
            if self.session.remove_rel(pid):
                self._ack(PUBCOMP, pid, 0, None)
            else:
                self._ack(PUBCOMP, pid, 0x92, self._why(UNKNOWN_PID))
        else:
            self.session.on_pubcomp(pid)

    cdef int _block(self, list sessions) except -1:
        """Wait for slow subscribers' queues to drain before reading more from this client."""
        cdef Session s
        for obj in sessions:
            s = <Session>obj
            if s is self.session or s.outlet is None:
                continue        # never wait on ourselves (we must keep reading our acks)
            if self._blockers is None:
                self._blockers = []
            if s in self._blockers:
                continue
            self._blockers.append(s)
            s.block(self)
            self.blocked += 1
        if self.blocked and self.blocked_since == 0.0:
            self.blocked_since = monotonic()
        return 0

    def release(self, session):
        """A session this publisher waited on has drained (or gone)."""
        if self._blockers is None or session not in self._blockers:
            return
        self._blockers.remove(session)
        self.blocked -= 1
        if self.blocked == 0:
            self._blockers = None
            self.blocked_since = 0.0
            if self.transport is not None:
                self.flusher.call_soon(self._resume_after_block)

    def release_all(self):
        """Stop waiting (the block lasted too long, or this connection is closing)."""
        if self._blockers is not None:
            for s in list(self._blockers):
                (<Session>s).unblock(self)
                self.release(s)

    def _resume_after_block(self):
        if self.blocked or self.state >= ST_CLOSING or self.transport is None:
            return
        self.last_rx = monotonic()
        self.transport.resume_reading()
        self.data_received(b"")

    cdef int _ack(self, int ptype, int packet_id, int reason, str reason_string) except -1:
        if self.state >= ST_CLOSING:
            return 0
        write_ack(self.out, ptype, packet_id, reason, reason_string, self.version)
        self.out.mark()
        self.counters.messages_sent += 1
        return 0

    # -- outbound (Outlet) ------------------------------------------------------------------------

    cdef int send_publish(self, Message msg, int qos, int packet_id, bint dup, bint retain,
                          object sub_ids) except -1:
        cdef long expiry = -1
        if self.state != ST_CONNECTED:
            return 0
        if msg.expires_at != 0.0:
            expiry = msg.remaining_expiry(time.time())
            if expiry == 0:
                return 0
        if qos == 0 and self.out.paused and self.out.length > self.limits.max_pending_bytes:
            self.counters.publish_dropped += 1
            self.counters.dropped_slow += 1
            return 0
        return self._wire_publish(msg, qos, packet_id, dup, retain, sub_ids, expiry)

    cdef int _wire_publish(self, Message msg, int qos, int packet_id, bint dup, bint retain,
                           object sub_ids, long expiry) except -1:
        cdef OutBuffer out = self.out
        cdef int v5 = self.version == MQTT_5
        cdef int alias = 0
        cdef bint send_topic = True
        cdef long key
        cdef Py_ssize_t start
        cdef Py_ssize_t hl
        cdef object a
        if v5 and self.client_alias_max > 0:
            if self.out_aliases is None:
                self.out_aliases = {}
            a = self.out_aliases.get(msg.topic)
            if a is not None:
                alias = a
                send_topic = False
            elif self.out_alias_next < self.client_alias_max:
                self.out_alias_next += 1
                alias = self.out_alias_next
                self.out_aliases[msg.topic] = alias
        if self.client_max_packet and publish_size(
                msg, self.version, qos, sub_ids, alias, send_topic, expiry) > self.client_max_packet:
            # Never send a client more than its Maximum Packet Size [MQTT-3.1.2-24]: drop it.
            if alias and send_topic:
                del self.out_aliases[msg.topic]
                self.out_alias_next -= 1
            self.counters.publish_dropped += 1
            self.counters.dropped_too_large += 1
            return 0
        start = out.length
        if alias or sub_ids is not None or dup:
            write_publish(out, msg, self.version, qos, retain, dup, packet_id, sub_ids, alias,
                          send_topic, expiry)
        else:
            key = ((expiry + 1) << 4) | (v5 << 3) | (qos << 1) | (1 if retain else 0)
            if msg.wire_key == key:
                out.put(PyBytes_AS_STRING(msg.wire_bytes), PyBytes_GET_SIZE(msg.wire_bytes))
                if qos:
                    out.set_u16(start + msg.wire_pid_at, packet_id)
            else:
                write_publish(out, msg, self.version, qos, retain, False, packet_id, None, 0,
                              True, expiry)
                if msg.fanout > 1:
                    msg.wire_bytes = PyBytes_FromStringAndSize(out.data + start,
                                                               out.length - start)
                    msg.wire_key = key
                    # The packet identifier follows the topic: header, 2-byte length, topic.
                    hl = _header_len(out.data + start)
                    msg.wire_pid_at = hl + 2 + (((<unsigned char>out.data[start + hl]) << 8)
                                                | (<unsigned char>out.data[start + hl + 1]))
        if qos == 2:
            out.mark()      # exactly once: a QoS 2 PUBLISH follows the commit of its state
        else:
            out.mark_delivery()
        self.counters.publish_sent += 1
        self.counters.messages_sent += 1
        self.counters.bytes_sent += out.length - start
        self.counters.pub_out[qos] += 1
        self.counters.pub_out_bytes[qos] += out.length - start
        return 1

    cdef int send_pubrel(self, int packet_id) except -1:
        return self._ack(PUBREL, packet_id, 0, None)

    cpdef int send(self, Packet pkt) except -1:
        """Encode and queue any packet for this client."""
        cdef Py_ssize_t start
        if self.out is None or self.out.closed:
            return 0
        start = self.out.length
        write_packet(self.out, pkt, self.version if self.version else 4)
        self.out.mark()
        self.counters.messages_sent += 1
        self.counters.bytes_sent += self.out.length - start
        return 1

    # -- errors and closing -----------------------------------------------------------------------

    def protocol_error(self, exc):
        """End the connection for a bad packet: MQTT 5 gets DISCONNECT with the reason code
        (after CONNACK) or a CONNACK refusal (before it); 3.1.1 is just closed."""
        code = getattr(exc, "reason_code", 0x81)
        self.close_reason = code
        self.on_violation(exc)
        if self.state == ST_CONNECTED:
            self.close(code, str(exc))
        else:
            self.close(-1, str(exc))

    cpdef int close(self, int reason=0, str message=None) except -1:
        """Close the connection; after CONNACK, MQTT 5 clients first get DISCONNECT `reason`
        (reason < 0: no DISCONNECT). Pending output is flushed first."""
        cdef Properties props = None
        if self.state >= ST_CLOSING:
            return 0
        if reason >= 0 and self.version == MQTT_5 and self.state == ST_CONNECTED:
            if message is not None:
                props = Properties.__new__(Properties)
                props.reason_string = message
            self.send(Disconnect(reason, props))
        self.state = ST_CLOSING
        self.closed_at = monotonic()
        if self.transport is not None:
            self.out.close()
            # Half-closed after our last packet: the client closes, or we drop it after LINGER.
            asyncio.get_event_loop().call_later(LINGER, self._linger_expired)
        self._end(None)
        return 0

    # -- defaults for the subclass hooks ------------------------------------------------------------

    def on_open(self):
        pass

    def on_packet(self, pkt):
        raise ProtocolError(f"unexpected {pkt.name}")

    def on_closed(self, exc):
        pass

    def on_error(self, exc):
        pass

    def on_violation(self, exc):
        pass

    # -- introspection ----------------------------------------------------------------------------

    @property
    def pending_output(self) -> int:
        return self.out.length if self.out is not None else 0

    @property
    def inbound_aliases(self) -> dict:
        return dict(self.in_aliases or {})

    def reset_aliases(self):
        self.in_aliases = None
        self.out_aliases = None
        self.out_alias_next = 0
