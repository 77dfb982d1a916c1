"""The CoAP bridge goes through the broker's hooks: a broker and its CoAP listeners in this
process (uvloop), with hooks that record and refuse, and aiocoap's / libcoap's clients."""

from __future__ import annotations

import asyncio

import aiocoap
import uvloop
from fluxmq._speedups.bufpool import Flusher

from fluxmq.broker.broker import Broker
from fluxmq.broker.hooks import Hooks
from fluxmq.config import load_config
from fluxmq.transport.listeners import build_coap
from tests.coap.conftest import HOST, free_udp_port


class Recording(Hooks):
    def __init__(self, refuse_auth: int = 0, deny: str = "", wait: float = 0.0) -> None:
        self.infos = []
        self.publish_checks = []
        self.subscribe_checks = []
        self.refuse_auth = refuse_auth
        self.deny = deny
        self.wait = wait

    def authenticate(self, info):
        self.infos.append(info)
        if self.wait:

            async def later():
                await asyncio.sleep(self.wait)
                return self.refuse_auth

            return later()
        return self.refuse_auth

    def authorize_publish(self, client_id, username, topic):
        self.publish_checks.append((client_id, username, topic))
        return not (self.deny and topic.startswith(self.deny))

    def authorize_subscribe(self, client_id, username, topic_filter):
        self.subscribe_checks.append((client_id, username, topic_filter))
        return not (self.deny and topic_filter.startswith(self.deny))


async def _start(hooks: Hooks, overrides: dict):
    loop = asyncio.get_running_loop()
    broker = Broker(loop, hooks=hooks)
    cfg = load_config(None, overrides={"server.coap.plain.addr": "", **overrides})
    listeners = build_coap(cfg, broker, Flusher(loop))
    for listener in listeners:
        await listener.start()
    return broker, listeners


async def _stop(listeners) -> None:
    for listener in listeners:
        listener.close()
        await listener.wait_closed()


async def _request(ctx, code, url: str, payload: bytes = b"") -> aiocoap.Message:
    return await asyncio.wait_for(
        ctx.request(aiocoap.Message(code=code, uri=url, payload=payload)).response, 5
    )


def test_authorisation_hooks_give_4_03_and_subscriptions_use_them():
    port = free_udp_port()
    hooks = Recording(deny="secret")

    async def main():
        broker, listeners = await _start(hooks, {"server.coap.plain.addr": f"{HOST}:{port}"})
        ctx = await aiocoap.Context.create_client_context()
        try:
            base = f"coap://{HOST}:{port}"
            r = await _request(ctx, aiocoap.POST, base + "/mqtt/publish/secret/x", b"x")
            assert r.code == aiocoap.FORBIDDEN
            r = await _request(ctx, aiocoap.POST, base + "/mqtt/publish/open/x", b"x")
            assert r.code == aiocoap.CHANGED
            req = aiocoap.Message(code=aiocoap.GET, uri=base + "/mqtt/subscribe/secret/%23",
                                  observe=0)  # fmt: skip
            r = await asyncio.wait_for(ctx.request(req).response, 5)
            assert r.code == aiocoap.FORBIDDEN and r.opt.observe is None
            req = aiocoap.Message(code=aiocoap.GET, uri=base + "/mqtt/subscribe/open/%23",
                                  observe=0)  # fmt: skip
            r = await asyncio.wait_for(ctx.request(req).response, 5)
            assert r.code == aiocoap.CONTENT
            # The observation is a session with a subscription in the dispatcher's trie.
            assert [s.topic_filter for s in broker.dispatcher.matching("open/a/b")] == ["open/#"]
        finally:
            await ctx.shutdown()
            await _stop(listeners)

    uvloop.run(asyncio.wait_for(main(), 30))
    assert hooks.infos and hooks.infos[0].protocol == "coap"
    assert hooks.infos[0].client_id.startswith("coap:127.0.0.1:")
    assert hooks.infos[0].cert_identity is None and hooks.infos[0].listener == "coap"
    assert "secret/x" in [t for _, _, t in hooks.publish_checks]
    assert [f for _, _, f in hooks.subscribe_checks] == ["secret/#", "open/#"]


def test_authentication_refusal_is_4_01_and_an_awaited_answer_is_waited_for():
    port = free_udp_port()
    port2 = free_udp_port()

    async def main():
        _, l1 = await _start(
            Recording(refuse_auth=0x87), {"server.coap.plain.addr": f"{HOST}:{port}"}
        )
        _, l2 = await _start(Recording(wait=0.3), {"server.coap.plain.addr": f"{HOST}:{port2}"})
        ctx = await aiocoap.Context.create_client_context()
        try:
            r = await _request(ctx, aiocoap.POST, f"coap://{HOST}:{port}/mqtt/publish/a", b"x")
            assert r.code == aiocoap.UNAUTHORIZED
            r = await _request(ctx, aiocoap.GET, f"coap://{HOST}:{port}/health")
            assert r.code == aiocoap.CONTENT  # health needs no authentication
            r = await _request(ctx, aiocoap.POST, f"coap://{HOST}:{port2}/mqtt/publish/a", b"x")
            assert r.code == aiocoap.CHANGED
        finally:
            await ctx.shutdown()
            await _stop(l1 + l2)

    uvloop.run(asyncio.wait_for(main(), 30))


def test_mdtls_certificate_identity_reaches_the_hooks(certs):
    port = free_udp_port()
    hooks = Recording()
    cert, key = certs.pair("client")

    async def main():
        _, listeners = await _start(hooks, {
            "server.coap.mdtls.addr": f"{HOST}:{port}",
            "server.coap.mdtls.cert_file": certs.pair("server")[0],
            "server.coap.mdtls.key_file": certs.pair("server")[1],
            "server.coap.mdtls.ca_file": certs.ca,
        })  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                "coap-client-openssl", "-B", "5", "-m", "post", "-e", "id", "-c", cert, "-j",
                key, "-C", certs.ca, f"coaps://{HOST}:{port}/mqtt/publish/who",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.wait_for(proc.communicate(), 15)
        finally:
            await _stop(listeners)

    uvloop.run(asyncio.wait_for(main(), 30))
    assert len(hooks.infos) == 1
    info = hooks.infos[0]
    assert (info.cert_identity, info.username, info.verified) == ("client1", "client1", True)
    assert "DNS:client1.example" in info.cert_sans and info.listener == "coap.mdtls"
    assert hooks.publish_checks[0][1:] == ("client1", "who")
