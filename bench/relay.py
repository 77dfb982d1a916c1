"""A minimal QoS 0 relay that speaks just enough MQTT to measure the load tool's own ceiling.

It is not a broker: every PUBLISH from any client goes, byte for byte, to every client that
sent a SUBSCRIBE (filters are ignored), with one ``transport.write`` per received chunk and
subscriber. CONNECT gets a CONNACK, SUBSCRIBE a SUBACK granting QoS 0, PINGREQ a PINGRESP.
Run it with ``python -m bench relay --port P`` and point ``pubsub`` at it: whatever rate the
tool reaches there is the most it can push and count on this machine. ``--ws`` makes it a
WebSocket relay (any path, subprotocol ``mqtt``): client frames are unmasked, and what goes to
a subscriber is one unmasked binary frame per forwarded chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from bench import ws
from bench.framing import packet_bounds


class RelayProtocol(asyncio.Protocol):
    """One client connection of the relay."""

    def __init__(self, subscribers: set[RelayProtocol], websocket: bool = False) -> None:
        self.subscribers = subscribers
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.v5 = False
        self.ws = websocket
        self.upgraded = False
        self.raw = bytearray()  # WebSocket: bytes not yet unframed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the subscriber."""
        self.subscribers.discard(self)

    def data_received(self, data: bytes) -> None:
        """Unframe (WebSocket), then walk complete packets and forward runs of PUBLISHes."""
        if not self.ws:
            self.mqtt_received(data)
            return
        raw = self.raw
        raw += data
        tr = self.transport
        assert tr is not None
        if not self.upgraded:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            key = ""
            for line in bytes(raw[:end]).decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-key":
                    key = value.strip()
            tr.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Protocol: mqtt\r\n"
                + f"Sec-WebSocket-Accept: {ws.accept_for(key)}\r\n\r\n".encode()
            )
            self.upgraded = True
            del raw[: end + 4]
        frames, used = ws.iter_client_frames(raw)
        del raw[:used]
        for op, payload in frames:
            if op in (ws.OP_BINARY, ws.OP_CONT):
                self.mqtt_received(payload)
            elif op == ws.OP_PING:
                tr.write(ws.server_frame(payload, ws.OP_PONG))
            elif op == ws.OP_CLOSE:
                tr.write(ws.server_frame(payload[:2], ws.OP_CLOSE))
                tr.close()
                return

    def send(self, data: bytes) -> None:
        """Write to the client (one frame over WebSocket)."""
        tr = self.transport
        if tr is None:
            return
        if self.ws:
            tr.writelines((ws.header(len(data)), data))
        else:
            tr.write(data)

    def mqtt_received(self, data: bytes) -> None:
        """Walk complete packets; forward runs of PUBLISH packets in one write per subscriber."""
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        run_start = -1
        while end - pos >= 2:
            b1 = buf[pos + 1]
            if b1 < 0x80:
                body = pos + 2
                pe = body + b1
            else:
                bounds = packet_bounds(buf, pos, end)
                if bounds is None:
                    break
                body, pe = bounds
            if pe > end:
                break
            t = buf[pos] >> 4
            if t == 3:
                if run_start < 0:
                    run_start = pos
            else:
                if run_start >= 0:
                    self._forward(buf, run_start, pos)
                    run_start = -1
                self._control(t, buf, body, pe)
            pos = pe
        if run_start >= 0:
            self._forward(buf, run_start, pos)
        del buf[:pos]

    def _forward(self, buf: bytearray, start: int, end: int) -> None:
        chunk = bytes(buf[start:end])
        for s in self.subscribers:
            s.send(chunk)

    def _control(self, t: int, buf: bytearray, body: int, end: int) -> None:
        tr = self.transport
        assert tr is not None
        if t == 1:  # CONNECT: protocol level follows the 6-byte protocol name
            self.v5 = buf[body + 6] == 5
            self.send(b"\x20\x03\x00\x00\x00" if self.v5 else b"\x20\x02\x00\x00")
        elif t == 8:  # SUBSCRIBE
            pid = bytes(buf[body : body + 2])
            self.send(b"\x90\x03" + pid + b"\x00")
            self.subscribers.add(self)
        elif t == 12:
            self.send(b"\xd0\x00")
        elif t == 14:
            if self.ws:  # the client's close frame follows; answered in data_received
                return
            tr.close()


async def serve(host: str, port: int, duration: float, websocket: bool = False) -> None:
    """Run the relay for ``duration`` seconds (or until SIGINT/SIGTERM)."""
    loop = asyncio.get_running_loop()
    subscribers: set[RelayProtocol] = set()
    server = await loop.create_server(lambda: RelayProtocol(subscribers, websocket), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    server.close()


def main(host: str, port: int, duration: float, websocket: bool = False) -> int:
    """Entry point for ``python -m bench relay``."""
    try:
        import uvloop

        uvloop.run(serve(host, port, duration, websocket))
    except ImportError:
        asyncio.run(serve(host, port, duration, websocket))
    return 0
