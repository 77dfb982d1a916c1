"""The CoAP bridge over plain UDP: libcoap's coap-client, aiocoap's client and raw messages
against MQTT (paho) on the same broker."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import aiocoap
import pytest
from aiocoap.numbers.optionnumbers import OptionNumber

from tests.coap.conftest import HOST, RawCoAP, mqtt_publish

MQTT_TOPIC = OptionNumber(65000)


def _text(m) -> str:
    return m.payload.decode()


# -- publish -------------------------------------------------------------------------------------


def test_coap_publish_reaches_mqtt_subscriber_multi_level(coap_broker, libcoap, mqtt_sub):
    b = coap_broker()
    sub = mqtt_sub(b.tcp, "sensors/#")
    r = libcoap.run("-m", "post", "-t", "50", "-e", '{"t":21.5}',
                    b.url("/mqtt/publish/sensors/room1/temp"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = sub.wait(1)
    assert got == [("sensors/room1/temp", b'{"t":21.5}', 0, False, "application/json")]


def test_percent_encoded_segments_and_put(coap_broker, libcoap, mqtt_sub):
    b = coap_broker()
    sub = mqtt_sub(b.tcp, "#")
    # %20 and %C3%A9 decode in the segment; PUT publishes like POST.
    libcoap.run("-m", "put", "-e", "x", b.url("/mqtt/publish/a%20b/caf%C3%A9/z"))
    assert [g[:2] for g in sub.wait(1)] == [("a b/café/z", b"x")]


def test_qos_and_retain_options(coap_broker, raw, mqtt_sub):
    b = coap_broker()
    c = raw(b.coap)
    r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/keep/me", b"kept",
                        uri_query=("qos=1", "retain=true")))  # fmt: skip
    assert r.code == aiocoap.CHANGED and r.mtype == aiocoap.ACK
    sub = mqtt_sub(b.tcp, "keep/#", qos=2)
    assert sub.wait(1) == [("keep/me", b"kept", 1, True, None)]
    r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/keep/me", b"q2", uri_query=("qos=2",)))
    assert r.code == aiocoap.CHANGED
    assert sub.wait(2)[1] == ("keep/me", b"q2", 2, False, None)


@pytest.mark.parametrize(
    ("path", "query", "code", "words"),
    [
        ("/mqtt/publish/a/b", ("qos=3",), aiocoap.BAD_REQUEST, "qos"),
        ("/mqtt/publish/a/b", ("retain=maybe",), aiocoap.BAD_REQUEST, "retain"),
        ("/mqtt/publish/a/b", ("colour=red",), aiocoap.BAD_REQUEST, "colour"),
        ("/mqtt/publish/a/+", (), aiocoap.BAD_REQUEST, "wildcards"),
        ("/mqtt/publish/a/#", (), aiocoap.BAD_REQUEST, "wildcards"),
        ("/mqtt/publish", (), aiocoap.BAD_REQUEST, "topic"),
        ("/mqtt/publish/$SYS/x", (), aiocoap.FORBIDDEN, "$SYS"),
        ("/mqtt/nothing/a", (), aiocoap.NOT_FOUND, "not found"),
        ("/mqtt/subscribe/a/#/b", (), aiocoap.BAD_REQUEST, "filter"),
    ],
)
def test_bad_requests_get_a_diagnostic(coap_broker, raw, path, query, code, words):
    b = coap_broker()
    c = raw(b.coap)
    method = aiocoap.GET if "subscribe" in path else aiocoap.POST
    r = c.ask(c.request(method, path, b"x", uri_query=query))
    assert r.code == code
    assert words in _text(r)


def test_methods_and_health(coap_broker, raw, libcoap):
    b = coap_broker()
    c = raw(b.coap)
    assert c.ask(c.request(aiocoap.GET, "/mqtt/publish/a")).code == aiocoap.METHOD_NOT_ALLOWED
    assert c.ask(c.request(aiocoap.DELETE, "/mqtt/subscribe/a")).code == aiocoap.METHOD_NOT_ALLOWED
    r = c.ask(c.request(aiocoap.GET, "/health"))
    assert (r.code, r.payload) == (aiocoap.CONTENT, b"healthy")
    assert libcoap.run(b.url("/health")).stdout.strip() == b"healthy"
    wk = libcoap.run(b.url("/.well-known/core")).stdout
    assert b"</mqtt/subscribe>" in wk and b"obs" in wk


def test_max_message_size_gives_4_13(coap_broker, raw):
    b = coap_broker(config={"broker": {"max_message_size": 2048}})
    c = raw(b.coap)
    r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/big", b"x" * 3000))
    assert r.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert r.opt.size1 == 2048
    assert c.ask(c.request(aiocoap.POST, "/mqtt/publish/big", b"x" * 1000)).code == aiocoap.CHANGED


def test_max_qos_refuses_higher_publish(coap_broker, raw):
    b = coap_broker(config={"broker": {"max_qos": 1}})
    c = raw(b.coap)
    r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/a", b"x", uri_query=("qos=2",)))
    assert r.code == aiocoap.BAD_REQUEST and "maximum QoS" in _text(r)


def test_unknown_critical_option_is_4_02(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    m = c.request(aiocoap.POST, "/mqtt/publish/a", b"x")
    m.opt.add_option(aiocoap.optiontypes.OpaqueOption(OptionNumber(9), b"?"))  # critical, unknown
    assert c.ask(m).code == aiocoap.BAD_OPTION


# -- block-wise ----------------------------------------------------------------------------------


def test_blockwise_upload_with_libcoap(coap_broker, libcoap, mqtt_sub, tmp_path):
    b = coap_broker()
    sub = mqtt_sub(b.tcp, "up/#")
    body = os.urandom(5000)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    r = libcoap.run("-m", "post", "-b", "64", "-f", str(f), b.url("/mqtt/publish/up/file"))
    assert r.returncode == 0, r.stderr
    assert sub.wait(1) == [("up/file", body, 0, False, None)]


def test_blockwise_upload_with_larger_blocks_is_asked_to_shrink(coap_broker, raw, mqtt_sub):
    b = coap_broker(coap={"block_size": 256})
    sub = mqtt_sub(b.tcp, "shrink")
    c = raw(b.coap)
    body = os.urandom(2000)
    m = c.request(aiocoap.POST, "/mqtt/publish/shrink", body[:1024], block1=(0, True, 6))
    r = c.ask(m)
    assert r.code == aiocoap.CONTINUE and r.opt.block1.size_exponent == 4  # 256 bytes
    num, pos = 4, 1024  # RFC 7959 2.3: the 1024 bytes were kept; 4 x 256 follows
    while pos < len(body):
        chunk = body[pos : pos + 256]
        more = pos + 256 < len(body)
        r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/shrink", chunk, block1=(num, more, 4)))
        assert r.code == (aiocoap.CONTINUE if more else aiocoap.CHANGED)
        num, pos = num + 1, pos + 256
    assert sub.wait(1)[0][1] == body


def test_blockwise_out_of_order_is_4_08(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/x", b"a" * 64, block1=(3, True, 2)))
    assert r.code == aiocoap.REQUEST_ENTITY_INCOMPLETE


def test_blockwise_upload_above_max_message_size_is_4_13(coap_broker, raw):
    b = coap_broker(config={"broker": {"max_message_size": 1024}})
    c = raw(b.coap)
    code = None
    for num in range(4):
        r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/x", b"a" * 512, block1=(num, True, 5)))
        code = r.code
        if code != aiocoap.CONTINUE:
            break
    assert code == aiocoap.REQUEST_ENTITY_TOO_LARGE


def test_blockwise_download_of_a_notification_with_libcoap(coap_broker, libcoap):
    b = coap_broker()
    obs = libcoap.observe(b.url("/mqtt/subscribe/down/%2B"), seconds=4)
    time.sleep(0.7)
    body = os.urandom(1500).hex().encode()  # 3000 bytes: three blocks of 1024
    mqtt_publish(b.tcp, "down/x", body, qos=1)
    out, err = obs.communicate(timeout=15)
    assert body in out, err


def test_blockwise_get_of_a_retained_message(coap_broker, raw):
    b = coap_broker(coap={"block_size": 512})
    body = os.urandom(1300)
    mqtt_publish(b.tcp, "ret/big", body, qos=1, retain=True)
    c = raw(b.coap)
    parts, num = [], 0
    while True:
        r = c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/ret/big", block2=(num, False, 5)))
        assert r.code == aiocoap.CONTENT
        parts.append(r.payload)
        if not r.opt.block2.more:
            break
        num += 1
    assert b"".join(parts) == body and num == 2


# -- observe -------------------------------------------------------------------------------------


def test_mqtt_publish_reaches_coap_observer_retained_first(coap_broker, libcoap):
    b = coap_broker()
    mqtt_publish(b.tcp, "obs/kept", b"retained-one", qos=1, retain=True)
    obs = libcoap.observe(b.url("/mqtt/subscribe/obs/%23"), seconds=3)
    time.sleep(0.7)
    for i in range(3):
        mqtt_publish(b.tcp, f"obs/{i}/deep", f"m{i}".encode(), qos=i % 2)
    out, _ = obs.communicate(timeout=15)
    lines = [ln for ln in out.decode().split("\n") if ln]
    assert lines == ["retained-one", "m0", "m1", "m2"]


def test_observe_notifications_are_con_for_qos1_and_carry_topic(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    reg = c.request(aiocoap.GET, "/mqtt/subscribe/t/+", observe=0, uri_query=("qos=1",))
    r = c.ask(reg)
    assert r.code == aiocoap.CONTENT and r.opt.observe is not None
    mqtt_publish(b.tcp, "t/a", b"one", qos=1, content_type="text/plain; charset=utf-8")
    n = c.recv()
    assert n.mtype == aiocoap.CON and n.token == reg.token and n.payload == b"one"
    assert n.opt.get_option(MQTT_TOPIC)[0].value == b"t/a"
    assert n.opt.content_format == 0
    assert n.opt.observe > r.opt.observe
    c.ack(n)
    mqtt_publish(b.tcp, "t/b", b"two", qos=0)
    n2 = c.recv()
    assert n2.mtype == aiocoap.NON and n2.payload == b"two"  # delivered at QoS 0


def test_qos1_notifications_wait_for_the_ack(coap_broker, raw):
    """One confirmable notification at a time: the next comes after the ACK (NSTART 1)."""
    b = coap_broker()
    c = raw(b.coap)
    c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/w", observe=0, uri_query=("qos=1",)))
    for i in range(3):
        mqtt_publish(b.tcp, "w", f"{i}".encode(), qos=1)
    n = c.recv()
    assert n.payload == b"0"
    # Not acknowledged yet: the retransmission of the same one comes, not the next.
    again = c.recv(timeout=5)
    assert again.mid == n.mid and again.payload == b"0"
    got = []
    c.ack(n)
    while len(got) < 2:
        m = c.recv()
        if m.payload == b"0":
            continue
        got.append(m.payload)
        c.ack(m)
    assert got == [b"1", b"2"]


def test_observer_that_stops_acknowledging_is_dropped(coap_broker, raw):
    b = coap_broker(coap={"ack_timeout": "100ms", "max_retransmit": 2})
    c = raw(b.coap)
    c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/drop", observe=0, uri_query=("qos=1",)))
    mqtt_publish(b.tcp, "drop", b"first", qos=1)
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = c.recv(timeout=0.5)
        if m is None and len(seen) >= 3:
            break
        if m is not None:
            seen.append(m.mid)
    assert len(seen) == 3 and len(set(seen)) == 1  # sent once, retransmitted twice
    mqtt_publish(b.tcp, "drop", b"second", qos=1)
    assert c.recv(timeout=1.0) is None  # the observation is over
    assert "CoAP observer dropped" in b.logs()


def test_rst_deregisters(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/r", observe=0))
    mqtt_publish(b.tcp, "r", b"1")
    n = c.recv()
    assert n.mtype == aiocoap.NON
    c.rst(n)
    time.sleep(0.2)
    mqtt_publish(b.tcp, "r", b"2")
    assert c.recv(timeout=1.0) is None


def test_observe_1_deregisters(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    reg = c.request(aiocoap.GET, "/mqtt/subscribe/d", observe=0)
    c.ask(reg)
    mqtt_publish(b.tcp, "d", b"1")
    assert c.recv().payload == b"1"
    r = c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/d", observe=1, token=reg.token))
    assert r.code == aiocoap.CONTENT and r.opt.observe is None
    mqtt_publish(b.tcp, "d", b"2")
    assert c.recv(timeout=1.0) is None


def test_observe_with_aiocoap_client(coap_broker):
    b = coap_broker()

    async def main() -> list[bytes]:
        ctx = await aiocoap.Context.create_client_context()
        try:
            req = aiocoap.Message(code=aiocoap.GET, uri=b.url("/mqtt/subscribe/ai/+"), observe=0)
            pr = ctx.request(req)
            first = await asyncio.wait_for(pr.response, 5)
            assert first.code == aiocoap.CONTENT
            it = pr.observation.__aiter__()  # notifications count from here on
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, mqtt_publish, b.tcp, "ai/1", b"hello", 1)
            got = [(await asyncio.wait_for(it.__anext__(), 5)).payload]
            await loop.run_in_executor(None, mqtt_publish, b.tcp, "ai/2", b"world", 0)
            got.append((await asyncio.wait_for(it.__anext__(), 5)).payload)
            pr.observation.cancel()
            pub = aiocoap.Message(code=aiocoap.POST, uri=b.url("/mqtt/publish/ai/3?qos=1"),
                                  payload=b"from-aiocoap")  # fmt: skip
            r = await asyncio.wait_for(ctx.request(pub).response, 5)
            assert r.code == aiocoap.CHANGED
            return got
        finally:
            await ctx.shutdown()

    assert asyncio.run(asyncio.wait_for(main(), 20)) == [b"hello", b"world"]


def test_observation_subscribes_through_the_trie_with_shared_groups(coap_broker, raw):
    b = coap_broker()
    c1, c2 = raw(b.coap), raw(b.coap)
    for c in (c1, c2):
        assert c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/$share/g/sh/+", observe=0)).code == \
            aiocoap.CONTENT  # fmt: skip
    for i in range(4):
        mqtt_publish(b.tcp, "sh/x", f"{i}".encode())
    got1 = [m.payload for m in iter(lambda: c1.recv(timeout=0.5), None)]
    got2 = [m.payload for m in iter(lambda: c2.recv(timeout=0.5), None)]
    assert sorted(got1 + got2) == [b"0", b"1", b"2", b"3"] and got1 and got2


# -- message layer -------------------------------------------------------------------------------


def test_duplicate_con_is_processed_once_and_answered_again(coap_broker, raw, mqtt_sub):
    b = coap_broker()
    sub = mqtt_sub(b.tcp, "dup")
    c = raw(b.coap)
    m = c.request(aiocoap.POST, "/mqtt/publish/dup", b"once")
    data = m.encode()
    r1 = c.ask(m)
    c.send(data)  # the same message again (a retransmission)
    r2 = c.recv()
    assert (r2.mtype, r2.mid, r2.code, r2.token) == (r1.mtype, r1.mid, r1.code, r1.token)
    time.sleep(0.3)
    assert len(sub.wait(1)) == 1
    # Same message id, another message: not a duplicate.
    m2 = c.request(aiocoap.POST, "/mqtt/publish/dup", b"twice", mid=m.mid)
    assert c.ask(m2).code == aiocoap.CHANGED
    assert len(sub.wait(2)) == 2


def test_non_request_gets_non_response_and_ping_gets_rst(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    r = c.ask(c.request(aiocoap.POST, "/mqtt/publish/n", b"x", mtype=aiocoap.NON))
    assert r.mtype == aiocoap.NON and r.code == aiocoap.CHANGED
    c.send(bytes([0x40, 0, 0x12, 0x34]))  # CON empty: ping
    pong = c.recv()
    assert pong.mtype == aiocoap.RST and pong.mid == 0x1234


def test_no_response_option_suppresses_success(coap_broker, raw, mqtt_sub):
    b = coap_broker()
    sub = mqtt_sub(b.tcp, "nr")
    c = raw(b.coap)
    m = c.request(aiocoap.POST, "/mqtt/publish/nr", b"x", mtype=aiocoap.NON, no_response=2)
    c.send(m)
    assert sub.wait(1)
    assert c.recv(timeout=0.5) is None


def test_malformed_con_gets_rst(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    c.send(bytes([0x44, 0x02, 0x00, 0x07]) + b"tok!" + bytes([0xB3, 0xFF, 0xFE, 0xFD]))
    r = c.recv()
    assert r.mtype == aiocoap.RST and r.mid == 7


def test_garbage_flood_does_not_disturb_a_well_behaved_client(coap_broker, libcoap, mqtt_sub):
    b = coap_broker()
    sub = mqtt_sub(b.tcp, "calm/#")
    rng = random.Random(7)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for i in range(3000):
            n = rng.randint(0, 300)
            data = bytes(rng.getrandbits(8) for _ in range(n))
            if i % 3 == 0 and n >= 4:
                data = bytes([0x40 | (data[0] & 0x3F)]) + data[1:]  # looks like CoAP v1
            socks[i % 4].sendto(data, (HOST, b.coap))
            if i % 500 == 0:
                r = libcoap.run("-m", "post", "-e", f"ok{i}", b.url(f"/mqtt/publish/calm/{i}"))
                assert r.returncode == 0
    finally:
        for s in socks:
            s.close()
    good = RawCoAP(b.coap)
    try:
        r = good.ask(good.request(aiocoap.POST, "/mqtt/publish/calm/end", b"end"))
        assert r.code == aiocoap.CHANGED
    finally:
        good.close()
    got = sub.wait(7)
    assert [g[1] for g in got] == [f"ok{i}".encode() for i in range(0, 3000, 500)] + [b"end"]
    b.proc.stop()
    logs = b.logs()
    assert logs.count("CoAP datagram that is not CoAP from 127.0.0.1") == 1
    stopped = next(ln for ln in logs.splitlines() if "CoAP listener stopped" in ln)
    garbage = int(stopped.split("garbage=")[1].split()[0])
    assert garbage >= 1000


def test_max_peers_refuses_new_endpoints_with_5_03(coap_broker, raw):
    b = coap_broker(coap={"max_peers": 2})
    cs = [raw(b.coap) for _ in range(3)]
    for c in cs[:2]:
        c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/keep", observe=0))  # observers stay
    r = cs[2].ask(cs[2].request(aiocoap.POST, "/mqtt/publish/x", b"x"))
    assert r.code == aiocoap.SERVICE_UNAVAILABLE
    assert cs[0].ask(cs[0].request(aiocoap.POST, "/mqtt/publish/x", b"x")).code == \
        aiocoap.CHANGED  # fmt: skip


def test_shutdown_tells_observers(coap_broker, raw):
    b = coap_broker()
    c = raw(b.coap)
    c.ask(c.request(aiocoap.GET, "/mqtt/subscribe/bye", observe=0))
    b.proc.stop()
    last = c.recv()
    assert last is not None and last.code == aiocoap.SERVICE_UNAVAILABLE
