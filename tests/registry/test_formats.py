"""A version's format is one a runtime serves and its files make one (`contract.formats`):
422 at creation (listing the known formats, or saying what the files lack) and again at
finalize, before anything deploys. Pickled estimators are refused with the fix."""

from __future__ import annotations

from pathlib import Path

import httpx

from registry.db import SessionFactory, utcnow
from registry.repositories.models import ModelRepository
from registry.repositories.versions import VersionRepository
from tests.registry.helpers import API, assert_problem, manifest, ready_version
from tests.support.third_party_runtime import acme_runtime  # noqa: F401 - a fixture

ONNX = b"\x08\x07" + b"graph" * 10


async def post_version(
    client: httpx.AsyncClient, model: str, files: dict[str, bytes], **extra: object
) -> httpx.Response:
    return await client.post(
        f"{API}/models/{model}/versions", json={"files": manifest(files), **extra}
    )


async def test_unknown_format_is_422_listing_the_known_ones(
    client: httpx.AsyncClient, model: str
) -> None:
    response = await post_version(client, model, {"m.bin": b"x"}, format="tensorrt")
    body = assert_problem(response, 422, "unknown-format")
    assert "'tensorrt'" in body["detail"]
    for known in ("onnx", "torchscript", "torch_export", "safetensors", "keras", "tf_savedmodel"):
        assert known in body["known"]


async def test_files_that_cannot_make_the_format_are_422_at_creation(
    client: httpx.AsyncClient, model: str
) -> None:
    response = await post_version(client, model, {"model.pt": b"torch"}, format="onnx")
    body = assert_problem(response, 422, "invalid-artifact-layout")
    assert "one ONNX file (.onnx)" in body["detail"] and "model.pt" in body["detail"]
    two = await post_version(client, model, {"a.onnx": ONNX, "b.onnx": ONNX}, format="onnx")
    assert "a.onnx, b.onnx" in assert_problem(two, 422, "invalid-artifact-layout")["detail"]
    weights = await post_version(client, model, {"graph.pt": b"g"}, format="safetensors")
    assert ".safetensors" in assert_problem(weights, 422, "invalid-artifact-layout")["detail"]
    listed = await client.get(f"{API}/models/{model}/versions")
    assert listed.json()["items"] == []


async def test_onnx_with_external_data_is_one_multi_file_version(
    client: httpx.AsyncClient, model: str
) -> None:
    files = {"model/model.onnx": ONNX, "model/weights.bin": b"w" * 100}
    number = await ready_version(client, model, files, format="onnx")
    out = (await client.get(f"{API}/models/{model}/versions/{number}")).json()
    assert out["format"] == "onnx" and out["signature_hint"] is None


async def test_pickled_estimators_are_refused_with_the_conversion_as_the_fix(
    client: httpx.AsyncClient, model: str
) -> None:
    for files, fmt in [
        ({"model.joblib": b"pickle"}, None),
        ({"model.pkl": b"pickle"}, None),
        ({"model.onnx": ONNX, "scaler.pkl": b"pickle"}, "onnx"),
        ({"model.joblib": b"pickle"}, "pickle"),
    ]:
        response = await post_version(client, model, files, format=fmt)
        detail = assert_problem(response, 422, "invalid-artifact-layout")["detail"]
        assert "push_sklearn" in detail and "skl2onnx" in detail, detail
    # a torch.save'd module is format pickle, served only with allow_pickle
    assert (await post_version(client, model, {"m.pkl": b"p"}, format="pickle")).status_code == 201


async def test_finalize_refuses_files_that_cannot_make_the_format(
    client: httpx.AsyncClient, sessions: SessionFactory, model: str
) -> None:
    """A pending version from before the rule (created as its format could not be checked)."""
    now = utcnow()
    async with sessions.begin() as session:
        model_id, number = await ModelRepository(session).next_version(model)
        values = {
            "model_id": model_id, "version": number, "status": "pending", "format": "onnx",
            "description": "", "tags": {}, "metadata": {}, "signature": None, "source": None,
            "created_by": "test", "created_at": now, "updated_at": now,
        }  # fmt: skip
        [spec] = manifest({"model.pt": b"torch bytes"})
        await VersionRepository(session).add(values, [spec])
    put = await client.put(
        f"{API}/models/{model}/versions/{number}/files/model.pt", content=b"torch bytes"
    )
    assert put.status_code == 200, put.text
    response = await client.post(f"{API}/models/{model}/versions/{number}/finalize")
    assert "one ONNX file" in assert_problem(response, 422, "invalid-artifact-layout")["detail"]
    version = await client.get(f"{API}/models/{model}/versions/{number}")
    assert version.json()["status"] == "pending"


async def test_one_shot_upload_of_a_misfit_is_422(client: httpx.AsyncClient, model: str) -> None:
    files = [("file", ("model.pt", b"torch bytes"))]
    response = await client.post(
        f"{API}/models/{model}/versions:upload", files=files, data={"format": "onnx"}
    )
    assert_problem(response, 422, "invalid-artifact-layout")


async def test_a_version_without_shapes_or_signature_says_how_to_add_one(
    client: httpx.AsyncClient, model: str
) -> None:
    bare = await ready_version(client, model, {"model.pt": b"ts"}, format="torchscript")
    signed = await ready_version(
        client,
        model,
        {"model.pt": b"ts2"},
        format="torchscript",
        signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
    )
    example = await ready_version(
        client,
        model,
        {"model.pt": b"ts3"},
        format="torchscript",
        metadata={"example": {"inputs": [{"name": None, "datatype": "FP32", "shape": [1]}]}},
    )
    hint = (await client.get(f"{API}/models/{model}/versions/{bare}")).json()["signature_hint"]
    assert "no signature" in hint and "--signature" in hint and "--example" in hint
    out = (await client.get(f"{API}/models/{model}/versions/{signed}")).json()
    assert out["signature_hint"] is None
    hint = (await client.get(f"{API}/models/{model}/versions/{example}")).json()["signature_hint"]
    assert "example input" in hint and "--signature" in hint


async def test_a_third_party_runtime_brings_its_format_and_layout(
    client: httpx.AsyncClient,
    model: str,
    acme_runtime: Path,  # noqa: F811
) -> None:
    ok = await post_version(client, model, {"model.acme": b'{"scale": 2}'}, format="acme")
    assert ok.status_code == 201, ok.text
    misfit = await post_version(client, model, {"model.bin": b"x"}, format="acme")
    assert "one acme file (.acme)" in assert_problem(misfit, 422)["detail"]
    unknown = await post_version(client, model, {"model.bin": b"x"}, format="acme2")
    assert "acme" in assert_problem(unknown, 422, "unknown-format")["known"]
