"""What the Keras and TensorFlow SavedModel runtimes do beyond the contract suite: Keras's
safe mode and its names, the SDK's saved signature against what serving shows, SavedModel
strings, signatures and layout. In process, on models made here."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras (TensorFlow does)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from contract.formats import LayoutError, check_version  # noqa: E402
from serving.artifacts import ArtifactError  # noqa: E402
from serving.runtimes import RuntimeOptions, runtime_for  # noqa: E402
from serving.runtimes.base import InputsDoNotFit, call_failure, manifest  # noqa: E402

pytestmark = [
    pytest.mark.system,  # in process, but keras and TensorFlow run `uname -p` when imported
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


def load(fmt: str, path: Path, **options: Any) -> Any:
    runtime = runtime_for(fmt)(fmt, RuntimeOptions(**options))
    runtime.load(path)
    return runtime


def as_dicts(specs: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


# -- Keras -----------------------------------------------------------------------------------


def test_a_keras_lambda_layer_is_refused_unless_the_deployment_allows_pickle(
    tmp_path: Path,
) -> None:
    import keras

    model = keras.Sequential(
        [keras.Input(shape=(4,), name="x"), keras.layers.Lambda(lambda t: t * 2)]
    )
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ArtifactError, match="runs when loaded.*allow_pickle"):
        load("keras", tmp_path / "lambda.keras")
    trusted = load("keras", tmp_path / "lambda.keras", allow_pickle=True)
    [out] = trusted.predict({"x": np.ones((2, 4), np.float32)}).values()
    np.testing.assert_array_equal(out.data, np.full((2, 4), 2, np.float32))


def test_a_keras_model_of_named_inputs_and_outputs_serves_them_by_name(tmp_path: Path) -> None:
    import keras

    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), name="b", dtype="int32")
    joined = keras.layers.Concatenate()([a, keras.ops.cast(b, "float32")])
    outputs = {"p": keras.layers.Dense(2)(joined), "q": keras.layers.Dense(1)(joined)}
    keras.Model({"a": a, "b": b}, outputs).save(tmp_path / "two.keras")
    runtime = load("keras", tmp_path / "two.keras")
    assert as_dicts(runtime.inputs) == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "INT32", "shape": [-1, 2]},
    ]
    assert as_dicts(runtime.outputs) == [
        {"name": "p", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "q", "datatype": "FP32", "shape": [-1, 1]},
    ]
    assert runtime.batchable
    answer = runtime.predict({"a": np.ones((5, 3), np.float32), "b": np.ones((5, 2), np.int32)})
    assert {k: v.data.shape for k, v in answer.items()} == {"p": (5, 2), "q": (5, 1)}


def test_a_keras_input_that_does_not_fit_is_one_line_naming_the_layer(tmp_path: Path) -> None:
    from tests.serving.runtime_cases_keras_tf import keras_mlp

    keras_mlp().save(tmp_path / "mlp.keras")
    runtime = load("keras", tmp_path / "mlp.keras")
    with pytest.raises(InputsDoNotFit) as refused:
        runtime.predict({"x": np.ones((2, 5), np.float32)})
    message = str(call_failure(refused.value))
    assert "incompatible" in message and "\n" not in message and "\x1b" not in message


def test_push_keras_records_the_signature_serving_shows(tmp_path: Path) -> None:
    from client.keras import save
    from tests.serving.runtime_cases_keras_tf import keras_mlp

    signature, metadata = save(keras_mlp(), np.ones((20, 4)), tmp_path / "model.keras")
    runtime = load("keras", tmp_path / "model.keras")
    assert signature == {
        "inputs": as_dicts(runtime.inputs),
        "outputs": as_dicts(runtime.outputs),
    }
    [example] = metadata["example"]["inputs"]
    assert example["name"] == "x" and example["datatype"] == "FP32" and example["shape"] == [8, 4]


# -- TensorFlow SavedModel -------------------------------------------------------------------


def test_savedmodel_strings_are_bytes_both_ways(tmp_path: Path) -> None:
    import tensorflow as tf

    class Words(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: Any) -> dict[str, Any]:
            return {
                "upper": tf.strings.upper(text, encoding="utf-8"),
                "length": tf.strings.length(text, unit="UTF8_CHAR"),
            }

    module = Words()
    tf.saved_model.save(
        module, str(tmp_path / "words"), signatures={"serving_default": module.serve}
    )
    runtime = load("tf_savedmodel", tmp_path / "words")
    assert as_dicts(runtime.inputs) == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {s.name: s.datatype for s in runtime.outputs} == {"upper": "BYTES", "length": "INT32"}
    text = np.array([b"cat", "\u00e9t\u00e9".encode()], dtype=object)
    answer = runtime.predict({"text": text})
    assert answer["upper"].data.tolist() == [b"CAT", "\u00c9T\u00c9".encode()]
    assert answer["length"].data.tolist() == [3, 3]


def test_savedmodel_without_serving_default_names_the_signatures_it_has(tmp_path: Path) -> None:
    import tensorflow as tf

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def double(self, x: Any) -> dict[str, Any]:
            return {"y": x * 2}

    module = Other()
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"double": module.double})
    with pytest.raises(ArtifactError, match="no 'serving_default' signature.*double"):
        load("tf_savedmodel", tmp_path / "other")


def test_savedmodel_layout_needs_its_variables_and_finds_tf_serving_subdirectories(
    tmp_path: Path,
) -> None:
    from tests.serving.runtime_cases_keras_tf import tf_mlp

    tf_mlp(tmp_path / "1")
    files = [(f"1/{path}", size) for path, size in manifest(tmp_path / "1")]
    found = check_version("tf_savedmodel", files)
    assert found is not None and found.graph == "1/saved_model.pb" and not found.single_file
    without = [(p, s) for p, s in files if "/variables/" not in p]
    with pytest.raises(LayoutError, match="variables/variables.index"):
        check_version("tf_savedmodel", without)
    runtime = load("tf_savedmodel", tmp_path)  # a TF Serving base directory
    assert [s.name for s in runtime.inputs] == ["x"]
