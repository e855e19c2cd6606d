"""What our uvicorn servers share: the HTTP protocol with Nagle off.

uvicorn is a server dependency, absent from the bare SDK install, so it is imported only
when a server asks for the protocol: `nodelay_protocol()` from ``registry.server`` and
``serving.server``, or ``--http contract.asgi:NoDelayProtocol`` on uvicorn's command line
(the attribute is built on first access). Importing this module imports nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from functools import cache


@cache
def nodelay_protocol() -> type[asyncio.Protocol]:
    """httptools, with Nagle off on every accepted TCP connection.

    uvicorn leaves Nagle on for connections accepted on a socket it did not create itself
    (``--workers N`` shares one listening socket; the serving process binds its own;
    encode/uvicorn#3149): each small keep-alive answer after the first then waits ~40 ms
    for the client's delayed ACK. uvloop happens to set TCP_NODELAY, the asyncio loop not.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # The peer may already be gone; the protocol notices and reports that itself.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    # Named as the module attribute that gives it: uvicorn pickles its config (this class
    # included) into each worker process, and pickle finds a class by module and name.
    NoDelayProtocol.__qualname__ = "NoDelayProtocol"
    NoDelayProtocol.__doc__ = nodelay_protocol.__doc__
    return NoDelayProtocol


def __getattr__(name: str) -> type[asyncio.Protocol]:
    if name == "NoDelayProtocol":
        return nodelay_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
