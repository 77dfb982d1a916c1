"""FluxMQ: a multi-protocol message broker (MQTT 3.1.1/5.0) with a Cython hot path on uvloop."""

__version__ = "0.1.0"
