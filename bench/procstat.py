"""What a benchmark reads of other processes from ``/proc``: CPU seconds used, and which
process listens on a loopback port (the serving process a deployer worker started, the
control plane behind ``modelplane up``)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # TCP state in /proc/net/tcp


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (all its threads), in seconds."""
    # the command name (field 2) may hold spaces: count from the closing parenthesis
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant, with what their ended children
    used (``cutime``/``cstime``): the gateway with its HAProxy master, workers, and the
    workers a reload retired."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while read
        parents[int(proc.name)] = int(fields[1])
        used[int(proc.name)] = sum(int(f) for f in fields[11:15]) / _TICK
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return sum(used.get(p, 0.0) for p in tree)


def listener_pid(port: int) -> int:
    """The process holding the socket that listens on ``port``."""
    inode = _listening_inode(port)
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(proc.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    raise LookupError(f"no process found holding the socket listening on port {port}")


def _listening_inode(port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                return inode
    raise LookupError(f"nothing listens on port {port}")
