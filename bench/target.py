"""Where the load may go: only loopback targets (127.0.0.0/8, ::1, localhost) are accepted."""

from __future__ import annotations

import ipaddress
import socket


class TargetError(ValueError):
    """The target host is not a loopback address (or cannot be resolved)."""


def resolve_loopback(host: str, port: int) -> str:
    """Resolve ``host`` and return its address, refusing anything that is not loopback.

    Every address the name resolves to must be a loopback address, so a name that points at
    another machine as well is refused too.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise TargetError(f"cannot resolve {host!r}: {e}") from None
    addrs = [str(info[4][0]) for info in infos]
    if not addrs:
        raise TargetError(f"cannot resolve {host!r}")
    for a in addrs:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
            raise TargetError(
                f"refusing non-loopback target {host!r} ({a}): this tool only loads brokers on "
                "this machine (127.0.0.0/8, ::1, localhost)"
            )
    # Prefer IPv4 when a name resolves to both (brokers here listen on 127.0.0.1).
    v4 = [a for a in addrs if ":" not in a]
    return v4[0] if v4 else addrs[0]
