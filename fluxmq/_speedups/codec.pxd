# MQTT 3.1 / 3.1.1 / 5.0 packets <-> bytes. Incremental decoding over any chunking; payloads
# stay in the receive buffer; encoders write straight into a connection's output buffer.

from fluxmq._speedups.bufpool cimport WriteBuffer
from fluxmq._speedups.message cimport Message

cdef enum:
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15
    WILL_PROPS = 16        # property context of the will in CONNECT (not a packet type)

cdef enum:
    MQTT_3_1 = 3
    MQTT_3_1_1 = 4
    MQTT_5 = 5


cdef class Properties:
    cdef public object payload_format_indicator      # 0x01 byte
    cdef public object message_expiry_interval       # 0x02 u32
    cdef public str content_type                     # 0x03
    cdef public str response_topic                   # 0x08
    cdef public object correlation_data              # 0x09 bytes
    cdef public list subscription_identifiers        # 0x0B varint (repeatable in PUBLISH)
    cdef public object session_expiry_interval       # 0x11 u32
    cdef public str assigned_client_identifier       # 0x12
    cdef public object server_keep_alive             # 0x13 u16
    cdef public str authentication_method            # 0x15
    cdef public object authentication_data           # 0x16 bytes
    cdef public object request_problem_information   # 0x17 byte
    cdef public object will_delay_interval           # 0x18 u32
    cdef public object request_response_information  # 0x19 byte
    cdef public str response_information             # 0x1A
    cdef public str server_reference                 # 0x1C
    cdef public str reason_string                    # 0x1F
    cdef public object receive_maximum               # 0x21 u16
    cdef public object topic_alias_maximum           # 0x22 u16
    cdef public object topic_alias                   # 0x23 u16
    cdef public object maximum_qos                   # 0x24 byte
    cdef public object retain_available              # 0x25 byte
    cdef public list user_properties                 # 0x26 (name, value) pairs, repeatable
    cdef public object maximum_packet_size           # 0x27 u32
    cdef public object wildcard_subscription_available    # 0x28 byte
    cdef public object subscription_identifier_available  # 0x29 byte
    cdef public object shared_subscription_available      # 0x2A byte


cdef class Packet:
    cdef readonly int packet_type


cdef class Will:
    cdef public str topic
    cdef public object payload
    cdef public int qos
    cdef public bint retain
    cdef public Properties properties


cdef class Connect(Packet):
    cdef public str protocol_name
    cdef public int protocol_level
    cdef public bint clean_start
    cdef public int keepalive
    cdef public str client_id
    cdef public str username
    cdef public object password
    cdef public Will will
    cdef public Properties properties


cdef class Connack(Packet):
    cdef public bint session_present
    cdef public int reason_code
    cdef public Properties properties


cdef class Publish(Packet):
    cdef public str topic
    cdef public object payload
    cdef public int qos
    cdef public bint retain
    cdef public bint dup
    cdef public int packet_id
    cdef public Properties properties


cdef class Ack(Packet):
    """PUBACK, PUBREC, PUBREL or PUBCOMP (packet_type tells which)."""
    cdef public int packet_id
    cdef public int reason_code
    cdef public Properties properties


cdef class SubscriptionRequest:
    cdef public str topic_filter
    cdef public int qos
    cdef public bint no_local
    cdef public bint retain_as_published
    cdef public int retain_handling


cdef class Subscribe(Packet):
    cdef public int packet_id
    cdef public list requests           # [SubscriptionRequest]
    cdef public Properties properties


cdef class Suback(Packet):
    cdef public int packet_id
    cdef public list reason_codes
    cdef public Properties properties


cdef class Unsubscribe(Packet):
    cdef public int packet_id
    cdef public list topic_filters      # [str]
    cdef public Properties properties


cdef class Unsuback(Packet):
    cdef public int packet_id
    cdef public list reason_codes       # MQTT 5 only; empty for 3.1.1
    cdef public Properties properties


cdef class Pingreq(Packet):
    pass


cdef class Pingresp(Packet):
    pass


cdef class Disconnect(Packet):
    cdef public int reason_code
    cdef public Properties properties


cdef class Auth(Packet):
    cdef public int reason_code
    cdef public Properties properties


# What the decoder knows about a PUBLISH beyond the Message it builds.
cdef struct PublishInfo:
    int packet_id
    bint dup
    int topic_alias              # 0 = none
    bint has_sub_ids             # a client must not send Subscription Identifiers
    bint empty_topic             # topic length 0 (only valid with a topic alias)


cdef struct Reader:
    const unsigned char* p
    Py_ssize_t pos
    Py_ssize_t end


cdef struct Frame:
    int first                    # the fixed header's first byte: type << 4 | flags
    Py_ssize_t offset            # where the variable header starts in Decoder.buf
    Py_ssize_t length            # remaining length


cdef class Decoder:
    cdef public int version              # protocol level; 0 until a CONNECT was decoded
    cdef public Py_ssize_t max_packet_size
    cdef object buf                      # immutable bytes being walked (payload views point in)
    cdef Py_ssize_t pos
    cdef Py_ssize_t end
    cdef bytearray _pending              # an incomplete packet carried over to the next chunk
    cdef Py_ssize_t _need                # total size of that packet once known, else 0
    cdef object _last_topic_raw          # cache: the last topic's bytes and its str
    cdef str _last_topic
    cdef object _last_sub_ids            # subscription identifiers of the last PUBLISH (error checks)

    cdef int push(self, object data) except -1
    cdef int next(self, Frame* f) except -1
    cdef int _carry(self, Py_ssize_t need) except -1
    cdef Connect _connect(self, Reader* r)
    cdef Connack _connack(self, Reader* r)
    cdef Ack _ack(self, Reader* r, int ptype)
    cdef Subscribe _subscribe(self, Reader* r)
    cdef Suback _suback(self, Reader* r)
    cdef Unsubscribe _unsubscribe(self, Reader* r)
    cdef Unsuback _unsuback(self, Reader* r)
    cdef Disconnect _disconnect(self, Reader* r)
    cdef Auth _auth(self, Reader* r)
    cdef int _check_end(self, Reader* r) except -1
    cdef Packet decode(self, Frame* f)
    cdef Message decode_publish(self, Frame* f, PublishInfo* info)
    cdef str topic_str(self, const unsigned char* p, Py_ssize_t n)


cdef int write_publish(WriteBuffer out, Message msg, int version, int qos, bint retain, bint dup,
                       int packet_id, object sub_ids, int alias, bint send_topic,
                       long expiry) except -1
cdef Py_ssize_t publish_size(Message msg, int version, int qos, object sub_ids, int alias,
                             bint send_topic, long expiry) except -1
cdef int write_packet(WriteBuffer out, Packet pkt, int version) except -1
cdef int write_ack(WriteBuffer out, int ptype, int packet_id, int reason, str reason_string,
                   int version) except -1

cpdef bint valid_topic_name(str topic)
cpdef bint valid_topic_filter(str topic_filter)
