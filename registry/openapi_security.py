"""The answers every operation can give before its own code runs, in the OpenAPI document.

The limits (``registry/hardening.py``), the keys (``registry/authentication.py``, by the
policy table of ``registry/policy.py``) and body parsing answer before a route's code; their
problem answers are added to each operation here. The bearer scheme itself is declared by
``registry/docs.py``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from registry.policy import POLICY
from registry.problems import MEDIA_TYPE


def document_security(app: FastAPI) -> None:
    """The OpenAPI document lists the answers every operation can give before its own code
    runs: 401/403 (keys), 400 (a body or cursor that does not parse), 413/415 (bodies), 431
    (headers). (The bearer scheme itself is declared by ``registry/docs.py``.)"""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        ref = {"$ref": "#/components/schemas/Problem"}
        for item in schema.get("paths", {}).values():
            for op in item.values():
                responses = op.setdefault("responses", {})
                statuses = ["431"]
                if POLICY.get(op.get("operationId", "")):
                    statuses += ["401", "403"]
                params = [p.get("name") for p in op.get("parameters", [])]
                if "requestBody" in op or "cursor" in params:
                    statuses.append("400")
                if "requestBody" in op:
                    statuses += ["413", "415"]
                for status in statuses:
                    responses.setdefault(
                        status,
                        {
                            "description": HTTPStatus(int(status)).phrase,
                            "content": {MEDIA_TYPE: {"schema": ref}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
