"""A language model's rollout under steady chat traffic: version 1 of a sharded tiny Llama
serves through the stable URL while a client loop streams chat calls with the official
`openai` client; `PATCH` moves the deployment to version 2 (other random weights). Every
call completes (no error, a finish_reason on its stream), and once the rollout is over the
answers are version 2's: each version's greedy answer comes from its own weights in this
process (`model.generate`), so the text says which version served a call."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.harness import wait_for
from bench.llm_models import make_llama
from client.sdk import Client
from tests.e2e.conftest import Platform
from tests.e2e.deploy_helpers import api, deployment, ready_endpoints

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
os.environ["HF_HUB_OFFLINE"] = "1"  # the worker and its serving processes inherit it

NAME = "chat-roll"
MODEL = "roll-llama"
CONTENT = "hello world, how are you today?"
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": CONTENT}]
MAX_TOKENS = 12


@dataclass
class Call:
    started: float
    text: str = ""
    finish: str | None = None
    error: str | None = None


def greedy_answer(directory: Path) -> str:
    """The version's own greedy answer to QUESTION, from `generate` in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)  # eval mode
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": CONTENT}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0
        )
    return str(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))


class ChatLoop:
    """Streamed chat calls one after another through the stable URL until stopped."""

    def __init__(self, ai: openai.OpenAI) -> None:
        self.ai = ai
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ChatLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            call = Call(time.monotonic())
            try:
                stream = self.ai.chat.completions.create(
                    model=MODEL,
                    messages=QUESTION,
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                    stream=True,
                )
                for chunk in stream:
                    for choice in chunk.choices:
                        call.text += choice.delta.content or ""
                        call.finish = choice.finish_reason or call.finish
            except Exception as exc:  # every failure is recorded and asserted on
                call.error = f"{type(exc).__name__}: {exc}"
            self.calls.append(call)


def test_a_rollout_under_streamed_chat_drops_no_call(
    plane: Platform, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    v1 = make_llama(tmp_path / "v1", context=2048, seed=0)
    v2 = make_llama(tmp_path / "v2", context=2048, seed=1)
    answers = {1: greedy_answer(v1), 2: greedy_answer(v2)}
    assert answers[1] != answers[2], "the two random models must answer differently"
    with Client(plane.cp.url, plane.token) as sdk:
        first = sdk.push(MODEL, v1, format="hf_causal_lm").version
        second = sdk.push(MODEL, v2, format="hf_causal_lm").version
    body = {"name": NAME, "model": MODEL, "version": first, "replicas": 1}
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text
    # the package's worker has few slots: the tests after this one need its slot back
    request.addfinalizer(lambda: api(plane, "DELETE", f"/deployments/{NAME}"))
    stable = f"{plane.cp.url}/serve/{NAME}/v1"
    headers = {"Authorization": f"Bearer {plane.token}"}
    wait_for(
        f"{NAME} serving v1",
        lambda: (
            ready_endpoints(plane, NAME, first)
            and httpx.get(stable + "/models", headers=headers).status_code == 200
        ),
        120,
        plane.logs,
    )
    ai = openai.OpenAI(base_url=stable, api_key=plane.token or "none", max_retries=0, timeout=60)

    def rolled_out() -> bool:
        body = deployment(plane, NAME)
        live = [r for r in body["observed"]["replicas"] if r["desired"] == "run"]
        return (
            body["status"] == "available"
            and bool(live)
            and all(r["version"] == second and r["state"] == "ready" for r in live)
            and not ready_endpoints(plane, NAME, first)
        )

    with ChatLoop(ai) as loop:
        wait_for("calls on v1", lambda: len(loop.calls) >= 3, 60, plane.logs)
        patched = api(plane, "PATCH", f"/deployments/{NAME}", json={"version": second})
        assert patched.status_code == 200, patched.text
        wait_for(f"{NAME} rolled out to v2", rolled_out, 180, plane.logs)
        done = time.monotonic()
        wait_for(
            "calls after the rollout",
            lambda: sum(c.started > done for c in loop.calls) >= 5,
            60,
            plane.logs,
        )
    calls = loop.calls
    failed = [c for c in calls if c.error or c.finish is None]
    print(f"{len(calls)} streamed chat calls, {len(failed)} failed")
    assert not failed, failed[:5]
    served = [1 if c.text == answers[1] else 2 if c.text == answers[2] else None for c in calls]
    assert None not in served, [c.text for c, v in zip(calls, served, strict=True) if v is None]
    assert served[0] == 1
    assert all(v == 2 for c, v in zip(calls, served, strict=True) if c.started > done)
