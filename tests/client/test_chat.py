"""`Client.chat` and `modelplane chat` against a peer speaking OpenAI's streaming API on a
real socket (a stdlib HTTP server standing in for `/serve/NAME/v1/...`, as the gateway
forwards it): deltas arrive as written, the conversation is kept, errors are one line."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from client import Client
from client.chat import deltas
from client.errors import ApiError, BadRequest

TOKEN = "mp_test_token"
WORDS = ["Hello", " there", ",", " friend", "."]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that closed its stream early: expected here, not worth a traceback


class OpenAIPeer:
    """Streams WORDS one SSE chunk at a time; "fail" as the last message answers OpenAI's
    400, "break" an error chunk mid-stream. Records every chat body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.sent_at: list[float] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/serve/llm/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "no such deployment", "type": "x"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._json(401, {"error": {"message": "bad key", "type": "auth"}})
                peer.bodies.append(body)
                last = body["messages"][-1]["content"]
                if body.get("model") != "tiny":
                    return self._json(404, {"error": {"message": "The model does not exist"}})
                if last == "fail":
                    message = "max_tokens 9999 is more than the context length of 256"
                    return self._json(400, {"error": {"message": message, "type": "invalid"}})
                if not body.get("stream"):
                    text = "".join(WORDS)
                    return self._json(200, {"choices": [{"message": {"content": text}}]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for word in WORDS:
                    chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
                    self._chunk(f"data: {json.dumps(chunk)}\n\n")
                    peer.sent_at.append(time.monotonic())
                    time.sleep(0.05)
                    if last == "break":
                        self._chunk('data: {"error": {"message": "the engine stopped"}}\n\n')
                        break
                self._chunk("data: [DONE]\n\n")
                self._chunk("")

            def _chunk(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: `shutdown` waits for the loop to notice (0.5 s by default)
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()


@pytest.fixture
def peer() -> Iterator[OpenAIPeer]:
    found = OpenAIPeer()
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_sse_parsing_joins_data_lines_and_stops_at_done() -> None:
    first = 'data: {"choices": [{"delta": {"content": "a"}}]}'
    empty = 'data: {"choices": [{"delta": {}}]}'
    lines = [": comment", "event: x", first, "", empty, "", "data: [DONE]", "", "data: {}", ""]
    assert list(deltas(lines)) == ["a"]


def test_streamed_chat_yields_each_delta_as_it_arrives(peer: OpenAIPeer) -> None:
    with Client(peer.url, TOKEN) as sdk:
        stream = sdk.chat("llm", [{"role": "user", "content": "hi"}], stream=True, max_tokens=8)
        received: list[tuple[str, float]] = [(d, time.monotonic()) for d in stream]
        full = sdk.chat("llm", [{"role": "user", "content": "hi"}])
    assert [d for d, _ in received] == WORDS
    assert received[0][1] < peer.sent_at[-1]  # the first arrived before the last was sent
    assert peer.bodies[0] == {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }
    assert full["choices"][0]["message"]["content"] == "".join(WORDS)


def test_openai_shaped_errors_become_their_message(peer: OpenAIPeer) -> None:
    with Client(peer.url, TOKEN) as sdk:
        with pytest.raises(BadRequest, match="more than the context length of 256"):
            list(sdk.chat("llm", [{"role": "user", "content": "fail"}], stream=True))
        with pytest.raises(ApiError, match="the engine stopped"):
            list(sdk.chat("llm", [{"role": "user", "content": "break"}], stream=True))
        with pytest.raises(ApiError, match="no such deployment"):
            sdk.chat("nope", [{"role": "user", "content": "hi"}])


def test_cli_chat_one_shot_streams_the_reply(peer: OpenAIPeer) -> None:
    env = {"MODELPLANE_URL": peer.url, "MODELPLANE_TOKEN": TOKEN}
    result = CliRunner().invoke(
        app,
        ["chat", "llm", "--prompt", "hi", "--system", "be brief", "--max-tokens", "5",
         "--temperature", "0"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == "".join(WORDS) + "\n"
    assert peer.bodies[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert peer.bodies[0]["max_tokens"] == 5 and peer.bodies[0]["temperature"] == 0


def test_cli_chat_keeps_the_conversation_and_goes_on_after_an_error(peer: OpenAIPeer) -> None:
    env = {"MODELPLANE_URL": peer.url, "MODELPLANE_TOKEN": TOKEN}
    result = CliRunner().invoke(app, ["chat", "llm"], input="hi\nfail\nmore\n", env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.count("".join(WORDS)) == 2
    assert "error:" in result.stderr and "context length of 256" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the banner and the one-line error
    assert peer.bodies[-1]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "".join(WORDS)},
        {"role": "user", "content": "more"},
    ]


def test_cli_chat_one_shot_error_is_one_line_and_fails(peer: OpenAIPeer) -> None:
    env = {"MODELPLANE_URL": peer.url, "MODELPLANE_TOKEN": TOKEN}
    result = CliRunner().invoke(app, ["chat", "llm", "--prompt", "fail"], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "context length of 256" in result.stderr
