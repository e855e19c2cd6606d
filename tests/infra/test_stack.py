"""The pieces `modelplane stack` is made of: the TCP balancer, the network namespaces, the
database created if missing. (The whole stack runs in tests/e2e/test_multihost.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import httpx
import pytest

from bench.pg import ADMIN_DSN, drop_database, postgres_unavailable, run
from devstack import netns
from devstack.balancer import Balancer
from devstack.stack import StackError, ensure_database, free_port


class _Named(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.server.server_name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[list[tuple[str, int]]]:
    """Two HTTP servers on loopback, each answering its own name."""
    servers = []
    for name in ("a", "b"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.server_name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [("127.0.0.1", s.server_address[1]) for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def answers(url: str, calls: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(calls):  # a new connection per call: the balancer chooses per connection
        with httpx.Client(timeout=5) as http:
            seen[http.get(url).text] += 1
    return seen


def test_balancer_spreads_connections_round_robin(backends: list[tuple[str, int]]) -> None:
    balancer = Balancer([("127.0.0.1", 0)], backends).start()
    try:
        seen = answers(f"http://127.0.0.1:{balancer.bound[0][1]}/", 6)
    finally:
        balancer.stop()
    assert seen == {"a": 3, "b": 3}


def test_balancer_skips_a_backend_that_refuses(backends: list[tuple[str, int]]) -> None:
    dead = ("127.0.0.1", free_port())  # nothing listens there
    balancer = Balancer([("127.0.0.1", 0)], [dead, backends[0]]).start()
    try:
        seen = answers(f"http://127.0.0.1:{balancer.bound[0][1]}/", 4)
    finally:
        balancer.stop()
    assert seen == {"a": 4}


def test_balancer_that_cannot_listen_says_so(backends: list[tuple[str, int]]) -> None:
    first = Balancer([("127.0.0.1", 0)], backends).start()
    try:
        with pytest.raises(RuntimeError, match="cannot listen"):
            Balancer([first.bound[0]], backends).start()
    finally:
        first.stop()


def test_ensure_database_creates_a_missing_database_once() -> None:
    if (why := postgres_unavailable()) is not None:
        if os.environ.get("CI") == "true":  # CI has Postgres: its absence is a failure
            pytest.fail(why)
        pytest.skip(why)
    name = f"mp_stack_test_{uuid.uuid4().hex[:10]}"
    server = ADMIN_DSN.rsplit("/", 1)[0]
    try:
        url = ensure_database(server, name)
        assert ensure_database(server, name) == url  # present: left as it is
        assert url == f"{server.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"

        async def count() -> int:
            conn = await asyncpg.connect(ADMIN_DSN)
            try:
                query = "SELECT count(*) FROM pg_database WHERE datname = $1"
                return int(await conn.fetchval(query, name))
            finally:
                await conn.close()

        assert run(count()) == 1
    finally:
        drop_database(name)


def test_namespaces_get_their_own_addresses_and_are_removed_by_name() -> None:
    if (why := netns.netns_unavailable()) is not None:
        pytest.skip(why)
    hosts = netns.Hosts(2, label="mptest")
    try:
        made = hosts.create()
        assert [netns.exists(h.namespace) for h in made] == [True, True]
        assert len({h.address for h in made}) == 2
        for host in made:
            assert host.address.startswith("10.77.") and netns.link_exists(host.veth)
            # From inside, the namespace reaches a listener on its gateway (the host side).
            with socket.create_server((host.gateway, 0)) as listener:
                port = listener.getsockname()[1]
                code = f"import socket; socket.create_connection(({host.gateway!r}, {port}), 5)"
                done = subprocess.run(
                    [*host.exec_prefix(), sys.executable, "-c", code],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert done.returncode == 0, done.stderr
    finally:
        hosts.destroy()
    assert not any(netns.exists(h.namespace) or netns.link_exists(h.veth) for h in made)


def test_ensure_database_refuses_a_name_that_is_not_an_identifier() -> None:
    with pytest.raises(StackError, match="letters, digits and _ only"):
        ensure_database(ADMIN_DSN.rsplit("/", 1)[0], 'x"; DROP DATABASE postgres; --')


def test_stack_without_postgres_stops_with_the_reason(tmp_path: Path) -> None:
    """`modelplane stack` against a server that is not there: exit 1 naming it, no child
    left, no namespace made."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "cli", "stack", "--home", str(tmp_path), "--port", "0",
            "--postgres", dead, "--netns", "off"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"Postgres at {dead}" in done.stderr + done.stdout


def test_stack_on_a_taken_port_stops_before_starting_anything(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "cli", "stack", "--home", str(tmp_path),
                "--port", str(port), "--netns", "off"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{port} is taken" in done.stderr + done.stdout
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())
