"""Queue topics: `$queue/<queue>[/<routing key>]`, acknowledgement topics, filter matching."""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "$queue/"
ACK_VERBS = ("$ack", "$nack", "$reject")


def split(topic: str) -> tuple[str, str, int]:
    """`$queue/<queue>/<routing key>` -> (queue, routing key, where the routing key starts)."""
    slash = topic.find("/", 7)
    if slash < 0:
        return topic[7:], "", len(topic)
    return topic[7:slash], topic[slash + 1 :], slash + 1


def matcher(pattern: str | None) -> Callable[[str], bool] | None:
    """A test of routing keys against an MQTT filter (`+`, `#`); None matches everything."""
    if not pattern or pattern == "#":
        return None
    levels = pattern.split("/")
    if "+" not in levels and levels[-1] != "#":
        return pattern.__eq__
    if levels[-1] == "#" and "+" not in levels:
        head = pattern[:-1]  # "a/b/#": "a/b" itself or anything under "a/b/"
        exact = pattern[:-2]
        return lambda key: key == exact or key.startswith(head)

    def match(key: str) -> bool:
        parts = key.split("/")
        for i, lv in enumerate(levels):
            if lv == "#":
                return True
            if i >= len(parts):
                return False
            if lv != "+" and lv != parts[i]:
                return False
        return len(parts) == len(levels)

    return match
