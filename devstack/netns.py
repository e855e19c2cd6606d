"""Network namespaces that stand in for hosts on one machine (`ip netns`, veth pairs).

Each host is a namespace with one veth pair to the root namespace: the namespace side
carries the host's own address (10.77.N.2, .6, ...), the root side its gateway (10.77.N.1,
.5, ...) where the control plane is reached. Names carry a random suffix and everything is
removed by name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass

PREFIX = "10.77"


class NetnsError(RuntimeError):
    """An `ip` command failed."""


@dataclass(frozen=True)
class Host:
    namespace: str  # `ip netns` name
    veth: str  # the root namespace's end of the pair
    gateway: str  # its address: where the host reaches the control plane
    address: str  # the host's own address inside the namespace

    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it on this host."""
        return ["ip", "netns", "exec", self.namespace]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or `None` when they can (tried, then removed)."""
    if os.geteuid() != 0:
        return f"ip netns needs root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"mp-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns is not permitted here: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def _free_subnet() -> int:
    """A third octet N such that no interface here has an address in 10.77.N.0/24."""
    used = _ip("-o", "-4", "addr", "show").stdout
    for _ in range(64):
        octet = secrets.randbelow(254) + 1
        if f" {PREFIX}.{octet}." not in used:
            return octet
    raise NetnsError(f"no free {PREFIX}.N.0/24 subnet found")


class Hosts:
    """`count` namespaces, created by `create()` and removed by `destroy()` (by name; safe to
    call twice, and after a partial `create()`)."""

    def __init__(self, count: int, label: str = "mp") -> None:
        self.count = count
        self.suffix = secrets.token_hex(3)
        self.label = label
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._veths: list[str] = []

    def create(self) -> list[Host]:
        octet = _free_subnet()
        try:
            for i in range(self.count):
                self.hosts.append(self._create_one(i, octet))
        except BaseException:
            self.destroy()
            raise
        return self.hosts

    def _create_one(self, i: int, octet: int) -> Host:
        namespace = f"{self.label}-{self.suffix}-{i + 1}"
        veth, peer = f"mp{self.suffix}h{i + 1}", f"mp{self.suffix}n{i + 1}"  # <= 15 chars
        gateway, address = f"{PREFIX}.{octet}.{4 * i + 1}", f"{PREFIX}.{octet}.{4 * i + 2}"
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        self._veths.append(veth)
        _ip("link", "set", peer, "netns", namespace)
        _ip("addr", "add", f"{gateway}/30", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", peer)
        _ip("-n", namespace, "link", "set", peer, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")  # its own address is reached via lo
        return Host(namespace, veth, gateway, address)

    def destroy(self) -> None:
        """Remove the veths (each takes its peer along) and namespaces this object made."""
        for veth in self._veths:
            _ip("link", "del", veth, check=False)
        for namespace in self._namespaces:
            _ip("netns", "del", namespace, check=False)
        self._veths, self._namespaces = [], []

    def names(self) -> list[str]:
        return [h.namespace for h in self.hosts] + [h.veth for h in self.hosts]


def exists(namespace: str) -> bool:
    return namespace in _ip("netns", "list", check=False).stdout.split()


def link_exists(name: str) -> bool:
    return _ip("link", "show", name, check=False).returncode == 0
