"""Retained messages: the last message published with the retain flag, per topic.

Kept in a tree of topic levels so that a subscription's filter walks only the branches it can
match (`+` one level, `#` the rest, `$` topics never under a leading wildcard). Bounded by
`broker.max_retained_messages`: a new topic beyond the bound is not stored (replacing or
clearing an existing topic always works). `$SYS` topics do not count toward the bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fluxmq._speedups.message import Message


class _Level:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Level] = {}
        self.message: Message | None = None


class RetainedStore:
    """Topic -> retained Message."""

    def __init__(self, max_messages: int = 0, store=None) -> None:
        self.max_messages = max_messages  # 0 = unlimited
        self._root = _Level()
        self._count = 0
        self._sys_count = 0
        self.refused = 0
        self.store = store  # persistence hook (storage backends), or None

    def __len__(self) -> int:
        return self._count + self._sys_count

    @property
    def count(self) -> int:
        """Retained messages counted against the bound ($SYS excluded)."""
        return self._count

    def set(self, msg: Message) -> bool:
        """Store, replace or (empty payload) clear the retained message of msg.topic.

        Returns False when a new topic is refused because the store is full."""
        is_sys = msg.topic.startswith("$SYS/")
        if msg.payload_size == 0:
            self._clear(msg.topic, is_sys)
            return True
        node = self._find(msg.topic, create=False)
        if node is None or node.message is None:
            if not is_sys and self.max_messages and self._count >= self.max_messages:
                self.refused += 1
                return False
            node = self._find(msg.topic, create=True)
            if is_sys:
                self._sys_count += 1
            else:
                self._count += 1
        kept = msg.copy()
        kept.retain = True
        node.message = kept
        if self.store is not None and not is_sys:
            self.store.retained_set(kept)
        return True

    def get(self, topic: str) -> Message | None:
        node = self._find(topic, create=False)
        return None if node is None else node.message

    def _clear(self, topic: str, is_sys: bool) -> None:
        path: list[tuple[_Level, str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        if node.message is None:
            return
        node.message = None
        if is_sys:
            self._sys_count -= 1
        else:
            self._count -= 1
            if self.store is not None:
                self.store.retained_clear(topic)
        for parent, level in reversed(path):  # prune empty branches
            child = parent.children[level]
            if child.children or child.message is not None:
                break
            del parent.children[level]

    def _find(self, topic: str, create: bool) -> _Level | None:
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                if not create:
                    return None
                child = node.children[level] = _Level()
            node = child
        return node

    def match(self, topic_filter: str, now: float | None = None) -> list[Message]:
        """Retained messages whose topic matches the filter (expired ones are removed)."""
        levels = topic_filter.split("/")
        out: list[Message] = []
        self._walk(self._root, levels, 0, out, first=True)
        if now is None:
            now = time.time()
        live = [m for m in out if not m.expired(now)]
        if len(live) != len(out):
            for m in out:
                if m.expired(now):
                    self._clear(m.topic, m.topic.startswith("$SYS/"))
        return live

    def _walk(
        self, node: _Level, levels: list[str], i: int, out: list[Message], first: bool
    ) -> None:
        if i == len(levels):
            if node.message is not None:
                out.append(node.message)
            return
        level = levels[i]
        if level == "#":
            # '#' matches the parent level too, and every level below; not '$' topics at the top.
            if node.message is not None and not first:
                out.append(node.message)
            self._collect(node, out, skip_dollar=first)
            return
        if level == "+":
            for name, child in node.children.items():
                if first and name.startswith("$"):
                    continue
                self._walk(child, levels, i + 1, out, first=False)
            return
        child = node.children.get(level)
        if child is not None:
            self._walk(child, levels, i + 1, out, first=False)

    def _collect(self, node: _Level, out: list[Message], skip_dollar: bool) -> None:
        for name, child in node.children.items():
            if skip_dollar and name.startswith("$"):
                continue
            if child.message is not None:
                out.append(child.message)
            self._collect(child, out, skip_dollar=False)

    def __iter__(self) -> Iterator[Message]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.message is not None:
                yield node.message
            stack.extend(node.children.values())

    def load(self, msg: Message) -> None:
        """Storage: put back a retained message read from disk (no write-back)."""
        store, self.store = self.store, None
        try:
            self.set(msg)
        finally:
            self.store = store
