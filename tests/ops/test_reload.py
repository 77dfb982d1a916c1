"""Hot reload on SIGHUP: the password file, rate limits, webhooks and the log level change
without dropping connections; an invalid configuration is refused and the running one kept."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml

from tests.protocol.rawmqtt import RawClient
from tests.security.helpers import HOST, start, wait_until

pytestmark = pytest.mark.fluxmq_only


def _passwd(path, user, password):
    subprocess.run([sys.executable, "-m", "fluxmq", "passwd", "--password-stdin", str(path), user],
                   input=password + "\n", text=True, check=True, timeout=30)  # fmt: skip


def _reload(b, n_before: int) -> None:
    b.proc.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: (
            b.logs().count("configuration reloaded") + b.logs().count("reload refused") > n_before
        )
    )


def _count(b) -> int:
    return b.logs().count("configuration reloaded") + b.logs().count("reload refused")


def test_sighup_reloads_without_dropping_clients(broker_factory, clients, recorder, tmp_path):
    pw = tmp_path / "pw"
    _passwd(pw, "alice", "alice")
    b, ports = start(broker_factory, {"auth": {"password_file": str(pw),
                                               "allow_anonymous": False},
                                      "log": {"level": "info"}})  # fmt: skip
    port = ports["tcp"]
    alice = clients("alice-stays", 5)
    assert alice.connect(port, "alice", "alice") == 0
    alice.subscribe("r/#")
    raw = RawClient((HOST, port), version=5)  # connected before the reloads
    assert raw.connect("raw-stays", username="alice", password=b"alice").reason_code == 0
    with RawClient((HOST, port), version=5) as c:
        assert c.connect("bob0", username="bob", password=b"bob").reason_code == 0x86

    # 1. the password file: bob is added, and can log in after SIGHUP
    _passwd(pw, "bob", "bob")
    n = _count(b)
    _reload(b, n)
    with RawClient((HOST, port), version=5) as c:
        assert c.connect("bob1", username="bob", password=b"bob").reason_code == 0
        c.publish("r/1", b"from bob", qos=1)
    assert alice.got().payload == b"from bob"

    # 2. rate limits, webhooks and the log level, in one reload
    r = recorder()
    cfg_path = b.workdir / "fluxmq.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["ratelimit"] = {"enabled": True, "message": {"rate": 0.01, "burst": 1}}
    cfg["webhook"] = {
        "enabled": True,
        "shutdown_timeout": "1s",
        "endpoints": [{"url": r.url + "/h", "events": ["client.connected"]}],
    }
    cfg["log"] = {"level": "warning"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    n = _count(b)
    lines_before = b.logs().count("client connected")
    _reload(b, n)
    assert "configuration reloaded" in b.logs()
    assert raw.publish("q/1", b"x", qos=1).reason_code == 0x10  # the burst of one
    assert raw.publish("q/2", b"x", qos=1).reason_code == 0x97  # the new limit applies here
    with RawClient((HOST, port), version=5) as c:
        assert c.connect("carol", username="bob", password=b"bob").reason_code == 0
    assert wait_until(lambda: [x["data"]["client_id"] for x in r.bodies()] == ["carol"])
    assert b.logs().count("client connected") == lines_before  # info lines are off now
    assert alice.disconnects.empty()
    raw.close()

    # 3. an invalid configuration: refused, the error logged, the running one kept
    cfg_path.write_text("auth: {password_file: 3\n")
    n = _count(b)
    _reload(b, n)
    assert "reload refused" in b.logs() and "invalid YAML" in b.logs()
    pw.write_text("garbage line\n")
    cfg_path.write_text(yaml.safe_dump(cfg))
    n = _count(b)
    _reload(b, n)
    assert b.logs().count("reload refused") == 2 and "line 1" in b.logs()
    with RawClient((HOST, port), version=5) as c:  # the old password file is still in force
        assert c.connect("bob2", username="bob", password=b"bob").reason_code == 0
    assert alice.disconnects.empty()
