"""The one place errors become RFC 9457 ``application/problem+json`` answers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from contract.schemas import Problem
from registry.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    RegistryError,
    TooLarge,
    Unauthenticated,
    Unprocessable,
    UnsupportedMediaType,
)
from storage.base import ArtifactNotFound, InvalidUpload, StorageUnavailable

log = logging.getLogger("modelplane.registry")

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER = "5"
STATUS: dict[type[RegistryError], int] = {
    RegistryError: 400,
    BadRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PreconditionFailed: 412,
    TooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _count(request: Request, kind: str) -> None:
    """``modelplane_errors_total{kind}``: every problem answer, by its type."""
    if (metrics := getattr(request.app.state, "metrics", None)) is not None:
        metrics.errors.labels(kind).inc()


def _on_registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    status = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    _count(request, exc.code)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return problem(
        status, exc.code, str(exc), instance=request.url.path, headers=headers, **exc.extra
    )


def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
    _count(request, "validation-error")
    return problem(
        422,
        "validation-error",
        f"invalid request: {fields}",
        instance=request.url.path,
        errors=errors,
    )


def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    _count(request, code)
    return problem(exc.status_code, code, detail, instance=request.url.path, headers=exc.headers)


def _on_unavailable(request: Request, exc: Exception) -> Response:
    what = "artifact store" if isinstance(exc, StorageUnavailable) else "database"
    log.warning("%s unavailable on %s %s: %s", what, request.method, request.url.path, exc)
    _count(request, f"{what.replace(' ', '-')}-unavailable")
    return problem(
        503,
        f"{what.replace(' ', '-')}-unavailable",
        f"the {what} is unavailable; retry shortly",
        instance=request.url.path,
        headers={"Retry-After": RETRY_AFTER},
    )


def _on_db_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, IntegrityError):  # e.g. a version a deployment revision refers to
        _count(request, "still-referenced")
        return problem(
            409,
            "still-referenced",
            "the change conflicts with what refers to it (a deployment, a revision)",
            instance=request.url.path,
        )
    # Connection-level failures are the database being away; anything else is our bug.
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError) or (
        isinstance(exc, DBAPIError) and (exc.connection_invalidated or _server_away(exc))
    ):
        return _on_unavailable(request, exc)
    return _on_unexpected(request, exc)


def db_problem(request: Request, exc: Exception) -> Response:
    """A database failure outside FastAPI's handlers (the authentication middleware)."""
    return _on_db_error(request, exc)


def _server_away(exc: DBAPIError) -> bool:
    """SQLSTATE class 08 (connection exception) or 57P01-57P03: the server is shutting down,
    crashed, or still starting up (asyncpg raises these as plain ``DBAPIError``)."""
    state = str(getattr(exc.orig, "sqlstate", None) or "")
    return state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _on_artifact_missing(request: Request, exc: Exception) -> Response:
    log.error("recorded blob missing from the store on %s: %s", request.url.path, exc)
    _count(request, "blob-missing")
    return problem(
        404,
        "blob-missing",
        "the file's bytes are missing from the store",
        instance=request.url.path,
    )


def _on_invalid_upload(request: Request, exc: Exception) -> Response:
    _count(request, "invalid-upload")
    return problem(400, "invalid-upload", str(exc), instance=request.url.path)


def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    _count(request, "internal-error")
    return problem(
        500,
        "internal-error",
        "an unexpected error occurred; it has been logged",
        instance=request.url.path,
    )


def _on_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away (or the body limit cut it off): nobody reads this answer."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=400)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _on_disconnect)
    app.add_exception_handler(RegistryError, _on_registry_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(StorageUnavailable, _on_unavailable)
    app.add_exception_handler(ArtifactNotFound, _on_artifact_missing)
    app.add_exception_handler(InvalidUpload, _on_invalid_upload)
    app.add_exception_handler(DBAPIError, _on_db_error)
    app.add_exception_handler(PoolTimeout, _on_db_error)
    app.add_exception_handler(OSError, _on_db_error)
    app.add_exception_handler(Exception, _on_unexpected)


def use_problem_media_type(app: FastAPI) -> None:
    """Document error answers under ``application/problem+json``, as they are sent."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            for op in item.values():
                for status, response in op.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[0] in "45" and "application/json" in content:
                        content[MEDIA_TYPE] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting problem answers."""
    return {
        s: {"model": Problem, "description": HTTPStatus(s).phrase, "content": {MEDIA_TYPE: {}}}
        for s in statuses
    }
