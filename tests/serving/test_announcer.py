"""`--register-url`: the endpoint reports its states to a control plane, in order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.serving.conftest import StartServer
from tests.serving.models import Artifact


class ControlPlane(ThreadingHTTPServer):
    """A stand-in for the registry's endpoint routes: records what it is told."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recorder)
        self.calls: list[tuple[str, str, str | None]] = []  # method, path, status
        self.bodies: list[dict[str, object]] = []
        self.authorization: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Recorder(BaseHTTPRequestHandler):
    server: ControlPlane

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.server.calls.append((self.command, self.path, body.get("status")))
        self.server.bodies.append(body)
        self.server.authorization.append(self.headers.get("Authorization"))
        answer = b'{"id": "e1"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = do_DELETE = _record

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane()
    thread = threading.Thread(target=plane.serve_forever, daemon=True)
    thread.start()
    yield plane
    plane.shutdown()
    plane.server_close()


def test_endpoint_announces_states_heartbeats_and_deregisters(
    artifacts: dict[str, Artifact], start_server: StartServer, control_plane: ControlPlane
) -> None:
    register = ["--register-url", control_plane.url + "/api/v1", "--replica-id", "r7"]
    args = artifacts["mlp_pt2"].args() + register + ["--heartbeat-s", "0.2"]
    server = start_server(args, "announce").wait_ready()
    time.sleep(0.6)
    assert server.stop() == 0
    calls = control_plane.calls
    assert calls[0] == ("POST", "/api/v1/endpoints", "loading")
    assert control_plane.bodies[0] == {
        "url": f"http://127.0.0.1:{server.port}",
        "replica_id": "r7",
        "status": "loading",
        "reason": None,
    }
    states = [status for _, _, status in calls]
    assert states.index("warming") < states.index("ready") < states.index("draining")
    assert states.count("ready") >= 2, "no heartbeat while ready"
    assert calls[-1] == ("DELETE", "/api/v1/endpoints/e1", None)
    assert all(path == "/api/v1/endpoints/e1/heartbeat" for _, path, _ in calls[1:-1])


def test_endpoint_sends_the_worker_key_from_the_environment(
    artifacts: dict[str, Artifact], start_server: StartServer, control_plane: ControlPlane
) -> None:
    """The deployer hands serving processes its key in MODELPLANE_TOKEN (not a flag)."""
    register = ["--register-url", control_plane.url + "/api/v1", "--replica-id", "r8"]
    args = artifacts["mlp_pt2"].args() + register + ["--heartbeat-s", "0.2"]
    token = "mp_" + "a" * 55
    server = start_server(args, "announce-auth", {"MODELPLANE_TOKEN": token}).wait_ready()
    assert server.stop() == 0
    assert control_plane.authorization and set(control_plane.authorization) == {f"Bearer {token}"}
