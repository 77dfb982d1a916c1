"""Codec micro-benchmarks: decoding a QoS 0 PUBLISH stream, and encoding deliveries.

`make microbench` (pytest -m benchmark tests/micro -p no:xdist). Each benchmark reports its
rate in extra_info (msgs_per_s), so the JSON output (--benchmark-json) keeps it.
"""

from __future__ import annotations

import pytest
from fluxmq._speedups.codec import Decoder, Publish, encode, encode_message
from fluxmq._speedups.message import Message
from pytest_benchmark.fixture import BenchmarkFixture

from tests.micro import rate

pytestmark = pytest.mark.benchmark(group="codec")

N = 1000
TOPIC = "sensors/building-7/floor-3/room-12/temperature"
PAYLOAD = b'{"t": 21.5, "unit": "C", "ts": 1700000000}'


def _stream(version: int, qos: int = 0) -> bytes:
    return b"".join(
        encode(Publish(TOPIC, PAYLOAD, qos, packet_id=(i % 65535) + 1 if qos else 0), version)
        for i in range(N)
    )


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_decode_qos0_publish_stream(benchmark: BenchmarkFixture, version: int) -> None:
    """Decode 1000 QoS 0 PUBLISH packets fed as one chunk (msgs/s)."""
    stream = _stream(version)

    def run() -> int:
        return len(Decoder(version).feed(stream))

    assert benchmark(run) == N
    rate(benchmark, N, "msgs")


def test_decode_qos0_publish_stream_in_tcp_segments(benchmark: BenchmarkFixture) -> None:
    """The same stream (3.1.1) in 1448-byte chunks: packets split across chunks are carried over."""
    stream = _stream(4)
    chunks = [stream[i : i + 1448] for i in range(0, len(stream), 1448)]

    def run() -> int:
        d = Decoder(4)
        n = 0
        for c in chunks:
            n += len(d.feed(c))
        return n

    assert benchmark(run) == N
    rate(benchmark, N, "msgs")


@pytest.mark.parametrize(
    ("version", "qos"), [(4, 0), (4, 1), (5, 1)], ids=["v311-qos0", "v311-qos1", "v5-qos1"]
)
def test_encode_message(benchmark: BenchmarkFixture, version: int, qos: int) -> None:
    """encode_message() of a 43-byte payload, 1000 times per round (msgs/s)."""
    msg = Message(TOPIC, PAYLOAD, qos, content_type="application/json" if version == 5 else None)

    def run() -> int:
        total = 0
        for i in range(N):
            total += len(encode_message(msg, version, packet_id=i + 1, expiry=-1))
        return total

    assert benchmark(run) > 0
    rate(benchmark, N, "msgs")


def test_encode_publish_packet(benchmark: BenchmarkFixture) -> None:
    """encode() of a Publish packet object (the Python client/tool path), for comparison."""
    pkt = Publish(TOPIC, PAYLOAD, 1, packet_id=7)

    def run() -> int:
        total = 0
        for _ in range(N):
            total += len(encode(pkt, 4))
        return total

    assert benchmark(run) > 0
    rate(benchmark, N, "msgs")
