"""The CoAP bridge's message layer (RFC 7252) and its UDP listener, plain or DTLS.

One `CoAPListener` per `server.coap.{plain,dtls,mdtls}` slot. It owns a uvloop datagram
endpoint and, per client endpoint (address and port; on DTLS, per session), a `Peer`: the
message-id de-duplication cache (EXCHANGE_LIFETIME), its confirmable messages awaiting an ACK
(retransmitted on ACK_TIMEOUT doubling, MAX_RETRANSMIT times), its block-wise transfers and
observations. Requests are decoded with aiocoap's codec (`aiocoap.Message.decode`) and handed to
the resources (`fluxmq.transport.coap_bridge.Bridge`); outgoing messages are encoded here.

Output never goes straight to the socket: every datagram is framed into one `OutBuffer` of the
listener and leaves through the broker's `Flusher` at the end of the loop turn, after the
storage barrier. So a 2.04 for a QoS 1/2 publish, or a notification of a stored message, leaves
only once durable storage has committed it (with `storage.fsync: always`, after the fsync), as
MQTT's PUBACK and the HTTP bridge's 200 do. (The framing keeps datagram boundaries: an OutBuffer
coalesces what it is given into one write, which `_DatagramSink` splits again.)

Bad input is dropped and counted: a datagram that is not CoAP, a malformed message (a
confirmable one is answered with RST, as RFC 7252 4.2 says), a failed DTLS handshake. The first
problem from each IP address is logged once; nothing one peer sends affects another.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct

from aiocoap.message import Message as CoAPMessage

from fluxmq._speedups.bufpool import Flusher, OutBuffer

log = logging.getLogger("fluxmq.transport.coap")

# Message types and codes.
CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4
CREATED, DELETED, VALID, CHANGED, CONTENT, CONTINUE = 0x41, 0x42, 0x43, 0x44, 0x45, 0x5F
BAD_REQUEST, UNAUTHORIZED, BAD_OPTION, FORBIDDEN, NOT_FOUND = 0x80, 0x81, 0x82, 0x83, 0x84
METHOD_NOT_ALLOWED, REQUEST_ENTITY_INCOMPLETE, REQUEST_ENTITY_TOO_LARGE = 0x85, 0x88, 0x8D
UNSUPPORTED_CONTENT_FORMAT, TOO_MANY_REQUESTS = 0x8F, 0x9D
INTERNAL_SERVER_ERROR, SERVICE_UNAVAILABLE, PROXYING_NOT_SUPPORTED = 0xA0, 0xA3, 0xA5

# Option numbers.
OBSERVE, URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY = 6, 11, 12, 14, 15
ETAG, BLOCK2, BLOCK1, SIZE2, SIZE1, NO_RESPONSE = 4, 23, 27, 28, 60, 258
MQTT_TOPIC = 65000  # experimental-use, elective: the MQTT topic of a notification
# Critical options this server understands (others in a request: 4.02 Bad Option).
KNOWN_CRITICAL = frozenset({3, 7, 11, 15, 17, 23, 27})
PROXY_OPTIONS = frozenset({35, 39})

# RFC 7252 4.8 transmission parameters that are not configurable.
ACK_RANDOM_FACTOR = 1.5
MAX_LATENCY = 100.0
DEDUP_MAX = 8192  # message ids remembered per peer (a faster sender's oldest are forgotten)
RECENT_MAX = 64  # non-confirmable notifications per peer a RST can still refer to
SWEEP_EVERY = 1.0
LOGGED_MAX = 4096  # (IP address, kind of problem) logged once (then the set starts again)


def code_text(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


def encode_uint(value: int) -> bytes:
    """An option's uint value in as few bytes as it needs (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def block_value(num: int, more: bool, szx: int) -> bytes:
    return encode_uint((num << 4) | (8 if more else 0) | szx)


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes = b"",
    options: list[tuple[int, bytes]] | None = None,
    payload: bytes = b"",
) -> bytes:
    """One CoAP message. `options` is a list of (number, value bytes) in any order."""
    parts = [bytes((0x40 | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF)), token]
    if options:
        last = 0
        for number, value in sorted(options, key=lambda o: o[0]):
            dn, dx = _ext(number - last)
            ln, lx = _ext(len(value))
            parts.append(bytes(((dn << 4) | ln,)))
            parts.append(dx)
            parts.append(lx)
            parts.append(value)
            last = number
    if payload:
        parts.append(b"\xff")
        parts.append(payload)
    return b"".join(parts)


class Request:
    """One request being answered: what the response needs to be matched to it."""

    __slots__ = ("entry", "mid", "msg", "no_response", "peer", "token", "type")

    def __init__(self, peer, mtype: int, mid: int, token: bytes, msg, entry) -> None:
        self.peer = peer
        self.type = mtype
        self.mid = mid
        self.token = token
        self.msg = msg  # the decoded aiocoap Message
        self.entry = entry  # the de-duplication entry [time, hash, response or None]
        self.no_response = 0  # RFC 7967 bits: 2 suppresses 2.xx, 8 4.xx, 16 5.xx


class Pending:
    """A confirmable message of ours awaiting its ACK."""

    __slots__ = ("data", "owner", "timeout", "timer", "tries")

    def __init__(self, data: bytes, owner, timeout: float) -> None:
        self.data = data
        self.owner = owner  # has .acked(mid), .reset(), .failed()
        self.timeout = timeout
        self.tries = 0
        self.timer = None


class Peer:
    """A client endpoint's state on one listener."""

    __slots__ = (
        "addr",
        "auth",
        "blocks",
        "client_id",
        "dedup",
        "dtls",
        "gone",
        "identity",
        "ip",
        "key",
        "last_seen",
        "next_mid",
        "observations",
        "pending",
        "recent",
        "reps",
        "sans",
        "username",
        "waiting",
    )

    def __init__(self, addr, now: float) -> None:
        self.addr = addr
        self.key = addr[:2]
        self.ip = addr[0]
        self.client_id = f"coap:{addr[0]}:{addr[1]}"
        self.last_seen = now
        self.dedup: dict[int, list] = {}  # mid -> [time, hash, response bytes or None]
        self.next_mid = random.getrandbits(16)
        self.observations: dict = {}  # path key -> Observation
        self.pending: dict[int, Pending] = {}
        self.recent: dict[int, object] = {}  # NON notification mid -> Observation (for RST)
        self.blocks: dict = {}  # request key -> Block1 assembly
        self.reps: dict = {}  # path key -> representation served block-wise (Block2)
        self.auth: int | None = None  # the authentication hook's answer, once asked
        self.username: str | None = None
        self.identity: str | None = None
        self.sans: tuple[str, ...] = ()
        self.dtls = None  # the DTLS session, on a DTLS listener
        self.gone = False
        self.waiting: list | None = None  # requests held while authentication is asked

    def new_mid(self) -> int:
        mid = self.next_mid
        self.next_mid = (mid + 1) & 0xFFFF
        return mid


class _DatagramSink:
    """The transport an OutBuffer writes to: it splits the framed chunk into datagrams.

    Frame: u16 datagram length, u8 host length, host (ASCII), u16 port, the datagram."""

    __slots__ = ("listener",)

    def __init__(self, listener: CoAPListener) -> None:
        self.listener = listener

    def write(self, chunk: bytes) -> None:
        transport = self.listener.transport
        if transport is None or transport.is_closing():
            return
        view = memoryview(chunk)
        pos, end = 0, len(chunk)
        unpack = struct.unpack_from
        sent = 0
        while pos < end:
            n, hl = unpack("!HB", chunk, pos)
            pos += 3
            host = chunk[pos : pos + hl].decode("ascii")
            pos += hl
            (port,) = unpack("!H", chunk, pos)
            pos += 2
            try:
                transport.sendto(view[pos : pos + n], (host, port))
                sent += 1
            except OSError:
                pass
            pos += n
        self.listener.sent += sent

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass  # what was not sent depended on a failed storage commit: the client retries


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, listener: CoAPListener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self.listener.datagram_received(data, addr)
        except Exception:
            log.exception(
                "CoAP datagram from %s failed", addr, extra={"listener": self.listener.name}
            )

    def error_received(self, exc) -> None:
        log.debug("CoAP socket error: %s", exc, extra={"listener": self.listener.name})


class CoAPListener:
    """One CoAP listener: plain UDP (`dtls` None) or DTLS (`dtls` a `fluxmq.transport.dtls.DTLS`)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        bridge,
        section,
        flusher: Flusher | None = None,
        dtls=None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.bridge = bridge  # the resources (coap_bridge.Bridge)
        bridge.listener = self
        self.flusher = flusher
        self.dtls = dtls
        if dtls is not None:
            dtls.listener = self
        self.tls = dtls  # SIGHUP: Node.reload() calls tls.reload()
        self.block_size = section.block_size
        self.ack_timeout = section.ack_timeout
        self.max_retransmit = section.max_retransmit
        self.max_peers = section.max_peers
        self.idle_timeout = section.idle_timeout
        span = section.ack_timeout * ((1 << section.max_retransmit) - 1) * ACK_RANDOM_FACTOR
        self.exchange_lifetime = span + 2 * MAX_LATENCY + section.ack_timeout
        self.peers: dict = {}
        self.transport = None
        self.ob: OutBuffer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sweeper = None
        self.closing = False
        # Duck typing with the MQTT listeners (the timeout scan and the shutdown wait).
        self.connections: frozenset = frozenset()
        self.settings = None
        self.logged: set[tuple[str, str]] = set()
        # Counters (logged when the listener stops).
        self.received = 0
        self.sent = 0
        self.requests = 0
        self.duplicates = 0
        self.garbage = 0
        self.refused = 0  # endpoints over max_peers
        self.retransmissions = 0
        self.timeouts = 0  # confirmable notifications never acknowledged

    # -- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host or "0.0.0.0", self.port)
        )
        if self.port == 0:
            self.port = self.transport.get_extra_info("sockname")[1]
        flusher = self.flusher or Flusher(loop)
        self.ob = OutBuffer(_DatagramSink(self), flusher)
        self.sweeper = loop.call_later(SWEEP_EVERY, self._sweep_tick)
        log.info(
            "listening", extra={"listener": self.name, "addr": f"{self.host or '*'}:{self.port}"}
        )

    @property
    def bound(self) -> bool:
        return self.transport is not None and not self.closing

    def close(self) -> None:
        """Stop: observers are told (5.03, RFC 7641 3.2), DTLS sessions closed."""
        if self.closing:
            return
        self.closing = True
        if self.sweeper is not None:
            self.sweeper.cancel()
        for peer in list(self.peers.values()):
            self.bridge.peer_gone(peer, notify=True)
        if self.ob is not None:
            self.ob.flush()  # the observers' last word goes before any DTLS close_notify
        if self.dtls is not None:
            self.dtls.close_all()
        self.peers.clear()
        log.info(
            "CoAP listener stopped",
            extra={
                "listener": self.name,
                "received": self.received,
                "sent": self.sent,
                "requests": self.requests,
                "duplicates": self.duplicates,
                "garbage": self.garbage,
                "refused": self.refused,
                "retransmissions": self.retransmissions,
                "timeouts": self.timeouts,
                "handshake_failures": self.dtls.failures if self.dtls is not None else 0,
                "published": self.bridge.published,
            },
        )

    async def wait_closed(self) -> None:
        if self.transport is None:
            return
        if self.ob is not None and self.ob.pending:
            await asyncio.sleep(0)  # the flusher writes what close() said
        self.transport.close()
        await asyncio.sleep(0)

    # -- input -------------------------------------------------------------------------------------

    def problem(self, ip: str, what: str, **extra) -> None:
        """Log the first problem of each kind from each IP address (bounded: the set starts
        again when full); the others are only counted."""
        key = (ip, what.split(" (", 1)[0])
        if key in self.logged:
            return
        if len(self.logged) >= LOGGED_MAX:
            self.logged.clear()
        self.logged.add(key)
        log.warning(
            "CoAP %s from %s (more of these from this address are counted, not logged)",
            what,
            ip,
            extra={"listener": self.name, **extra},
        )

    def datagram_received(self, data: bytes, addr) -> None:
        if self.closing:
            return
        self.received += 1
        if self.dtls is not None:
            self.dtls.datagram_received(data, addr)
            return
        key = addr[:2]
        peer = self.peers.get(key)
        if peer is None:
            if len(data) < 4 or data[0] >> 6 != 1:
                self.garbage += 1
                self.problem(addr[0], "datagram that is not CoAP", size=len(data))
                return
            peer = self.new_peer(addr)
            if peer is None:
                self._refuse_stateless(data, addr)
                return
        self.message(peer, data)

    def new_peer(self, addr) -> Peer | None:
        """State for a new endpoint, or None when max_peers are kept (after forgetting idle
        ones)."""
        now = self.loop.time()
        if len(self.peers) >= self.max_peers:
            self._sweep(now)
            if len(self.peers) >= self.max_peers:
                self.refused += 1
                self.problem(addr[0], "endpoint refused: server.coap max_peers reached")
                return None
        peer = Peer(addr, now)
        self.peers[peer.key] = peer
        return peer

    def _refuse_stateless(self, data: bytes, addr) -> None:
        """5.03 to a request from an endpoint the listener has no room for (no state kept)."""
        if len(data) < 4 or data[1] == 0 or data[1] >> 5 != 0:
            return
        mtype, tkl = (data[0] >> 4) & 3, data[0] & 15
        if mtype not in (CON, NON) or tkl > 8 or len(data) < 4 + tkl:
            return
        mid = (data[2] << 8) | data[3]
        token = data[4 : 4 + tkl]
        out = encode(ACK if mtype == CON else NON, SERVICE_UNAVAILABLE, mid if mtype == CON
                     else random.getrandbits(16), token, [(MAX_AGE, encode_uint(30))],
                     b"too many clients")  # fmt: skip
        self.send_to(addr, out)

    def message(self, peer: Peer, data: bytes) -> None:
        """One CoAP message from `peer` (decrypted, on DTLS)."""
        now = self.loop.time()
        peer.last_seen = now
        n = len(data)
        if n < 4 or data[0] >> 6 != 1:
            self.garbage += 1
            self.problem(peer.ip, "datagram that is not CoAP", size=n)
            return
        b0 = data[0]
        mtype = (b0 >> 4) & 3
        tkl = b0 & 15
        code = data[1]
        mid = (data[2] << 8) | data[3]
        if code == 0:  # empty message
            if n != 4 or tkl:
                self._format_error(peer, mtype, mid, "empty message with a token or payload")
            elif mtype == CON:
                self.send(peer, encode(RST, 0, mid))  # CoAP ping
            elif mtype == ACK:
                self.acked(peer, mid)
            elif mtype == RST:
                self.reset(peer, mid)
            return
        if mtype in (ACK, RST):
            if mtype == RST:
                self.reset(peer, mid)
            else:
                self.acked(peer, mid)
            return
        if tkl > 8:
            self._format_error(peer, mtype, mid, "token longer than 8 bytes")
            return
        if code >> 5 != 0:  # a response: this server makes no requests
            if mtype == CON:
                self.send(peer, encode(RST, 0, mid))
            return
        h = hash(data)
        dedup = peer.dedup
        entry = dedup.get(mid)
        if entry is not None and entry[1] == h and now - entry[0] < self.exchange_lifetime:
            self.duplicates += 1
            if mtype == CON and entry[2] is not None:
                self.send(peer, entry[2])  # the same answer again
            return
        try:
            msg = CoAPMessage.decode(data)
        except Exception as exc:
            self._format_error(peer, mtype, mid, f"malformed message ({type(exc).__name__})")
            return
        entry = [now, h, None]
        if mid in dedup:
            del dedup[mid]
        dedup[mid] = entry
        if len(dedup) > DEDUP_MAX:
            self._prune_dedup(peer, now)
        self.requests += 1
        req = Request(peer, mtype, mid, data[4 : 4 + tkl], msg, entry)
        self.bridge.request(req, code)

    def _prune_dedup(self, peer: Peer, now: float) -> None:
        dedup = peer.dedup
        limit = now - self.exchange_lifetime
        excess = len(dedup) - DEDUP_MAX
        for mid in list(dedup):
            if excess <= 0 and dedup[mid][0] >= limit:
                break
            del dedup[mid]
            excess -= 1

    def _format_error(self, peer: Peer, mtype: int, mid: int, what: str) -> None:
        self.garbage += 1
        self.problem(peer.ip, what)
        if mtype == CON:
            self.send(peer, encode(RST, 0, mid))  # RFC 7252 4.2: reject it

    # -- output ------------------------------------------------------------------------------------

    def send_to(self, addr, data: bytes) -> None:
        """Queue one datagram for the end of this loop turn (after the storage barrier)."""
        ob = self.ob
        if ob is None:
            return
        host = addr[0].encode("ascii")
        ob.write(struct.pack("!HB", len(data), len(host)) + host
                 + struct.pack("!H", addr[1]) + data)  # fmt: skip

    def send(self, peer: Peer, data: bytes) -> None:
        if peer.dtls is not None:
            data = peer.dtls.encrypt(data)
            if not data:
                return
        self.send_to(peer.addr, data)

    def respond(
        self,
        req: Request,
        code: int,
        payload: bytes = b"",
        options: list[tuple[int, bytes]] | None = None,
    ) -> None:
        """The response to `req`: piggybacked on the ACK of a confirmable request, else a
        non-confirmable message; remembered for a retransmitted request."""
        peer = req.peer
        suppressed = req.no_response and (req.no_response & (1 << ((code >> 5) - 1)))
        if req.type == CON:
            if suppressed:
                data = encode(ACK, 0, req.mid)
            else:
                data = encode(ACK, code, req.mid, req.token, options, payload)
            req.entry[2] = data
        else:
            if suppressed:
                return
            data = encode(NON, code, peer.new_mid(), req.token, options, payload)
        self.send(peer, data)

    def send_confirmable(self, peer: Peer, data: bytes, mid: int, owner) -> None:
        """Send a CON message and retransmit it until ACKed; then `owner.acked(mid)`, on RST
        `owner.reset()`, after MAX_RETRANSMIT retransmissions `owner.failed()`."""
        p = Pending(data, owner, self.ack_timeout * random.uniform(1.0, ACK_RANDOM_FACTOR))
        peer.pending[mid] = p
        p.timer = self.loop.call_later(p.timeout, self._retransmit, peer, mid)
        self.send(peer, data)

    def send_non(self, peer: Peer, data: bytes, mid: int, owner) -> None:
        recent = peer.recent
        recent[mid] = owner
        if len(recent) > RECENT_MAX:
            del recent[next(iter(recent))]
        self.send(peer, data)

    def _retransmit(self, peer: Peer, mid: int) -> None:
        p = peer.pending.get(mid)
        if p is None or peer.gone:
            return
        if p.tries >= self.max_retransmit:
            del peer.pending[mid]
            self.timeouts += 1
            p.owner.failed()
            return
        p.tries += 1
        p.timeout *= 2
        self.retransmissions += 1
        p.timer = self.loop.call_later(p.timeout, self._retransmit, peer, mid)
        self.send(peer, p.data)

    def acked(self, peer: Peer, mid: int) -> None:
        p = peer.pending.pop(mid, None)
        if p is not None:
            p.timer.cancel()
            p.owner.acked(mid)

    def reset(self, peer: Peer, mid: int) -> None:
        p = peer.pending.pop(mid, None)
        if p is not None:
            p.timer.cancel()
            p.owner.reset()
            return
        owner = peer.recent.pop(mid, None)
        if owner is not None:
            owner.reset()

    def cancel_pending(self, peer: Peer, owner) -> None:
        for mid, p in list(peer.pending.items()):
            if p.owner is owner:
                p.timer.cancel()
                del peer.pending[mid]
        for mid, o in list(peer.recent.items()):
            if o is owner:
                del peer.recent[mid]

    # -- peers -------------------------------------------------------------------------------------

    def drop_peer(self, peer: Peer) -> None:
        """Forget an endpoint (idle, or its DTLS session ended): its observations end."""
        if self.peers.get(peer.key) is peer:
            del self.peers[peer.key]
        self.bridge.peer_gone(peer, notify=False)
        peer.gone = True
        for p in peer.pending.values():
            p.timer.cancel()
        peer.pending.clear()

    def _sweep_tick(self) -> None:
        self.sweeper = self.loop.call_later(SWEEP_EVERY, self._sweep_tick)
        try:
            self._sweep(self.loop.time())
        except Exception:
            log.exception("CoAP sweep failed", extra={"listener": self.name})

    def _sweep(self, now: float) -> None:
        idle = now - self.idle_timeout
        for peer in list(self.peers.values()):
            if peer.observations:
                self.bridge.sweep_peer(peer, now)
                continue
            if peer.last_seen < idle:
                self.drop_peer(peer)
                if peer.dtls is not None:
                    peer.dtls.close()
                continue
            self.bridge.sweep_peer(peer, now)
        if self.dtls is not None:
            self.dtls.sweep(now)
