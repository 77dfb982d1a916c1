"""Subscribers: connect, subscribe to one filter, then count and time-stamp every delivery.

The receive path itself (framing walk, latency histogram, batched PUBACK/PUBREC/PUBCOMP
answers written once per read) is ``bench.framing.Scanner`` driven by ``Client.on_readable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import mqttwire as w
from bench.client import WAIT_SUBACK, Client
from bench.pub import expand

if TYPE_CHECKING:
    from bench.worker import Worker


@dataclass
class SubSpec:
    """What the subscribers of a run do."""

    count: int = 1
    topic: str = "bench/#"
    qos: int = 0
    limit: int = 0  # stop the run once this many messages were received in total; 0 = none


class Subscriber(Client):
    """One subscribing connection."""

    role = "sub"

    def __init__(self, worker: Worker, index: int, client_id: str, spec: SubSpec) -> None:
        super().__init__(worker, index, client_id)
        self.filter = expand(spec.topic, index, client_id)
        self.qos = spec.qos

    def on_connack(self) -> None:
        """Subscribe; the client is ready once the SUBACK grants the subscription."""
        self.state = WAIT_SUBACK
        self.write(w.subscribe(1, [(self.filter, self.qos)], self.worker.opts.version))

    def on_suback(self) -> None:
        """Subscription granted."""
        self.set_ready()
