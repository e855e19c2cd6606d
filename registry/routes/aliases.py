"""``/models/{name}/aliases``: movable names for versions, with history and rollback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response, status

from contract.schemas import AliasMove, AliasOut, AliasSet, Page
from registry.deps import AliasDep, AliasPath, Cursor, Limit, ModelNamePath
from registry.problems import problem_responses
from registry.services.aliases import Preconditions, TaggedAlias

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])

IfMatch = Annotated[
    str | None,
    Header(
        description="only if the alias's current `ETag` is one of these (`*`: only if the "
        "alias exists); otherwise 412"
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(description="`*`: only if the alias does not exist yet (create, never move); 412"),
]
ETAG_HEADER: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "ETag": {
                "description": "the alias's entity tag: changes on every move; send it back "
                "in `If-Match` to move the alias only if nobody moved it since",
                "schema": {"type": "string"},
            }
        }
    }
}


def _tagged(response: Response, tagged: TaggedAlias) -> AliasOut:
    response.headers["ETag"] = tagged.etag
    return tagged.alias


@router.get("", summary="List aliases", responses=problem_responses(404, 422))
async def list_aliases(
    name: ModelNamePath, aliases: AliasDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[AliasOut]:
    """The model's aliases by name, with the version each points at."""
    return await aliases.list_aliases(name, cursor=cursor, limit=limit)


@router.put(
    "/{alias}",
    summary="Point an alias at a version",
    responses={**ETAG_HEADER, **problem_responses(404, 409, 412, 422)},
)
async def set_alias(
    name: ModelNamePath,
    alias: AliasPath,
    body: AliasSet,
    aliases: AliasDep,
    response: Response,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> AliasOut:
    """Create the alias or move it to a `ready` version. The previous target stays in the
    alias history, and `…/rollback` returns to it. `protected: true` marks the alias
    protected: from then on moving, rolling back or deleting it (and unmarking it) needs
    the `promote` or `admin` scope (403 otherwise).

    Optimistic concurrency: with `If-Match: <ETag from a GET>` the move happens only if
    nobody moved the alias since (412 `precondition-failed` otherwise, with the current
    `etag` in the problem); `If-Match: *` moves an existing alias only;
    `If-None-Match: *` creates the alias only if it does not exist."""
    conditions = Preconditions(if_match=if_match, if_none_match=if_none_match)
    tagged = await aliases.set_alias(
        name, alias, version=body.version, protected=body.protected, conditions=conditions
    )
    return _tagged(response, tagged)


@router.get(
    "/{alias}",
    summary="Resolve an alias",
    responses={**ETAG_HEADER, **problem_responses(404, 422)},
)
async def get_alias(
    name: ModelNamePath, alias: AliasPath, aliases: AliasDep, response: Response
) -> AliasOut:
    """The version an alias points at now, with its `ETag` for a conditional move."""
    return _tagged(response, await aliases.get_alias(name, alias))


@router.delete(
    "/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an alias",
    responses=problem_responses(404, 412, 422),
)
async def delete_alias(
    name: ModelNamePath, alias: AliasPath, aliases: AliasDep, if_match: IfMatch = None
) -> Response:
    """Remove the alias; its history is kept. With `If-Match`, only if it has not moved."""
    await aliases.delete_alias(name, alias, conditions=Preconditions(if_match=if_match))
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
    "/{alias}/rollback",
    summary="Roll an alias back",
    responses={**ETAG_HEADER, **problem_responses(404, 409, 412, 422)},
)
async def rollback_alias(
    name: ModelNamePath,
    alias: AliasPath,
    aliases: AliasDep,
    response: Response,
    if_match: IfMatch = None,
) -> AliasOut:
    """Move the alias back to the version it pointed at before its last move (409 if it
    has never moved). With `If-Match`, only if it has not moved since that `ETag`."""
    conditions = Preconditions(if_match=if_match)
    return _tagged(response, await aliases.rollback_alias(name, alias, conditions=conditions))
