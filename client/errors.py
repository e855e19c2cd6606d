"""What can go wrong, as exceptions: problem+json answers mapped by status, and the
client's own failures (no connection, a digest that does not match, a deployment that
never became ready)."""

from __future__ import annotations

from typing import Any

import httpx

from contract.http import retry_after


class ModelplaneError(Exception):
    """Base of every SDK error. ``str(exc)`` is one line fit to show a user."""

    status: int | None = None

    def __init__(self, message: str, *, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.problem: dict[str, Any] = problem or {}

    @property
    def type(self) -> str | None:
        value = self.problem.get("type")
        return value if isinstance(value, str) else None

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self)


class ApiError(ModelplaneError):
    """An error answer of the control plane (or of a model behind the stable URL)."""


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class RangeNotSatisfiable(ApiError):
    status = 416


class ValidationError(ApiError):
    status = 422

    @property
    def errors(self) -> list[dict[str, Any]]:
        found = self.problem.get("errors")
        return found if isinstance(found, list) else []


class ServerError(ApiError):
    status = 500


class Unavailable(ServerError):
    """503: the database, the store or every endpoint is away for now."""

    status = 503

    def __init__(
        self,
        message: str,
        *,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, problem=problem)
        self.retry_after = retry_after


class ConnectionFailed(ModelplaneError):
    """The control plane (or the object store) could not be reached."""


class DigestMismatch(ModelplaneError):
    """Bytes read back do not have the sha256 (or size) the manifest promises."""


class NotReady(ModelplaneError):
    """A deployment did not become ready in time, or its rollout failed."""


BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        RangeNotSatisfiable,
        ValidationError,
        Unavailable,
    )
}


def from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer: problem+json, the inference protocol's
    ``{"error": ...}``, or whatever text came back."""
    problem: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body
    detail = problem.get("detail") or problem.get("error") or response.text.strip()
    if isinstance(detail, dict) and detail.get("message"):  # OpenAI's {"error": {"message"}}
        detail = detail["message"]
    detail = " ".join(str(detail).split())[:500] or response.reason_phrase
    if response.status_code == 422 and isinstance(problem.get("errors"), list):
        fields = [_field(e) for e in problem["errors"] if isinstance(e, dict)]
        detail = "invalid request: " + "; ".join(f for f in fields if f)
    message = f"{response.status_code} {response.reason_phrase}: {detail}"
    status = response.status_code
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    if cls is Unavailable:
        return Unavailable(message, problem=problem, retry_after=retry_after(response))
    error = cls(message, problem=problem)
    error.status = status
    return error


def _field(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", []) if p not in ("body", "query", "path")]
    return f"{'.'.join(loc)}: {error.get('msg', '')}".strip(": ")
