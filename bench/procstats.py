"""CPU time and memory of processes, read from /proc (the broker's and the tool's own).

``find_pid_by_port`` finds the process listening on a TCP port (through the socket inode in
/proc/net/tcp{,6} and the fds in /proc/<pid>/fd), for when ``--broker-pid`` is not given.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    """One reading of a process: CPU seconds (user + system), RSS and peak RSS in KiB."""

    cpu_s: float
    rss_kb: int
    hwm_kb: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def sample(pid: int) -> ProcSample | None:
    """Read ``pid``'s CPU and memory; None when the process is gone."""
    try:
        rss, hwm = memory_kb(pid)
        return ProcSample(cpu_seconds(pid), rss, hwm)
    except (OSError, ValueError, IndexError):
        return None


def _listen_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, st, inode = parts[1], parts[3], parts[9]
                    if st == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def find_pid_by_port(port: int) -> int | None:
    """The pid of the process with a TCP socket listening on ``port`` (None if not found)."""
    inodes = _listen_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in targets:
                        return int(name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def machine_info() -> dict[str, str]:
    """CPU model, cores, kernel, Python and Mosquitto versions, for the report header."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mosq = "not found"
    try:
        out = subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        mosq = out.splitlines()[0].strip() if out else mosq
    except (OSError, subprocess.SubprocessError):
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb // 1024} MiB",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "mosquitto": mosq,
    }
