"""Storage faults (issue 3, docs/storage.md "Faults"): bad data directories stop the start with
a clear error naming the path and are left as they were; a second broker on the same directory
is refused; a full disk refuses new persistent work (v5 0x97) while QoS 0 and non-persistent
sessions keep working, and nothing already stored is lost once space is back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import lmdb
import pytest
from fluxmq._speedups.message import Message

from fluxmq.storage import records as R
from fluxmq.storage.lmdb_store import _NAMES
from tests.brokerproc import BrokerProc
from tests.protocol.rawmqtt import V5, V311, ConnectionClosed, PacketType, RawClient, publish
from tests.storage.conftest import (
    EXPIRY,
    QUIET,
    WAIT,
    Paho,
    lmdb_config,
    raw_session,
    receive_publishes,
    wait_for_log,
)

# Files that opening a directory may legitimately rewrite: LMDB's reader-lock table and
# FluxMQ's own lock file (it holds the pid of the process that has the directory).
LOCK_FILES = {"lock.mdb", "fluxmq.lock"}


def write_db(path: Path, records: dict[bytes, dict[bytes, bytes]]) -> None:
    """A FluxMQ-shaped LMDB environment at `path`: {db name: {key: value}}."""
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), max_dbs=16, map_size=16 << 20, subdir=True)
    try:
        with env.begin(write=True) as txn:
            for name in _NAMES:
                db = env.open_db(name, txn=txn)
                for k, v in records.get(name, {}).items():
                    txn.put(k, v, db=db)
        env.sync(True)
    finally:
        env.close()


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file under `path`."""
    out = {}
    for f in sorted(path.rglob("*")):
        if f.is_file():
            out[str(f.relative_to(path))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_untouched(path: Path, before: dict[str, str]) -> None:
    after = snapshot(path)
    missing = set(before) - set(after)
    assert not missing, f"files deleted: {missing}"
    changed = [f for f in before if f not in LOCK_FILES and before[f] != after[f]]
    assert not changed, f"files changed by a failed start: {changed}"


def failed_start(workdir: Path, data: Path) -> tuple[int, str]:
    """Start a broker on `data` that must refuse to start: (exit code, log)."""
    b = BrokerProc(workdir, lmdb_config("always", {"storage": {"path": str(data)}}))
    try:
        with pytest.raises(RuntimeError, match="exited"):
            b.start(timeout=20)
        assert b.proc is not None
        rc = b.proc.wait(10)
    finally:
        b.stop()
    return rc, b.logs()


def good_message(topic: str = "t") -> bytes:
    return R.encode_message(Message(topic, b"payload", 1, False))


# -- bad data directories ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "found",
    [struct.pack(">I", 99), struct.pack(">I", 0), b"v2"],
    ids=["format-99", "format-0", "not-u32"],
)
def test_incompatible_format_refused(tmp_path, found):
    """A valid LMDB environment whose `meta/format` is not this FluxMQ's format version."""
    data = tmp_path / "data"
    write_db(data, {b"meta": {b"format": found}, b"sessions": {b"someone": b"\x01" + b"\x00" * 20}})
    (data / "NOTES.txt").write_text("the operator's file")
    before = snapshot(data)
    rc, log = failed_start(tmp_path / "broker", data)
    assert rc != 0
    assert str(data) in log, log
    assert "format" in log, log
    assert "FluxMQ started" not in log
    assert_untouched(data, before)


def damaged_dirs() -> dict[str, dict]:
    fmt = {b"format": R.u32(R.FORMAT_VERSION)}
    return {
        "garbage": {"files": {"data.mdb": os.urandom(64 << 10), "lock.mdb": os.urandom(8192)}},
        "short-garbage": {"files": {"data.mdb": b"\x00garbage"}},
        "bad-session-record": {"db": {b"meta": fmt, b"sessions": {b"c1": b"\x01\x02"}}},
        "bad-message-in-queue": {
            "db": {
                b"meta": fmt,
                b"sessions": {b"c1": struct.pack(">BIdd", 1, 300, 1.0, 0.0)},
                b"queue": {R.seq_key("c1", 1): struct.pack(">BBBQB", 1, 0, 2, 0, 0) + b"\x07junk"},
            }
        },
        "missing-shared-body": {
            "db": {
                b"meta": fmt,
                b"sessions": {b"c1": struct.pack(">BIdd", 1, 300, 1.0, 0.0)},
                b"queue": {R.seq_key("c1", 1): struct.pack(">BBBQB", 1, 0, 0, 42, 0)},
            }
        },
        # An orphan body (that a successful start would drop) and a damaged retained
        # message: the failed start must not have committed the orphan's removal.
        "orphan-body-and-bad-retained": {
            "db": {
                b"meta": fmt,
                b"msgs": {R.u64(5): good_message()},
                b"retained": {b"r": b"\x01\x00"},
            }
        },
    }


@pytest.mark.parametrize("kind", list(damaged_dirs()))
def test_damaged_data_refused(tmp_path, kind):
    """Garbage files, or a FluxMQ database with damaged records: the start stops with an
    error naming the path; nothing in the directory is deleted or changed."""
    spec = damaged_dirs()[kind]
    data = tmp_path / "data"
    if "db" in spec:
        write_db(data, spec["db"])
    data.mkdir(exist_ok=True)
    for name, content in spec.get("files", {}).items():
        (data / name).write_bytes(content)
    before = snapshot(data)
    rc, log = failed_start(tmp_path / "broker", data)
    assert rc != 0
    assert str(data) in log, log
    assert "FluxMQ started" not in log
    assert_untouched(data, before)


def test_storage_path_that_is_a_file_refused(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"not a directory")
    rc, log = failed_start(tmp_path / "broker", data)
    assert rc != 0
    assert str(data) in log, log
    assert data.read_bytes() == b"not a directory"


def test_database_written_here_is_accepted(tmp_path):
    """Control for the tests above: a database in this format, written with the lmdb package
    the same way, starts and its session is there."""
    data = tmp_path / "data"
    expiry = struct.pack(">BIdd", 1, 300, time.time(), 0.0)
    write_db(data, {b"meta": {b"format": R.u32(R.FORMAT_VERSION)}, b"sessions": {b"c1": expiry}})
    b = BrokerProc(tmp_path / "broker", lmdb_config("always", {"storage": {"path": str(data)}}))
    try:
        b.start()
        c = raw_session(b, "c1")
        assert c.connack.session_present is True
        c.close()
    finally:
        b.stop()


# -- two brokers, one directory ------------------------------------------------------------------


def test_second_broker_on_same_directory_refused(lmdb_broker, tmp_path, uid):
    a = lmdb_broker("always")
    data = a.workdir / "data"
    sub = Paho(a, f"{uid}-sub", clean=False, expiry=EXPIRY)
    sub.subscribe(f"{uid}/t", qos=1)
    sub.disconnect()
    pub = Paho(a, f"{uid}-pub")
    assert pub.publish(f"{uid}/t", b"before", qos=1) == 0
    before = snapshot(data)

    rc, log = failed_start(tmp_path / "second", data)
    assert rc != 0
    assert str(data) in log, log
    assert "in use" in log, log
    assert str(a.proc.pid) in log, "the error should name the process holding the directory"
    assert {k: v for k, v in snapshot(data).items() if k in ("data.mdb",)} == {
        k: v for k, v in before.items() if k in ("data.mdb",)
    }

    # The first broker is unaffected and keeps working.
    assert a.alive
    assert pub.publish(f"{uid}/t", b"after", qos=1) == 0
    pub.disconnect()
    a.stop(signal.SIGTERM)

    # Once the first one has stopped, the directory is free again (no stale lock).
    second = BrokerProc(
        tmp_path / "second2", lmdb_config("always", {"storage": {"path": str(data)}})
    )
    try:
        second.start()
        sub = Paho(second, f"{uid}-sub", clean=False, expiry=EXPIRY)
        assert sub.session_present is True
        assert [m.payload for m in sub.take(2)] == [b"before", b"after"]
        sub.close()
    finally:
        second.stop()


# -- full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20, check=False)
        if r.returncode != 0:  # still busy: detach it, the kernel frees it when unused
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20, check=False)


def fill(path: Path) -> int:
    """Fill the file system of `path` with a file `filler`; returns the bytes written."""
    n = 0
    chunk = b"\x00" * 65536
    with open(path / "filler", "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return n
                chunk = chunk[: len(chunk) // 16 or 1]


def qos1(client: RawClient, topic: str, payload: bytes) -> int | None:
    """Publish at QoS 1: the PUBACK's reason code, or None if the broker closed the connection
    without acknowledging."""
    pid = client.next_packet_id()
    try:
        client.send(publish(topic, payload, qos=1, packet_id=pid, version=client.version))
        while True:
            pkt = client.recv(WAIT)
            if pkt.type == PacketType.PUBACK and pkt.packet_id == pid:
                return pkt.reason_code or 0
            assert pkt.type == PacketType.PUBLISH, pkt
    except ConnectionClosed:
        return None
    except TimeoutError:
        raise AssertionError(f"no PUBACK and no close within {WAIT}s of a QoS 1 PUBLISH") from None


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_full_disk(small_disk, lmdb_broker, uid, fsync):
    """Full disk: the publish whose commit failed is not acknowledged (its connection closes);
    then new persistent work is refused (PUBACK 0x97, CONNACK 0x97 / 3.1.1 0x03) with a clear
    log line, QoS 0 and non-persistent sessions keep working; once space is freed (the store
    retries every 5 s) persistent work is accepted again, and after a restart nothing stored
    before is lost or damaged."""
    data = small_disk / "data"
    b = lmdb_broker(fsync, {"storage": {"path": str(data)}})
    topic = f"{uid}/t"
    sub = raw_session(b, f"{uid}-sub")
    assert sub.subscribe(topic, qos=1).reason_codes == [1]
    sub.disconnect()
    live = Paho(b, f"{uid}-live")  # a non-persistent session, online throughout
    assert live.subscribe(f"{uid}/live", qos=0) == [0]
    pub = raw_session(b, f"{uid}-pub", clean=True, expiry=None)
    acked: list[bytes] = []
    for i in range(5):
        p = f"before-{i}".encode() * 100
        assert qos1(pub, topic, p) == 0
        acked.append(p)
    ack = pub.publish(f"{uid}/r", b"retained", qos=1, retain=True)
    assert ack.reason_code in (0, 0x10), ack
    persistent = raw_session(b, f"{uid}-ps")  # a persistent session, connected before

    fill(small_disk)
    log_at = len(b.logs())
    # Publish until a commit fails: the acknowledgement that depended on it is not sent.
    failed = None
    for i in range(300):
        p = f"fill-{i:03d}-".encode() + os.urandom(3000)
        rc = qos1(pub, topic, p)
        if rc == 0:
            acked.append(p)
            continue
        failed = (i, rc, p)
        break
    assert failed is not None, "300 publishes of 3 KB fitted on a full 4 MB disk"
    assert failed[1] is None, f"publish {failed[0]}: PUBACK 0x{failed[1]:02x}, not a close"
    unsure = failed[2]  # not acknowledged; kept for the retry, so it may be delivered later
    assert wait_for_log(b, "storage write failed", after=log_at)
    line = next(x for x in b.logs()[log_at:].splitlines() if "storage write failed" in x)
    assert str(data) in line, line

    # New persistent work is refused with the documented codes.
    p5 = raw_session(b, f"{uid}-pub5", clean=True, expiry=None)
    assert qos1(p5, topic, b"refused") == 0x97
    assert p5.ping().type == PacketType.PINGRESP  # the connection stays
    c = raw_session(b, f"{uid}-persist", expect_rc=None)
    assert c.connack.reason_code == 0x97, c.connack
    c = raw_session(b, f"{uid}-persist3", version=V311, expect_rc=None)
    assert c.connack.reason_code == 0x03, c.connack
    p3 = raw_session(b, f"{uid}-pub3", version=V311, clean=True, expiry=None)
    assert qos1(p3, topic, b"refused-v3") is None, "3.1.1: disconnected, having no refusal code"
    assert persistent.subscribe(f"{uid}/more", qos=1).reason_codes == [0x97]

    # QoS 0 and non-persistent sessions keep working.
    for version in (V5, V311):
        fresh = Paho(b, f"{uid}-fresh{version}", version=version)
        assert fresh.subscribe(f"{uid}/live", qos=0) == [0]
        p5.send(publish(f"{uid}/live", f"q0-{version}".encode(), qos=0))
        assert fresh.get().payload == f"q0-{version}".encode()
        assert live.get().payload == f"q0-{version}".encode()
        fresh.disconnect()
    assert b.alive

    # Space is back: within a retry period the store commits again.
    (small_disk / "filler").unlink()
    assert wait_for_log(b, "storage writable again", timeout=15, after=log_at), b.logs()[log_at:]
    deadline = time.monotonic() + 5
    while (rc := qos1(p5, topic, b"recovered")) == 0x97 and time.monotonic() < deadline:
        time.sleep(0.2)  # the refusal flag goes down with the commit that succeeded
    assert rc == 0
    acked.append(b"recovered")
    c = raw_session(b, f"{uid}-persist")
    assert c.connack.reason_code == 0
    c.close()
    p6 = raw_session(b, f"{uid}-pub6", clean=True, expiry=None)
    for i in range(3):
        p = f"after-{i}".encode()
        assert qos1(p6, topic, p) == 0
        acked.append(p)

    # Restart: everything acknowledged is there, intact and in order; the retained message too.
    b.restart(signal.SIGTERM)
    sub = raw_session(b, f"{uid}-sub")
    assert sub.connack.session_present is True
    expected = set(acked) | {unsure}
    got = receive_publishes(sub, len(acked), timeout=10)
    with contextlib.suppress(AssertionError):  # the unacknowledged one, if it was delivered
        got += receive_publishes(sub, 1, timeout=1.0, gap=1.0)
    payloads = [p.payload for p in got]
    assert set(acked) <= set(payloads), f"lost: {len(set(acked) - set(payloads))} of {len(acked)}"
    assert set(payloads) <= expected, "delivered a message nobody sent (damaged?)"
    order = [p for p in payloads if p != unsure]
    assert order == acked
    sub.expect_nothing(QUIET)
    r = Paho(b, f"{uid}-r")
    r.subscribe(f"{uid}/r", qos=1)
    assert r.get().payload == b"retained"
