"""The model zoo, end to end: each kind of model the product brief names is pushed the way
its users would, deployed, and called through the stable URL (`/serve/{deployment}/…`) the
way its users already call it; the answer equals the framework's own in-process answer.

Real processes: a control plane (SQLite, artifacts in a folder, auth off) and one deployer
worker whose serving processes start side by side (one CPU slot per deployment), stopped by
PID. The models are made here (no hub). The CIFAR-shaped CNN with its image pipeline is
tests/registry/test_serve_protocols.py's.

Tolerances: answers travel as float32. Keras and the ONNX export of a torch module run the
same float32 kernels as the reference (rtol 1e-5, atol 1e-6); scikit-learn predicts in
float64, its ONNX conversion in float32 (labels equal, probabilities and regression within
1e-4 relative and 1e-5 absolute); the SavedModel is served without oneDNN's reordered
kernels, the reference may use them (rtol 1e-5, atol 1e-5).
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras (TensorFlow does)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.http as triton  # noqa: E402

from bench.harness import ControlPlane, Worker  # noqa: E402
from client import Client  # noqa: E402

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    # Keras's own conversions (fit, save) on numpy 2: not ours to fix
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

READY_TIMEOUT_S = 420.0  # seven processes importing torch, onnxruntime, TensorFlow on 2 cores
CALL_TIMEOUT_S = 30.0
ROWS = 16
EXACT = {"rtol": 1e-5, "atol": 1e-6}
FLOAT32 = {"rtol": 1e-4, "atol": 1e-5}
ONEDNN = {"rtol": 1e-5, "atol": 1e-5}


@dataclass
class Zoo:
    cp: ControlPlane
    worker: Worker
    client: Client
    models: dict[str, Any] = field(default_factory=dict)  # deployment → in-process model
    ready: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.cp.url

    def logs(self) -> str:
        return "\n".join([self.cp.log(), self.worker.log(20000)])

    def wait(self, deployment: str) -> None:
        """Until `deployment` serves through its stable URL (all were deployed together)."""
        if deployment not in self.ready:
            try:
                self.client.wait_ready(deployment, timeout=READY_TIMEOUT_S)
            except Exception as exc:
                raise AssertionError(f"{deployment}: {exc}\n{self.logs()}") from exc
            self.ready.add(deployment)


def features(seed: int, rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


# -- the models, made here -------------------------------------------------------------------


def keras_model() -> Any:
    """A Dense `Sequential` trained a few steps."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(4,), name="x"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, name="scores"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    x = features(10, 64)
    model.fit(x, x[:, :3] * 2.0, epochs=3, batch_size=16, verbose=0)
    return model


def sklearn_models() -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    x = features(20, 200).astype(np.float64)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)  # three classes
    target = x @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.25
    return {
        "zoo-linear": LinearRegression().fit(x, target),
        "zoo-logistic": LogisticRegression(max_iter=500).fit(x, y),
        "zoo-tree": DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y),
        "zoo-forest": RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(
            x, y
        ),
    }


def savedmodel(directory: Path) -> Any:
    """A `tf.Module` with a `serving_default` signature: x [n, 4] → scores [n, 3] and
    class [n]; the loaded signature answers in process."""
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(1)
            self.w = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32))
            self.b = tf.Variable(rng.standard_normal(3).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            scores = tf.nn.softmax(tf.matmul(x, self.w) + self.b)
            return {"scores": scores, "class": tf.argmax(scores, axis=1)}

    module = Scorer()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return tf.saved_model.load(str(directory)).signatures["serving_default"]


def onnx_from_torch(path: Path) -> Any:
    """A torch MLP exported to ONNX with a dynamic batch; the module answers in process."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (torch.zeros(2, 4),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return module


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    """Every zoo model pushed and deployed at once on one worker (their processes start
    side by side); each test waits for its own."""
    home = tmp_path_factory.mktemp("zoo")
    cp = ControlPlane(home, {"MODELPLANE_HOME": str(home), "MODELPLANE_AUTH_ENABLED": "false"})
    worker: Worker | None = None
    try:
        cp.wait_ready()
        worker = Worker(
            home,
            cp.url,
            "zoo",
            None,
            cpu_slots="8",
            drain_timeout_s="10",
            max_restarts="1",
            port_range="43000-43499",
        )
        client = Client(cp.url, None, timeout=CALL_TIMEOUT_S)
        zoo = Zoo(cp, worker, client)
        zoo.models["zoo-onnx"] = onnx_from_torch(home / "mlp.onnx")
        client.push("zoo-onnx", home / "mlp.onnx")
        zoo.models["zoo-tf"] = savedmodel(home / "savedmodel")
        client.push("zoo-tf", home / "savedmodel", format="tf_savedmodel")
        for name, estimator in sklearn_models().items():
            client.push_sklearn(name, estimator, features(30, 8))
            zoo.models[name] = estimator
        zoo.models["zoo-keras"] = keras_model()
        client.push_keras("zoo-keras", zoo.models["zoo-keras"], features(31, 8))
        for name in zoo.models:
            client.deploy(name, version=1)
        yield zoo
        client.close()
    finally:
        if worker is not None:
            worker.stop(60)
        cp.stop()


# -- the calls, as each framework's users make them ------------------------------------------


def test_keras_sequential_answers_what_keras_does(zoo: Zoo) -> None:
    import torch

    zoo.wait("zoo-keras")
    x = features(1)
    got = zoo.client.infer("zoo-keras", x)
    with torch.no_grad():
        want = zoo.models["zoo-keras"](x, training=False).cpu().numpy()
    assert set(got) == {"scores"}
    np.testing.assert_allclose(got["scores"], want, **EXACT)
    meta = zoo.client.model_metadata("zoo-keras")
    assert meta["platform"] == "keras_torch"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("name", ["zoo-logistic", "zoo-tree", "zoo-forest"])
def test_sklearn_classifier_answers_labels_and_probabilities_as_the_estimator(
    zoo: Zoo, name: str
) -> None:
    zoo.wait(name)
    estimator = zoo.models[name]
    x = features(2)
    got = zoo.client.infer(name, x)
    assert set(got) == {"label", "probabilities"}
    np.testing.assert_array_equal(got["label"], estimator.predict(x.astype(np.float64)))
    want = estimator.predict_proba(x.astype(np.float64))
    np.testing.assert_allclose(got["probabilities"], want, **FLOAT32)


def test_sklearn_linear_regression_answers_what_the_estimator_predicts(zoo: Zoo) -> None:
    zoo.wait("zoo-linear")
    x = features(3)
    got = zoo.client.infer("zoo-linear", x)
    [name] = got
    want = zoo.models["zoo-linear"].predict(x.astype(np.float64))
    np.testing.assert_allclose(got[name].reshape(-1), want, **FLOAT32)


def test_savedmodel_answers_tf_serving_row_and_columnar_requests(zoo: Zoo) -> None:
    zoo.wait("zoo-tf")
    x = features(4, 5)
    want = {k: v.numpy() for k, v in zoo.models["zoo-tf"](x=x).items()}
    url = f"{zoo.url}/serve/zoo-tf/v1/models/zoo-tf:predict"

    rows = httpx.post(url, json={"instances": x.tolist()}, timeout=CALL_TIMEOUT_S)
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert len(predictions) == len(x)
    np.testing.assert_allclose([p["scores"] for p in predictions], want["scores"], **ONEDNN)
    assert [p["class"] for p in predictions] == want["class"].tolist()

    columns = httpx.post(url, json={"inputs": {"x": x.tolist()}}, timeout=CALL_TIMEOUT_S)
    assert columns.status_code == 200, columns.text
    outputs = columns.json()["outputs"]
    np.testing.assert_allclose(outputs["scores"], want["scores"], **ONEDNN)
    assert outputs["class"] == want["class"].tolist()

    status = httpx.get(f"{zoo.url}/serve/zoo-tf/v1/models/zoo-tf", timeout=CALL_TIMEOUT_S)
    assert status.json()["model_version_status"][0]["state"] == "AVAILABLE"


def test_savedmodel_refuses_a_wrong_shape_in_tf_serving_form(zoo: Zoo) -> None:
    zoo.wait("zoo-tf")
    url = f"{zoo.url}/serve/zoo-tf/v1/models/zoo-tf:predict"
    answer = httpx.post(url, json={"instances": [[1.0, 2.0, 3.0]]}, timeout=CALL_TIMEOUT_S)
    assert answer.status_code == 400, answer.text
    assert "'x'" in answer.json()["error"] and "\n" not in answer.json()["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_onnx_from_pytorch_answers_stock_tritonclient_as_the_module(zoo: Zoo, binary: bool) -> None:
    import torch

    zoo.wait("zoo-onnx")
    host = zoo.url.removeprefix("http://")
    client = triton.InferenceServerClient(f"{host}/serve/zoo-onnx", network_timeout=30)
    try:
        meta = client.get_model_metadata("zoo-onnx", headers={})  # tritonclient mutates it
        [spec] = meta["inputs"]
        x = features(5)
        tensor = triton.InferInput(spec["name"], list(x.shape), spec["datatype"])
        tensor.set_data_from_numpy(x, binary_data=binary)
        names = [o["name"] for o in meta["outputs"]]
        wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
        result = client.infer("zoo-onnx", [tensor], outputs=wanted, headers={})
        got = result.as_numpy(names[0])
    finally:
        client.close()
    with torch.no_grad():
        want = zoo.models["zoo-onnx"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, **EXACT)
