"""Retention by age and size, and compaction by partition key."""

from __future__ import annotations

import time

from tests.queue.conftest import qconfig, wait_for

FAST = {"retention_interval": "150ms"}


def earliest(clients, port: int, name: str, group: str, expect_at_least: int = 1, settle=0.5):
    c = clients(port, group)
    c.subscribe(f"$queue/{name}", consumer_group=group, cursor="earliest")
    wait_for(lambda: len(c.got()) >= expect_at_least, what="replayed messages")
    time.sleep(settle)
    return c.payloads()


def test_retention_by_age_removes_whole_old_segments(broker_factory, clients):
    b = broker_factory(qconfig(
        [{"name": "ev", "retention": {"max_age": "1s", "segment_age": "200ms"}}], **FAST
    ))  # fmt: skip
    pub = clients(b.port, "pub")
    for i in range(5):
        pub.publish("$queue/ev/x", f"old{i}".encode())
    time.sleep(1.8)  # sealed after 200 ms, older than max_age after 1 s: removed
    for i in range(3):
        pub.publish("$queue/ev/x", f"new{i}".encode())
    assert earliest(clients, b.port, "ev", "r", 3) == [b"new0", b"new1", b"new2"]


def test_retention_by_size_keeps_the_newest_segments(broker_factory, clients):
    b = broker_factory(qconfig(
        [{"name": "ev", "retention": {"max_bytes": "3KB", "segment_bytes": "1KB"}}], **FAST
    ))  # fmt: skip
    pub = clients(b.port, "pub")
    n = 60
    for i in range(n):
        pub.publish("$queue/ev/x", f"{i:03d}".encode() + b"." * 200)
    time.sleep(0.6)
    got = [int(p[:3]) for p in earliest(clients, b.port, "ev", "r", 1)]
    assert got[-1] == n - 1 and got == list(range(got[0], n))  # a suffix of what was sent
    assert 5 <= len(got) < 30, len(got)  # about 3 KB of 230-byte records (plus the active one)


def test_compaction_keeps_the_newest_message_of_each_key(broker_factory, clients):
    b = broker_factory(qconfig(
        [{"name": "prices", "retention": {"compaction": True, "segment_age": "200ms"}}], **FAST
    ))  # fmt: skip
    pub = clients(b.port, "pub")
    sent = [("eur", "1.10"), ("usd", "1.00"), ("eur", "1.11"), (None, "note"), ("gbp", "0.85"),
            ("eur", "1.12"), ("usd", "0.99")]  # fmt: skip
    for key, value in sent:
        if key:
            pub.publish("$queue/prices/fx", f"{key}={value}".encode(), partition_key=key)
        else:
            pub.publish("$queue/prices/fx", value.encode())
    time.sleep(1.0)  # sealed by age, then rewritten
    got = earliest(clients, b.port, "prices", "r", 4)
    assert got == [b"note", b"gbp=0.85", b"eur=1.12", b"usd=0.99"]
    # offsets keep their numbers (gaps where messages were removed)
    pub.publish("$queue/prices/fx", b"eur=1.13", partition_key="eur")
    late = clients(b.port, "late")
    late.subscribe("$queue/prices", consumer_group="late", cursor="7")
    wait_for(lambda: late.payloads() == [b"eur=1.13"])
