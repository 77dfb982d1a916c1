"""The MQTT protocol settings of a listener, taken from the configuration once at start."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class MQTTSettings:
    max_qos: int = 2
    max_packet_size: int = 1048576
    max_inflight: int = 100
    max_pending_bytes: int = 1048576
    max_topic_alias: int = 10
    receive_maximum: int = 1024
    max_keepalive: int = 65535
    retry_interval: float = 20.0
    default_expiry_interval: int = 7200
    max_expiry_interval: int = 0xFFFFFFFF
    read_timeout: float = 60.0
    write_timeout: float = 60.0

    @classmethod
    def from_config(cls, cfg, listener) -> MQTTSettings:
        """From a `Config` and one listener section (`server.tcp.plain`, ...)."""
        b, s = cfg.broker, cfg.session
        return cls(
            max_qos=b.max_qos,
            max_packet_size=b.max_message_size,
            max_inflight=b.max_inflight,
            max_pending_bytes=b.max_pending_bytes,
            max_topic_alias=b.max_topic_alias,
            receive_maximum=b.receive_maximum,
            max_keepalive=b.max_keepalive,
            retry_interval=b.retry_interval,
            default_expiry_interval=s.default_expiry_interval,
            max_expiry_interval=s.max_expiry_interval,
            read_timeout=listener.read_timeout,
            write_timeout=listener.write_timeout,
        )
