"""Where the SDK finds its URL and token (COMMON contract order), and what it sends."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client import Client, Unavailable
from client.config import DEFAULT_URL, resolve, save_credentials


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An empty MODELPLANE_HOME and user config directory, no MODELPLANE_URL/TOKEN."""
    for var in ("MODELPLANE_URL", "MODELPLANE_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("MODELPLANE_HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / "credentials.json"
    user = tmp_path / "user" / ".config" / "modelplane" / "credentials.json"
    return home, user


def write(path: Path, url: str, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "token": token}))


def test_nothing_saved_means_the_local_default_without_token(places: tuple[Path, Path]) -> None:
    found = resolve()
    assert (found.url, found.token) == (DEFAULT_URL, None)


def test_the_order_is_arguments_env_home_then_user_credentials(
    places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, user = places
    write(user, "http://user:1", "mp_user")
    assert (resolve().url, resolve().token) == ("http://user:1", "mp_user")
    write(home, "http://home:2", "mp_home")
    assert (resolve().url, resolve().token) == ("http://home:2", "mp_home")
    monkeypatch.setenv("MODELPLANE_URL", "http://env:3")
    monkeypatch.setenv("MODELPLANE_TOKEN", "mp_env")
    assert (resolve().url, resolve().token) == ("http://env:3", "mp_env")
    found = resolve("http://arg:4/", "mp_arg")
    assert (found.url, found.token) == ("http://arg:4", "mp_arg")


def test_a_saved_token_goes_only_to_the_url_saved_with_it(
    places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, user = places
    write(home, "http://home:2", "mp_home")
    write(user, "http://elsewhere:5", "mp_user")
    assert resolve("http://elsewhere:5").token == "mp_user"
    assert resolve("http://unknown:6").token is None
    monkeypatch.setenv("MODELPLANE_URL", "http://home:2/")
    assert resolve().token == "mp_home"


def test_saved_credentials_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = save_credentials("http://cp:8000/", "mp_secret", tmp_path / "c" / "credentials.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://cp:8000", "token": "mp_secret"}


class Recorder(BaseHTTPRequestHandler):
    """A real HTTP server: 503 with Retry-After for the first ``fail`` calls, then 200."""

    seen: list[tuple[str, str | None]] = []
    fail = 0

    def _answer(self) -> None:
        type(self).seen.append((self.command, self.headers.get("Authorization")))
        if len(type(self).seen) <= type(self).fail:
            body = b'{"type": "/problems/database-unavailable", "status": 503, "detail": "away"}'
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/problem+json")
        else:
            body = b'{"items": [], "next_cursor": null}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen, Recorder.fail = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    # a short poll: `shutdown` waits for the loop to notice (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_token_is_sent_as_a_bearer_header(recorder: str) -> None:
    with Client(recorder, "mp_abc") as sdk:
        assert sdk.list_models() == []
    assert Recorder.seen == [("GET", "Bearer mp_abc")]


def test_reads_are_retried_on_503_and_creations_are_not(recorder: str) -> None:
    Recorder.fail = 2
    with Client(recorder, None) as sdk:
        assert sdk.list_deployments() == []
        assert [auth for _, auth in Recorder.seen] == [None, None, None]
        Recorder.seen, Recorder.fail = [], 1
        with pytest.raises(Unavailable) as away:
            sdk.create_model("m")
    assert away.value.retry_after == 0 and away.value.status == 503
    assert [method for method, _ in Recorder.seen] == ["POST"]
