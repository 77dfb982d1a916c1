# cython: language_level=3
"""MQTT 3.1 (MQIsdp), 3.1.1 and 5.0 packets to and from bytes.

Decoding is incremental: `Decoder.push()` takes chunks as TCP delivers them, `Decoder.next()`
yields complete frames, and a stream fed one byte at a time decodes exactly like one fed whole.
A PUBLISH payload is not copied: the Message refers to the receive chunk until someone keeps it.

Validation is strict, and every error says which reason code it deserves:
`MalformedPacket` (0x81) for what cannot be parsed by the specification (bad lengths, bad
UTF-8, reserved bits, unknown properties), `ProtocolError` (0x82) for what parses but is not
allowed (duplicate properties, packet identifier 0, wildcards in a topic name),
`PacketTooLarge` (0x95) past the configured maximum packet size.

Encoders write into a `WriteBuffer` (a connection's output buffer, normally); `encode()` is the
Python entry point for tests and clients.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_AsUTF8AndSize
from libc.string cimport memchr, memcmp

from fluxmq._speedups.bufpool cimport WriteBuffer, varint_size
from fluxmq._speedups.message cimport Message, new_message

import time


# --------------------------------------------------------------------------------------------
# Errors


class MQTTError(Exception):
    """A packet the peer sent that must end the connection with `reason_code`."""

    reason_code = 0x80

    def __init__(self, message: str, reason_code: int | None = None):
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MQTTError):
    reason_code = 0x81


class ProtocolError(MQTTError):
    reason_code = 0x82


class PacketTooLarge(MQTTError):
    reason_code = 0x95


class UnsupportedProtocol(MQTTError):
    """CONNECT with a protocol name or level this broker does not speak."""

    reason_code = 0x84

    def __init__(self, message: str, protocol_level: int):
        super().__init__(message)
        self.protocol_level = protocol_level


PACKET_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}

# Python-visible constants.
TYPE_CONNECT = CONNECT
TYPE_CONNACK = CONNACK
TYPE_PUBLISH = PUBLISH
TYPE_PUBACK = PUBACK
TYPE_PUBREC = PUBREC
TYPE_PUBREL = PUBREL
TYPE_PUBCOMP = PUBCOMP
TYPE_SUBSCRIBE = SUBSCRIBE
TYPE_SUBACK = SUBACK
TYPE_UNSUBSCRIBE = UNSUBSCRIBE
TYPE_UNSUBACK = UNSUBACK
TYPE_PINGREQ = PINGREQ
TYPE_PINGRESP = PINGRESP
TYPE_DISCONNECT = DISCONNECT
TYPE_AUTH = AUTH

MAX_REMAINING_LENGTH = 268435455
MAX_VARINT = 268435455


# --------------------------------------------------------------------------------------------
# Property table: identifier -> (name, kind) and where each may appear.

cdef enum:
    K_BYTE = 1
    K_U16 = 2
    K_U32 = 3
    K_VARINT = 4
    K_STR = 5
    K_BIN = 6
    K_PAIR = 7

cdef int PROP_KIND[64]
cdef unsigned long long ALLOWED[17]

PROPERTY_NAMES = {
    0x01: "payload_format_indicator", 0x02: "message_expiry_interval", 0x03: "content_type",
    0x08: "response_topic", 0x09: "correlation_data", 0x0B: "subscription_identifier",
    0x11: "session_expiry_interval", 0x12: "assigned_client_identifier",
    0x13: "server_keep_alive", 0x15: "authentication_method", 0x16: "authentication_data",
    0x17: "request_problem_information", 0x18: "will_delay_interval",
    0x19: "request_response_information", 0x1A: "response_information",
    0x1C: "server_reference", 0x1F: "reason_string", 0x21: "receive_maximum",
    0x22: "topic_alias_maximum", 0x23: "topic_alias", 0x24: "maximum_qos",
    0x25: "retain_available", 0x26: "user_property", 0x27: "maximum_packet_size",
    0x28: "wildcard_subscription_available", 0x29: "subscription_identifier_available",
    0x2A: "shared_subscription_available",
}


cdef void _init_tables():
    cdef int i
    for i in range(64):
        PROP_KIND[i] = 0
    for i in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
        PROP_KIND[i] = K_BYTE
    for i in (0x13, 0x21, 0x22, 0x23):
        PROP_KIND[i] = K_U16
    for i in (0x02, 0x11, 0x18, 0x27):
        PROP_KIND[i] = K_U32
    PROP_KIND[0x0B] = K_VARINT
    for i in (0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F):
        PROP_KIND[i] = K_STR
    for i in (0x09, 0x16):
        PROP_KIND[i] = K_BIN
    PROP_KIND[0x26] = K_PAIR
    for i in range(17):
        ALLOWED[i] = 0
    ALLOWED[CONNECT] = _mask((0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27))
    ALLOWED[WILL_PROPS] = _mask((0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26))
    ALLOWED[CONNACK] = _mask((0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24,
                              0x25, 0x26, 0x27, 0x28, 0x29, 0x2A))
    ALLOWED[PUBLISH] = _mask((0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26))
    ALLOWED[PUBACK] = _mask((0x1F, 0x26))
    ALLOWED[PUBREC] = ALLOWED[PUBACK]
    ALLOWED[PUBREL] = ALLOWED[PUBACK]
    ALLOWED[PUBCOMP] = ALLOWED[PUBACK]
    ALLOWED[SUBSCRIBE] = _mask((0x0B, 0x26))
    ALLOWED[SUBACK] = _mask((0x1F, 0x26))
    ALLOWED[UNSUBSCRIBE] = _mask((0x26,))
    ALLOWED[UNSUBACK] = _mask((0x1F, 0x26))
    ALLOWED[DISCONNECT] = _mask((0x11, 0x1C, 0x1F, 0x26))
    ALLOWED[AUTH] = _mask((0x15, 0x16, 0x1F, 0x26))


cdef unsigned long long _mask(tuple ids):
    cdef unsigned long long m = 0
    cdef int i
    for i in ids:
        m |= (<unsigned long long>1) << i
    return m


_init_tables()


cdef class Properties:
    """MQTT 5 properties of one packet (or of a will). None = absent."""

    def __init__(self, **values):
        for name, value in values.items():
            setattr(self, name, value)

    def as_dict(self) -> dict:
        """The properties that are present, by name."""
        out = {}
        for name in _PROP_ATTRS:
            value = getattr(self, name)
            if value is not None and value != []:
                out[name] = value
        return out

    def __eq__(self, other):
        return isinstance(other, Properties) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return f"Properties({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"


_PROP_ATTRS = (
    "payload_format_indicator", "message_expiry_interval", "content_type", "response_topic",
    "correlation_data", "subscription_identifiers", "session_expiry_interval",
    "assigned_client_identifier", "server_keep_alive", "authentication_method",
    "authentication_data", "request_problem_information", "will_delay_interval",
    "request_response_information", "response_information", "server_reference",
    "reason_string", "receive_maximum", "topic_alias_maximum", "topic_alias", "maximum_qos",
    "retain_available", "user_properties", "maximum_packet_size",
    "wildcard_subscription_available", "subscription_identifier_available",
    "shared_subscription_available",
)


# --------------------------------------------------------------------------------------------
# Packet classes


cdef class Packet:
    """Base of every packet; `packet_type` is the MQTT control packet type (1..15)."""

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.packet_type, str(self.packet_type))

    def __eq__(self, other):
        return type(self) is type(other) and _fields(self) == _fields(other)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in _fields(self).items())})"


cdef dict _fields(object obj):
    out = {}
    for name in dir(obj):
        if name.startswith("_") or name in ("name", "packet_type"):
            continue
        value = getattr(obj, name)
        if callable(value):
            continue
        if isinstance(value, memoryview):
            value = bytes(value)
        elif isinstance(value, Properties) and not value.as_dict():
            value = None    # an empty property block equals none at all
        out[name] = value
    if hasattr(obj, "packet_type"):
        out["packet_type"] = obj.packet_type
    return out


cdef class Will:
    """The will message carried in a CONNECT."""

    def __init__(self, str topic="", object payload=b"", int qos=0, bint retain=False,
                 Properties properties=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties

    def __eq__(self, other):
        return isinstance(other, Will) and _fields(self) == _fields(other)

    def __repr__(self):
        return f"Will({_fields(self)!r})"


cdef class Connect(Packet):
    def __init__(self, str client_id="", *, str protocol_name="MQTT", int protocol_level=4,
                 bint clean_start=True, int keepalive=60, str username=None,
                 object password=None, Will will=None, Properties properties=None):
        self.packet_type = CONNECT
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.client_id = client_id
        self.username = username
        self.password = password
        self.will = will
        self.properties = properties


cdef class Connack(Packet):
    def __init__(self, int reason_code=0, bint session_present=False, Properties properties=None):
        self.packet_type = CONNACK
        self.reason_code = reason_code
        self.session_present = session_present
        self.properties = properties


cdef class Publish(Packet):
    def __init__(self, str topic="", object payload=b"", int qos=0, bint retain=False,
                 bint dup=False, int packet_id=0, Properties properties=None):
        self.packet_type = PUBLISH
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = properties


cdef class Ack(Packet):
    def __init__(self, int packet_type=PUBACK, int packet_id=0, int reason_code=0,
                 Properties properties=None):
        if packet_type not in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            raise ValueError("Ack is PUBACK, PUBREC, PUBREL or PUBCOMP")
        self.packet_type = packet_type
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties


def Puback(int packet_id=0, int reason_code=0, Properties properties=None):
    return Ack(PUBACK, packet_id, reason_code, properties)


def Pubrec(int packet_id=0, int reason_code=0, Properties properties=None):
    return Ack(PUBREC, packet_id, reason_code, properties)


def Pubrel(int packet_id=0, int reason_code=0, Properties properties=None):
    return Ack(PUBREL, packet_id, reason_code, properties)


def Pubcomp(int packet_id=0, int reason_code=0, Properties properties=None):
    return Ack(PUBCOMP, packet_id, reason_code, properties)


cdef class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE with its options."""

    def __init__(self, str topic_filter="", int qos=0, bint no_local=False,
                 bint retain_as_published=False, int retain_handling=0):
        self.topic_filter = topic_filter
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling

    def __eq__(self, other):
        return isinstance(other, SubscriptionRequest) and _fields(self) == _fields(other)

    def __repr__(self):
        return f"SubscriptionRequest({_fields(self)!r})"


cdef class Subscribe(Packet):
    def __init__(self, int packet_id=0, list requests=None, Properties properties=None):
        self.packet_type = SUBSCRIBE
        self.packet_id = packet_id
        self.requests = requests if requests is not None else []
        self.properties = properties


cdef class Suback(Packet):
    def __init__(self, int packet_id=0, list reason_codes=None, Properties properties=None):
        self.packet_type = SUBACK
        self.packet_id = packet_id
        self.reason_codes = reason_codes if reason_codes is not None else []
        self.properties = properties


cdef class Unsubscribe(Packet):
    def __init__(self, int packet_id=0, list topic_filters=None, Properties properties=None):
        self.packet_type = UNSUBSCRIBE
        self.packet_id = packet_id
        self.topic_filters = topic_filters if topic_filters is not None else []
        self.properties = properties


cdef class Unsuback(Packet):
    def __init__(self, int packet_id=0, list reason_codes=None, Properties properties=None):
        self.packet_type = UNSUBACK
        self.packet_id = packet_id
        self.reason_codes = reason_codes if reason_codes is not None else []
        self.properties = properties


cdef class Pingreq(Packet):
    def __init__(self):
        self.packet_type = PINGREQ


cdef class Pingresp(Packet):
    def __init__(self):
        self.packet_type = PINGRESP


cdef class Disconnect(Packet):
    def __init__(self, int reason_code=0, Properties properties=None):
        self.packet_type = DISCONNECT
        self.reason_code = reason_code
        self.properties = properties


cdef class Auth(Packet):
    def __init__(self, int reason_code=0, Properties properties=None):
        self.packet_type = AUTH
        self.reason_code = reason_code
        self.properties = properties


# --------------------------------------------------------------------------------------------
# Reading primitives over a (pointer, position, end) window.

cdef inline int r_need(Reader* r, Py_ssize_t n) except -1:
    if r.end - r.pos < n:
        raise MalformedPacket("packet shorter than its contents")
    return 0


cdef inline int r_byte(Reader* r) except -1:
    if r.pos >= r.end:
        raise MalformedPacket("packet shorter than its contents")
    r.pos += 1
    return r.p[r.pos - 1]


cdef inline int r_u16(Reader* r) except -1:
    if r.end - r.pos < 2:
        raise MalformedPacket("packet shorter than its contents")
    r.pos += 2
    return (r.p[r.pos - 2] << 8) | r.p[r.pos - 1]


cdef inline long long r_u32(Reader* r) except -1:
    if r.end - r.pos < 4:
        raise MalformedPacket("packet shorter than its contents")
    r.pos += 4
    return ((<long long>r.p[r.pos - 4] << 24) | (r.p[r.pos - 3] << 16)
            | (r.p[r.pos - 2] << 8) | r.p[r.pos - 1])


cdef inline long r_varint(Reader* r) except -1:
    cdef long value = 0
    cdef int shift = 0
    cdef int b
    cdef int count = 0
    while True:
        if r.pos >= r.end:
            raise MalformedPacket("truncated variable byte integer")
        b = r.p[r.pos]
        r.pos += 1
        count += 1
        value |= (<long>(b & 0x7F)) << shift
        if not (b & 0x80):
            if count > 1 and b == 0:
                raise MalformedPacket("variable byte integer not in its shortest form")
            return value
        if count == 4:
            raise MalformedPacket("variable byte integer longer than 4 bytes")
        shift += 7


cdef inline str utf8(const unsigned char* p, Py_ssize_t n):
    """Decode an MQTT UTF-8 string: well-formed, no surrogates, no U+0000 [MQTT-1.5.4-1/2]."""
    if n == 0:
        return ""
    if memchr(p, 0, n) != NULL:
        raise MalformedPacket("UTF-8 string contains U+0000")
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError:
        raise MalformedPacket("string is not well-formed UTF-8")


cdef inline str r_str(Reader* r):
    cdef int n = r_u16(r)
    r_need(r, n)
    r.pos += n
    return utf8(r.p + r.pos - n, n)


cdef inline bytes r_bin(Reader* r):
    cdef int n = r_u16(r)
    r_need(r, n)
    r.pos += n
    return PyBytes_FromStringAndSize(<const char*>(r.p + r.pos - n), n)


cdef int _flag01(long v, int pid) except -1:
    if v > 1:
        raise ProtocolError(f"property {PROPERTY_NAMES[pid]} must be 0 or 1, got {v}")
    return 0


cdef Properties r_props(Reader* r, int context):
    """Read a property block; `context` is the packet type (or WILL_PROPS)."""
    cdef long length = r_varint(r)
    cdef Py_ssize_t end
    cdef Properties props = Properties.__new__(Properties)
    cdef unsigned long long seen = 0
    cdef unsigned long long bit
    cdef long pid
    cdef long v = 0
    cdef int kind
    r_need(r, length)
    end = r.pos + length
    while r.pos < end:
        pid = r_varint(r)
        if pid >= 64 or PROP_KIND[pid] == 0:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02X}")
        bit = (<unsigned long long>1) << pid
        if not (ALLOWED[context] & bit):
            raise MalformedPacket(
                f"property {PROPERTY_NAMES[pid]} is not allowed in {_context_name(context)}")
        if seen & bit:
            if pid != 0x26 and not (pid == 0x0B and context == PUBLISH):
                raise ProtocolError(f"property {PROPERTY_NAMES[pid]} included more than once")
        seen |= bit
        kind = PROP_KIND[pid]
        # Each value must lie inside the property block.
        if kind == K_BYTE:
            v = r_byte(r)
        elif kind == K_U16:
            v = r_u16(r)
        elif kind == K_U32:
            v = r_u32(r)
        elif kind == K_VARINT:
            v = r_varint(r)
        if r.pos > end:
            raise MalformedPacket("property value runs past the property length")
        if pid == 0x01:
            _flag01(v, pid)
            props.payload_format_indicator = v
        elif pid == 0x02:
            props.message_expiry_interval = v
        elif pid == 0x03:
            props.content_type = r_str(r)
        elif pid == 0x08:
            props.response_topic = r_str(r)
        elif pid == 0x09:
            props.correlation_data = r_bin(r)
        elif pid == 0x0B:
            if v == 0:
                raise ProtocolError("subscription identifier 0")
            if props.subscription_identifiers is None:
                props.subscription_identifiers = [v]
            else:
                props.subscription_identifiers.append(v)
        elif pid == 0x11:
            props.session_expiry_interval = v
        elif pid == 0x12:
            props.assigned_client_identifier = r_str(r)
        elif pid == 0x13:
            props.server_keep_alive = v
        elif pid == 0x15:
            props.authentication_method = r_str(r)
        elif pid == 0x16:
            props.authentication_data = r_bin(r)
        elif pid == 0x17:
            _flag01(v, pid)
            props.request_problem_information = v
        elif pid == 0x18:
            props.will_delay_interval = v
        elif pid == 0x19:
            _flag01(v, pid)
            props.request_response_information = v
        elif pid == 0x1A:
            props.response_information = r_str(r)
        elif pid == 0x1C:
            props.server_reference = r_str(r)
        elif pid == 0x1F:
            props.reason_string = r_str(r)
        elif pid == 0x21:
            if v == 0:
                raise ProtocolError("receive maximum 0")
            props.receive_maximum = v
        elif pid == 0x22:
            props.topic_alias_maximum = v
        elif pid == 0x23:
            if v == 0:
                # [MQTT-3.3.2-8]; 3.3.2.3.4: a Protocol Error, DISCONNECT 0x94 (Topic Alias invalid)
                raise ProtocolError("topic alias 0", 0x94)
            props.topic_alias = v
        elif pid == 0x24:
            _flag01(v, pid)
            props.maximum_qos = v
        elif pid == 0x25:
            _flag01(v, pid)
            props.retain_available = v
        elif pid == 0x26:
            name = r_str(r)
            value = r_str(r)
            if props.user_properties is None:
                props.user_properties = [(name, value)]
            else:
                props.user_properties.append((name, value))
        elif pid == 0x27:
            if v == 0:
                raise ProtocolError("maximum packet size 0")
            props.maximum_packet_size = v
        elif pid == 0x28:
            _flag01(v, pid)
            props.wildcard_subscription_available = v
        elif pid == 0x29:
            _flag01(v, pid)
            props.subscription_identifier_available = v
        elif pid == 0x2A:
            _flag01(v, pid)
            props.shared_subscription_available = v
        if r.pos > end:
            raise MalformedPacket("property value runs past the property length")
    return props


cdef str _context_name(int context):
    if context == WILL_PROPS:
        return "the will properties"
    return PACKET_NAMES.get(context, "this packet")


# --------------------------------------------------------------------------------------------
# Topic names and filters


cpdef bint valid_topic_name(str topic):
    """A topic name a client may publish to: non-empty, no wildcards, no U+0000
    [MQTT-3.3.2-2, 4.7.3-1, 4.7.3-2]."""
    return len(topic) > 0 and "+" not in topic and "#" not in topic and "\x00" not in topic


cpdef bint valid_topic_filter(str topic_filter):
    """A syntactically valid subscription filter, including `$share/<group>/<filter>`."""
    cdef list levels
    cdef Py_ssize_t i, n
    cdef str level
    if not topic_filter or "\x00" in topic_filter:
        return False    # [MQTT-4.7.3-1] [MQTT-4.7.3-2]
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            return False
        if "+" in parts[1] or "#" in parts[1]:
            return False
        topic_filter = parts[2]
    levels = topic_filter.split("/")
    n = len(levels)
    for i in range(n):
        level = levels[i]
        if "#" in level:
            if level != "#" or i != n - 1:
                return False
        elif "+" in level and level != "+":
            return False
    return True


# --------------------------------------------------------------------------------------------
# Frames


cdef inline Py_ssize_t frame_header(const unsigned char* p, Py_ssize_t n, Py_ssize_t* rl) except -2:
    """Length of the fixed header at p (2..5 bytes) with *rl set, or 0 if more bytes are needed."""
    cdef Py_ssize_t value = 0
    cdef int shift = 0
    cdef Py_ssize_t i = 1
    cdef unsigned char b
    while True:
        if i >= n:
            if i >= 5:
                raise MalformedPacket("remaining length longer than 4 bytes")
            return 0
        b = p[i]
        value |= (<Py_ssize_t>(b & 0x7F)) << shift
        i += 1
        if not (b & 0x80):
            if i > 2 and b == 0:
                raise MalformedPacket("remaining length not in its shortest form")
            rl[0] = value
            return i
        if i == 5:
            raise MalformedPacket("remaining length longer than 4 bytes")
        shift += 7


# Fixed-header flags that the specification requires, per packet type (PUBLISH has its own).
cdef int REQUIRED_FLAGS[16]
REQUIRED_FLAGS[:] = [-1, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0]


cdef class Decoder:
    """Splits a byte stream into MQTT packets and decodes them.

    `version` is the protocol level (3, 4 or 5) that governs how packets are parsed; a server-
    side decoder starts at 0 and takes the level of the CONNECT it decodes.
    """

    def __init__(self, int version=0, Py_ssize_t max_packet_size=0):
        self.version = version
        self.max_packet_size = max_packet_size
        self.buf = b""
        self.pos = 0
        self.end = 0
        self._pending = None
        self._need = 0

    cdef int push(self, object data) except -1:
        """Start walking a new chunk (joined with any incomplete packet carried over)."""
        cdef Py_ssize_t have
        if self._pending is not None:
            self._pending += data
            have = len(self._pending)
            if self._need and have < self._need:
                self.buf = b""
                self.pos = self.end = 0
                return 0
            # Immutable bytes, so payload views into it stay valid.
            self.buf = bytes(self._pending)
            self._pending = None
            self._need = 0
        else:
            self.buf = data if type(data) is bytes else bytes(data)
        self.pos = 0
        self.end = PyBytes_GET_SIZE(self.buf)
        return 0

    cdef int next(self, Frame* f) except -1:
        """1 with *f set when a whole packet is available; 0 when more bytes are needed."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self.buf)
        cdef Py_ssize_t avail = self.end - self.pos
        cdef Py_ssize_t rl = 0
        cdef Py_ssize_t hl
        cdef Py_ssize_t total
        if avail <= 0:
            return 0
        hl = frame_header(p + self.pos, avail, &rl)
        if hl == 0:
            self._carry(0)
            return 0
        total = hl + rl
        if self.max_packet_size and total > self.max_packet_size:
            raise PacketTooLarge(f"packet of {total} bytes exceeds the maximum packet size "
                                 f"{self.max_packet_size}")
        if avail < total:
            self._carry(total)
            return 0
        f.first = p[self.pos]
        f.offset = self.pos + hl
        f.length = rl
        self.pos += total
        return 1

    cdef int _carry(self, Py_ssize_t need) except -1:
        """Keep the incomplete tail for the next chunk."""
        self._pending = bytearray(self.buf[self.pos:self.end])
        self._need = need
        self.pos = self.end
        return 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held over (0 when at a packet boundary)."""
        return len(self._pending) if self._pending is not None else 0

    def feed(self, data) -> list:
        """Decode every complete packet in `data` (plus what was held over) into packet objects."""
        cdef Frame f
        cdef list out = []
        self.push(data)
        while self.next(&f):
            out.append(self.decode(&f))
        return out

    # -- decoding one frame ---------------------------------------------------------------------

    cdef Packet decode(self, Frame* f):
        cdef int ptype = f.first >> 4
        cdef int flags = f.first & 0x0F
        cdef Reader r
        cdef Message m
        cdef PublishInfo info
        cdef Publish pub
        r.p = <const unsigned char*>PyBytes_AS_STRING(self.buf)
        r.pos = f.offset
        r.end = f.offset + f.length
        if ptype == 0 or (ptype == AUTH and self.version != MQTT_5):
            raise MalformedPacket(f"reserved packet type {ptype}")
        if ptype == PUBLISH:
            m = self.decode_publish(f, &info)
            pub = Publish.__new__(Publish)
            pub.packet_type = PUBLISH
            pub.topic = m.topic
            m.detach()
            pub.payload = m.payload
            pub.qos = m.qos
            pub.retain = m.retain
            pub.dup = info.dup
            pub.packet_id = info.packet_id
            pub.properties = _publish_props(m, info.topic_alias, self._last_sub_ids)
            return pub
        if flags != REQUIRED_FLAGS[ptype]:
            raise MalformedPacket(f"reserved flags of {PACKET_NAMES[ptype]} are {flags:#x}")
        if ptype == CONNECT:
            return self._connect(&r)
        if self.version == 0:
            raise ProtocolError("the first packet must be CONNECT")
        if ptype == CONNACK:
            return self._connack(&r)
        if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            return self._ack(&r, ptype)
        if ptype == SUBSCRIBE:
            return self._subscribe(&r)
        if ptype == SUBACK:
            return self._suback(&r)
        if ptype == UNSUBSCRIBE:
            return self._unsubscribe(&r)
        if ptype == UNSUBACK:
            return self._unsuback(&r)
        if ptype == PINGREQ or ptype == PINGRESP:
            if f.length != 0:
                raise MalformedPacket(f"{PACKET_NAMES[ptype]} with a remaining length")
            return Pingreq() if ptype == PINGREQ else Pingresp()
        if ptype == DISCONNECT:
            return self._disconnect(&r)
        return self._auth(&r)

    cdef str topic_str(self, const unsigned char* p, Py_ssize_t n):
        """The topic as str, reusing the previous one when the bytes are the same (common)."""
        cdef bytes last = self._last_topic_raw
        if last is not None and PyBytes_GET_SIZE(last) == n and \
                memcmp(PyBytes_AS_STRING(last), p, n) == 0:
            return self._last_topic
        topic = utf8(p, n)
        self._last_topic_raw = PyBytes_FromStringAndSize(<const char*>p, n)
        self._last_topic = topic
        return topic

    cdef Message decode_publish(self, Frame* f, PublishInfo* info):
        """Build the Message of a PUBLISH frame; the payload stays in the receive chunk."""
        cdef int flags = f.first & 0x0F
        cdef int qos = (flags >> 1) & 3
        cdef Reader r
        cdef int tlen
        cdef Message m
        cdef Properties props = None
        cdef str topic
        if self.version == 0:
            raise ProtocolError("the first packet must be CONNECT")
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        if qos == 0 and (flags & 8):
            raise MalformedPacket("PUBLISH with QoS 0 and DUP set")
        r.p = <const unsigned char*>PyBytes_AS_STRING(self.buf)
        r.pos = f.offset
        r.end = f.offset + f.length
        tlen = r_u16(&r)
        r_need(&r, tlen)
        topic = self.topic_str(r.p + r.pos, tlen)
        r.pos += tlen
        info.dup = (flags & 8) != 0
        info.empty_topic = tlen == 0
        info.topic_alias = 0
        info.has_sub_ids = False
        info.packet_id = 0
        if qos:
            info.packet_id = r_u16(&r)
            if info.packet_id == 0:
                raise ProtocolError("PUBLISH with packet identifier 0")
        if tlen and ("+" in topic or "#" in topic):
            raise ProtocolError("topic name contains a wildcard")
        self._last_sub_ids = None
        if self.version == MQTT_5:
            props = r_props(&r, PUBLISH)
        elif tlen == 0:
            raise ProtocolError("empty topic name")
        m = new_message(topic, <bytes>self.buf, r.pos, r.end - r.pos, qos, flags & 1)
        if props is not None:
            if props.topic_alias is not None:
                info.topic_alias = props.topic_alias
            if props.subscription_identifiers is not None:
                info.has_sub_ids = True
                self._last_sub_ids = props.subscription_identifiers
            m.payload_format = props.payload_format_indicator
            if props.message_expiry_interval is not None:
                m.expires_at = time.time() + <long long>props.message_expiry_interval
            m.content_type = props.content_type
            m.response_topic = props.response_topic
            m.correlation_data = props.correlation_data
            m.user_properties = props.user_properties
            if props.response_topic is not None and not valid_topic_name(props.response_topic):
                raise ProtocolError("response topic contains a wildcard")
        return m

    cdef Connect _connect(self, Reader* r):
        cdef Connect c = Connect.__new__(Connect)
        cdef int flags
        cdef int will_qos
        cdef Will will
        c.packet_type = CONNECT
        if self.version != 0:
            raise ProtocolError("second CONNECT on one connection")
        c.protocol_name = r_str(r)
        c.protocol_level = r_byte(r)
        if not ((c.protocol_name == "MQTT" and c.protocol_level in (4, 5))
                or (c.protocol_name == "MQIsdp" and c.protocol_level == 3)):
            if c.protocol_name not in ("MQTT", "MQIsdp"):
                raise MalformedPacket(f"unknown protocol name {c.protocol_name!r}")
            raise UnsupportedProtocol(
                f"unsupported protocol {c.protocol_name} level {c.protocol_level}",
                c.protocol_level)
        flags = r_byte(r)
        if flags & 1:
            raise MalformedPacket("reserved CONNECT flag is set")
        c.clean_start = (flags & 2) != 0
        will_qos = (flags >> 3) & 3
        if flags & 4:
            if will_qos == 3:
                raise MalformedPacket("will QoS 3")
        elif will_qos or (flags & 0x20):
            raise MalformedPacket("will QoS or will retain set without the will flag")
        if c.protocol_level != MQTT_5 and (flags & 0x40) and not (flags & 0x80):
            raise MalformedPacket("password flag without username flag")
        c.keepalive = r_u16(r)
        c.properties = r_props(r, CONNECT) if c.protocol_level == MQTT_5 else None
        c.client_id = r_str(r)
        if flags & 4:
            will = Will.__new__(Will)
            will.qos = will_qos
            will.retain = (flags & 0x20) != 0
            will.properties = r_props(r, WILL_PROPS) if c.protocol_level == MQTT_5 else None
            will.topic = r_str(r)
            if not valid_topic_name(will.topic):
                raise ProtocolError("will topic is empty or contains a wildcard")
            will.payload = r_bin(r)
            c.will = will
        c.username = r_str(r) if flags & 0x80 else None
        c.password = r_bin(r) if flags & 0x40 else None
        if r.pos != r.end:
            raise MalformedPacket("CONNECT longer than its contents")
        self.version = c.protocol_level
        return c

    cdef Connack _connack(self, Reader* r):
        cdef Connack c = Connack.__new__(Connack)
        cdef int flags
        c.packet_type = CONNACK
        flags = r_byte(r)
        if flags & 0xFE:
            raise MalformedPacket("reserved CONNACK flags are set")
        c.session_present = flags & 1
        c.reason_code = r_byte(r)
        if self.version == MQTT_5:
            c.properties = r_props(r, CONNACK) if r.pos < r.end else Properties.__new__(Properties)
        self._check_end(r)
        return c

    cdef Ack _ack(self, Reader* r, int ptype):
        cdef Ack a = Ack.__new__(Ack)
        a.packet_type = ptype
        a.packet_id = r_u16(r)
        if a.packet_id == 0:
            raise ProtocolError(f"{PACKET_NAMES[ptype]} with packet identifier 0")
        a.reason_code = 0
        if self.version == MQTT_5 and r.pos < r.end:
            a.reason_code = r_byte(r)
            if r.pos < r.end:
                a.properties = r_props(r, ptype)
        self._check_end(r)
        return a

    cdef Subscribe _subscribe(self, Reader* r):
        cdef Subscribe s = Subscribe.__new__(Subscribe)
        cdef SubscriptionRequest req
        cdef int opts
        s.packet_type = SUBSCRIBE
        s.packet_id = r_u16(r)
        if s.packet_id == 0:
            raise ProtocolError("SUBSCRIBE with packet identifier 0")
        if self.version == MQTT_5:
            s.properties = r_props(r, SUBSCRIBE)
        s.requests = []
        while r.pos < r.end:
            req = SubscriptionRequest.__new__(SubscriptionRequest)
            req.topic_filter = r_str(r)
            opts = r_byte(r)
            req.qos = opts & 3
            if req.qos == 3:
                if self.version == MQTT_5:
                    # 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
                    raise ProtocolError("subscription QoS 3")
                raise MalformedPacket("subscription QoS 3")    # [MQTT-3-8.3-4]
            if self.version == MQTT_5:
                if opts & 0xC0:
                    raise MalformedPacket("reserved subscription option bits are set")
                req.no_local = (opts & 4) != 0
                req.retain_as_published = (opts & 8) != 0
                req.retain_handling = (opts >> 4) & 3
                if req.retain_handling == 3:
                    raise ProtocolError("retain handling 3")
            elif opts & 0xFC:
                raise MalformedPacket("reserved subscription option bits are set")
            s.requests.append(req)
        if not s.requests:
            raise ProtocolError("SUBSCRIBE without a topic filter")
        return s

    cdef Suback _suback(self, Reader* r):
        cdef Suback s = Suback.__new__(Suback)
        s.packet_type = SUBACK
        s.packet_id = r_u16(r)
        if self.version == MQTT_5:
            s.properties = r_props(r, SUBACK)
        s.reason_codes = []
        while r.pos < r.end:
            s.reason_codes.append(r_byte(r))
        return s

    cdef Unsubscribe _unsubscribe(self, Reader* r):
        cdef Unsubscribe u = Unsubscribe.__new__(Unsubscribe)
        u.packet_type = UNSUBSCRIBE
        u.packet_id = r_u16(r)
        if u.packet_id == 0:
            raise ProtocolError("UNSUBSCRIBE with packet identifier 0")
        if self.version == MQTT_5:
            u.properties = r_props(r, UNSUBSCRIBE)
        u.topic_filters = []
        while r.pos < r.end:
            u.topic_filters.append(r_str(r))
        if not u.topic_filters:
            raise ProtocolError("UNSUBSCRIBE without a topic filter")
        return u

    cdef Unsuback _unsuback(self, Reader* r):
        cdef Unsuback u = Unsuback.__new__(Unsuback)
        u.packet_type = UNSUBACK
        u.packet_id = r_u16(r)
        u.reason_codes = []
        if self.version == MQTT_5:
            u.properties = r_props(r, UNSUBACK)
            while r.pos < r.end:
                u.reason_codes.append(r_byte(r))
        self._check_end(r)
        return u

    cdef Disconnect _disconnect(self, Reader* r):
        cdef Disconnect d = Disconnect.__new__(Disconnect)
        d.packet_type = DISCONNECT
        d.reason_code = 0
        if self.version == MQTT_5 and r.pos < r.end:
            d.reason_code = r_byte(r)
            if r.pos < r.end:
                d.properties = r_props(r, DISCONNECT)
        self._check_end(r)
        return d

    cdef Auth _auth(self, Reader* r):
        cdef Auth a = Auth.__new__(Auth)
        a.packet_type = AUTH
        a.reason_code = 0
        if r.pos < r.end:
            a.reason_code = r_byte(r)
            if r.pos < r.end:
                a.properties = r_props(r, AUTH)
        self._check_end(r)
        return a

    cdef int _check_end(self, Reader* r) except -1:
        if r.pos != r.end:
            raise MalformedPacket("packet longer than its contents")
        return 0


cdef Properties _publish_props(Message m, int alias, object sub_ids):
    """The MQTT 5 properties of a decoded PUBLISH, for the packet-object API."""
    cdef Properties p
    if (m.payload_format is None and m.expires_at == 0.0 and m.content_type is None
            and m.response_topic is None and m.correlation_data is None
            and m.user_properties is None and alias == 0 and sub_ids is None):
        return None
    p = Properties.__new__(Properties)
    p.payload_format_indicator = m.payload_format
    if m.expires_at != 0.0:
        p.message_expiry_interval = m.remaining_expiry(time.time())
    p.content_type = m.content_type
    p.response_topic = m.response_topic
    p.correlation_data = m.correlation_data
    p.user_properties = m.user_properties
    p.topic_alias = alias or None
    p.subscription_identifiers = sub_ids
    return p


# --------------------------------------------------------------------------------------------
# Encoding


cdef inline Py_ssize_t str_size(object s) except -1:
    cdef Py_ssize_t n
    if type(s) is str:
        PyUnicode_AsUTF8AndSize(s, &n)
        return 2 + n
    return 2 + len(s)


cdef Py_ssize_t props_size(Properties p) except -1:
    """Size of the property block's contents (without its length prefix)."""
    cdef Py_ssize_t n = 0
    if p is None:
        return 0
    if p.payload_format_indicator is not None:
        n += 2
    if p.message_expiry_interval is not None:
        n += 5
    if p.content_type is not None:
        n += 1 + str_size(p.content_type)
    if p.response_topic is not None:
        n += 1 + str_size(p.response_topic)
    if p.correlation_data is not None:
        n += 1 + str_size(p.correlation_data)
    if p.subscription_identifiers is not None:
        for v in p.subscription_identifiers:
            n += 1 + varint_size(v)
    if p.session_expiry_interval is not None:
        n += 5
    if p.assigned_client_identifier is not None:
        n += 1 + str_size(p.assigned_client_identifier)
    if p.server_keep_alive is not None:
        n += 3
    if p.authentication_method is not None:
        n += 1 + str_size(p.authentication_method)
    if p.authentication_data is not None:
        n += 1 + str_size(p.authentication_data)
    if p.request_problem_information is not None:
        n += 2
    if p.will_delay_interval is not None:
        n += 5
    if p.request_response_information is not None:
        n += 2
    if p.response_information is not None:
        n += 1 + str_size(p.response_information)
    if p.server_reference is not None:
        n += 1 + str_size(p.server_reference)
    if p.reason_string is not None:
        n += 1 + str_size(p.reason_string)
    if p.receive_maximum is not None:
        n += 3
    if p.topic_alias_maximum is not None:
        n += 3
    if p.topic_alias is not None:
        n += 3
    if p.maximum_qos is not None:
        n += 2
    if p.retain_available is not None:
        n += 2
    if p.user_properties is not None:
        for k, v in p.user_properties:
            n += 1 + str_size(k) + str_size(v)
    if p.maximum_packet_size is not None:
        n += 5
    if p.wildcard_subscription_available is not None:
        n += 2
    if p.subscription_identifier_available is not None:
        n += 2
    if p.shared_subscription_available is not None:
        n += 2
    return n


cdef int write_props(WriteBuffer out, Properties p, Py_ssize_t size) except -1:
    out.put_varint(size)
    if p is None:
        return 0
    if p.payload_format_indicator is not None:
        out.put_byte(0x01)
        out.put_byte(p.payload_format_indicator)
    if p.message_expiry_interval is not None:
        out.put_byte(0x02)
        out.put_u32(p.message_expiry_interval)
    if p.content_type is not None:
        out.put_byte(0x03)
        out.put_prefixed(p.content_type)
    if p.response_topic is not None:
        out.put_byte(0x08)
        out.put_prefixed(p.response_topic)
    if p.correlation_data is not None:
        out.put_byte(0x09)
        out.put_prefixed(p.correlation_data)
    if p.subscription_identifiers is not None:
        for v in p.subscription_identifiers:
            out.put_byte(0x0B)
            out.put_varint(v)
    if p.session_expiry_interval is not None:
        out.put_byte(0x11)
        out.put_u32(p.session_expiry_interval)
    if p.assigned_client_identifier is not None:
        out.put_byte(0x12)
        out.put_prefixed(p.assigned_client_identifier)
    if p.server_keep_alive is not None:
        out.put_byte(0x13)
        out.put_u16(p.server_keep_alive)
    if p.authentication_method is not None:
        out.put_byte(0x15)
        out.put_prefixed(p.authentication_method)
    if p.authentication_data is not None:
        out.put_byte(0x16)
        out.put_prefixed(p.authentication_data)
    if p.request_problem_information is not None:
        out.put_byte(0x17)
        out.put_byte(p.request_problem_information)
    if p.will_delay_interval is not None:
        out.put_byte(0x18)
        out.put_u32(p.will_delay_interval)
    if p.request_response_information is not None:
        out.put_byte(0x19)
        out.put_byte(p.request_response_information)
    if p.response_information is not None:
        out.put_byte(0x1A)
        out.put_prefixed(p.response_information)
    if p.server_reference is not None:
        out.put_byte(0x1C)
        out.put_prefixed(p.server_reference)
    if p.reason_string is not None:
        out.put_byte(0x1F)
        out.put_prefixed(p.reason_string)
    if p.receive_maximum is not None:
        out.put_byte(0x21)
        out.put_u16(p.receive_maximum)
    if p.topic_alias_maximum is not None:
        out.put_byte(0x22)
        out.put_u16(p.topic_alias_maximum)
    if p.topic_alias is not None:
        out.put_byte(0x23)
        out.put_u16(p.topic_alias)
    if p.maximum_qos is not None:
        out.put_byte(0x24)
        out.put_byte(p.maximum_qos)
    if p.retain_available is not None:
        out.put_byte(0x25)
        out.put_byte(p.retain_available)
    if p.user_properties is not None:
        for k, v in p.user_properties:
            out.put_byte(0x26)
            out.put_prefixed(k)
            out.put_prefixed(v)
    if p.maximum_packet_size is not None:
        out.put_byte(0x27)
        out.put_u32(p.maximum_packet_size)
    if p.wildcard_subscription_available is not None:
        out.put_byte(0x28)
        out.put_byte(p.wildcard_subscription_available)
    if p.subscription_identifier_available is not None:
        out.put_byte(0x29)
        out.put_byte(p.subscription_identifier_available)
    if p.shared_subscription_available is not None:
        out.put_byte(0x2A)
        out.put_byte(p.shared_subscription_available)
    return 0


cdef inline int header(WriteBuffer out, int first, Py_ssize_t rl) except -1:
    if rl > MAX_REMAINING_LENGTH:
        raise ValueError(f"packet too large to encode ({rl} bytes)")
    out.reserve(5 + rl)
    out.put_byte(first)
    out.put_varint(rl)
    return 0


# -- PUBLISH from a Message (the delivery hot path) -------------------------------------------

cdef Py_ssize_t _msg_props_size(Message m, object sub_ids, int alias, long expiry) except -1:
    cdef Py_ssize_t n = 0
    if m.payload_format is not None:
        n += 2
    if expiry >= 0:
        n += 5
    if m.content_type is not None:
        n += 1 + str_size(m.content_type)
    if m.response_topic is not None:
        n += 1 + str_size(m.response_topic)
    if m.correlation_data is not None:
        n += 1 + str_size(m.correlation_data)
    if sub_ids is not None:
        for v in sub_ids:
            n += 1 + varint_size(v)
    if alias:
        n += 3
    if m.user_properties is not None:
        for k, v in m.user_properties:
            n += 1 + str_size(k) + str_size(v)
    return n


cdef Py_ssize_t publish_size(Message msg, int version, int qos, object sub_ids, int alias,
                             bint send_topic, long expiry) except -1:
    """Total encoded size of the PUBLISH write_publish() would produce."""
    cdef Py_ssize_t rl = msg._plen + (str_size(msg.topic) if send_topic else 2)
    cdef Py_ssize_t pn
    if qos:
        rl += 2
    if version == MQTT_5:
        pn = _msg_props_size(msg, sub_ids, alias, expiry)
        rl += varint_size(pn) + pn
    return 1 + varint_size(rl) + rl


cdef int write_publish(WriteBuffer out, Message msg, int version, int qos, bint retain, bint dup,
                       int packet_id, object sub_ids, int alias, bint send_topic,
                       long expiry) except -1:
    """Encode msg as a PUBLISH for a client of protocol `version`.

    `expiry` is the Message Expiry Interval to send (-1: none); `alias` a topic alias (0: none)
    and `send_topic` whether the topic name goes on the wire too (False re-uses an alias).
    """
    cdef Py_ssize_t tsize = str_size(msg.topic) if send_topic else 2
    cdef Py_ssize_t rl = msg._plen + tsize
    cdef Py_ssize_t pn = 0
    cdef int first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    if qos:
        rl += 2
    if version == MQTT_5:
        pn = _msg_props_size(msg, sub_ids, alias, expiry)
        rl += varint_size(pn) + pn
    header(out, first, rl)
    if send_topic:
        out.put_prefixed(msg.topic)
    else:
        out.put_u16(0)
    if qos:
        out.put_u16(packet_id)
    if version == MQTT_5:
        out.put_varint(pn)
        if msg.payload_format is not None:
            out.put_byte(0x01)
            out.put_byte(msg.payload_format)
        if expiry >= 0:
            out.put_byte(0x02)
            out.put_u32(expiry)
        if msg.content_type is not None:
            out.put_byte(0x03)
            out.put_prefixed(msg.content_type)
        if msg.response_topic is not None:
            out.put_byte(0x08)
            out.put_prefixed(msg.response_topic)
        if msg.correlation_data is not None:
            out.put_byte(0x09)
            out.put_prefixed(msg.correlation_data)
        if sub_ids is not None:
            for v in sub_ids:
                out.put_byte(0x0B)
                out.put_varint(v)
        if alias:
            out.put_byte(0x23)
            out.put_u16(alias)
        if msg.user_properties is not None:
            for k, v in msg.user_properties:
                out.put_byte(0x26)
                out.put_prefixed(k)
                out.put_prefixed(v)
    out.put(PyBytes_AS_STRING(msg._pbuf) + msg._poff, msg._plen)
    return 0


# -- Acknowledgements ------------------------------------------------------------------------

cdef int write_ack(WriteBuffer out, int ptype, int packet_id, int reason, str reason_string,
                   int version) except -1:
    """PUBACK/PUBREC/PUBREL/PUBCOMP in the shortest form the version allows."""
    cdef int first = (ptype << 4) | (2 if ptype == PUBREL else 0)
    cdef Py_ssize_t pn
    if version != MQTT_5 or (reason == 0 and reason_string is None):
        out.reserve(4)
        out.put_byte(first)
        out.put_byte(2)
        out.put_u16(packet_id)
        return 0
    if reason_string is None:
        out.reserve(5)
        out.put_byte(first)
        out.put_byte(3)
        out.put_u16(packet_id)
        out.put_byte(reason)
        return 0
    pn = 1 + str_size(reason_string)
    header(out, first, 3 + varint_size(pn) + pn)
    out.put_u16(packet_id)
    out.put_byte(reason)
    out.put_varint(pn)
    out.put_byte(0x1F)
    out.put_prefixed(reason_string)
    return 0


# -- Any packet object -------------------------------------------------------------------------

cdef int write_packet(WriteBuffer out, Packet pkt, int version) except -1:
    cdef int t = pkt.packet_type
    cdef Py_ssize_t pn
    cdef Py_ssize_t rl
    cdef Properties props
    if t == PUBLISH:
        return _write_publish_packet(out, <Publish>pkt, version)
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _write_ack_packet(out, <Ack>pkt, version)
    if t == CONNECT:
        return _write_connect(out, <Connect>pkt)
    if t == CONNACK:
        c = <Connack>pkt
        if version == MQTT_5:
            props = (<Connack>pkt).properties
            pn = props_size(props)
            header(out, 0x20, 2 + varint_size(pn) + pn)
            out.put_byte(1 if (<Connack>pkt).session_present else 0)
            out.put_byte((<Connack>pkt).reason_code)
            write_props(out, props, pn)
        else:
            header(out, 0x20, 2)
            out.put_byte(1 if (<Connack>pkt).session_present else 0)
            out.put_byte((<Connack>pkt).reason_code)
        return 0
    if t == SUBSCRIBE:
        return _write_subscribe(out, <Subscribe>pkt, version)
    if t == SUBACK or t == UNSUBACK:
        return _write_xsuback(out, pkt, version)
    if t == UNSUBSCRIBE:
        return _write_unsubscribe(out, <Unsubscribe>pkt, version)
    if t == PINGREQ or t == PINGRESP:
        header(out, t << 4, 0)
        return 0
    if t == DISCONNECT or t == AUTH:
        return _write_reason_only(out, pkt, version)
    raise ValueError(f"cannot encode packet type {t}")


cdef int _write_reason_only(WriteBuffer out, Packet pkt, int version) except -1:
    """DISCONNECT and AUTH: reason code and properties, both omitted when they are defaults."""
    cdef int t = pkt.packet_type
    cdef int reason
    cdef Properties props
    cdef Py_ssize_t pn
    if t == DISCONNECT:
        reason = (<Disconnect>pkt).reason_code
        props = (<Disconnect>pkt).properties
    else:
        reason = (<Auth>pkt).reason_code
        props = (<Auth>pkt).properties
    if version != MQTT_5:
        if t == AUTH:
            raise ValueError("AUTH exists only in MQTT 5")
        header(out, 0xE0, 0)
        return 0
    pn = props_size(props)
    if pn == 0:
        if reason == 0:
            header(out, t << 4, 0)
        else:
            header(out, t << 4, 1)
            out.put_byte(reason)
        return 0
    header(out, t << 4, 1 + varint_size(pn) + pn)
    out.put_byte(reason)
    write_props(out, props, pn)
    return 0


cdef int _write_publish_packet(WriteBuffer out, Publish p, int version) except -1:
    cdef Py_ssize_t tsize = str_size(p.topic)
    cdef Py_ssize_t plen
    cdef Py_ssize_t pn = 0
    cdef Py_ssize_t rl
    payload = p.payload
    if type(payload) is str:
        payload = (<str>payload).encode()
    plen = len(payload)
    rl = tsize + plen + (2 if p.qos else 0)
    if version == MQTT_5:
        pn = props_size(p.properties)
        rl += varint_size(pn) + pn
    header(out, 0x30 | (p.qos << 1) | (1 if p.retain else 0) | (8 if p.dup else 0), rl)
    out.put_prefixed(p.topic)
    if p.qos:
        out.put_u16(p.packet_id)
    if version == MQTT_5:
        write_props(out, p.properties, pn)
    out.put_bytes(payload)
    return 0


cdef int _write_ack_packet(WriteBuffer out, Ack a, int version) except -1:
    cdef int first = (a.packet_type << 4) | (2 if a.packet_type == PUBREL else 0)
    cdef Py_ssize_t pn
    if version != MQTT_5 or (a.reason_code == 0 and props_size(a.properties) == 0):
        header(out, first, 2)
        out.put_u16(a.packet_id)
        return 0
    pn = props_size(a.properties)
    if pn == 0:
        header(out, first, 3)
        out.put_u16(a.packet_id)
        out.put_byte(a.reason_code)
        return 0
    header(out, first, 3 + varint_size(pn) + pn)
    out.put_u16(a.packet_id)
    out.put_byte(a.reason_code)
    write_props(out, a.properties, pn)
    return 0


cdef int _write_connect(WriteBuffer out, Connect c) except -1:
    cdef int version = c.protocol_level
    cdef int flags = 0
    cdef Py_ssize_t rl
    cdef Py_ssize_t pn = 0
    cdef Py_ssize_t wpn = 0
    cdef Will w = c.will
    if c.clean_start:
        flags |= 2
    if w is not None:
        flags |= 4 | (w.qos << 3) | (0x20 if w.retain else 0)
    if c.password is not None:
        flags |= 0x40
    if c.username is not None:
        flags |= 0x80
    rl = str_size(c.protocol_name) + 1 + 1 + 2 + str_size(c.client_id)
    if version == MQTT_5:
        pn = props_size(c.properties)
        rl += varint_size(pn) + pn
    if w is not None:
        rl += str_size(w.topic) + str_size(w.payload)
        if version == MQTT_5:
            wpn = props_size(w.properties)
            rl += varint_size(wpn) + wpn
    if c.username is not None:
        rl += str_size(c.username)
    if c.password is not None:
        rl += str_size(c.password)
    header(out, 0x10, rl)
    out.put_prefixed(c.protocol_name)
    out.put_byte(version)
    out.put_byte(flags)
    out.put_u16(c.keepalive)
    if version == MQTT_5:
        write_props(out, c.properties, pn)
    out.put_prefixed(c.client_id)
    if w is not None:
        if version == MQTT_5:
            write_props(out, w.properties, wpn)
        out.put_prefixed(w.topic)
        out.put_prefixed(w.payload)
    if c.username is not None:
        out.put_prefixed(c.username)
    if c.password is not None:
        out.put_prefixed(c.password)
    return 0


cdef int _write_subscribe(WriteBuffer out, Subscribe s, int version) except -1:
    cdef Py_ssize_t rl = 2
    cdef Py_ssize_t pn = 0
    cdef SubscriptionRequest req
    cdef int opts
    if version == MQTT_5:
        pn = props_size(s.properties)
        rl += varint_size(pn) + pn
    for req in s.requests:
        rl += str_size(req.topic_filter) + 1
    header(out, 0x82, rl)
    out.put_u16(s.packet_id)
    if version == MQTT_5:
        write_props(out, s.properties, pn)
    for req in s.requests:
        out.put_prefixed(req.topic_filter)
        opts = req.qos
        if version == MQTT_5:
            opts |= (4 if req.no_local else 0) | (8 if req.retain_as_published else 0)
            opts |= req.retain_handling << 4
        out.put_byte(opts)
    return 0


cdef int _write_unsubscribe(WriteBuffer out, Unsubscribe u, int version) except -1:
    cdef Py_ssize_t rl = 2
    cdef Py_ssize_t pn = 0
    if version == MQTT_5:
        pn = props_size(u.properties)
        rl += varint_size(pn) + pn
    for f in u.topic_filters:
        rl += str_size(f)
    header(out, 0xA2, rl)
    out.put_u16(u.packet_id)
    if version == MQTT_5:
        write_props(out, u.properties, pn)
    for f in u.topic_filters:
        out.put_prefixed(f)
    return 0


cdef int _write_xsuback(WriteBuffer out, Packet pkt, int version) except -1:
    """SUBACK, or UNSUBACK (whose reason codes exist only in MQTT 5)."""
    cdef int t = pkt.packet_type
    cdef int pid
    cdef list codes
    cdef Properties props
    cdef Py_ssize_t pn = 0
    cdef Py_ssize_t rl = 2
    if t == SUBACK:
        pid = (<Suback>pkt).packet_id
        codes = (<Suback>pkt).reason_codes
        props = (<Suback>pkt).properties
    else:
        pid = (<Unsuback>pkt).packet_id
        codes = (<Unsuback>pkt).reason_codes if version == MQTT_5 else []
        props = (<Unsuback>pkt).properties
    if version == MQTT_5:
        pn = props_size(props)
        rl += varint_size(pn) + pn
    rl += len(codes)
    header(out, t << 4, rl)
    out.put_u16(pid)
    if version == MQTT_5:
        write_props(out, props, pn)
    for c in codes:
        out.put_byte(c)
    return 0


def encode(Packet packet, int version=4) -> bytes:
    """The wire form of `packet` for protocol level `version` (3, 4 or 5)."""
    cdef WriteBuffer out = WriteBuffer()
    if packet.packet_type == CONNECT:
        version = (<Connect>packet).protocol_level
    write_packet(out, packet, version)
    return out.take()


def decode_all(data, int version=0, Py_ssize_t max_packet_size=0) -> list:
    """Decode every packet in `data` (a convenience for tests and tools)."""
    d = Decoder(version, max_packet_size)
    packets = d.feed(data)
    if d.pending:
        raise MalformedPacket(f"{d.pending} bytes of an incomplete packet at the end")
    return packets


def encode_message(Message msg, int version=4, int qos=-1, bint retain=False, bint dup=False,
                   int packet_id=0, list subscription_identifiers=None, int topic_alias=0,
                   bint send_topic=True, long expiry=-2) -> bytes:
    """Encode a Message as a PUBLISH the way a delivery does (tests and bridges)."""
    cdef WriteBuffer out = WriteBuffer()
    if qos < 0:
        qos = msg.qos
    if expiry == -2:
        expiry = msg.remaining_expiry(time.time())
    write_publish(out, msg, version, qos, retain, dup, packet_id, subscription_identifiers,
                  topic_alias, send_topic, expiry)
    return out.take()
