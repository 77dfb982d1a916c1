"""Mosquitto's ACL-file format, and the rules one client gets from it.

    # comment
    topic read $SYS/#              rules before any `user` line apply to every client
    user alice
    topic readwrite alice/#        rules after `user NAME` apply to that user only
    topic deny alice/secret
    pattern write devices/%c/#     for every client: %c = its client id, %u = its username

`topic` and `pattern` take an access word (`read`, `write`, `readwrite`, `deny`; none means
`readwrite`) and an MQTT topic filter (the rest of the line, wildcards allowed).

How a decision is made (as Mosquitto does): the client's `topic` rules (the general ones and
those of its `user` section) are looked at first: a matching `deny` rule denies; else a
matching rule that grants the access allows. If they decide nothing, the `pattern` rules are
looked at the same way. Nothing matched: denied. A pattern with `%u` never applies to a client
without a username; a client whose username or client id contains `+` or `#` gets no pattern
rule at all (it could widen the pattern).

Publishing needs `write` on the topic; receiving a message needs `read` on its topic (checked at
delivery, so retained messages and shared subscriptions obey it too). A SUBSCRIBE filter is
granted when no `deny` rule includes the whole filter and a rule granting `read` includes the
whole filter (`read sensors/#` grants `sensors/+/temp`, not `#`); within a granted filter,
each message is still checked at delivery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

READ = 1
WRITE = 2
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}


@dataclass(frozen=True, slots=True)
class Rule:
    access: int  # READ | WRITE bits; 0 = deny
    topic: str
    levels: tuple[str, ...]
    wild: bool  # the filter has + or #

    @classmethod
    def make(cls, access: int, topic: str) -> Rule:
        return cls(access, topic, tuple(topic.split("/")), "+" in topic or "#" in topic)


def matches(levels: tuple[str, ...], topic: str) -> bool:
    """Whether filter `levels` matches topic name `topic` (MQTT rules, `$` topics excepted
    from a leading wildcard)."""
    t = topic.split("/")
    if t[0].startswith("$") and levels[0] in ("+", "#"):
        return False
    n = len(levels)
    for i, f in enumerate(levels):
        if f == "#":
            return True
        if i >= len(t):
            return False
        if f != "+" and f != t[i]:
            return False
    return n == len(t)


def covers(rule: tuple[str, ...], sub: tuple[str, ...]) -> bool:
    """Whether every topic that filter `sub` matches is matched by filter `rule`."""
    for i, r in enumerate(rule):
        if r == "#":
            return not (i == 0 and sub and sub[0].startswith("$"))
        if i >= len(sub):
            return False
        s = sub[i]
        if s == "#":
            return False
        if r == "+":
            if i == 0 and s.startswith("$"):
                return False
        elif r != s:
            return False
    return len(rule) == len(sub)


def _parse_rule(words: str, where: str) -> Rule:
    head, _, rest = words.strip().partition(" ")
    if head in _ACCESS:
        access, topic = _ACCESS[head], rest.strip()
    else:
        access, topic = READ | WRITE, words.strip()
    if not topic:
        raise ValueError(f"{where}: missing topic")
    return Rule.make(access, topic)


class ACL:
    """A parsed ACL file."""

    def __init__(
        self,
        general: list[Rule],
        users: dict[str, list[Rule]],
        patterns: list[Rule],
        path: str = "",
    ) -> None:
        self.general = general
        self.users = users
        self.patterns = patterns
        self.path = path

    @classmethod
    def parse(cls, text: str, path: str = "<acl>") -> ACL:
        general: list[Rule] = []
        users: dict[str, list[Rule]] = {}
        patterns: list[Rule] = []
        current = general
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            where = f"{path} line {n}"
            if keyword == "user":
                name = rest.strip()
                if not name:
                    raise ValueError(f"{where}: missing username")
                current = users.setdefault(name, [])
            elif keyword == "topic":
                current.append(_parse_rule(rest, where))
            elif keyword == "pattern":
                patterns.append(_parse_rule(rest, where))
            else:
                raise ValueError(f"{where}: expected topic, pattern or user, got {keyword!r}")
        return cls(general, users, patterns, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ACL:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"ACL file not found: {os.fspath(path)}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read ACL file {os.fspath(path)}: {e}") from None
        return cls.parse(text, os.fspath(path))

    def rules_for(self, username: str | None, client_id: str) -> ClientRules:
        topics = list(self.general)
        if username is not None:
            topics += self.users.get(username, [])
        return ClientRules(topics, substitute(self.patterns, username, client_id))


def substitute(patterns: list[Rule], username: str | None, client_id: str) -> list[Rule]:
    """The pattern rules with %u and %c replaced for one client (see the module docstring)."""
    if (username and ("+" in username or "#" in username)) or "+" in client_id or "#" in client_id:
        return []
    out = []
    for p in patterns:
        topic = p.topic
        if "%u" in topic:
            if username is None:
                continue
            topic = topic.replace("%u", username)
        topic = topic.replace("%c", client_id)
        out.append(Rule.make(p.access, topic))
    return out


def rules_from_list(items: list, username: str | None, client_id: str) -> ClientRules:
    """Rules from the HTTP callout's `acl` list (`{"access": "read", "topic": "a/#"}` items);
    `%u` and `%c` are replaced as in pattern lines. ValueError if an item is malformed."""
    rules: list[Rule] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("acl items must be objects")
        access = item.get("access", "readwrite")
        topic = item.get("topic")
        if access not in _ACCESS or not isinstance(topic, str) or not topic:
            raise ValueError("acl items need a topic and an access of read/write/readwrite/deny")
        rules.append(Rule.make(_ACCESS[access], topic))
    return ClientRules([], substitute(rules, username, client_id))


def _decide(rules: list[Rule], topic: str, access: int) -> bool | None:
    hit = False
    for r in rules:
        if r.access == 0 and (matches(r.levels, topic) if r.wild else r.topic == topic):
            return False
    for r in rules:
        if r.access & access and (matches(r.levels, topic) if r.wild else r.topic == topic):
            hit = True
            break
    return True if hit else None


def _decide_filter(rules: list[Rule], levels: tuple[str, ...]) -> bool | None:
    for r in rules:
        if r.access == 0 and covers(r.levels, levels):
            return False
    for r in rules:
        if r.access & READ and covers(r.levels, levels):
            return True
    return None


class ClientRules:
    """The rules that apply to one client: its topic rules, then its pattern rules."""

    __slots__ = ("patterns", "topics")

    def __init__(self, topics: list[Rule], patterns: list[Rule]) -> None:
        self.topics = topics
        self.patterns = patterns

    def allows(self, topic: str, access: int) -> bool:
        decided = _decide(self.topics, topic, access)
        if decided is None:
            decided = _decide(self.patterns, topic, access)
        return bool(decided)

    def allows_subscribe(self, topic_filter: str) -> bool:
        levels = tuple(topic_filter.split("/"))
        decided = _decide_filter(self.topics, levels)
        if decided is None:
            decided = _decide_filter(self.patterns, levels)
        return bool(decided)
