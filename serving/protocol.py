"""Moved to `serving.protocols.v2`; these names stay importable from here."""

from contract.dtypes import DATATYPES, NUMERIC_DTYPES
from serving.protocols.v2 import (
    MAX_ELEMENTS,
    InferenceRequest,
    OutputTensor,
    ProtocolError,
    RequestInput,
    RequestOutput,
    TensorSpec,
    check_input,
    decode_request,
    encode_response,
    error_body,
)

__all__ = [
    "DATATYPES",
    "MAX_ELEMENTS",
    "NUMERIC_DTYPES",
    "InferenceRequest",
    "OutputTensor",
    "ProtocolError",
    "RequestInput",
    "RequestOutput",
    "TensorSpec",
    "check_input",
    "decode_request",
    "encode_response",
    "error_body",
]
