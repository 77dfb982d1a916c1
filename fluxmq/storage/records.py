"""How durable state is laid out in bytes: messages, queue/in-flight entries, sessions, wills,
subscriptions. Format version 2; `FORMAT_VERSION` is stored in the database and checked at open.
A format 1 database (in-flight entries in their own database, keyed by packet id) is read and
converted by the first start: its in-flight entries move into `queue`.

Keys (every client id is followed by NUL, which MQTT strings cannot contain [MQTT-1.5.4-2]):

| database | key | value |
|---|---|---|
| `meta` | `format` | format version (u32) |
| `journal0`, `journal1` | journal id (u64) part (u32) | a turn's journal record, in parts of <= 4080 bytes |
| `sessions` | client id | session record |
| `wills` | client id | will record |
| `subs` | client id NUL filter | subscription record |
| `queue` | client id NUL seq (u64) | entry record (queued, or in flight with its packet id) |
| `inflight` | client id NUL packet id (u16) | format 1 only: entry record |
| `rel` | client id NUL packet id (u16) | empty (inbound QoS 2 awaiting PUBREL) |
| `msgs` | message id (u64) | message record (a body shared by several entries) |
| `retained` | topic | message record |

The records of messages and of queue/in-flight entries are written for every QoS 1/2 message a
persistent session keeps, so they are encoded and decoded in C: fluxmq/_speedups/records.pyx
describes their layout. Sessions, wills and subscriptions are written rarely and stay here.
"""

from __future__ import annotations

import struct

from fluxmq._speedups.records import (
    RecordError,
    client_prefix,
    decode_entry,
    decode_message,
    encode_entry,
    encode_message,
    patch_entry,
    pid_key,
    seq_key,
)
from fluxmq._speedups.session import Session, Subscription

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMATS",
    "RecordError",
    "client_prefix",
    "decode_entry",
    "decode_message",
    "decode_session",
    "decode_subscription",
    "decode_will",
    "encode_entry",
    "encode_message",
    "encode_session",
    "encode_subscription",
    "encode_will",
    "key_client",
    "key_tail",
    "patch_entry",
    "pid_key",
    "read_u16",
    "read_u32",
    "read_u64",
    "seq_key",
    "u32",
    "u64",
]

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)

_SESSION = struct.Struct(">BIdd")  # version, expiry interval, disconnected at, reserved
_WILL = struct.Struct(">Iqd")  # delay, expiry (-1 = none), deadline (0 = not started)
_SUB = struct.Struct(">BBBBq")  # qos, no local, retain as published, retain handling, identifier
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


# -- keys ----------------------------------------------------------------------------------------


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
        session,
        topic_filter,
        qos,
        share_group=group,
        no_local=bool(no_local),
        retain_as_published=bool(rap),
        retain_handling=rh,
        identifier=None if ident < 0 else ident,
    )
