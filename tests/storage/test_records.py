"""Unit tests of the record formats of durable storage (fluxmq/storage/records.py): every record
survives an encode/decode round trip with all its fields, keys sort the way the store's prefix
scans need, and damaged bytes raise RecordError (never another exception, never a silently
wrong record where the damage is detectable)."""

from __future__ import annotations

import struct

import pytest
from fluxmq._speedups.message import Message
from fluxmq._speedups.session import Session, Subscription
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxmq.broker.will import Will
from fluxmq.storage import records as R

FIELDS = (
    "topic",
    "payload",
    "qos",
    "retain",
    "payload_format",
    "expires_at",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_properties",
    "origin",
    "timestamp",
)


def full_message(**over) -> Message:
    kw = {
        "payload_format": 1,
        "expires_at": 1_900_000_000.25,
        "content_type": "application/json; charset=\u00fctf-8",
        "response_topic": "reply/\u6e2c\u8a66",
        "correlation_data": b"\x00\xff\x80corr",
        "user_properties": [("k", "v1"), ("\u00e9", "\U0001f600"), ("k", "v2"), ("", "")],
        "origin": "publisher-1",
        "timestamp": 1_800_000_000.5,
    }
    kw.update(over)
    return Message("a/b/\u00e7/\U0001f600", b"\x00\x01binary\xff" * 10, 2, True, **kw)


def fields(m: Message) -> dict:
    d = {f: getattr(m, f) for f in FIELDS}
    if d["user_properties"] is not None:
        d["user_properties"] = [tuple(p) for p in d["user_properties"]]
    return d


# -- messages ------------------------------------------------------------------------------------


def test_message_with_every_property_round_trips():
    m = full_message()
    assert fields(R.decode_message(R.encode_message(m))) == fields(m)


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("pfi", [None, 0, 1])
def test_message_flags_round_trip(qos, retain, pfi):
    m = Message("t", b"p", qos, retain, payload_format=pfi)
    back = R.decode_message(R.encode_message(m))
    assert (back.qos, back.retain, back.payload_format) == (qos, retain, pfi)


def test_message_without_properties_round_trips():
    m = Message("t", b"", 0, False)
    back = R.decode_message(R.encode_message(m))
    assert fields(back) == fields(m)
    for f in (
        "payload_format",
        "content_type",
        "response_topic",
        "correlation_data",
        "user_properties",
        "origin",
    ):
        assert getattr(back, f) is None, f
    assert back.expires_at == 0.0


def test_message_empty_correlation_data_and_user_properties_survive():
    m = Message("t", b"x", 1, False, correlation_data=b"", user_properties=[("a", "")])
    back = R.decode_message(R.encode_message(m))
    assert back.correlation_data == b""
    assert back.user_properties == [("a", "")]


def test_large_payload_round_trips():
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    back = R.decode_message(R.encode_message(Message("big", payload, 1, False)))
    assert back.payload == payload


def test_decode_accepts_memoryview():
    """LMDB hands out buffers; the decoder must not depend on getting bytes."""
    data = R.encode_message(full_message())
    assert fields(R.decode_message(memoryview(data))) == fields(full_message())


@given(
    topic=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=40,
    ),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    pfi=st.sampled_from([None, 0, 1]),
    expires_at=st.sampled_from([0.0, 1.5, 1_900_000_000.125]),
    ct=st.none() | st.text(max_size=20),
    cd=st.none() | st.binary(max_size=20),
    up=st.none()
    | st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), min_size=1, max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_message_round_trip_property(topic, payload, qos, retain, pfi, expires_at, ct, cd, up):
    m = Message(
        topic,
        payload,
        qos,
        retain,
        payload_format=pfi,
        expires_at=expires_at,
        content_type=ct,
        correlation_data=cd,
        user_properties=up,
    )
    assert fields(R.decode_message(R.encode_message(m))) == fields(m)


# -- queue and in-flight entries -------------------------------------------------------------


@pytest.mark.parametrize("sub_ids", [None, [1], [7, 268_435_455]])
@pytest.mark.parametrize("state", [0, 1])
def test_inline_entry_round_trips(sub_ids, state):
    m = full_message()
    e = Session.new_inflight(m, 1, True, sub_ids, state)
    data = R.encode_entry(e, 0)
    back, msg_id = R.decode_entry(data, lambda _i: pytest.fail("inline entry asked for a body"))
    assert msg_id == 0
    assert (back.qos, back.retain, back.sub_ids, back.state) == (1, True, sub_ids, state)
    assert fields(back.msg) == fields(m)


def test_shared_entry_references_its_body():
    """A shared entry holds the body's id, not the body: the body comes from `bodies`."""
    m = full_message(user_properties=None)
    e = Session.new_inflight(m, 2, False, [3], 1)
    data = R.encode_entry(e, 42)
    assert m.payload not in data
    asked = []
    body = Message("body", b"shared", 2, False)

    def bodies(i):
        asked.append(i)
        return body

    back, msg_id = R.decode_entry(data, bodies)
    assert (msg_id, asked) == (42, [42])
    assert back.msg is body
    assert (back.qos, back.retain, back.sub_ids, back.state) == (2, False, [3], 1)


def test_released_qos2_entry_has_no_message():
    """After PUBREC only the packet id matters: the entry is stored without its message."""
    e = Session.new_inflight(None, 2, False, None, 2)
    data = R.encode_entry(e, 0)
    back, msg_id = R.decode_entry(data, lambda _i: pytest.fail("asked for a body"))
    assert (back.msg, back.qos, back.state, msg_id) == (None, 2, 2, 0)


# -- sessions, wills, subscriptions --------------------------------------------------------------


@pytest.mark.parametrize("expiry", [1, 300, 0xFFFFFFFF])
@pytest.mark.parametrize("disconnected_at", [0.0, 1_800_000_000.75])
def test_session_round_trips(expiry, disconnected_at):
    s = Session("client-\u00e9", expiry)
    s.disconnected_at = disconnected_at
    assert R.decode_session(R.encode_session(s)) == (expiry, disconnected_at)


@pytest.mark.parametrize(
    "delay,expiry,deadline",
    [(0, None, 0.0), (30, 0, 1_800_000_000.5), (0xFFFFFFFF, 0xFFFFFFFF, 1.0)],
)
def test_will_round_trips(delay, expiry, deadline):
    w = Will(full_message(), delay, expiry)
    back, back_deadline = R.decode_will(R.encode_will(w, deadline))
    assert (back.delay, back.expiry, back_deadline) == (delay, expiry, deadline)
    assert fields(back.message) == fields(w.message)


@pytest.mark.parametrize(
    "full_filter,group,topic_filter",
    [
        ("a/+/c", None, "a/+/c"),
        ("#", None, "#"),
        ("$share/grp/a/#", "grp", "a/#"),
        ("$share/g/sport/+/\u00e9", "g", "sport/+/\u00e9"),
    ],
)
@pytest.mark.parametrize(
    "opts",
    [
        {
            "qos": 0,
            "no_local": False,
            "retain_as_published": False,
            "retain_handling": 0,
            "identifier": None,
        },
        {
            "qos": 1,
            "no_local": True,
            "retain_as_published": False,
            "retain_handling": 1,
            "identifier": 1,
        },
        {
            "qos": 2,
            "no_local": False,
            "retain_as_published": True,
            "retain_handling": 2,
            "identifier": 268_435_455,
        },
    ],
)
def test_subscription_round_trips(full_filter, group, topic_filter, opts):
    s = Session("c", 60)
    sub = Subscription(
        s,
        topic_filter,
        opts["qos"],
        share_group=group,
        no_local=opts["no_local"],
        retain_as_published=opts["retain_as_published"],
        retain_handling=opts["retain_handling"],
        identifier=opts["identifier"],
    )
    assert sub.full_filter == full_filter
    back = R.decode_subscription(s, full_filter, R.encode_subscription(sub))
    assert back.session is s
    assert (back.topic_filter, back.share_group) == (topic_filter, group)
    for k, v in opts.items():
        assert getattr(back, k) == v, k


# -- keys ----------------------------------------------------------------------------------------


def test_keys_scan_per_client_in_order():
    """Queue keys of one client sort by sequence and are contiguous, even when another client
    id starts with this one (the NUL after the client id keeps them apart)."""
    keys = [R.seq_key(c, n) for c in ("a", "ab", "a\u00e9", "b") for n in (1, 256, 2, 1 << 40)]
    keys.sort()
    mine = [k for k in keys if k.startswith(R.client_prefix("a"))]
    assert [R.read_u64(R.key_tail(k)) for k in mine] == [1, 2, 256, 1 << 40]
    first = keys.index(mine[0])
    assert keys[first : first + len(mine)] == mine
    assert all(R.key_client(k) == "a" for k in mine)
    assert R.key_client(R.pid_key("x/y", 65535)) == "x/y"
    assert R.read_u16(R.key_tail(R.pid_key("x/y", 65535))) == 65535


# -- damaged bytes -------------------------------------------------------------------------------

MSG = R.encode_message(full_message())
HEAD = struct.Struct(">BBBddH")  # version, qos, flags, expires_at, timestamp, topic length
F_CT, F_RT, F_CD, F_UP, F_ORIGIN = 8, 16, 32, 64, 128


def with_head(**over) -> bytes:
    """MSG with fields of its fixed header replaced."""
    names = ("version", "qos", "flags", "expires_at", "timestamp", "tlen")
    vals = dict(zip(names, HEAD.unpack_from(MSG), strict=True))
    vals.update(over)
    return HEAD.pack(*(vals[n] for n in names)) + MSG[HEAD.size :]


def raw_message(flags: int = 0, fields: bytes = b"", topic: bytes = b"t") -> bytes:
    """A message record written by hand: header, topic, then `fields` as the optional part."""
    return HEAD.pack(1, 1, flags, 0.0, 0.0, len(topic)) + topic + fields


def s16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


DAMAGED_MESSAGES = {
    "empty": b"",
    "truncated-header": MSG[:10],
    "version-2": with_head(version=2),
    "qos-3": with_head(qos=3),
    "topic-past-end": with_head(tlen=len(MSG)),
    "ascii-topic-past-end": HEAD.pack(1, 1, 0, 0.0, 0.0, 100) + b"tp",
    "topic-not-utf8": raw_message(topic=b"\xff\xfe"),
    "content-type-missing": raw_message(F_CT),
    "content-type-past-end": raw_message(F_CT, struct.pack(">H", 50) + b"text"),
    "content-type-not-utf8": raw_message(F_CT, s16(b"\xc3\x28")),
    "correlation-missing": raw_message(F_CD, b"\x00"),
    "origin-not-utf8": raw_message(F_ORIGIN, s16(b"\xed\xa0\x80")),
    "user-props-count-too-large": raw_message(F_UP, struct.pack(">I", 0xFFFFFFFF) + s16(b"k")),
    "user-props-value-missing": raw_message(F_UP, struct.pack(">I", 1) + s16(b"k")),
}


@pytest.mark.parametrize("data", list(DAMAGED_MESSAGES.values()), ids=list(DAMAGED_MESSAGES))
def test_damaged_message_raises_record_error(data):
    with pytest.raises(R.RecordError):
        R.decode_message(data)


def inline_entry() -> bytes:
    return R.encode_entry(Session.new_inflight(full_message(), 1, False, [5, 6], 0), 0)


DAMAGED_ENTRIES = {
    "empty": b"",
    "truncated-header": inline_entry()[:5],
    "sub-ids-past-end": struct.pack(">BBBQB", 1, 0, 0, 9, 200) + b"\x00\x00\x00\x01",
    "damaged-inline-message": inline_entry()[: -len(full_message().payload) - 20],
    "qos-3": struct.pack(">BBBQB", 3, 0, 0, 9, 0),
    "qos-0": struct.pack(">BBBQB", 0, 0, 0, 9, 0),
    "state-3": struct.pack(">BBBQB", 1, 3, 0, 9, 0),
}


@pytest.mark.parametrize("data", list(DAMAGED_ENTRIES.values()), ids=list(DAMAGED_ENTRIES))
def test_damaged_entry_raises_record_error(data):
    with pytest.raises(R.RecordError):
        R.decode_entry(data, lambda _i: Message("body", b"", 1, False))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01" * 10, b"\x01" * 22, struct.pack(">BIdd", 2, 60, 0.0, 0.0)],
    ids=["empty", "short", "long", "version-2"],
)
def test_damaged_session_raises_record_error(data):
    with pytest.raises(R.RecordError):
        R.decode_session(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 7, struct.pack(">Iqd", 0, -1, 0.0) + b"\x01"],
    ids=["empty", "short", "damaged-message"],
)
def test_damaged_will_raises_record_error(data):
    with pytest.raises(R.RecordError):
        R.decode_will(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01\x00\x00", b"\x01" * 13, struct.pack(">BBBBq", 3, 0, 0, 0, -1)],
    ids=["empty", "short", "long", "qos-3"],
)
def test_damaged_subscription_raises_record_error(data):
    with pytest.raises(R.RecordError):
        R.decode_subscription(Session("c", 60), "t", data)


@given(data=st.binary(max_size=120))
@settings(max_examples=300, deadline=None)
def test_decoders_raise_only_record_error_on_any_bytes(data):
    """Whatever the bytes, a decoder returns a record or raises RecordError: the store turns
    RecordError into a clear "damaged database" error naming the path, anything else would
    crash the start with a traceback."""
    s = Session("c", 60)
    for decode in (
        R.decode_message,
        R.decode_session,
        R.decode_will,
        lambda d: R.decode_entry(d, lambda _i: None),
        lambda d: R.decode_subscription(s, "t", d),
    ):
        try:
            decode(data)
        except R.RecordError:
            pass


@given(pos=st.integers(0, len(MSG) - 1), value=st.integers(0, 255))
@settings(max_examples=300, deadline=None)
def test_message_with_a_damaged_byte_raises_only_record_error(pos, value):
    data = bytearray(MSG)
    data[pos] = value
    try:
        R.decode_message(bytes(data))
    except R.RecordError:
        pass


@given(
    client=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=30,
    ),
    seq=st.integers(0, (1 << 64) - 1),
    pid=st.integers(0, 65535),
)
@settings(max_examples=300, deadline=None)
def test_keys_are_utf8_client_id_zero_byte_big_endian_tail(client, seq, pid):
    """The keys are built in place in C; their bytes are the documented layout exactly (so
    databases written before keep their order and meaning)."""
    prefix = client.encode() + b"\x00"
    assert R.seq_key(client, seq) == prefix + struct.pack(">Q", seq)
    assert R.pid_key(client, pid) == prefix + struct.pack(">H", pid)
    assert R.client_prefix(client) == prefix


def test_keys_refuse_a_missing_client_id():
    with pytest.raises(TypeError):
        R.seq_key(None, 1)
    with pytest.raises(TypeError):
        R.pid_key(None, 1)
