"""Who may call what: the one access-policy table and the checks that apply it.

Every route maps to the scopes that may call it in ``POLICY`` (any one suffices; `admin`
implies every scope, `write`/`deploy`/`promote` imply `read`: ``registry/principal.py``).
A route missing from the table is refused (403) and fails
``tests/registry/security/test_auth.py``.

``authorize`` (a dependency on every route) checks the route's scopes and the key's model
globs: 403. The stable URL (``/serve/``) is the gateway's (``gateway/``, mounted in process by
``registry/embedded_gateway.py``): it checks keys from its own cache, by the same rule (`read`
or a scope implying it, and the model globs). Who the caller is (401) is
``registry/authentication.py``'s job; ``registry/openapi_security.py`` documents the table.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request

from contract.schemas import Scope as S
from registry.db import reading_connection
from registry.errors import Forbidden, Unauthenticated
from registry.principal import PRINCIPAL, Principal
from registry.repositories.deployments import model_of_deployment

log = logging.getLogger("modelplane.auth")

PUBLIC: frozenset[S] = frozenset()
READ = frozenset({S.read})
WRITE = frozenset({S.write})
DEPLOY = frozenset({S.deploy})
ADMIN = frozenset({S.admin})
WORKER = frozenset({S.worker})
GATEWAY = frozenset({S.gateway})
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
    "promote_canary": DEPLOY,
    "abort_canary": DEPLOY,
    # deployer workers and serving processes: /api/v1/workers..., /api/v1/endpoints...
    "register_worker": WORKER,
    "list_workers": READ,
    "heartbeat_worker": WORKER,
    "get_worker_assignments": WORKER,
    "register_endpoint": WORKER,
    "heartbeat_endpoint": WORKER,
    "deregister_endpoint": WORKER,
    # gateway processes: /api/v1/gateway... (the route feed, key checks, traffic reports)
    "get_gateway_routes": GATEWAY,
    "verify_gateway_key": GATEWAY,
    "report_gateway_traffic": GATEWAY,
    # what the gateways route by and counted: /api/v1/deployments/{name}/route, .../traffic
    "get_deployment_route": READ,
    "get_deployment_traffic": READ,
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
