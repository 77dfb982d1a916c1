"""Password files: what Debian's mosquitto_passwd writes is read, and what `fluxmq passwd`
writes is read by Mosquitto itself (a real mosquitto broker logs the user in)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from fluxmq.security.passwords import PasswordFile, hash_password, parse_hash, update_file
from tests.brokerproc import free_port, wait_port
from tests.security.helpers import HOST, mosquitto_passwd, mosquitto_pub, sha512_line


def fluxmq_passwd(*args: str, password: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fluxmq", "passwd", *args],
        input=None if password is None else password + "\n",
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_mosquitto_passwd_files_are_read(tmp_path):
    path = tmp_path / "pw"
    mosquitto_passwd(path, "alice", "wonderland")
    mosquitto_passwd(path, "carol", "p@ss word:colon")
    with path.open("a") as f:
        f.write("# a comment\n\n" + sha512_line("bob", "builder") + "\n")
    pw = PasswordFile.load(path)
    assert len(pw) == 3
    assert pw.verify("alice", b"wonderland") and not pw.verify("alice", b"wonderlan")
    assert pw.verify("carol", b"p@ss word:colon")
    assert pw.verify("bob", b"builder") and not pw.verify("bob", b"Builder")
    assert not pw.verify("nobody", b"x") and not pw.verify("alice", None)
    assert parse_hash(path.read_text().splitlines()[0].split(":", 1)[1]).kind == 7


def test_known_vectors():
    salt = bytes(range(12))
    h = hash_password("secret", salt)
    assert h.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert parse_hash(h).verify(b"secret")
    six = sha512_line("u", "secret", salt).split(":", 1)[1]
    assert parse_hash(six).kind == 6 and parse_hash(six).verify(b"secret")
    for bad in ("$5$abc$def", "$7$x$AAAA$AAAA", "$6$AAAA$AAAA", "plain", "$7$101$!!$AAAA"):
        with pytest.raises(ValueError):
            parse_hash(bad)


def test_fluxmq_passwd_adds_changes_and_deletes(tmp_path):
    path = tmp_path / "pw"
    assert fluxmq_passwd("--password-stdin", str(path), "alice", password="one").returncode == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert fluxmq_passwd("--password-stdin", str(path), "bob", password="two").returncode == 0
    assert fluxmq_passwd("--password-stdin", str(path), "alice", password="three").returncode == 0
    lines = path.read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["alice", "bob"]
    assert all(ln.split(":", 1)[1].startswith("$7$101$") for ln in lines)
    pw = PasswordFile.load(path)
    assert pw.verify("alice", b"three") and not pw.verify("alice", b"one")
    assert fluxmq_passwd("-D", str(path), "bob").returncode == 0
    assert "bob" not in PasswordFile.load(path)
    r = fluxmq_passwd("-D", str(path), "bob")
    assert r.returncode == 1 and "not found" in r.stderr
    r = fluxmq_passwd(str(path), "dave")  # no terminal, no --password-stdin
    assert r.returncode == 1 and "--password-stdin" in r.stderr
    with pytest.raises(ValueError):
        update_file(path, "a:b", "x")


def test_files_of_fluxmq_passwd_work_in_mosquitto(tmp_path):
    """The real Mosquitto broker reads a file `fluxmq passwd` wrote (and mosquitto_passwd can
    keep changing it)."""
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        pytest.fail("mosquitto is required (scripts/install-peers.sh test installs it)")
    path = tmp_path / "pw"
    assert (
        fluxmq_passwd("--password-stdin", str(path), "alice", password="wonderland").returncode == 0
    )
    mosquitto_passwd(path, "carol", "c4rol")
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} {HOST}\nallow_anonymous false\npassword_file {path}\n"
                    "persistence false\nuser root\n")  # fmt: skip
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(HOST, port, 10, proc)
        ok = mosquitto_pub(port, "-u", "alice", "-P", "wonderland", "-t", "t", "-m", "x")
        assert ok.returncode == 0, ok.stderr
        assert (
            mosquitto_pub(port, "-u", "carol", "-P", "c4rol", "-t", "t", "-m", "x").returncode == 0
        )
        assert (
            mosquitto_pub(port, "-u", "alice", "-P", "nope", "-t", "t", "-m", "x").returncode != 0
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert PasswordFile.load(path).verify("carol", b"c4rol")
