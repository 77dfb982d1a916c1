"""A raw MQTT-over-WebSocket client for byte-level tests: the `websockets` package's synchronous
client carrying packets built by `tests.protocol.rawmqtt`."""

from __future__ import annotations

import contextlib
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.protocol.rawmqtt import V5, Packet, parse_packet, split_packet

HOST = "127.0.0.1"


class WSMQTT:
    def __init__(self, port: int, *, path: str = "/mqtt", subprotocols=("mqtt",),
                 compression: str | None = None, origin: str | None = None, version: int = V5,
                 ssl=None, scheme: str = "ws") -> None:  # fmt: skip
        self.version = version
        self.ws = ws_connect(
            f"{scheme}://{HOST}:{port}{path}",
            subprotocols=list(subprotocols) if subprotocols else None,
            compression=compression,
            origin=origin,
            open_timeout=5,
            ping_interval=None,
            close_timeout=3,
            ssl=ssl,
            legacy=True,  # no context manager: the tests close it
        )
        self.buf = b""

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    @property
    def response_headers(self):
        return self.ws.response.headers

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def send_fragments(self, parts: list[bytes]) -> None:
        """One binary message sent as several frames (a fragmented message)."""
        self.ws.send(parts)

    def recv_packet(self, timeout: float = 3.0) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            got = split_packet(self.buf)
            if got is not None:
                pkt, self.buf = got
                return parse_packet(pkt, self.version)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no MQTT packet")
            data = self.ws.recv(timeout=left)
            assert isinstance(data, bytes), "the broker must send binary frames"
            self.buf += data

    def expect(self, ptype: int, timeout: float = 3.0) -> Packet:
        pkt = self.recv_packet(timeout)
        assert pkt.type == ptype, f"expected packet type {ptype}, got {pkt!r}"
        return pkt

    def wait_close(self, timeout: float = 5.0) -> tuple[int | None, list[Packet]]:
        """Read until the server closes; returns (its close code, packets received before)."""
        packets = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                data = self.ws.recv(timeout=deadline - time.monotonic())
                self.buf += data
                while (got := split_packet(self.buf)) is not None:
                    pkt, self.buf = got
                    packets.append(parse_packet(pkt, self.version))
        except ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd is not None else None), packets
        raise AssertionError("the server did not close the WebSocket")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
