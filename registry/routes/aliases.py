"""``/models/{name}/aliases``: movable names for versions, with history and rollback."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from registry.deps import AliasDep, AliasPath, Cursor, Limit, ModelNamePath
from registry.problems import problem_responses
from registry.schemas import AliasMove, AliasOut, AliasSet, Page

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])


@router.get("", summary="List aliases", responses=problem_responses(404, 422))
async def list_aliases(
    name: ModelNamePath, aliases: AliasDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[AliasOut]:
    """The model's aliases by name, with the version each points at."""
    return await aliases.list_aliases(name, cursor=cursor, limit=limit)


@router.put(
    "/{alias}", summary="Point an alias at a version", responses=problem_responses(404, 409, 422)
)
async def set_alias(
    name: ModelNamePath, alias: AliasPath, body: AliasSet, aliases: AliasDep
) -> AliasOut:
    """Create the alias or move it to a `ready` version. The previous target stays in the
    alias history, and `…/rollback` returns to it. `protected: true` marks the alias
    protected: from then on moving, rolling back or deleting it (and unmarking it) needs
    the `promote` or `admin` scope (403 otherwise)."""
    return await aliases.set_alias(name, alias, version=body.version, protected=body.protected)


@router.get("/{alias}", summary="Resolve an alias", responses=problem_responses(404, 422))
async def get_alias(name: ModelNamePath, alias: AliasPath, aliases: AliasDep) -> AliasOut:
    """The version an alias points at now."""
    return await aliases.get_alias(name, alias)


@router.delete(
    "/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an alias",
    responses=problem_responses(404, 422),
)
async def delete_alias(name: ModelNamePath, alias: AliasPath, aliases: AliasDep) -> Response:
    """Remove the alias; its history is kept."""
    await aliases.delete_alias(name, alias)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{alias}/history", summary="Alias history", responses=problem_responses(404, 422))
async def get_alias_history(
    name: ModelNamePath,
    alias: AliasPath,
    aliases: AliasDep,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AliasMove]:
    """Every move of the alias, newest first: from which version to which, who and when."""
    return await aliases.alias_history(name, alias, cursor=cursor, limit=limit)


@router.post(
    "/{alias}/rollback", summary="Roll an alias back", responses=problem_responses(404, 409, 422)
)
async def rollback_alias(name: ModelNamePath, alias: AliasPath, aliases: AliasDep) -> AliasOut:
    """Move the alias back to the version it pointed at before its last move (409 if it
    has never moved)."""
    return await aliases.rollback_alias(name, alias)
