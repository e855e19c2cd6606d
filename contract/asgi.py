"""What our uvicorn servers share: the HTTP protocol with Nagle off.

Imports uvicorn (a server dependency, absent from the bare SDK install), so only server
entry points import this module (``registry.server``, ``serving.server``); nothing in
``contract/`` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class NoDelayProtocol(HttpToolsProtocol):
    """httptools, with Nagle off on every accepted TCP connection.

    uvicorn leaves Nagle on for connections accepted on a socket it did not create itself
    (``--workers N`` shares one listening socket; the serving process binds its own;
    encode/uvicorn#3149): each small keep-alive answer after the first then waits ~40 ms
    for the client's delayed ACK. uvloop happens to set TCP_NODELAY, the asyncio loop not.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # The peer may already be gone; the protocol notices and reports that itself.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
