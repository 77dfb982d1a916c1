"""The CoAP bridge's resources: publish, Observe-subscribe, health.

    POST|PUT /mqtt/publish/{topic...}?qos=0|1|2&retain=true|false     body = payload
    GET      /mqtt/subscribe/{filter...}?qos=0|1|2  (Observe: 0)       notifications
    GET      /health                                                   2.05 "healthy"
    GET      /.well-known/core                                         link format

A publish enters the broker by `Broker.publish` as every door's does, through the same hooks
(`authenticate` once per client endpoint, with the DTLS client certificate's identity;
`authorize_publish`). Content-Format becomes the MQTT 5 Content Type (the registered media type;
an unregistered number as its decimal text) and back for notifications.

An observation is a `Session` of its own (client id `coap:<ip>:<port>#<n>`) with one
`Subscription` in the dispatcher's trie, whose outlet is a `CallbackOutlet`: every message the
subscription matches becomes a notification (QoS 0: non-confirmable; QoS 1/2: confirmable, and
the ACK acknowledges the delivery, so the session's flow control and queue apply; the window is
one confirmable notification at a time, NSTART = 1). A notification never acknowledged, a RST,
a GET with Observe 1 (or without Observe), or the endpoint going away end the observation and
its session. A notification carries the message's topic in option 65000 (elective, ignored by
clients that do not know it). Payloads larger than the block size go block-wise (RFC 7959):
the first block in the notification, the others on request from the same representation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import zlib

from aiocoap.numbers.contentformat import ContentFormat

from fluxmq._speedups import codec
from fluxmq._speedups.channel import storage_full
from fluxmq._speedups.message import Message
from fluxmq._speedups.session import CallbackOutlet, Subscription
from fluxmq.broker.hooks import ClientInfo
from fluxmq.mqtt.handle_subscribe import split_shared
from fluxmq.transport import coap as C
from fluxmq.transport.http_bridge import packet_size

log = logging.getLogger("fluxmq.transport.coap")

HEALTHY = b"healthy"
WELL_KNOWN = (
    b'</mqtt/publish>;rt="mqtt.publish";title="POST /mqtt/publish/{topic}",'
    b'</mqtt/subscribe>;rt="mqtt.subscribe";obs;title="GET /mqtt/subscribe/{filter}",'
    b'</health>;rt="health"'
)
REP_LIFETIME = 120.0  # seconds a block-wise representation stays available for its blocks
MAX_ASSEMBLIES = 4  # block-wise uploads in progress per endpoint
MAX_WAITING = 32  # requests of an endpoint held while the authentication hook is asked
_WAITING = -1  # Peer.auth while the authentication hook's answer is awaited
_tasks: set = set()  # authentication answers awaited
_CF_LINK_FORMAT = 40
_CF_TEXT = 0


def _normal_media_type(text: str) -> str:
    return text.replace(" ", "").lower()


# Content-Format numbers <-> MQTT content types, from aiocoap's registry.
CF_TO_TYPE: dict[int, str] = {}
TYPE_TO_CF: dict[str, int] = {}
for (_mt, _enc), _cf in ContentFormat._by_mt_encoding.items():
    _name = _cf.media_type if _enc == "identity" else f"{_cf.media_type}; encoding={_enc}"
    CF_TO_TYPE.setdefault(int(_cf), _name)
    TYPE_TO_CF.setdefault(_normal_media_type(_name), int(_cf))
TYPE_TO_CF.setdefault("text/plain", 0)


def content_type_of(cf: int) -> str:
    return CF_TO_TYPE.get(cf) or str(cf)


def content_format_of(content_type: str | None) -> int | None:
    if not content_type:
        return None
    cf = TYPE_TO_CF.get(_normal_media_type(content_type))
    if cf is None and content_type.isdigit() and int(content_type) <= 0xFFFF:
        cf = int(content_type)
    return cf


class BadRequest(Exception):
    def __init__(self, message: str, code: int = C.BAD_REQUEST, options=None) -> None:
        super().__init__(message)
        self.code = code
        self.options = options


def _query(msg, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in msg.opt.uri_query:
        name, sep, value = item.partition("=")
        if name not in allowed:
            raise BadRequest(f"{name}: unknown query option (expected {', '.join(allowed)})")
        if not sep:
            raise BadRequest(f"{name}: a value is required ({name}=...)")
        out[name] = value
    return out


def _qos(query: dict[str, str]) -> int:
    text = query.get("qos", "0")
    if text not in ("0", "1", "2"):
        raise BadRequest("qos: must be 0, 1 or 2")
    return int(text)


def _size_exponent(size: int) -> int:
    return size.bit_length() - 5  # 16 -> 0 ... 1024 -> 6


class Assembly:
    """A block-wise upload (Block1) in progress."""

    __slots__ = ("parts", "size", "started", "szx")

    def __init__(self, szx: int, now: float) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.szx = szx
        self.started = now


class Representation:
    """A payload served block-wise (Block2): a notification's or a GET's."""

    __slots__ = ("cf", "etag", "made", "payload", "topic")

    def __init__(self, payload: bytes, cf: int | None, topic: str, now: float) -> None:
        self.payload = payload
        self.cf = cf
        self.topic = topic
        self.made = now
        self.etag = zlib.crc32(payload).to_bytes(4, "big") + len(payload).to_bytes(4, "big")


class ObserverOutlet(CallbackOutlet):
    """The outlet of an observation's session; the broker may call `shutdown()`/`takeover()`."""

    def __init__(self, obs: Observation) -> None:
        super().__init__(obs.deliver, obs.release)
        self.obs = obs
        self.session = None

    def shutdown(self) -> None:
        self.obs.end(notify=True)

    def takeover(self) -> None:
        self.obs.end(notify=False, detach=False)


_observation_ids = itertools.count(1)


class Observation:
    """A CoAP observer of `/mqtt/subscribe/{filter}`: one session with one subscription."""

    __slots__ = (
        "bridge",
        "ended",
        "key",
        "liveness",
        "outlet",
        "peer",
        "pids",
        "qos",
        "seq",
        "session",
        "szx",
        "token",
        "topic_filter",
    )

    def __init__(self, bridge: Bridge, peer, token: bytes, key, topic_filter: str, qos: int,
                 szx: int) -> None:  # fmt: skip
        self.bridge = bridge
        self.peer = peer
        self.token = token
        self.key = key
        self.topic_filter = topic_filter
        self.qos = qos
        self.szx = szx
        self.seq = 2
        self.session = None
        self.outlet = ObserverOutlet(self)
        self.pids: dict[int, tuple[int, int]] = {}  # CON mid -> (packet id, QoS)
        self.ended = False
        self.liveness = False

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFF
        return self.seq

    # -- the outlet's callbacks --------------------------------------------------------------------

    def deliver(self, msg: Message, qos: int, packet_id: int, dup: bool, retain: bool,
                sub_ids) -> bool:  # fmt: skip
        if self.ended or self.peer.gone:
            return False
        listener = self.bridge.listener
        peer = self.peer
        payload = msg.payload
        cf = content_format_of(msg.content_type)
        opts = [(C.OBSERVE, C.encode_uint(self.next_seq())), (C.MQTT_TOPIC, msg.topic.encode())]
        if cf is not None:
            opts.append((C.CONTENT_FORMAT, C.encode_uint(cf)))
        size = 16 << self.szx
        if len(payload) > size:
            rep = Representation(payload, cf, msg.topic, listener.loop.time())
            peer.reps[self.key] = rep
            opts.append((C.ETAG, rep.etag))
            opts.append((C.BLOCK2, C.block_value(0, True, self.szx)))
            opts.append((C.SIZE2, C.encode_uint(len(payload))))
            payload = payload[:size]
        mid = peer.new_mid()
        confirmable = qos > 0 or self.liveness
        data = C.encode(C.CON if confirmable else C.NON, C.CONTENT, mid, self.token, opts, payload)
        self.bridge.notifications += 1
        if confirmable:
            self.liveness = False
            if qos > 0:
                self.pids[mid] = (packet_id, qos)
            listener.send_confirmable(peer, data, mid, self)
        else:
            listener.send_non(peer, data, mid, self)
        return True

    def release(self, packet_id: int) -> None:
        """PUBREL of a QoS 2 delivery: the ACK already completed it on the CoAP side."""
        if self.session is not None:
            self.session.on_pubcomp(packet_id)

    # -- the message layer's callbacks -------------------------------------------------------------

    def acked(self, mid: int) -> None:
        flow = self.pids.pop(mid, None)
        if flow is None or self.session is None:
            return
        packet_id, qos = flow
        if qos == 1:
            self.session.on_puback(packet_id)
        else:
            self.session.on_pubrec(packet_id, 0)

    def reset(self) -> None:
        """The client rejected a notification (RST): it no longer observes (RFC 7641 3.6)."""
        self.bridge.deregistered += 1
        self.end(notify=False)

    def failed(self) -> None:
        """A confirmable notification was never acknowledged: the observer is gone (4.5)."""
        self.bridge.timed_out += 1
        log.info(
            "CoAP observer dropped: a confirmable notification was not acknowledged",
            extra={"listener": self.bridge.listener.name, "client": self.peer.client_id,
                   "filter": self.topic_filter},
        )  # fmt: skip
        self.end(notify=False)

    def end(self, notify: bool, detach: bool = True) -> None:
        if self.ended:
            return
        self.ended = True
        peer = self.peer
        listener = self.bridge.listener
        if peer.observations.get(self.key) is self:
            del peer.observations[self.key]
        listener.cancel_pending(peer, self)
        if notify and not peer.gone:
            # A final 5.03 tells the client the observation is over (RFC 7641 3.2).
            data = C.encode(C.NON, C.SERVICE_UNAVAILABLE, peer.new_mid(), self.token,
                            [(C.MAX_AGE, C.encode_uint(30))], b"server shutting down")  # fmt: skip
            listener.send(peer, data)
        if detach and self.session is not None:
            self.bridge.broker.disconnect(self.outlet, self.session, False)
        self.session = None


class Bridge:
    """The resources of one CoAP listener."""

    def __init__(self, broker, max_message_size: int, max_qos: int, limiter=None,
                 listener_name: str = "coap", mutual: bool = False) -> None:  # fmt: skip
        self.broker = broker
        self.max_message_size = max_message_size
        self.max_qos = max_qos
        self.limiter = limiter  # per-IP message rate (ratelimit.message) or None
        self.listener_name = listener_name
        self.mutual = mutual
        self.listener = None  # set by the CoAPListener
        self.published = 0
        self.notifications = 0
        self.deregistered = 0
        self.timed_out = 0
        self.observations = 0

    # -- dispatch ----------------------------------------------------------------------------------

    def request(self, req: C.Request, code: int) -> None:
        msg = req.msg
        listener = self.listener
        try:
            for opt in msg.opt.option_list():
                n = int(opt.number)
                if n & 1 and n not in C.KNOWN_CRITICAL:
                    if n in C.PROXY_OPTIONS:
                        raise BadRequest("proxying is not supported", C.PROXYING_NOT_SUPPORTED)
                    raise BadRequest(f"unsupported critical option {n}", C.BAD_OPTION)
                if n == C.NO_RESPONSE:
                    req.no_response = int.from_bytes(opt.encode(), "big")
            path = msg.opt.uri_path
            if len(path) >= 2 and path[0] == "mqtt":
                if path[1] == "publish":
                    if code not in (C.POST, C.PUT):
                        raise BadRequest("use POST or PUT", C.METHOD_NOT_ALLOWED)
                    self.publish(req, path[2:])
                    return
                if path[1] == "subscribe":
                    if code != C.GET:
                        raise BadRequest("use GET (with Observe)", C.METHOD_NOT_ALLOWED)
                    self.subscribe(req, path[2:])
                    return
            if path == ("health",):
                if code != C.GET:
                    raise BadRequest("use GET", C.METHOD_NOT_ALLOWED)
                listener.respond(req, C.CONTENT, HEALTHY,
                                 [(C.CONTENT_FORMAT, C.encode_uint(_CF_TEXT))])  # fmt: skip
                return
            if path == (".well-known", "core"):
                if code != C.GET:
                    raise BadRequest("use GET", C.METHOD_NOT_ALLOWED)
                self.respond_blockwise(req, ("wk",), WELL_KNOWN, _CF_LINK_FORMAT, "")
                return
            raise BadRequest(
                "not found (use /mqtt/publish/{topic}, /mqtt/subscribe/{filter} or /health)",
                C.NOT_FOUND,
            )
        except BadRequest as exc:
            listener.respond(req, exc.code, str(exc).encode(), exc.options)
        except Exception:
            log.exception("CoAP request failed", extra={"listener": listener.name})
            listener.respond(req, C.INTERNAL_SERVER_ERROR, b"internal error")

    # -- authentication ----------------------------------------------------------------------------

    def authenticate(self, req: C.Request, code: int) -> bool:
        """True once the endpoint is accepted; False if the answer is awaited (the request is
        handled when it comes); BadRequest 4.01 when refused."""
        peer = req.peer
        auth = peer.auth
        if auth is None:
            info = ClientInfo(
                peer.client_id, peer.username, None, peer.ip, "coap", self.listener_name,
                cert_identity=peer.identity, cert_sans=peer.sans,
                verified=peer.identity is not None,
            )  # fmt: skip
            auth = self.broker.hooks.authenticate(info)
            if not isinstance(auth, int):
                peer.auth = _WAITING
                peer.waiting = [(req, code)]
                task = asyncio.ensure_future(self._await_auth(peer, auth))
                _tasks.add(task)
                task.add_done_callback(_tasks.discard)
                return False
            self._authenticated(peer, auth)
        elif auth is _WAITING:
            if len(peer.waiting) >= MAX_WAITING:
                raise BadRequest("authentication in progress", C.SERVICE_UNAVAILABLE,
                                 [(C.MAX_AGE, C.encode_uint(1))])  # fmt: skip
            peer.waiting.append((req, code))
            return False
        if peer.auth:
            raise BadRequest("not authorized", C.UNAUTHORIZED)
        return True

    def _authenticated(self, peer, code: int) -> None:
        peer.auth = code
        if code:
            self.listener.problem(peer.ip, "client refused by the authentication hook",
                                  reason=code)  # fmt: skip

    async def _await_auth(self, peer, pending) -> None:
        try:
            code = await pending
        except Exception:
            log.exception("authentication failed with an error", extra={"remote": peer.ip})
            code = 0x87
        waiting, peer.waiting = peer.waiting, None
        self._authenticated(peer, int(code))
        if peer.gone:
            return
        for req, req_code in waiting or ():
            self.request(req, req_code)

    # -- publish -----------------------------------------------------------------------------------

    def publish(self, req: C.Request, segments: tuple[str, ...]) -> None:
        msg = req.msg
        peer = req.peer
        if not self.authenticate(req, int(msg.code)):
            return
        if not segments:
            raise BadRequest("topic: missing (use /mqtt/publish/{topic})")
        topic = "/".join(segments)
        if "+" in topic or "#" in topic:
            raise BadRequest("topic: wildcards (+, #) are not allowed in a topic name")
        if len(topic.encode("utf-8", "surrogatepass")) > 65535:
            raise BadRequest("topic: longer than 65535 bytes")
        if not codec.valid_topic_name(topic):
            raise BadRequest("topic: not a valid topic name")
        query = _query(msg, ("qos", "retain"))
        qos = _qos(query)
        if qos > self.max_qos:
            raise BadRequest(f"qos: above the broker's maximum QoS {self.max_qos}")
        retain_text = query.get("retain", "false")
        if retain_text not in ("true", "false"):
            raise BadRequest("retain: must be true or false")
        if topic.startswith("$SYS"):
            raise BadRequest("topic: clients may not publish to $SYS topics", C.FORBIDDEN)
        too_large = BadRequest(
            f"message larger than broker.max_message_size ({self.max_message_size} bytes)",
            C.REQUEST_ENTITY_TOO_LARGE,
            [(C.SIZE1, C.encode_uint(self.max_message_size))],
        )
        payload = msg.payload
        extra = []
        block1 = msg.opt.block1
        if block1 is not None:
            size1 = msg.opt.size1
            if size1 is not None and size1 > self.max_message_size:
                raise too_large
            payload = self._assemble(req, block1, topic, too_large)
            if payload is None:
                return  # 2.31 Continue was sent
            extra.append((C.BLOCK1, C.block_value(block1.block_number, False,
                                                  block1.size_exponent)))  # fmt: skip
        m = Message(topic, payload, qos, retain_text == "true")
        cf = msg.opt.content_format
        if cf is not None:
            m.content_type = content_type_of(int(cf))
        if packet_size(m, len(payload)) > self.max_message_size:
            raise too_large
        if not self.broker.hooks.authorize_publish(peer.client_id, peer.username, topic):
            raise BadRequest("not authorized to publish to this topic", C.FORBIDDEN)
        if self.limiter is not None and not self.limiter.allow(peer.ip):
            self.broker.counters.publish_dropped += 1
            raise BadRequest("message rate exceeded", C.TOO_MANY_REQUESTS,
                             [(C.MAX_AGE, C.encode_uint(1))])  # fmt: skip
        if qos and storage_full():
            raise BadRequest("storage is full: QoS 1/2 messages cannot be stored now",
                             C.SERVICE_UNAVAILABLE, [(C.MAX_AGE, C.encode_uint(5))])  # fmt: skip
        m.origin = peer.client_id
        try:
            self.broker.publish(m)
        except Exception as exc:
            log.exception("CoAP publish failed", extra={"listener": self.listener.name})
            raise BadRequest(f"the broker cannot take the message ({type(exc).__name__})",
                             C.SERVICE_UNAVAILABLE) from None  # fmt: skip
        self.published += 1
        self.listener.respond(req, C.CHANGED, b"", extra or None)

    def _assemble(self, req: C.Request, block1, topic: str, too_large) -> bytes | None:
        """Add a Block1 block; the whole payload once the last block is in, else None (after
        answering 2.31 Continue)."""
        peer = req.peer
        msg = req.msg
        num, more, szx = block1.block_number, block1.more, block1.size_exponent
        listener = self.listener
        ours = _size_exponent(listener.block_size)
        key = (msg.code, msg.opt.uri_path, msg.opt.uri_query)
        asm = peer.blocks.get(key)
        if num == 0:
            if asm is None and len(peer.blocks) >= MAX_ASSEMBLIES:
                raise BadRequest("too many block-wise transfers in progress",
                                 C.SERVICE_UNAVAILABLE)  # fmt: skip
            asm = Assembly(min(szx, ours), listener.loop.time())
            peer.blocks[key] = asm
            if szx > ours and more:
                # RFC 7959 2.3: this block is kept whole; the client continues with the block
                # number that follows it in the smaller size.
                data = msg.payload
                if len(data) != 16 << szx:
                    peer.blocks.pop(key, None)
                    raise BadRequest("block 0 is not the size it says")
                asm.parts.append(data)
                asm.size = len(data)
                listener.respond(req, C.CONTINUE, b"",
                                 [(C.BLOCK1, C.block_value(0, True, ours))])  # fmt: skip
                return None
        if asm is None:
            raise BadRequest("block-wise transfer not started (block 0 missing)",
                             C.REQUEST_ENTITY_INCOMPLETE)  # fmt: skip
        size = 16 << szx
        if num * size != asm.size:
            peer.blocks.pop(key, None)
            raise BadRequest(f"block {num} out of order", C.REQUEST_ENTITY_INCOMPLETE)
        data = msg.payload
        if more and len(data) != size:
            peer.blocks.pop(key, None)
            raise BadRequest(f"block {num} is not {size} bytes")
        asm.parts.append(data)
        asm.size += len(data)
        if asm.size + len(topic) > self.max_message_size:
            peer.blocks.pop(key, None)
            raise too_large
        if more:
            listener.respond(req, C.CONTINUE, b"", [(C.BLOCK1, C.block_value(num, True, szx))])
            return None
        del peer.blocks[key]
        return b"".join(asm.parts)

    # -- subscribe (Observe) -----------------------------------------------------------------------

    def subscribe(self, req: C.Request, segments: tuple[str, ...]) -> None:
        msg = req.msg
        peer = req.peer
        listener = self.listener
        key = ("sub", segments, msg.opt.uri_query)
        block2 = msg.opt.block2
        if block2 is not None and block2.block_number > 0:
            self._serve_block(req, key, block2)
            return
        if not self.authenticate(req, int(msg.code)):
            return
        if not segments:
            raise BadRequest("topic filter: missing (use /mqtt/subscribe/{filter})")
        topic_filter = "/".join(segments)
        if not codec.valid_topic_filter(topic_filter):
            raise BadRequest("topic filter: not a valid topic filter")
        query = _query(msg, ("qos",))
        qos = min(_qos(query), self.max_qos)
        group, inner = split_shared(topic_filter)
        ours = _size_exponent(listener.block_size)
        szx = min(ours, block2.size_exponent) if block2 is not None else ours
        observe = msg.opt.observe
        old = peer.observations.get(key)
        if observe != 0:
            # Observe 1 deregisters (RFC 7641 3.6), as does a plain GET of the resource (4.1).
            if old is not None:
                self.deregistered += 1
                old.end(notify=False)
            self._get_retained(req, key, inner, szx, empty_ok=observe == 1)
            return
        if not self.broker.hooks.authorize_subscribe(peer.client_id, peer.username, topic_filter):
            raise BadRequest("not authorized to subscribe to this topic filter", C.FORBIDDEN)
        if old is not None:
            if old.token == req.token:
                # A re-registration: the observation continues.
                listener.respond(req, C.CONTENT, b"",
                                 [(C.OBSERVE, C.encode_uint(old.next_seq()))])  # fmt: skip
                return
            old.end(notify=False)  # the same resource with a new token replaces it
        obs = Observation(self, peer, req.token, key, topic_filter, qos, szx)
        client_id = f"{peer.client_id}#{next(_observation_ids)}"
        result = self.broker.connect(obs.outlet, client_id, True, 0, 1, None)
        obs.session = result.session
        obs.outlet.session = result.session
        peer.observations[key] = obs
        self.observations += 1
        listener.respond(req, C.CONTENT, b"", [(C.OBSERVE, C.encode_uint(obs.next_seq()))])
        sub = Subscription(result.session, inner, qos, share_group=group)
        self.broker.subscribe(result.session, sub)
        if group is None:
            self.broker.send_retained(result.session, sub)  # after the response, in order

    def _get_retained(self, req: C.Request, key, topic_filter: str, szx: int,
                      empty_ok: bool = False) -> None:  # fmt: skip
        """A GET without Observe: the retained message of the topic (the first one matching a
        wildcard filter); 4.04 without one (a deregistration gets an empty 2.05)."""
        found = self.broker.retained.match(topic_filter)
        if not found:
            if empty_ok:
                self.listener.respond(req, C.CONTENT)
                return
            raise BadRequest(f"no retained message matches {topic_filter}", C.NOT_FOUND)
        m = found[0]
        self.respond_blockwise(req, key, m.payload, content_format_of(m.content_type), m.topic,
                               szx)  # fmt: skip

    def respond_blockwise(self, req: C.Request, key, payload: bytes, cf: int | None, topic: str,
                          szx: int | None = None) -> None:  # fmt: skip
        listener = self.listener
        if szx is None:
            szx = _size_exponent(listener.block_size)
            block2 = req.msg.opt.block2
            if block2 is not None:
                szx = min(szx, block2.size_exponent)
        opts = []
        if cf is not None:
            opts.append((C.CONTENT_FORMAT, C.encode_uint(cf)))
        if topic:
            opts.append((C.MQTT_TOPIC, topic.encode()))
        size = 16 << szx
        if len(payload) > size:
            rep = Representation(payload, cf, topic, listener.loop.time())
            req.peer.reps[key] = rep
            opts.append((C.ETAG, rep.etag))
            opts.append((C.BLOCK2, C.block_value(0, True, szx)))
            opts.append((C.SIZE2, C.encode_uint(len(payload))))
            payload = payload[:size]
        listener.respond(req, C.CONTENT, payload, opts)

    def _serve_block(self, req: C.Request, key, block2) -> None:
        """Block2 number > 0: the next block of the representation the client is reading."""
        rep = req.peer.reps.get(key)
        if rep is None:
            raise BadRequest("no representation to continue (start again with block 0)",
                             C.REQUEST_ENTITY_INCOMPLETE)  # fmt: skip
        num, szx = block2.block_number, block2.size_exponent
        size = 16 << szx
        start = num * size
        if start >= len(rep.payload):
            raise BadRequest(f"block {num} is past the end", C.BAD_REQUEST)
        chunk = rep.payload[start : start + size]
        more = start + size < len(rep.payload)
        opts = [(C.ETAG, rep.etag), (C.BLOCK2, C.block_value(num, more, szx)),
                (C.SIZE2, C.encode_uint(len(rep.payload)))]  # fmt: skip
        if rep.cf is not None:
            opts.append((C.CONTENT_FORMAT, C.encode_uint(rep.cf)))
        if rep.topic:
            opts.append((C.MQTT_TOPIC, rep.topic.encode()))
        self.listener.respond(req, C.CONTENT, chunk, opts)

    # -- endpoints going away ----------------------------------------------------------------------

    def peer_gone(self, peer, notify: bool) -> None:
        for obs in list(peer.observations.values()):
            obs.end(notify=notify)
        peer.blocks.clear()
        peer.reps.clear()

    def sweep_peer(self, peer, now: float) -> None:
        """Once a second: expire block-wise state; mark quiet observers for a liveness check."""
        if peer.reps:
            for key, rep in list(peer.reps.items()):
                if now - rep.made > REP_LIFETIME:
                    del peer.reps[key]
        if peer.blocks:
            limit = self.listener.exchange_lifetime
            for key, asm in list(peer.blocks.items()):
                if now - asm.started > limit:
                    del peer.blocks[key]
        if peer.observations and now - peer.last_seen > self.listener.idle_timeout:
            for obs in peer.observations.values():
                obs.liveness = True  # the next notification is confirmable
