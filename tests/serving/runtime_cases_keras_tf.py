"""The contract suite's Keras and TensorFlow SavedModel cases (`runtime_cases.BUILDERS`).

Keras runs on the torch backend here as in serving: `KERAS_BACKEND` is set when this module
is imported, before anything imports keras (TensorFlow imports keras too, and keras keeps the
first backend it is imported with)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # the serving process's kernels

import numpy as np  # noqa: E402

if TYPE_CHECKING:  # runtime_cases imports this module: its classes are read in the builders
    from tests.serving.runtime_cases import Broken, Case, Reference


def keras_mlp() -> Any:
    """A Dense `Sequential` 4 → 16 → 3 with named input and output, seeded."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(shape=(4,), name="x"),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(3, name="y"),
        ]
    )


def keras_reference(model: Any, output: str) -> Reference:
    import torch

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {output: model(x, training=False).cpu().numpy()}

    return run


def keras_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    """The MLP as a `.keras` file; a model whose embedding lookup fails inside on inputs
    over its 100 rows (built from built-in layers, so `safe_mode` loads it)."""
    import keras

    from tests.serving.runtime_cases import Broken, Case

    model = keras_mlp()
    x = keras.Input(shape=(4,), name="x")
    looked_up = keras.layers.Embedding(100, 2)(keras.ops.cast(x, "int32"))
    with warnings.catch_warnings():  # Keras's own numpy 2 conversion while saving
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(root / "mlp.keras")
        keras.Model(x, looked_up).save(root / "lookup.keras")
    case = Case(
        "keras",
        "keras",
        root / "mlp.keras",
        "mlp",
        "x",
        "FP32",
        (4,),
        {"y": ("FP32", [-1, 3])},
        keras_reference(model, "y"),
        batchable=True,
        platform="keras_torch",
    )
    broken = Broken(
        "keras",
        "keras",
        root / "lookup.keras",
        "lookup",
        "x",
        np.full((1, 4), 1000, np.float32),
        np.ones((3, 4), np.float32),
    )
    return [case], [broken]


def tf_mlp(directory: Path) -> Any:
    """A `tf.Module` MLP 4 → 16 → 3 saved with a `serving_default` signature (x → y);
    the loaded signature, to answer in process."""
    import tensorflow as tf

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self.w1 = tf.Variable(rng.standard_normal((4, 16)).astype(np.float32))
            self.w2 = tf.Variable(rng.standard_normal((16, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": tf.matmul(tf.tanh(tf.matmul(x, self.w1)), self.w2)}

    module = Mlp()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return tf.saved_model.load(str(directory)).signatures["serving_default"]


def tf_reference(signature: Any) -> Reference:
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in signature(x=x).items()}

    return run


def tensorflow_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    """The MLP as a SavedModel directory; one asserting its inputs are under 100."""
    import tensorflow as tf

    from tests.serving.runtime_cases import Broken, Case

    signature = tf_mlp(root / "mlp")

    class Guarded(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            tf.debugging.assert_less(x, 100.0, message="inputs over 100 are out of range")
            return {"y": x * 2}

    guarded = Guarded()
    tf.saved_model.save(
        guarded, str(root / "guarded"), signatures={"serving_default": guarded.serve}
    )
    case = Case(
        "tf_savedmodel",
        "tf_savedmodel",
        root / "mlp",
        "mlp",
        "x",
        "FP32",
        (4,),
        {"y": ("FP32", [-1, 3])},
        tf_reference(signature),
        batchable=True,
        platform="tensorflow_savedmodel",
    )
    broken = Broken(
        "tensorflow",
        "tf_savedmodel",
        root / "guarded",
        "guarded",
        "x",
        np.full((1, 4), 1000, np.float32),
        np.ones((3, 4), np.float32),
    )
    return [case], [broken]
