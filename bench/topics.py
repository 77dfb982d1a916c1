"""MQTT topic-filter matching, to work out how many deliveries a run should see."""

from __future__ import annotations


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (``+`` and ``#`` wildcards, ``$`` rule)."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t):
            return False
        if part != "+" and part != t[i]:
            return False
    return len(f) == len(t)


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``$share/group/filter`` -> ``(group, filter)``; other filters -> ``(None, filter)``."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[1], parts[2]
    return None, topic_filter


def expected_deliveries(sent_by_topic: dict[str, int], filters: list[str]) -> int:
    """Total deliveries owed for ``sent_by_topic`` to subscribers holding ``filters``.

    Each plain matching subscription gets one copy of a message; each shared group with a
    matching member gets one copy in all.
    """
    exact: dict[str, int] = {}
    wild: dict[str, int] = {}
    for f in filters:
        group, flt = split_shared(f)
        if group is None and "+" not in flt and "#" not in flt:
            exact[flt] = exact.get(flt, 0) + 1
        else:
            wild[f] = wild.get(f, 0) + 1
    total = 0
    for topic, sent in sent_by_topic.items():
        if not sent:
            continue
        n = exact.get(topic, 0)
        groups: set[tuple[str, str]] = set()
        for raw, k in wild.items():
            group, flt = split_shared(raw)
            if matches(flt, topic):
                if group is None:
                    n += k
                else:
                    groups.add((group, flt))
        total += sent * (n + len(groups))
    return total
