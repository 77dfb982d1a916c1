"""In-process cost of an ACL on the MQTT publish path (not a test; run it by hand):

    .venv/bin/python -m tests.ops.acl_cost

One connection's channel is fed 2,000 chunks of 1,000 QoS 0 PUBLISH packets (four topics in
runs of 250, as a publisher that keeps its topic) with no socket, routed to one subscriber of
`fanin/#`; the same without an ACL and with the ACL of the bench in docs/operations.md.
"""

import asyncio
import tempfile
import time
from pathlib import Path

import uvloop
from fluxmq._speedups.bufpool import Flusher
from fluxmq._speedups.session import CallbackOutlet, Session, Subscription

from fluxmq.broker.broker import Broker
from fluxmq.config import load_config
from fluxmq.mqtt.connection import Connection
from fluxmq.mqtt.settings import MQTTSettings
from fluxmq.security.policy import SecurityConfig, SecurityHooks
from fluxmq.transport.tcp import TCPListener
from tests.protocol.rawmqtt import connect, publish

ACL = Path(tempfile.mkdtemp()) / "acl"
ACL.write_text(
    "topic deny fanin/secret/#\ntopic readwrite fanin/#\npattern readwrite devices/%c/#\n"
    "user alice\ntopic readwrite alice/#\n"
)


class T:
    def __init__(self):
        self.n = 0

    def write(self, d):
        self.n += len(d)

    def writelines(self, ds):
        pass

    def get_extra_info(self, k, default=None):
        return ("127.0.0.1", 5000) if k == "peername" else default

    def is_closing(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass


async def run(acl):
    cfg = load_config(None, {"auth.acl_file": str(ACL)} if acl else None)
    loop = asyncio.get_running_loop()
    sec = SecurityConfig.from_config(cfg, ["127.0.0.1"])
    hooks = SecurityHooks(sec)
    b = Broker(loop, hooks=hooks)
    b.dispatcher.read_check = hooks.read_check if hooks.checks_read else None
    fl = Flusher(loop)
    lst = TCPListener(
        "tcp", "127.0.0.1", 0, b, MQTTSettings.from_config(cfg, cfg.server.tcp.plain), fl
    )
    got = [0]
    s = Session("sub", 0, 65535, 1000, False)
    s.outlet = CallbackOutlet(lambda *a: got.__setitem__(0, got[0] + 1) or True)
    b.sessions["sub"] = s
    b.subscribe(s, Subscription(s, "fanin/#", 0))
    c = Connection(b, lst)
    c.connection_made(T())
    c.data_received(connect("pub1", version=5))
    await asyncio.sleep(0)
    chunk = b"".join(
        publish(f"fanin/{(i // 250) % 4}", b"x" * 16, qos=0, version=5) for i in range(1000)
    )
    for _ in range(200):
        c.data_received(chunk)
    t0 = time.perf_counter()
    for _ in range(2000):
        c.data_received(chunk)
    dt = time.perf_counter() - t0
    return got[0], 2_000_000 / dt


if __name__ == "__main__":
    for acl in (False, True, False, True, False, True):
        n, rate = uvloop.run(run(acl))
        print("ACL   " if acl else "no ACL", f"{rate:,.0f} messages/s", n)
