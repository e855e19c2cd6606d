"""A language model end to end: a sharded tiny Llama directory pushed as one multi-file
version (format hf_causal_lm), deployed by a real worker, called with the official `openai`
client through the stable URL `/serve/{deployment}/v1` with the platform key: chat and
completion, streamed and not; the stream is forwarded chunk by chunk (its first chunk
arrives while the model still generates)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import openai
import pytest

from bench.harness import wait_for
from bench.llm_models import make_llama
from client.sdk import Client
from tests.e2e.conftest import Platform
from tests.e2e.deploy_helpers import api, ready_endpoints

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]
os.environ["HF_HUB_OFFLINE"] = "1"  # the worker and its serving processes inherit it


def test_openai_client_through_the_stable_url(
    plane: Platform, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    directory = make_llama(tmp_path / "llama", context=2048)
    assert len(list(directory.glob("model-*-of-*.safetensors"))) >= 3
    with Client(plane.cp.url, plane.token) as sdk:
        sdk.push("chatty", directory, format="hf_causal_lm")
    body = {"name": "chat-prod", "model": "chatty", "version": 1, "replicas": 1}
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text
    # the package's worker has few slots: the tests after this one need its slot back
    request.addfinalizer(lambda: api(plane, "DELETE", "/deployments/chat-prod"))
    stable = f"{plane.cp.url}/serve/chat-prod/v1"

    def serving() -> bool:
        if not ready_endpoints(plane, "chat-prod", 1):
            return False
        headers = {"Authorization": f"Bearer {plane.token}"}
        return httpx.get(stable + "/models", headers=headers).status_code == 200

    wait_for("chat-prod serving", serving, 120, plane.logs)
    [endpoint] = ready_endpoints(plane, "chat-prod", 1)
    ai = openai.OpenAI(base_url=stable, api_key=plane.token or "none", max_retries=0)
    direct = openai.OpenAI(base_url=endpoint["url"] + "/v1", api_key="none", max_retries=0)

    assert [m.id for m in ai.models.list()] == ["chatty"]
    ask = {"model": "chatty", "messages": [{"role": "user", "content": "hello"}]}
    whole = ai.chat.completions.create(**ask, max_tokens=16, temperature=0)
    assert whole.choices[0].message.content == (
        direct.chat.completions.create(**ask, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
    )
    streamed = ai.chat.completions.create(**ask, max_tokens=16, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == whole.choices[0].message.content
    completion = ai.completions.create(model="chatty", prompt="the quick", max_tokens=8)
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(**{**ask, "model": "chat-prod"}, max_tokens=4)

    # chunk by chunk: when the first chunk is here, the model is still generating
    long = ai.completions.create(
        model="chatty",
        prompt="hello",
        max_tokens=1500,
        temperature=0.8,
        seed=1,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    first_at = None
    chunks = 0
    started = time.monotonic()
    for _chunk in long:
        chunks += 1
        if first_at is None:
            first_at = time.monotonic() - started
            metrics = httpx.get(endpoint["url"] + "/metrics").text
            running = re.search(r"^modelplane_llm_requests_running\{[^}]*\} (\S+)$", metrics, re.M)
            assert running is not None and float(running.group(1)) == 1.0
    total = time.monotonic() - started
    assert first_at is not None and chunks > 100
    print(f"first chunk after {first_at * 1000:.0f} ms of a {total * 1000:.0f} ms stream")
    assert first_at < total / 2
