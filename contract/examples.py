"""A version's example input: one call's worth of tensors, recorded when it is pushed.

Recorded in `metadata["example"]` (the SDK's `push(..., example=...)`, `push_sklearn`,
`modelplane push --example x.npy`) as v2-style inputs: `{"inputs": [{"name", "datatype",
"shape", "data"}]}`. A name may be null (then the model's inputs are taken in order); `data`
is left out beyond `MAX_EXAMPLE_ELEMENTS` (a serving process then warms up on zeros of that
datatype and shape). The registry hands it to the serving process inside the signature it
is started with (`with_example`), where it drives the warm-up call that learns what a format
without shapes (TorchScript) does not say: input datatypes and shapes, the outputs' names,
datatypes and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from contract.dtypes import DATATYPES, FROM_NUMPY

EXAMPLE_KEY = "example"
MAX_EXAMPLE_ELEMENTS = 1024  # beyond this only datatype and shape (it travels in argv)
MAX_EXAMPLE_DIMS = 16


class ExampleError(ValueError):
    """An example that cannot be recorded or read."""


Example = Mapping[str | None, Any] | Sequence[Any] | Any  # one array, several, or by name


def encode_example(example: Example) -> dict[str, Any]:
    """An array, a list of arrays (taken in the model's input order) or `{name: array}` as
    the JSON recorded in `metadata["example"]`."""
    if isinstance(example, Mapping):
        items: list[tuple[str | None, Any]] = list(example.items())
    elif isinstance(example, list | tuple):
        items = [(None, value) for value in example]
    else:
        items = [(None, example)]
    if not items:
        raise ExampleError("an example needs at least one input")
    return {"inputs": [_encode(name, value) for name, value in items]}


def _encode(name: str | None, value: Any) -> dict[str, Any]:
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if array.dtype == object or array.dtype.kind in "SU":
        datatype = "BYTES"
        data = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]
    else:
        datatype = FROM_NUMPY.get(array.dtype.newbyteorder("="), "")
        if not datatype:
            raise ExampleError(f"example dtype {array.dtype} has no v2 datatype")
        data = array.ravel().tolist()
    item: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if array.size <= MAX_EXAMPLE_ELEMENTS:
        item["data"] = data
    return item


def example_of(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The recorded example of a version's metadata, when it has a readable one."""
    example = (metadata or {}).get(EXAMPLE_KEY)
    try:
        check_example(example)
    except ExampleError:
        return None
    return dict(example) if isinstance(example, Mapping) else None


def check_example(example: Any) -> None:
    """Raises `ExampleError` unless `example` is the recorded form above."""
    if not isinstance(example, Mapping) or not isinstance(example.get("inputs"), list):
        raise ExampleError("an example is {'inputs': [{name, datatype, shape, data}]}")
    if not example["inputs"]:
        raise ExampleError("an example needs at least one input")
    for item in example["inputs"]:
        if not isinstance(item, Mapping):
            raise ExampleError(f"example input {item!r} is not an object")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise ExampleError(f"example input name {name!r} is not a string")
        if item.get("datatype") not in DATATYPES:
            raise ExampleError(f"example input {name!r}: datatype {item.get('datatype')!r}")
        shape = item.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_EXAMPLE_DIMS
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise ExampleError(f"example input {name!r}: shape {shape!r}")
        data = item.get("data")
        if data is not None and (not isinstance(data, list) or len(data) != _size(shape)):
            raise ExampleError(f"example input {name!r}: data does not match shape {shape}")


def with_example(
    signature: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The signature a serving process is started with: the version's, plus its example."""
    example = example_of(metadata)
    if example is None:
        return None if signature is None else dict(signature)
    return {**(signature or {}), EXAMPLE_KEY: example}


def _size(shape: list[int]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size
