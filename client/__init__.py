"""Modelplane's Python SDK (``Client``): the only job of this package. The command line is `cli`."""

from client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    DigestMismatch,
    Forbidden,
    ModelplaneError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from client.sdk import Client
from client.transfer import TransferEvent

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DigestMismatch",
    "Forbidden",
    "ModelplaneError",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "ServerError",
    "TransferEvent",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
]
