"""HAProxy's per-call log lines, read off a UDP socket and counted per revision.

HAProxy sends one datagram per call it logs (``format raw``, the frontend's ``log-format``):
``mp1 deployment server status ms weight``. Weight ``-``: every call of that deployment is
logged and the line counts the call (calls, errors, latency); weight N: the line is one of a
1-in-N sample and adds N to the latency histogram only (the calls and errors come from
HAProxy's counters, `gateway.native.stats`). Other lines (HAProxy's notices, e.g. a proxy
stopped at a reload) are skipped. The server's name carries the
revision (``r12_0``); a call no server took (``<NOSRV>``, HAProxy's own 503) counts under the
deployment's first weighted lane, as the Python gateway counts it under the lane it chose.
``ms`` is HAProxy's ``%Ta``, whole milliseconds from the request's first byte to the
answer's last (a sub-millisecond call counts as 0 ms). Lines it cannot read are counted in
``unreadable`` and dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from contract.traffic import bucket
from gateway.counts import Counts
from gateway.native.config import LOG_TAG, revision_of

_TAG = LOG_TAG.encode()

RCVBUF = 8 << 20  # a burst of datagrams waits here while the loop is busy


class LogCounter(asyncio.DatagramProtocol):
    """Counts each line into ``counts``; ``fallback(deployment)`` names the revision of a
    call no server took."""

    def __init__(self, counts: Counts, fallback: Callable[[str], int | None]) -> None:
        self._counts = counts
        self._fallback = fallback
        self.lines = 0
        self.unreadable = 0
        self.last_unreadable: bytes | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        for line in data.splitlines():
            self.count(line)

    def count(self, line: bytes) -> None:
        parts = line.split()
        if not parts or parts[0] != _TAG:
            return
        self.lines += 1
        if len(parts) != 6:
            self._unreadable(line)
            return
        deployment, server, status, ms, weight = (p.decode("latin-1") for p in parts[1:])
        revision = revision_of(server)
        if revision is None:
            revision = self._fallback(deployment)
        try:
            code, millis = int(status), int(ms)
            sampled = 0 if weight == "-" else int(weight)
        except ValueError:
            self._unreadable(line)
            return
        if revision is None or deployment == "-":
            self._unreadable(line)
            return
        tally = self._counts.tally(deployment, revision)
        if sampled:
            tally.latency[bucket(max(millis, 0))] += sampled
        else:
            tally.call(code if code > 0 else 502, millis / 1000)

    def _unreadable(self, line: bytes) -> None:
        self.unreadable += 1
        self.last_unreadable = line[:200]


async def listen(
    counter: LogCounter, host: str = "127.0.0.1"
) -> tuple[asyncio.DatagramTransport, int]:
    """Bind a UDP port on ``host`` for ``counter``; the transport and the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((host, 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: counter, sock=sock)
    return transport, sock.getsockname()[1]
