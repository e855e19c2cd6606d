"""An image classifier pushed with its pipeline and labels, served by a real process that
registered itself, called through the stable URL ``/serve/{deployment}/…`` over TorchServe's
and TF Serving's APIs (and v2) as their users call them; a bad pipeline is refused at push."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from bench.pipeline import CLASSES, PIPELINE, SIGNATURE, png, save_classifier
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.deploying import database_url, pg_template  # noqa: F401  (fixtures)
from tests.registry.helpers import manifest
from tests.registry.test_deploy_serve import Plane, wait_for
from tests.serving.conftest import ServerProcess

PIXELS = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.fixture
def plane(settings: Settings, fs_artifacts: FileSystemArtifactStore) -> Iterator[Plane]:
    running = Plane(settings, fs_artifacts)
    yield running
    running.stop()


def push_classifier(plane: Plane, directory: Path, model: str) -> None:
    """Create (manifest, signature), upload each file, finalize: as the SDK pushes."""
    plane.call("POST", "/models", 201, json={"name": model})
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    body = {"files": manifest(files), "format": "torchscript", "signature": SIGNATURE}
    version = plane.call("POST", f"/models/{model}/versions", 201, json=body)
    for entry in version["files"]:
        if not entry["present"]:
            url = entry["upload"]["url"]  # a path on the control plane, or a full URL
            put = httpx.put(
                plane.url + url if url.startswith("/") else url, content=files[entry["path"]]
            )
            assert put.status_code == 200, put.text
    plane.call("POST", f"/models/{model}/versions/{version['version']}/finalize")


def test_image_classifier_answers_through_the_stable_url(plane: Plane, tmp_path: Path) -> None:
    model, name = f"m-{uuid.uuid4().hex[:8]}", "classifier"
    directory = tmp_path / "version"
    save_classifier(directory)
    push_classifier(plane, directory, model)
    plane.call("POST", "/deployments", 201, json={"name": name, "model": model, "version": 1})
    worker = plane.call("POST", "/workers", 201, json={"name": "t", "cpu_slots": 1})["id"]
    beat = plane.call("POST", f"/workers/{worker}/heartbeat", json={"replicas": []})
    [assignment] = beat["assignments"]
    serving = ServerProcess(
        [
            *("--name", model, "--format", "torchscript", "--path", str(directory)),
            *("--signature", orjson.dumps(SIGNATURE).decode(), "--heartbeat-s", "0.5"),
            *("--register-url", f"{plane.url}/api/v1", "--replica-id", assignment["replica_id"]),
        ],
        tmp_path,
        "serving",
    )
    stable = f"{plane.url}/serve/{name}"
    image = png(PIXELS)
    try:
        serving.wait_ready()
        wait_for("ready", lambda: httpx.get(f"{stable}/v2/health/ready").status_code == 200)
        with httpx.Client(timeout=20) as http:
            assert http.get(f"{stable}/ping").json() == {"status": "Healthy"}
            direct = http.put(f"{serving.url}/predictions/{model}", content=image).json()
            assert [r["label"] for r in direct] and all(r["label"] in CLASSES for r in direct)

            torchserve = http.post(
                f"{stable}/predictions/{model}",
                content=image,
                headers={"Content-Type": "image/png"},
            )
            assert torchserve.status_code == 200, torchserve.text
            assert torchserve.json() == direct

            status = http.get(f"{stable}/v1/models/{model}").json()
            assert status["model_version_status"][0]["state"] == "AVAILABLE"
            b64 = {"b64": base64.b64encode(image).decode()}
            v1 = http.post(
                f"{stable}/v1/models/{model}/versions/1:predict", json={"instances": [b64]}
            )
            assert v1.status_code == 200, v1.text
            assert v1.json() == {"predictions": [direct]}

            bad = http.post(f"{stable}/predictions/{model}", content=b"not a picture")
            assert bad.status_code == 400 and "not an image" in bad.json()["message"]
    finally:
        assert serving.stop() == 0


BAD_PIPELINES = {
    "unknown_step": {"input": [{"type": "resize", "size": 32}]},
    "topk_before_softmax": {"output": [{"type": "topk"}, {"type": "softmax"}]},
    "mean_per_channel": {"input": [{"type": "image", "mean": [0.5, 0.5]}]},
    "escaping_labels": {"output": [{"type": "argmax"}], "labels": "../labels.txt"},
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_a_bad_pipeline_is_refused_when_the_version_is_created(
    plane: Plane, tmp_path: Path, case: str
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    plane.call("POST", "/models", 201, json={"name": model})
    files = manifest({"model.pt": b"graph"})
    metadata = {"pipeline": BAD_PIPELINES[case]}
    answer = plane.http.post(
        f"/models/{model}/versions", json={"files": files, "metadata": metadata}
    )
    assert answer.status_code == 422, answer.text
    assert "invalid pipeline" in answer.text
    form = {"format": "torchscript"}
    upload = [
        ("file", ("model.pt", b"graph")),
        ("file", ("pipeline.json", orjson.dumps(BAD_PIPELINES[case]))),
    ]
    answer = plane.http.post(f"/models/{model}/versions:upload", files=upload, data=form)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["type"] == "/problems/invalid-pipeline" and "pipeline.json" in problem["detail"]
    good = {"pipeline": PIPELINE}
    created = plane.http.post(f"/models/{model}/versions", json={"files": files, "metadata": good})
    assert created.status_code == 201, created.text


def test_a_bad_pipeline_file_is_refused_at_finalize_and_the_version_stays_pending(
    plane: Plane,
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    plane.call("POST", "/models", 201, json={"name": model})
    files = {"model.pt": b"graph", "pipeline.json": orjson.dumps(BAD_PIPELINES["unknown_step"])}
    body = {"files": manifest(files), "format": "torchscript"}
    version = plane.call("POST", f"/models/{model}/versions", 201, json=body)
    for entry in version["files"]:
        url = entry["upload"]["url"]
        put = httpx.put(
            plane.url + url if url.startswith("/") else url, content=files[entry["path"]]
        )
        assert put.status_code == 200, put.text
    number = version["version"]
    answer = plane.http.post(f"/models/{model}/versions/{number}/finalize")
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["type"] == "/problems/invalid-pipeline"
    assert problem["detail"].startswith("pipeline.json: invalid pipeline")
    assert plane.call("GET", f"/models/{model}/versions/{number}")["status"] == "pending"
