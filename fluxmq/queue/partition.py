"""Which partition a message goes to, and which consumer of a group owns each partition."""

from __future__ import annotations

from fluxmq._speedups.segment import crc32c

KEY_PROPERTY = "partition-key"


def key_of(msg) -> str | None:
    """The `partition-key` user property of a message, if it has one."""
    props = msg.user_properties
    if props is None:
        return None
    for k, v in props:
        if k == KEY_PROPERTY:
            return v
    return None


def for_key(key: str, partitions: int) -> int:
    """The partition of a key: CRC-32C of its UTF-8 bytes modulo the partitions (stable across
    restarts and machines)."""
    return crc32c(key) % partitions


def assign(partitions: int, consumers: list, owners: list) -> list:
    """Owners of partitions 0..n-1 among `consumers` (in joining order), keeping each partition
    with its current owner where the balance allows: every consumer owns n // k or n // k + 1
    partitions (the first ones in joining order get the extra ones), so a join or a leave moves
    as few partitions as possible."""
    k = len(consumers)
    if k == 0:
        return [None] * partitions
    base, extra = divmod(partitions, k)
    quota = {id(c): base + (1 if i < extra else 0) for i, c in enumerate(consumers)}
    held: dict[int, int] = {id(c): 0 for c in consumers}
    out = [None] * partitions
    for p in range(partitions):  # keep what is still owned, within quota
        o = owners[p] if p < len(owners) else None
        if o is not None and id(o) in quota and held[id(o)] < quota[id(o)]:
            out[p] = o
            held[id(o)] += 1
    i = 0
    for p in range(partitions):  # the rest to whoever is under quota
        if out[p] is not None:
            continue
        while held[id(consumers[i])] >= quota[id(consumers[i])]:
            i += 1
        out[p] = consumers[i]
        held[id(consumers[i])] += 1
    return out
