"""Queue settings: the `queues` items and `queue.defaults` of the configuration, and the same
settings given as JSON (queues created by the admin API, definitions kept in the queue state)."""

from __future__ import annotations

from typing import Any

from fluxmq.config import ConfigError, QueueDefinition, QueueSettings, _build, queue_name_problem


def definition(name: str, data: dict[str, Any] | None, defaults: QueueSettings,
               where: str = "queue") -> QueueDefinition:  # fmt: skip
    """A validated queue definition: `data` (any keys of a `queues` item; missing ones take
    `defaults`). Raises ConfigError naming the key."""
    problem = queue_name_problem(name)
    if problem:
        raise ConfigError(f"{where}.name: {problem}", f"{where}.name")
    merged = _merge(defaults.to_dict(), dict(data or {}))
    merged["name"] = name
    return _build(QueueDefinition, merged, where, {})


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def to_json(d: QueueDefinition) -> dict[str, Any]:
    """The definition as plain data (durations as strings), as kept and as the API shows it."""
    return d.to_dict()


__all__ = ["ConfigError", "definition", "to_json"]
