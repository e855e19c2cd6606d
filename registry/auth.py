"""Who may call what: authentication (a middleware) and the one access-policy table.

Every route maps to the scopes that may call it in ``POLICY`` (any one suffices; `admin`
implies every scope, `write`/`deploy`/`promote` imply `read`: ``registry/principal.py``).
A route missing from the table is refused (403) and fails ``tests/registry/test_auth.py``.

``Authenticate`` (pure ASGI, outermost) gives every request an id (``X-Request-ID``, taken
from the caller when sane, echoed back) and, for ``/api/`` and ``/serve/``, checks the
bearer token against the database before any body is read: 401 without a valid key.
``authorize`` (a dependency on every route) then checks the route's scopes and the key's
model globs: 403.
"""

from __future__ import annotations

import logging
import re
import uuid
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.schemas import Scope as S
from registry.db import SessionFactory
from registry.errors import Forbidden, RegistryError, Unauthenticated
from registry.principal import ANONYMOUS, Principal
from registry.problems import MEDIA_TYPE, db_problem, problem
from registry.repositories.deployments import model_of_deployment
from registry.repositories.events import Actor
from registry.services.audit import record_denied
from registry.services.common import reading_connection
from registry.services.keys import authenticate, bearer_token
from registry.settings import Settings

log = logging.getLogger("modelplane.auth")

PRINCIPAL = "modelplane.principal"
REQUEST_ID = "modelplane.request_id"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
AUTHENTICATED_PREFIXES = ("/api/", "/serve/")

PUBLIC: frozenset[S] = frozenset()
READ = frozenset({S.read})
WRITE = frozenset({S.write})
DEPLOY = frozenset({S.deploy})
ADMIN = frozenset({S.admin})
WORKER = frozenset({S.worker})
ALIAS_MOVE = frozenset({S.write, S.promote})  # protected aliases: promote/admin (service)
DOWNLOAD = frozenset({S.read, S.worker})

# Every route's operation id (its function's name) -> the scopes that may call it.
POLICY: dict[str, frozenset[S]] = {
    # operations (no key)
    "get_health": PUBLIC,  # GET /healthz
    "get_readiness": PUBLIC,  # GET /readyz
    "swagger_ui": PUBLIC,  # GET /docs (registry/docs.py)
    "redoc": PUBLIC,  # GET /redoc
    # models: /api/v1/models[/{name}]
    "create_model": WRITE,
    "list_models": READ,
    "get_model": READ,
    "update_model": WRITE,
    "delete_model": ADMIN,
    # versions: /api/v1/models/{name}/versions...
    "create_version": WRITE,
    "upload_version": WRITE,
    "list_versions": READ,
    "get_version": READ,
    "update_version": WRITE,
    "finalize_version": WRITE,
    "archive_version": WRITE,
    "delete_version": ADMIN,
    # files: /api/v1/models/{name}/versions/{v}/files/{path}...
    "upload_file": WRITE,
    "start_multipart_upload": WRITE,
    "complete_multipart_upload": WRITE,
    "download_file": DOWNLOAD,
    # aliases: /api/v1/models/{name}/aliases...
    "list_aliases": READ,
    "get_alias": READ,
    "get_alias_history": READ,
    "set_alias": ALIAS_MOVE,
    "delete_alias": ALIAS_MOVE,
    "rollback_alias": ALIAS_MOVE,
    # the audit log: GET /api/v1/events
    "list_events": ADMIN,
    # deployments: /api/v1/deployments...
    "create_deployment": DEPLOY,
    "list_deployments": READ,
    "get_deployment": READ,
    "update_deployment": DEPLOY,
    "delete_deployment": DEPLOY,
    "list_revisions": READ,
    "rollback_deployment": DEPLOY,
    "list_deployment_endpoints": READ,
    "list_deployment_replicas": READ,
    # deployer workers and serving processes: /api/v1/workers..., /api/v1/endpoints...
    "register_worker": WORKER,
    "list_workers": READ,
    "heartbeat_worker": WORKER,
    "get_worker_assignments": WORKER,
    "register_endpoint": WORKER,
    "heartbeat_endpoint": WORKER,
    "deregister_endpoint": WORKER,
    # API keys: /api/v1/keys...
    "create_key": ADMIN,
    "list_keys": ADMIN,
    "get_key": ADMIN,
    "revoke_key": ADMIN,
    # operations: GET /metrics (no key: Prometheus scrapes it), POST /api/v1/gc
    "get_metrics": PUBLIC,
    "collect_garbage": ADMIN,
    # webhooks: /api/v1/webhooks... (their secrets sign what is sent)
    "create_webhook": ADMIN,
    "list_webhooks": ADMIN,
    "get_webhook": ADMIN,
    "delete_webhook": ADMIN,
    "list_deliveries": ADMIN,
}
# The stable URL /serve/{deployment}/v2/... never reaches FastAPI's routing: checked in
# ``Authenticate``.
SERVE_SCOPES = READ
# Routes outside /api/ that stay public whatever their operation id: Prometheus scrapes
# /metrics without credentials (it carries no secrets); the dashboard's pages under /ui (and
# a landing page at /) load without a key and call /api/ with one. /docs, /redoc and
# /openapi.json are not API routes: no dependency runs for them.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})
PUBLIC_PREFIXES = ("/ui/",)


def is_public_path(path: str) -> bool:
    return path in PUBLIC_PATHS or path == "/ui" or path.startswith(PUBLIC_PREFIXES)


# Tags of the routes whose ``{name}`` is a model name (model globs apply to it).
MODEL_TAGS = frozenset({"models", "versions", "files", "aliases"})


def principal_of(scope: Scope) -> Principal:
    """The caller; ``ANONYMOUS`` (every scope) when authentication is off."""
    principal = scope.get(PRINCIPAL)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def request_id_of(scope: Scope) -> str:
    rid = scope.get(REQUEST_ID)
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def _model_of(request: Request, route: Any) -> str | None:
    """The model a route acts on, when its path names one."""
    if MODEL_TAGS.intersection(getattr(route, "tags", ())):
        name = request.path_params.get("name")
        return name if isinstance(name, str) else None
    return None


async def authorize(request: Request) -> None:
    """A dependency on every route: the caller's key must hold a scope of the route's rule
    and, when the key is restricted to some models, reach the model the path names."""
    if not request.app.state.settings.auth_enabled:
        return
    route = request.scope.get("route")
    rule = POLICY.get(getattr(route, "name", ""))
    if rule is None:
        if is_public_path(request.url.path):
            return
        log.error("no access policy for %s %s: refused", request.method, request.url.path)
        raise Forbidden(f"no access policy covers {request.method} {request.url.path}")
    if not rule:
        return
    principal = request.scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise Unauthenticated("this call needs an API key: send 'Authorization: Bearer mp_...'")
    if not principal.has(*rule):
        needs = " or ".join(sorted(s.value for s in rule))
        raise Forbidden(
            f"the API key {principal.name!r} lacks the scope this call needs ({needs})",
            needs=sorted(s.value for s in rule),
        )
    if principal.restricted:
        await _check_reach(request, route, principal)


async def _check_reach(request: Request, route: Any, principal: Principal) -> None:
    """A key restricted to some models (globs) reaches those models and their deployments
    only, and manages no keys (a restricted key could otherwise mint itself a wider one)."""
    tags = set(getattr(route, "tags", ()))
    if "keys" in tags:
        raise Forbidden(f"the API key {principal.name!r} is restricted to some models: "
                        "managing keys needs an unrestricted admin key")  # fmt: skip
    model = _model_of(request, route)
    if model is None and "deployments" in tags and "name" in request.path_params:
        sessions = request.app.state.sessions
        async with reading_connection(sessions) as connection:
            model = await model_of_deployment(connection, request.path_params["name"])
    if model is not None and not principal.reaches(model):
        raise Forbidden(f"the API key {principal.name!r} may not reach model {model!r}")


class Authenticate:
    """ASGI middleware: request ids for every call, API keys for ``/api/`` and ``/serve/``."""

    def __init__(self, app: ASGIApp, sessions: SessionFactory, settings: Settings) -> None:
        self.app = app
        self.sessions = sessions
        self.enabled = settings.auth_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # ``metrics.Observe`` (outside) may have chosen it already: one id per request
        rid = scope.get(REQUEST_ID) or incoming_request_id(scope) or uuid.uuid4().hex
        scope[REQUEST_ID] = rid
        seen = _Seen(send, rid.encode())
        path: str = scope["path"]
        if not self.enabled:
            scope[PRINCIPAL] = ANONYMOUS
        elif path.startswith(AUTHENTICATED_PREFIXES):
            try:
                principal = await self._principal(scope)
            except RegistryError as exc:
                await _deny(scope, receive, seen.send, exc)
                await self._audit(scope, seen, getattr(exc, "key_id", None))
                return
            except (DBAPIError, PoolTimeout, OSError) as exc:
                await db_problem(Request(scope), exc)(scope, receive, seen.send)
                return
            scope[PRINCIPAL] = principal
        await self.app(scope, receive, seen.send)
        if seen.status in (401, 403):
            await self._audit(scope, seen, None)

    async def _audit(self, scope: Scope, seen: _Seen, key_id: str | None) -> None:
        """Every denied request is an audit event: who (key, client), what, why."""
        principal = principal_of(scope) if PRINCIPAL in scope else None
        client = scope.get("client")
        actor = Actor(
            name=principal.name if principal is not None else "anonymous",
            request_id=scope[REQUEST_ID],
            client=client[0] if client else None,
            key_id=principal.key_id if principal is not None else key_id,
        )
        try:
            answer = orjson.loads(seen.body)
            detail = str(answer.get("detail") or answer.get("error") or "")
        except (orjson.JSONDecodeError, AttributeError):
            detail = ""
        await record_denied(
            self.sessions, actor, scope["method"], scope["path"], seen.status, detail
        )

    async def _principal(self, scope: Scope) -> Principal:
        token = bearer_token(header(scope, b"authorization"))
        principal = await authenticate(self.sessions, token)
        scope[PRINCIPAL] = principal  # the audit of a denial below names the key
        if scope["path"].startswith("/serve/"):
            if not principal.has(*SERVE_SCOPES):
                raise Forbidden(f"the API key {principal.name!r} lacks the read scope")
            if principal.restricted:
                name = scope["path"][len("/serve/") :].split("/", 1)[0]
                async with reading_connection(self.sessions) as connection:
                    model = await model_of_deployment(connection, name)
                if model is not None and not principal.reaches(model):
                    raise Forbidden(f"the API key {principal.name!r} may not call {name!r}")
        return principal


async def _deny(scope: Scope, receive: Receive, send: Send, exc: RegistryError) -> None:
    status = 401 if isinstance(exc, Unauthenticated) else 403
    if scope["path"].startswith("/serve/"):  # the inference protocol's error shape
        body = orjson.dumps({"error": str(exc)})
        raw = [(b"content-type", b"application/json")]
        if status == 401:
            raw.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return
    challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = problem(status, exc.code, str(exc), instance=scope["path"], headers=challenge)
    await response(scope, receive, send)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def incoming_request_id(scope: Scope) -> str | None:
    rid = header(scope, b"x-request-id")
    return rid if rid is not None and _REQUEST_ID_OK.match(rid) else None


class _Seen:
    """Wraps ``send``: echoes the request id and keeps what an audit of a denial needs
    (the status, and the start of a 401/403 body for its detail)."""

    __slots__ = ("_send", "_rid", "status", "body")

    def __init__(self, send: Send, rid: bytes) -> None:
        self._send, self._rid = send, rid
        self.status = 0
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers: list[Any] = list(message.get("headers", ()))
            headers.append((b"x-request-id", self._rid))
            message = {**message, "headers": headers}
        elif self.status in (401, 403) and len(self.body) < 4096:
            self.body += message.get("body", b"")[:4096]
        await self._send(message)


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
