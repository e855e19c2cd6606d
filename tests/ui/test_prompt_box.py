"""The deployment page's prompt box: shown for a language-model deployment (format
`hf_causal_lm`) only; Send POSTs the prompt with `stream: true` and the saved API key to the
deployment's stable URL and writes the streamed deltas; an OpenAI-shaped error shows its
message. The stable URL's answer is played by the browser's request routing here (the
serving side's OpenAI API has its own end-to-end tests), so the page's SSE parsing, the key
and the body it sends are what is checked, under the dashboard's CSP."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from tests.ui.conftest import Dashboard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def hf_files() -> dict[str, bytes]:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return {
        "config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "model.safetensors": struct.pack("<Q", len(header)) + header + b"\0" * 8,
    }  # fmt: skip


@pytest.fixture(scope="module")
def llm(dashboard: Dashboard) -> str:
    dashboard.send("POST", "/models", 201, json={"name": "tiny-chat"})
    version = dashboard.upload("tiny-chat", hf_files(), format="hf_causal_lm")
    body = {"name": "chat", "model": "tiny-chat", "version": version, "gpus": 1}
    dashboard.send("POST", "/deployments", 201, json=body)  # stays pending: no GPU worker
    return "chat"


def sse(*chunks: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_the_prompt_box_is_hidden_for_other_formats(dashboard: Dashboard, page: Any) -> None:
    page.goto(f"{dashboard.ui}/deployments/resnet-prod")
    page.locator("#deployment dl").wait_for()
    page.wait_for_function("document.getElementById('prompt-panel').dataset.format !== undefined")
    assert page.locator("#prompt-panel").is_hidden()


def test_send_streams_the_reply_into_the_box(dashboard: Dashboard, llm: str, page: Any) -> None:
    seen: list[dict[str, Any]] = []

    def stable_url(route: Any) -> None:
        request = route.request
        seen.append(
            {"body": json.loads(request.post_data), "auth": request.headers.get("authorization")}
        )
        words = ["Hello", " from", " the", " model", "."]
        chunks = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=sse(*chunks))

    page.route(f"**/serve/{llm}/v1/chat/completions", stable_url)
    page.goto(f"{dashboard.ui}/deployments/{llm}")
    panel = page.locator("#prompt-panel")
    panel.wait_for(state="visible")
    page.fill("#prompt-text", "Say hello")
    page.fill("#prompt-max-tokens", "16")
    page.click("#prompt-send")
    page.wait_for_function("document.getElementById('prompt-reply').dataset.state === 'done'")
    assert page.locator("#prompt-reply").text_content() == "Hello from the model."
    [call] = seen
    assert call["auth"] == f"Bearer {dashboard.tokens['admin']}"
    assert call["body"] == {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
    }


def test_an_openai_error_shows_its_message(dashboard: Dashboard, llm: str, page: Any) -> None:
    error = {"error": {"message": "max_tokens 9999 exceeds the context length 256", "type": "x"}}
    page.route(
        f"**/serve/{llm}/v1/chat/completions",
        lambda route: route.fulfill(status=400, json=error),
    )
    page.goto(f"{dashboard.ui}/deployments/{llm}")
    page.locator("#prompt-panel").wait_for(state="visible")
    page.fill("#prompt-text", "hi")
    page.click("#prompt-send")
    page.wait_for_function("document.getElementById('prompt-reply').dataset.state === 'error'")
    assert "context length 256" in (page.locator("#prompt-reply").text_content() or "")
