"""Codec fuzzing (hypothesis, bounded): hostile input never crashes, hangs or bloats the decoder.

Properties checked on random bytes and on mutated valid packets, fed whole and in random chunks:

* the decoder raises nothing but MQTTError subclasses (with an MQTT reason code);
* whatever it does decode is a valid packet: it re-encodes and decodes back to itself;
* the outcome does not depend on how the bytes were chunked;
* the state it keeps between chunks stays bounded: never more than the packet in progress, never
  more than the maximum packet size.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest
from fluxmq._speedups.codec import (
    TYPE_AUTH,
    TYPE_CONNECT,
    TYPE_PUBLISH,
    Ack,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MQTTError,
    Packet,
    PacketTooLarge,
    Pingreq,
    Properties,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit import V5, V31, V311, vbi

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REASON_CODES = {0x81, 0x82, 0x84, 0x94, 0x95}


def _corpus() -> list[tuple[int, bytes]]:
    """Valid packets of every type: (version, wire bytes); CONNECTs have version 0."""
    P = Properties
    out: list[tuple[int, bytes]] = [
        (
            0,
            encode(
                Connect("c", protocol_name="MQIsdp", protocol_level=3, username="u", password=b"p")
            ),
        ),
        (
            0,
            encode(
                Connect("cid", protocol_level=4, will=Will("w/t", b"bye", 1, True), username="u")
            ),
        ),
        (
            0,
            encode(
                Connect(
                    "cid",
                    protocol_level=5,
                    password=b"pw",
                    will=Will("w/t", b"bye", 2, False, P(will_delay_interval=5, content_type="c")),
                    properties=P(
                        session_expiry_interval=10, receive_maximum=5, user_properties=[("a", "b")]
                    ),
                )
            ),
        ),
    ]
    for v in (V31, V311, V5):
        p5 = (lambda **kw: P(**kw)) if v == V5 else (lambda **kw: None)
        out += [
            (v, encode(Connack(0, True, p5(receive_maximum=3, maximum_qos=1)), v)),
            (v, encode(Publish("a/b", b"payload", 0), v)),
            (
                v,
                encode(
                    Publish(
                        "a/b/c",
                        b"\x00\x01\x02",
                        1,
                        packet_id=5,
                        properties=p5(
                            content_type="x",
                            user_properties=[("k", "v")],
                            message_expiry_interval=100,
                            subscription_identifiers=[1, 300],
                            topic_alias=3,
                            correlation_data=b"\x01",
                            response_topic="r",
                            payload_format_indicator=1,
                        ),
                    ),
                    v,
                ),
            ),
            (v, encode(Publish("t", b"", 2, dup=True, retain=True, packet_id=65535), v)),
            (
                v,
                encode(
                    Subscribe(
                        3,
                        [
                            SubscriptionRequest("a/+", 1, v == V5, v == V5, 2 if v == V5 else 0),
                            SubscriptionRequest("#", 2),
                        ],
                        p5(subscription_identifiers=[9], user_properties=[("u", "p")]),
                    ),
                    v,
                ),
            ),
            (v, encode(Unsubscribe(3, ["a/+", "#"], p5(user_properties=[("u", "p")])), v)),
            (v, encode(Suback(3, [0, 1, 0x80], p5(reason_string="r")), v)),
            (v, encode(Unsuback(3, [0, 0x11], p5(reason_string="r")), v)),
            (
                v,
                encode(
                    Disconnect(
                        4 if v == V5 else 0, p5(reason_string="bye", session_expiry_interval=0)
                    ),
                    v,
                ),
            ),
            (v, encode(Pingreq(), v)),
        ]
        for t in (4, 5, 6, 7):
            out.append((v, encode(Ack(t, 7, 0x10 if v == V5 else 0, p5(reason_string="r")), v)))
    out.append((V5, encode(Auth(0x18, P(authentication_method="m", authentication_data=b"d")), V5)))
    return out


CORPUS = _corpus()
CONNECT_FOR = {
    V31: encode(Connect("f", protocol_name="MQIsdp", protocol_level=3)),
    V311: encode(Connect("f", protocol_level=4)),
    V5: encode(Connect("f", protocol_level=5)),
}


def _normalise(pkt: Packet) -> Packet:
    """Drop the one time-dependent field: a PUBLISH's Message Expiry Interval is re-derived from
    a wall-clock deadline when decoded (see the report on very large intervals)."""
    if pkt.packet_type == TYPE_PUBLISH and pkt.properties is not None:
        pkt.properties.message_expiry_interval = None
    return pkt


def decode_checked(
    data: bytes, version: int, max_packet_size: int = 0
) -> tuple[list[Packet], MQTTError | None, Decoder]:
    """Decode `data`: only MQTTError may come out (with an MQTT reason code); every decoded
    packet must re-encode and decode back to an equal packet."""
    d = Decoder(version, max_packet_size)
    err: MQTTError | None = None
    packets: list[Packet] = []
    try:
        packets = d.feed(data)
    except MQTTError as exc:
        err = exc
        assert exc.reason_code in REASON_CODES, exc
    for pkt in packets:
        assert isinstance(pkt, Packet)
        if pkt.packet_type == TYPE_CONNECT:
            again = Decoder(0).feed(encode(pkt))
        else:
            ver = d.version
            if pkt.packet_type == TYPE_AUTH:
                assert ver == V5
            again = Decoder(ver).feed(encode(pkt, ver))
        assert [_normalise(p) for p in again] == [_normalise(pkt)]
    return packets, err, d


@FUZZ
@given(
    data=st.binary(max_size=600),
    version=st.sampled_from([0, V31, V311, V5]),
    max_packet_size=st.sampled_from([0, 64, 4096]),
)
def test_random_bytes(data: bytes, version: int, max_packet_size: int) -> None:
    """Random bytes: MQTTError or packets, nothing else; held-over state at most one packet."""
    _, err, d = decode_checked(data, version, max_packet_size)
    if err is None:
        assert d.pending <= len(data)
        if max_packet_size:
            assert d.pending <= max_packet_size


@FUZZ
@given(version=st.sampled_from([V31, V311, V5]), data=st.binary(max_size=600))
def test_random_bytes_after_connect(version: int, data: bytes) -> None:
    """Random bytes after a valid CONNECT reach every packet decoder (the version is known)."""
    decode_checked(CONNECT_FOR[version] + data, 0)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    """A valid packet (after a CONNECT when it is not one) with a few random edits."""
    version, wire = draw(st.sampled_from(CORPUS))
    buf = bytearray(wire)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "set" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and buf:
            del buf[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del buf[at:]
        elif op == "repeat":
            buf[at:at] = buf[at : at + draw(st.integers(1, 8))]
    prefix = b"" if version == 0 else CONNECT_FOR[version]
    return version, prefix + bytes(buf)


@settings(FUZZ, max_examples=1000)
@given(case=mutated())
def test_mutated_valid_packets(case: tuple[int, bytes]) -> None:
    """Edited valid packets: only MQTTError; what decodes is valid and round-trips."""
    decode_checked(case[1], 0)


@FUZZ
@given(
    case=mutated(),
    cuts=st.sets(st.integers(1, 300), max_size=12),
    max_packet_size=st.sampled_from([0, 40]),
)
def test_chunking_does_not_change_the_outcome(
    case: tuple[int, bytes], cuts: set[int], max_packet_size: int
) -> None:
    """Whole or in random chunks: the same packets come out, then the same error (or none),
    and the same number of bytes is held over."""
    data = case[1]
    packets_whole: list[Packet] = []
    err_whole = None
    d = Decoder(0, max_packet_size)
    try:
        packets_whole = d.feed(data)
    except MQTTError as exc:
        err_whole = exc
    d2 = Decoder(0, max_packet_size)
    got: list[Packet] = []
    err_split = None
    pos = 0
    for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        try:
            got += d2.feed(data[pos:cut])
        except MQTTError as exc:
            err_split = exc
            break
        pos = cut
    assert type(err_split) is type(err_whole)
    if err_whole is None:
        assert [_normalise(p) for p in got] == [_normalise(p) for p in packets_whole]
        assert d2.pending == d.pending
    else:
        assert err_split.reason_code == err_whole.reason_code


# ----------------------------------------------------------------------------------------------
# Bounded state


def _stream_with_boundaries(rnd: random.Random, n: int) -> tuple[bytes, list[int]]:
    """n valid v5 packets (after a CONNECT) and the offset where each one ends."""
    data = bytearray(CONNECT_FOR[V5])
    ends = [len(data)]
    for _ in range(n):
        _, wire = rnd.choice([c for c in CORPUS if c[0] == V5])
        if rnd.random() < 0.2:
            wire = encode(Publish("big", rnd.randbytes(rnd.randint(100, 3000)), 1, packet_id=1), V5)
        data += wire
        ends.append(len(data))
    return bytes(data), ends


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 40), min_size=1, max_size=400))
def test_pending_is_exactly_the_unfinished_packet(seed: int, cuts: list[int]) -> None:
    """On a valid stream in random chunks, the decoder holds exactly the bytes after the last
    complete packet: never more than the packet in progress, never a whole packet."""
    rnd = random.Random(seed)
    data, ends = _stream_with_boundaries(rnd, 30)
    d = Decoder(0, 4096)
    fed = 0
    decoded = 0
    for step in cuts * (len(data) // sum(cuts) + 1):
        if fed >= len(data):
            break
        chunk = data[fed : fed + step]
        fed += len(chunk)
        decoded += len(d.feed(chunk))
        done = [e for e in ends if e <= fed]
        boundary = done[-1] if done else 0
        assert decoded == len(done)
        assert d.pending == fed - boundary
        in_progress = min((e for e in ends if e > boundary), default=boundary) - boundary
        assert d.pending < max(in_progress, 1)
        assert d.pending <= 4096
    assert fed == len(data) and d.pending == 0 and decoded == len(ends)


def test_garbage_chunks_keep_pending_bounded() -> None:
    """Many chunks of garbage with a maximum packet size: the decoder either fails (and the
    connection would be closed) or holds at most max_packet_size bytes; never more."""
    rnd = random.Random(20240601)
    limit = 256
    d = Decoder(V5, limit)
    failures = 0
    worst = 0
    for _ in range(20_000):
        chunk = rnd.randbytes(rnd.choice([1, 2, 3, 7, 64, 300]))
        if rnd.random() < 0.3:  # headers that promise a packet and then dribble
            chunk = (
                bytes([rnd.choice([0x30, 0x32, 0x82, 0xC0, 0xE0])])
                + vbi(rnd.randint(0, 400))
                + chunk
            )
        try:
            d.feed(chunk)
        except MQTTError:
            failures += 1
            d = Decoder(V5, limit)
            continue
        worst = max(worst, d.pending)
        assert d.pending <= limit
    assert failures > 1000  # garbage is mostly refused...
    assert worst > 0  # ...and partial packets were held over in between


def test_slow_drip_of_declared_large_packets_is_bounded() -> None:
    """A peer that declares packets just under the limit and sends them a few bytes at a time:
    the held-over bytes grow to at most that packet, and memory does not grow with the number
    of chunks."""
    limit = 64 * 1024
    payload = b"\x5a" * (limit - 20)
    wire = encode(Publish("drip", payload, 0), V311)
    assert len(wire) <= limit
    d = Decoder(V311, limit)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        packets = 0
        for _ in range(3):
            for pos in range(0, len(wire), 997):
                packets += len(d.feed(wire[pos : pos + 997]))
                assert d.pending <= len(wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert packets == 3 and d.pending == 0
    # The pending buffer (bytearray growth) and one joined copy of a packet: a few packets' worth.
    assert peak - base < 6 * limit, peak - base


def test_oversized_declaration_is_refused_before_buffering() -> None:
    """A header declaring more than the limit fails at once, whatever follows: nothing of the
    body is ever buffered (5.0 3.1.2.11.4; the broker answers 0x95)."""
    d = Decoder(V5, 1024)
    with pytest.raises(PacketTooLarge):
        d.feed(b"\x30" + vbi(268_435_455))
    d = Decoder(V5, 1024)
    assert d.feed(b"\x30" + vbi(1021)) == []  # 1 + 2 + 1021 = 1024 bytes: allowed, waits
    assert d.pending == 3
    d = Decoder(V5, 1024)
    assert d.feed(b"\x30") == []
    with pytest.raises(PacketTooLarge):
        d.feed(vbi(1022))  # 1025 bytes
