"""Idle connections: connect at a rate, hold them (PINGREQ when keep-alive asks for it), close.

An ``IdleClient`` is a plain ``Client``: ready once its CONNACK arrives. This module also holds
the helpers the connection benchmark needs: raising the open-file limit and splitting a
connection count over worker processes.
"""

from __future__ import annotations

import math
import resource

from bench.client import Client

# The per-process open-file limit here is 20,000; stay well below it per worker.
DEFAULT_PER_PROCESS = 5000


class IdleClient(Client):
    """A connection that only keeps its session alive."""

    role = "conn"


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def split(n: int, parts: int) -> list[int]:
    """Split ``n`` into ``parts`` near-equal non-negative counts."""
    parts = max(1, parts)
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def default_procs(n: int, per_process: int = DEFAULT_PER_PROCESS) -> int:
    """How many worker processes ``n`` connections need at ``per_process`` each."""
    return max(1, math.ceil(n / per_process))
