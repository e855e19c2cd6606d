"""HAProxy's configuration, rendered whole from the route table (a pure function).

Every call reaches one frontend. What HAProxy can decide alone it decides: a known key (its
sha256 in the keys map), the deployment from the path, the version a call is pinned to (a
version-addressed path, else ``Modelplane-Version``), then a backend by name:

- ``d.<name>``: the lanes that take unpinned calls, one server per endpoint, weighted so each
  lane gets its percent (smooth weighted round robin: a 90/10 split is 90/10 over any 10
  calls);
- ``d.<name>.v<version>``: that version's endpoints, for pinned calls.

Everything else goes to the ``slow`` backend, the Python gateway beside it, which answers
exactly as ``python -m gateway`` does: a key seen for the first time (verified there, then
added to the map), a key with model globs, a deployment with a shadow (mirroring needs the
primary's answer), a deployment or a pinned version with no ready endpoint (the Python
gateway holds such a call up to a second for the next table, or answers 404 naming the
versions served), a malformed pin, and the process's own routes (``/healthz``, ``/readyz``,
``/metrics``). A backend name that does not exist falls through to ``default_backend``.

A retry goes to another server only before a byte of the answer went back (HAProxy's L7
retries: a refused or dropped connection, an empty answer, a 503 from a draining endpoint;
``redispatch`` picks another server each time).

Counting, per revision (a server's name carries its revision: ``r12_0``): a deployment with
a canary has each call logged (a UDP datagram, `gateway.native.logs`: ``mp1 deployment
server status ms -``), so the canary is decided on exact calls, errors and latencies; every
other deployment is counted by HAProxy's own per-server counters (`gateway.native.stats`,
read each report period) and one call in `SAMPLE`, logged, gives its latency histogram. A
log line per call costs HAProxy two system calls of the seven a call takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from contract.traffic import LaneRole, Route

NAME = re.compile(r"^[A-Za-z0-9_-]{1,120}$")  # a deployment name HAProxy can hold as-is
WEIGHT_MAX = 256  # HAProxy's largest server weight
SLOW = "slow"
LOG_TAG = "mp1"  # a call's line; HAProxy's own notices (a proxy stopped at reload) have none
# the weight: 1 for a call logged with every other (its line counts it), SAMPLE for one of
# a sample (its line only feeds the latency histogram, as SAMPLE calls)
LOG_FORMAT = LOG_TAG + " %[var(txn.d)] %s %ST %Ta %[var(txn.w)]"
SAMPLE = 16
EVERY = "_all"  # a server whose every call is logged: its counters are not read
# ``/serve/{d}/...`` → ``/...``: what the endpoint sees (the Python gateway does the same)
STRIP = r"http-request replace-path ^/serve/[^/]+/?(.*)$ /\1"


@dataclass(frozen=True)
class Layout:
    """Where HAProxy listens, where its slow path and its logs go, its files."""

    host: str
    port: int
    slow: tuple[str, int]  # the Python gateway
    logs: tuple[str, int]  # the UDP port `gateway.native.logs` reads
    admin: Path  # the runtime API socket (keys map changes)
    keys: Path  # the keys map: sha256 hex of a token → 1
    threads: int | None = None  # None: HAProxy's default, one per core
    maxconn: int = 4096


@dataclass(frozen=True)
class Server:
    name: str  # ``r<revision>_<n>``: `gateway.native.logs` reads the revision off it
    address: str  # host:port
    weight: int


def revision_of(server: str) -> int | None:
    """The revision a server name carries (``r12_0`` → 12); ``None`` for ``<NOSRV>``."""
    if not server.startswith("r"):
        return None
    head, _, _ = server[1:].partition("_")
    return int(head) if head.isdigit() else None


def logs_every_call(route: Route) -> bool:
    """A canary's calls are each logged, for exact counts and p99 per revision as they
    happen; other deployments are counted by HAProxy's counters and a 1-in-`SAMPLE`
    sample of their calls gives their latency."""
    return any(lane.role is LaneRole.canary for lane in route.lanes)


def native(route: Route) -> bool:
    """Whether HAProxy can route this deployment's calls itself (else: the slow path)."""
    if NAME.match(route.deployment) is None:
        return False
    lanes = [lane for lane in route.lanes if lane.endpoints]
    if not lanes or any(lane.role is LaneRole.shadow for lane in lanes):
        return False
    return all(_address(url) is not None for lane in lanes for url in lane.endpoints)


def backends(route: Route) -> dict[str, list[Server]]:
    """Backend name → servers, for a `native` route."""
    name = route.deployment
    out: dict[str, list[Server]] = {}
    weighted = [lane for lane in route.lanes if lane.endpoints and lane.percent > 0]
    shares = [(lane, lane.percent / len(lane.endpoints)) for lane in weighted]
    top = max((share for _, share in shares), default=0.0)
    servers = []
    for lane, share in shares:
        weight = max(1, round(share / top * WEIGHT_MAX))
        servers += [(lane.revision, url, weight) for url in lane.endpoints]
    if servers:
        out[f"d.{name}"] = _named(servers)
    by_version: dict[int, list[tuple[int, str, int]]] = {}
    for lane in route.lanes:
        for url in lane.endpoints:
            by_version.setdefault(lane.version, []).append((lane.revision, url, 1))
    for version, listed in sorted(by_version.items()):
        out[f"d.{name}.v{version}"] = _named(listed)
    return out


def render(layout: Layout, routes: list[Route], *, auth: bool) -> str:
    """The whole configuration for ``routes`` (those not `native` go to the slow path)."""
    host = f"[{layout.host}]" if ":" in layout.host else layout.host
    lines = [
        "# rendered by gateway.native.config: changes are overwritten",
        "global",
        "  master-worker",
        f"  maxconn {layout.maxconn}",
        *([f"  nbthread {layout.threads}"] if layout.threads else []),
        f"  stats socket {layout.admin} mode 600 level admin",
        "  hard-stop-after 120s",  # a reload's old process: its streams get this long
        "  tune.bufsize 32768",  # a request this size or smaller can be retried
        "defaults",
        "  mode http",
        "  option idle-close-on-response",  # a reload answers idle keep-alives, never drops
        "  option redispatch 1",
        "  retries 2",
        "  retry-on conn-failure empty-response 503",
        "  timeout connect 3s",
        "  timeout client 600s",
        "  timeout server 600s",
        "  timeout http-request 30s",
        "  timeout http-keep-alive 60s",
        "  timeout queue 10s",
        # an endpoint that refuses or drops a connection takes no new call until a check
        # (a TCP connect, every 2 s) finds it up again
        "  default-server check inter 2s fall 2 rise 1 observe layer4 error-limit 1"
        " on-error mark-down",
        "frontend serve",
        f"  bind {host}:{layout.port}",
        # per-call lines only: HAProxy's own notices go to no log
        f"  log {layout.logs[0]}:{layout.logs[1]} len 1024 format raw local0",
        f'  log-format "{LOG_FORMAT}"',
        "  acl serve path_beg /serve/",
        "  acl pin_header req.hdr(modelplane-version) -m found",
        "  acl pin_number req.hdr(modelplane-version) -m reg ^[0-9]+$",
        "  http-request set-var(txn.d) path,field(3,/) if { path_reg ^/serve/[A-Za-z0-9_-]+(/|$) }",
        "  http-request set-var(txn.v) req.hdr(modelplane-version) if pin_number",
        "  http-request set-var(txn.v) path,field(8,/) if "
        "{ path_reg ^/serve/[^/]+/v2/models/[^/]+/versions/[0-9]+(/|$) }",
        "  http-request set-var(txn.v) path,field(8,/),field(1,:) if "
        "{ path_reg ^/serve/[^/]+/v1/models/[^/]+/versions/[0-9]+([/:]|$) }",
        "  http-request set-var(txn.v) path,field(6,/) if "
        "{ path_reg ^/serve/[^/]+/predictions/[^/]+/[0-9]+/?$ }",
    ]
    if auth:
        lines += [
            "  acl bearer req.fhdr(authorization) -m reg -i ^bearer\\ +[^\\ ]",
            "  http-request set-var(txn.k) req.fhdr(authorization),"
            'regsub("^[^ ]+ +",""),sha2(256),hex,lower if bearer',
            f"  acl known var(txn.k),map({layout.keys}) -m found",
        ]
    lines += [
        f"  use_backend {SLOW} if !serve",
        *([f"  use_backend {SLOW} if !known"] if auth else []),
        f"  use_backend {SLOW} if pin_header !pin_number",
        "  use_backend d.%[var(txn.d)].v%[var(txn.v)] if { var(txn.v) -m found }",
        "  use_backend d.%[var(txn.d)]",
        f"  default_backend {SLOW}",
        f"backend {SLOW}",
        "  http-request set-log-level silent",  # the Python gateway counts these itself
        "  retries 0",
        f"  server python {layout.slow[0]}:{layout.slow[1]} no-check",
    ]
    for route in sorted(routes, key=lambda r: r.deployment):
        if not native(route):
            continue
        every = logs_every_call(route)
        for backend, servers in backends(route).items():
            lines += [f"backend {backend}", f"  {STRIP}", "  http-request del-header authorization"]
            if not every:
                lines += [
                    f"  http-request set-log-level silent if {{ rand({SAMPLE}) -m int gt 0 }}",
                    f"  http-request set-var(txn.w) int({SAMPLE})",
                ]
            lines += [
                f"  server {s.name}{EVERY if every else ''} {s.address} weight {s.weight}"
                for s in servers
            ]
    return "\n".join(lines) + "\n"


def _named(servers: list[tuple[int, str, int]]) -> list[Server]:
    out = []
    for n, (revision, url, weight) in enumerate(servers):
        address = _address(url)
        assert address is not None  # `native` checked it
        out.append(Server(f"r{revision}_{n}", address, weight))
    return out


def _address(url: str) -> str | None:
    """``host:port`` of a plain ``http://host:port`` endpoint URL, else ``None``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.path.strip("/") or parts.port is None:
        return None
    host = parts.hostname or ""
    return f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
