"""The OpenAI API of a real serving process over a tiny random Llama (sharded safetensors, a
BPE tokenizer trained here, a chat template) and a tiny BERT encoder: the official `openai`
client, greedy output token for token equal to in-process `model.generate`, continuous
batching of concurrent streams, cancellation on disconnect, limits and errors in OpenAI's
shape, a full queue, draining."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from bench.llm_models import make_bert, make_llama
from tests.serving.conftest import ServerProcess

pytestmark = pytest.mark.system
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a hub; models are made below
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
CONTEXT = 1024
PROMPTS = [
    "the quick brown fox",
    "a model registry keeps",
    "hello world, how are",
    "serving a language model",
    "continuous batching lets",
    "user assistant system: 0 1 2",
    "the lazy dog jumps",
    "numbered versions of every",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = make_llama(tmp_path_factory.mktemp("llama") / "tiny", context=CONTEXT)
    assert len(list(directory.glob("model-*-of-*.safetensors"))) >= 3
    return directory


@pytest.fixture(scope="module")
def reference(llama_dir: Path) -> Any:
    """The same model in this process, for `generate`'s own greedy answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(llama_dir, local_files_only=True)


def greedy(reference: Any, ids: list[int], max_tokens: int) -> tuple[str, int, str]:
    """(text, tokens, finish reason) of in-process greedy `generate`."""
    import torch

    model, tokenizer = reference
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0
        )
    new = out[0, len(ids) :].tolist()
    finish = "stop" if new[-1] == tokenizer.eos_token_id else "length"
    return tokenizer.decode(new, skip_special_tokens=True), len(new), finish


def chat_ids(reference: Any, content: str) -> list[int]:
    tokenizer = reference[1]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def llm(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--name", "tiny", "--format", "hf_causal_lm", "--path", str(llama_dir)]
    server = ServerProcess(
        [*args, "--max-batch-size", "8"], tmp_path_factory.mktemp("logs"), "llm", ENV
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def client(server: ServerProcess, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", **kwargs)


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    text = httpx.get(server.url + "/metrics").text
    pattern = rf"^{name}\{{[^}}]*{labels}[^}}]*\}} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_chat_greedy_equals_generate(llm: ServerProcess, reference: Any) -> None:
    answer = client(llm).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=24,
        temperature=0,
    )
    ids = chat_ids(reference, "hello world")
    text, tokens, finish = greedy(reference, ids, 24)
    assert answer.choices[0].message.content == text
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == finish
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), tokens)


def test_chat_stream_matches_the_whole_answer(llm: ServerProcess, reference: Any) -> None:
    stream = client(llm).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "the quick brown fox"}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected, tokens, finish = greedy(reference, chat_ids(reference, "the quick brown fox"), 20)
    assert text == expected
    assert len(chunks) > 2  # token by token, not one blob
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == tokens


def test_completion_streamed_and_not(llm: ServerProcess, reference: Any) -> None:
    tokenizer = reference[1]
    ids = list(tokenizer("a model registry")["input_ids"])
    expected, tokens, _ = greedy(reference, ids, 16)
    whole = client(llm).completions.create(
        model="tiny", prompt="a model registry", max_tokens=16, temperature=0
    )
    assert whole.choices[0].text == expected
    assert whole.usage is not None and whole.usage.completion_tokens == tokens
    streamed = client(llm).completions.create(
        model="tiny", prompt="a model registry", max_tokens=16, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_seeded_sampling_repeats_and_stop_strings_cut(llm: ServerProcess) -> None:
    ask: Any = {"model": "tiny", "prompt": "hello", "max_tokens": 30, "top_p": 0.9}
    first = client(llm).completions.create(**ask, seed=7, temperature=1.0).choices[0].text
    again = client(llm).completions.create(**ask, seed=7, temperature=1.0).choices[0].text
    assert again == first
    whole = client(llm).completions.create(**ask, temperature=0).choices[0].text
    assert len(whole) > 5
    stop = whole[3:5]
    cut = client(llm).completions.create(**ask, temperature=0, stop=[stop]).choices[0]
    assert cut.text == whole[: whole.index(stop)] and cut.finish_reason == "stop"


def test_eight_concurrent_streams_equal_their_sequential_answers(llm: ServerProcess) -> None:
    sync = client(llm)
    ask = {"model": "tiny", "max_tokens": 48, "temperature": 0}
    sequential = [
        sync.completions.create(prompt=p, **ask).choices[0].text
        for p in PROMPTS  # type: ignore[call-overload]
    ]
    itl_before = metric(llm, "modelplane_llm_inter_token_seconds_count")

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=llm.url + "/v1", api_key="unused") as aclient:

            async def one(prompt: str) -> str:
                stream = await aclient.completions.create(prompt=prompt, stream=True, **ask)
                return "".join([c.choices[0].text async for c in stream])

            return await asyncio.gather(*(one(p) for p in PROMPTS))

    started = time.monotonic()
    assert asyncio.run(together()) == sequential
    assert time.monotonic() - started < 60
    assert metric(llm, "modelplane_llm_requests_running") == 0
    assert metric(llm, "modelplane_llm_inter_token_seconds_count") > itl_before


def test_a_disconnect_mid_stream_frees_the_slot(llm: ServerProcess) -> None:
    cancelled = metric(llm, "modelplane_llm_requests_finished_total", 'reason="cancelled"')
    generated = metric(llm, "modelplane_llm_generation_tokens_total")
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 1000, "stream": True}
    body |= {"temperature": 0.8, "seed": 1, "ignore_eos": True}
    with httpx.stream("POST", llm.url + "/v1/completions", json=body, timeout=30) as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        lines = answer.iter_lines()
        assert next(lines).startswith("data: {")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(llm, "modelplane_llm_requests_finished_total", 'reason="cancelled"') > cancelled:
            break
        time.sleep(0.05)
    assert metric(llm, "modelplane_llm_requests_finished_total", 'reason="cancelled"') == (
        cancelled + 1
    )
    assert metric(llm, "modelplane_llm_requests_running") == 0
    assert metric(llm, "modelplane_llm_generation_tokens_total") - generated < 1000


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny"}, 400, "messages"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000},
            400,
            "max_tokens",
        ),
        (b"{not json", 400, None),
    ],
)
def test_bad_chat_calls_answer_openai_shaped_errors(
    llm: ServerProcess, body: Any, status: int, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else None
    answer = httpx.post(
        llm.url + "/v1/chat/completions",
        content=content,
        json=None if content else body,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if status == 400 and param == "max_tokens":
        assert "1024" in error["message"] and "5000" in error["message"]


def test_the_openai_client_raises_its_own_errors(llm: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError):
        client(llm).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024"):
        client(llm).completions.create(model="tiny", prompt="hello", max_tokens=2000)


def test_models_lists_the_served_name_and_tf_serving_v1_still_answers(llm: ServerProcess) -> None:
    assert [m.id for m in client(llm).models.list()] == ["tiny"]
    assert httpx.get(llm.url + "/v1/models/tiny").status_code in (200, 404, 503)
    assert "error" in httpx.get(llm.url + "/v1/models/other").json()


def test_a_full_queue_answers_429_with_retry_after(
    llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    args = ["--name", "tiny", "--format", "hf_causal_lm", "--path", str(llama_dir)]
    server = ServerProcess(
        [*args, "--max-batch-size", "1", "--max-queue", "1"],
        tmp_path_factory.mktemp("logs"),
        "llm-queue",
        ENV,
    ).wait_ready()
    try:
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 900, "stream": True}
        body |= {"temperature": 0.8, "seed": 3, "ignore_eos": True}
        statuses: list[int] = []
        with (
            httpx.Client(base_url=server.url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=body) as running,
        ):
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)  # it decodes: the one slot is taken
            with http.stream("POST", "/v1/completions", json=body) as waiting:
                time.sleep(0.2)
                third = httpx.post(server.url + "/v1/completions", json=body)
                statuses.append(waiting.status_code)
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["type"] == "rate_limit_error"
        assert statuses == [200]
    finally:
        server.stop()


def test_draining_finishes_an_in_flight_stream(
    llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    args = ["--name", "tiny", "--format", "hf_causal_lm", "--path", str(llama_dir)]
    server = ServerProcess(args, tmp_path_factory.mktemp("logs"), "llm-drain", ENV).wait_ready()
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 400, "stream": True}
    body |= {"temperature": 0.8, "seed": 5, "ignore_eos": True}
    events: list[str] = []
    try:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as answer:
            lines = answer.iter_lines()
            events.append(next(lines))
            threading.Thread(target=server.process.send_signal, args=(signal.SIGTERM,)).start()
            events.extend(line for line in lines if line)
        assert events[-1] == "data: [DONE]"
        assert any('"finish_reason":"length"' in e for e in events)
        assert server.process.wait(30) == 0
    finally:
        server.stop()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    directory = make_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")
    args = ["--name", "enc", "--format", "hf_embedding", "--path", str(directory)]
    server = ServerProcess(args, tmp_path_factory.mktemp("logs"), "enc", ENV)
    try:
        yield server.wait_ready(), directory
    finally:
        server.stop()


def test_embeddings_are_mean_pooled_and_normalised(encoder: tuple[ServerProcess, Path]) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    server, directory = encoder
    texts = ["hello world", "the quick brown fox jumps"]
    answer = client(server).embeddings.create(model="enc", input=texts)  # base64 on the wire
    got = np.array([d.embedding for d in answer.data])
    model = AutoModel.from_pretrained(directory, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    expected = []
    for text in texts:
        batch = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state[0]
        vector = hidden.mean(0)
        expected.append((vector / vector.norm()).numpy())
    np.testing.assert_allclose(got, np.array(expected), atol=1e-5)
    assert answer.usage.prompt_tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    floats = httpx.post(
        server.url + "/v1/embeddings", json={"model": "enc", "input": "hello world"}
    ).json()
    assert np.allclose(floats["data"][0]["embedding"], got[0], atol=1e-6)
    raw = base64.b64decode(
        httpx.post(
            server.url + "/v1/embeddings",
            json={"model": "enc", "input": "hello world", "encoding_format": "base64"},
        ).json()["data"][0]["embedding"]
    )
    assert np.allclose(np.frombuffer(raw, dtype=np.float32), got[0], atol=1e-6)
    wrong = httpx.post(server.url + "/v1/chat/completions", json={"model": "enc", "messages": []})
    assert wrong.status_code == 404 and "error" in wrong.json()
