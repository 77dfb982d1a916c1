"""The queue segment files (fluxmq._speedups.segment): records round trip with every property,
batches and their CRC, the sparse offset index and the time index, sealing and reopening,
zero-copy payloads, torn and damaged tails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fluxmq._speedups.message import Message
from fluxmq._speedups.segment import Segment, SegmentError, crc32c


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c("123456789") == 0xE3069283
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # continued


def _msg(i: int, size: int = 10) -> Message:
    return Message(
        f"$queue/q/k{i}", bytes([i % 256]) * size, 1, payload_format=1, expires_at=2e9 + i,
        content_type="text/plain", response_topic="reply/x", correlation_data=b"c%d" % i,
        user_properties=[("a", str(i)), ("b", "é")],
    )  # fmt: skip


def test_records_round_trip_with_every_property(tmp_path):
    s = Segment.create(str(tmp_path / "00000000000000000100.seg"), 100)
    for i in range(20):
        size = 5000 if i % 5 == 0 else 10  # some payloads are written without a copy
        s.append(100 + i, 1_700_000_000_000 + i, _msg(i, size), f"key{i}" if i % 2 else None,
                 "explicit" if i == 3 else None, 8)  # fmt: skip
        if i % 7 == 6:
            assert s.flush() > 0  # several batches
    s.flush()
    assert s.next_offset == 120 and s.count == 20
    got = s.read(100, 1 << 20, 100)
    assert [e.offset for e in got] == list(range(100, 120))
    for i, e in enumerate(got):
        m = e.msg
        assert m.payload == _msg(i, 5000 if i % 5 == 0 else 10).payload
        assert m.topic == f"$queue/q/k{i}" and m.qos == 1 and m.payload_format == 1
        assert m.expires_at == 2e9 + i and m.content_type == "text/plain"
        assert m.response_topic == "reply/x" and m.correlation_data == b"c%d" % i
        assert m.user_properties == [("a", str(i)), ("b", "é")]
        assert e.key == (f"key{i}" if i % 2 else None)
        assert e.rkey == ("explicit" if i == 3 else f"/k{i}")
        assert e.ts_ms == 1_700_000_000_000 + i
    assert [e.offset for e in s.read(117)] == [117, 118, 119]
    assert s.read(120) == []


def test_index_time_index_seal_and_reopen(tmp_path):
    path = str(tmp_path / f"{0:020d}.seg")
    s = Segment.create(path, 0)
    for i in range(300):
        s.append(i, 1000 + i * 10, Message("t", b"x" * 100, 1), None, None, 0)
        s.flush()  # one batch each: an index entry every 4 KiB
    assert s.index_entries > 5
    assert s.offset_for_time(1000 + 1500) == 150
    assert s.offset_for_time(0) == 0 and s.offset_for_time(10**9) == -1
    assert s.read(250, 1 << 20, 1)[0].offset == 250
    s.write_index()
    s.close()
    again, cut = Segment.open(path, 0, False)  # from the index files, without reading data
    assert cut == 0 and again.sealed and again.next_offset == 300 and again.count == 300
    assert again.offset_for_time(3990) == 299 and again.offset_for_time(3995) == -1
    assert [e.offset for e in again.read(298)] == [298, 299]
    os.unlink(path[:-4] + ".idx")  # a missing index: rebuilt by reading
    rebuilt, cut = Segment.open(path, 0, False)
    assert cut == 0 and rebuilt.next_offset == 300 and rebuilt.offset_for_time(2500) == 150


def test_torn_and_damaged_tails_are_cut_off(tmp_path):
    path = str(tmp_path / f"{0:020d}.seg")
    s = Segment.create(path, 0)
    for i in range(10):
        s.append(i, 1000, Message("t", b"%d" % i, 1), None, None, 0)
        s.flush()
    size = s.size
    s.close()
    with open(path, "ab") as f:
        f.write(b"FLXQ\x00\x00\x00\x00\xff\xff")  # a torn batch
    again, cut = Segment.open(path, 0, True)
    assert cut == 10 and again.size == size and again.next_offset == 10
    again.close()
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 1  # the last record's payload: a bad CRC
    Path(path).write_bytes(bytes(data))
    again, cut = Segment.open(path, 0, True)
    assert cut > 0 and again.next_offset == 9
    assert [e.msg.payload for e in again.read(0)] == [b"%d" % i for i in range(9)]
    again.append(9, 1000, Message("t", b"new", 1), None, None, 0)  # appends continue
    again.flush()
    assert again.read(9)[0].msg.payload == b"new"


def test_offsets_must_grow_within_a_batch(tmp_path):
    s = Segment.create(str(tmp_path / f"{0:020d}.seg"), 0)
    s.append(5, 0, Message("t", b"", 0), None, None, 0)
    with pytest.raises(ValueError):
        s.append(5, 0, Message("t", b"", 0), None, None, 0)
    with pytest.raises(SegmentError):
        raise SegmentError("exported")
