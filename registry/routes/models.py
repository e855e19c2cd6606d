"""``/models``: register, search, describe and delete models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from contract.schemas import ModelCreate, ModelOut, ModelUpdate, Page
from registry.deps import CatalogDep, Cursor, Limit, ModelNamePath
from registry.errors import BadRequest
from registry.problems import problem_responses

router = APIRouter(prefix="/models", tags=["models"])


def _parse_tags(tag: list[str]) -> dict[str, str]:
    pairs = {}
    for item in tag:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise BadRequest(f"tag filter {item!r} must look like key:value")
        pairs[key] = value
    return pairs


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a model",
    responses=problem_responses(409, 422),
)
async def create_model(body: ModelCreate, catalog: CatalogDep) -> ModelOut:
    """Register a model under a unique name (lowercase slug, 1-63 characters)."""
    return await catalog.create_model(body)


@router.get("", summary="List and search models", responses=problem_responses(400, 422))
async def list_models(
    catalog: CatalogDep,
    q: Annotated[str | None, Query(max_length=63, description="name substring")] = None,
    tag: Annotated[list[str], Query(description="`key:value`; repeat to require several")] = [],  # noqa: B006
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ModelOut]:
    """Models by name, optionally those whose name contains `q` and carrying every `tag`."""
    return await catalog.list_models(q=q, tags=_parse_tags(tag), cursor=cursor, limit=limit)


@router.get("/{name}", summary="Describe a model", responses=problem_responses(404, 422))
async def get_model(name: ModelNamePath, catalog: CatalogDep) -> ModelOut:
    """One model's description, tags and timestamps."""
    return await catalog.get_model(name)


@router.patch("/{name}", summary="Update a model", responses=problem_responses(404, 422))
async def update_model(name: ModelNamePath, body: ModelUpdate, catalog: CatalogDep) -> ModelOut:
    """Change the description and/or replace the tags."""
    return await catalog.update_model(name, body)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a model",
    responses=problem_responses(404, 409, 422),
)
async def delete_model(name: ModelNamePath, catalog: CatalogDep) -> Response:
    """Delete a model with all its versions. Refused (409) while any alias exists: delete
    the aliases first, so nothing that follows `@production` loses its target by accident."""
    await catalog.delete_model(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
