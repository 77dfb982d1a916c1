"""The `$SYS/broker/...` topics, with Mosquitto's names, published every `broker.sys_interval`.

They are retained, so a new subscriber sees the current values at once, and a topic is
published again only when its value changed. A subscription to `#` does not receive them
([MQTT-4.7.2-1]: wildcards at the first level do not match `$` topics).
"""

from __future__ import annotations

import time

from fluxmq import __version__
from fluxmq._speedups.message import Message
from fluxmq.periodic import Periodic


class SysTopics(Periodic):
    def __init__(self, broker, interval: float) -> None:
        super().__init__()
        self.broker = broker
        self.interval = interval
        self._last: dict[str, str] = {}
        self._max_connected = 0

    def start(self) -> None:
        if self.interval > 0:
            self.publish()
            super().start()

    def tick(self, late: float) -> None:
        self.publish()

    def values(self) -> dict[str, str]:
        b = self.broker
        c = b.counters
        connected, total = b.client_count()
        self._max_connected = max(self._max_connected, connected)
        return {
            "$SYS/broker/version": f"fluxmq {__version__}",
            "$SYS/broker/uptime": f"{int(time.time() - b.stats.started_at)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/active": str(connected),
            "$SYS/broker/clients/disconnected": str(total - connected),
            "$SYS/broker/clients/total": str(total),
            "$SYS/broker/clients/maximum": str(self._max_connected),
            "$SYS/broker/messages/received": str(c.messages_received),
            "$SYS/broker/messages/sent": str(c.messages_sent),
            "$SYS/broker/publish/messages/received": str(c.publish_received),
            "$SYS/broker/publish/messages/sent": str(c.publish_sent),
            "$SYS/broker/publish/messages/dropped": str(c.publish_dropped),
            "$SYS/broker/bytes/received": str(c.bytes_received),
            "$SYS/broker/bytes/sent": str(c.bytes_sent),
            "$SYS/broker/subscriptions/count": str(b.dispatcher.subscription_count),
            "$SYS/broker/retained messages/count": str(b.retained.count),
        }

    def publish(self) -> None:
        for topic, value in self.values().items():
            if self._last.get(topic) == value:
                continue
            self._last[topic] = value
            self.broker.publish(Message(topic, value.encode(), 0, True))
