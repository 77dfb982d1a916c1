"""How durable state is laid out in bytes: messages, queue/in-flight entries, sessions, wills,
subscriptions. Format version 1; `FORMAT_VERSION` is stored in the database and checked at open.

Keys (every client id is followed by NUL, which MQTT strings cannot contain [MQTT-1.5.4-2]):

| database | key | value |
|---|---|---|
| `meta` | `format` | format version (u32) |
| `sessions` | client id | session record |
| `wills` | client id | will record |
| `subs` | client id NUL filter | subscription record |
| `queue` | client id NUL seq (u64) | entry record |
| `inflight` | client id NUL packet id (u16) | entry record |
| `rel` | client id NUL packet id (u16) | empty (inbound QoS 2 awaiting PUBREL) |
| `msgs` | message id (u64) | message record (a body shared by several entries) |
| `retained` | topic | message record |
"""

from __future__ import annotations

import struct

import orjson

from fluxmq._speedups.message import Message
from fluxmq._speedups.session import Inflight, Session, Subscription

FORMAT_VERSION = 1

_MSG = struct.Struct(">BBBddHI")  # version, qos, flags, expires_at, timestamp, topic len, props len
_ENTRY = struct.Struct(">BBBQB")  # qos, state, flags, message id (0 = inline), sub id count
_SESSION = struct.Struct(">BIdd")  # version, expiry interval, disconnected at, reserved
_WILL = struct.Struct(">Iqd")  # delay, expiry (-1 = none), deadline (0 = not started)
_SUB = struct.Struct(">BBBBq")  # qos, no local, retain as published, retain handling, identifier
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

F_RETAIN = 1
F_PFI_SET = 2
F_PFI_ONE = 4
E_RETAIN = 1
E_INLINE = 2


class RecordError(Exception):
    """Bytes that are not a record of this format (a damaged database)."""


# -- keys ----------------------------------------------------------------------------------------


def client_prefix(client_id: str) -> bytes:
    return client_id.encode() + b"\x00"


def seq_key(client_id: str, seq: int) -> bytes:
    return client_prefix(client_id) + _U64.pack(seq)


def pid_key(client_id: str, packet_id: int) -> bytes:
    return client_prefix(client_id) + _U16.pack(packet_id)


def key_client(key: bytes) -> str:
    return key[: key.index(b"\x00")].decode()


def key_tail(key: bytes) -> bytes:
    return key[key.index(b"\x00") + 1 :]


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def read_u16(b: bytes) -> int:
    return _U16.unpack(b)[0]


def u32(n: int) -> bytes:
    return _U32.pack(n)


def read_u32(b: bytes) -> int:
    return _U32.unpack(b)[0]


# -- messages ------------------------------------------------------------------------------------


def encode_message(msg: Message) -> bytes:
    """A message record: fixed header, topic, optional properties (JSON), payload."""
    props = {}
    if msg.content_type is not None:
        props["ct"] = msg.content_type
    if msg.response_topic is not None:
        props["rt"] = msg.response_topic
    if msg.correlation_data is not None:
        props["cd"] = msg.correlation_data.hex()
    if msg.user_properties:
        props["up"] = msg.user_properties
    if msg.origin is not None:
        props["o"] = msg.origin
    pj = orjson.dumps(props) if props else b""
    flags = F_RETAIN if msg.retain else 0
    if msg.payload_format is not None:
        flags |= F_PFI_SET | (F_PFI_ONE if msg.payload_format else 0)
    topic = msg.topic.encode()
    return b"".join(
        (
            _MSG.pack(1, msg.qos, flags, msg.expires_at, msg.timestamp, len(topic), len(pj)),
            topic,
            pj,
            msg.payload,
        )
    )


def decode_message(data: bytes) -> Message:
    try:
        version, qos, flags, expires_at, timestamp, tlen, plen = _MSG.unpack_from(data)
        if version != 1 or qos > 2:
            raise RecordError(f"message record of version {version}, QoS {qos}")
        pos = _MSG.size
        if pos + tlen + plen > len(data):
            raise RecordError(f"message record of {len(data)} bytes, topic {tlen}, props {plen}")
        topic = bytes(data[pos : pos + tlen]).decode()
        pos += tlen
        props = orjson.loads(data[pos : pos + plen]) if plen else {}
        pos += plen
        msg = Message(
            topic,
            bytes(data[pos:]),
            qos,
            bool(flags & F_RETAIN),
            payload_format=(1 if flags & F_PFI_ONE else 0) if flags & F_PFI_SET else None,
            expires_at=expires_at,
            content_type=props.get("ct"),
            response_topic=props.get("rt"),
            correlation_data=bytes.fromhex(props["cd"]) if "cd" in props else None,
            user_properties=[tuple(p) for p in props["up"]] if "up" in props else None,
            origin=props.get("o"),
            timestamp=timestamp,
        )
    except (struct.error, UnicodeDecodeError, orjson.JSONDecodeError, ValueError, KeyError,
            TypeError, AttributeError) as e:  # the last two: properties of the wrong shape
        raise RecordError(f"damaged message record: {e}") from None
    return msg


# -- queue and in-flight entries -----------------------------------------------------------------


def encode_entry(e: Inflight, msg_id: int) -> bytes:
    """An entry: QoS, state, retain, the subscription identifiers, then the message inline
    (msg_id 0) or the id of its shared body."""
    sub_ids = e.sub_ids or ()
    flags = (E_RETAIN if e.retain else 0) | (E_INLINE if msg_id == 0 else 0)
    head = _ENTRY.pack(e.qos, e.state, flags, msg_id, len(sub_ids))
    ids = b"".join(_U32.pack(i) for i in sub_ids)
    if msg_id == 0 and e.msg is not None:
        return head + ids + encode_message(e.msg)
    return head + ids


def decode_entry(data: bytes, bodies) -> tuple[Inflight, int]:
    """(entry, shared message id or 0). `bodies(msg_id)` returns the shared Message."""
    try:
        qos, state, flags, msg_id, nids = _ENTRY.unpack_from(data)
        pos = _ENTRY.size
        sub_ids = [_U32.unpack_from(data, pos + 4 * i)[0] for i in range(nids)] or None
        pos += 4 * nids
    except struct.error as e:
        raise RecordError(f"damaged queue entry: {e}") from None
    if qos not in (1, 2) or state > 2:
        raise RecordError(f"queue entry of QoS {qos}, state {state}")
    if flags & E_INLINE:
        msg = decode_message(data[pos:]) if pos < len(data) else None
    else:
        msg = bodies(msg_id)
    e = Session.new_inflight(msg, qos, bool(flags & E_RETAIN), sub_ids, state)
    return e, (0 if flags & E_INLINE else msg_id)


# -- sessions, wills, subscriptions --------------------------------------------------------------


def encode_session(session: Session) -> bytes:
    return _SESSION.pack(1, session.expiry_interval, session.disconnected_at, 0.0)


def decode_session(data: bytes) -> tuple[int, float]:
    """(expiry interval, disconnected at: 0.0 if it was connected when last written)."""
    try:
        version, expiry, disconnected_at, _ = _SESSION.unpack(data)
    except struct.error as e:
        raise RecordError(f"damaged session record: {e}") from None
    if version != 1:
        raise RecordError(f"session record of version {version}")
    return expiry, disconnected_at


def encode_will(will, deadline: float) -> bytes:
    expiry = -1 if will.expiry is None else will.expiry
    return _WILL.pack(will.delay, expiry, deadline) + encode_message(will.message)


def decode_will(data: bytes):
    """(Will, deadline: wall-clock time it is due, or 0.0 while its connection lived)."""
    from fluxmq.broker.will import Will

    try:
        delay, expiry, deadline = _WILL.unpack_from(data)
    except struct.error as e:
        raise RecordError(f"damaged will record: {e}") from None
    msg = decode_message(data[_WILL.size :])
    return Will(msg, delay, None if expiry < 0 else expiry), deadline


def encode_subscription(sub: Subscription) -> bytes:
    ident = -1 if sub.identifier is None else sub.identifier
    return _SUB.pack(sub.qos, sub.no_local, sub.retain_as_published, sub.retain_handling, ident)


def decode_subscription(session: Session, full_filter: str, data: bytes) -> Subscription:
    try:
        qos, no_local, rap, rh, ident = _SUB.unpack(data)
    except struct.error as e:
        raise RecordError(f"damaged subscription record: {e}") from None
    if qos > 2 or rh > 2:
        raise RecordError(f"subscription record of QoS {qos}, retain handling {rh}")
    group = None
    topic_filter = full_filter
    if full_filter.startswith("$share/"):
        _, group, topic_filter = full_filter.split("/", 2)
    return Subscription(
        session, topic_filter, qos, share_group=group, no_local=bool(no_local),
        retain_as_published=bool(rap), retain_handling=rh,
        identifier=None if ident < 0 else ident,
    )
