"""``/models/{name}/versions``: create, read, finalize, archive and delete versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from contract.enums import VersionStatus
from contract.schemas import (
    Page,
    VersionCreate,
    VersionOut,
    VersionSummary,
    VersionUpdate,
)
from registry.deps import CatalogDep, Cursor, FileDep, Limit, ModelNamePath, SelectorDep
from registry.problems import problem_responses
from registry.routes.forms import parse_upload_form

router = APIRouter(prefix="/models/{name}", tags=["versions"])

SELECTED = problem_responses(400, 404, 422)


@router.post(
    "/versions",
    status_code=status.HTTP_201_CREATED,
    summary="Create a version",
    responses=problem_responses(404, 422),
)
async def create_version(
    name: ModelNamePath, body: VersionCreate, catalog: CatalogDep
) -> VersionOut:
    """Create a `pending` version from its file manifest (`path`, `size`, `sha256`) and
    metadata; the number is the model's next. Each file in the answer is either `present`
    (its bytes are already stored: nothing to upload) or carries `upload` (`PUT` the bytes
    to `url`; large files on S3 also offer `multipart`, a direct upload). When every file
    is present, `POST …/finalize` makes the version `ready`."""
    return await catalog.create_version(name, body)


@router.post(
    "/versions:upload",
    status_code=status.HTTP_201_CREATED,
    summary="Upload a ready version in one request",
    responses=problem_responses(400, 404, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                            "format": {"type": "string"},
                            "description": {"type": "string"},
                            "alias": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def upload_version(name: ModelNamePath, request: Request, files: FileDep) -> VersionOut:
    """For curl: `curl -F file=@model.pt -F format=torchscript -F alias=production …`.
    Each `file` part becomes a file of the version (its filename is the path); the answer
    is a `ready` version, pointed at by `alias` when given."""
    form = await parse_upload_form(request, files.upload_limit)
    try:
        return await files.upload_version(name, form)
    finally:
        await form.close()


@router.get("/versions", summary="List versions", responses=problem_responses(404, 422))
async def list_versions(
    name: ModelNamePath,
    catalog: CatalogDep,
    status_: Annotated[VersionStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[VersionSummary]:
    """The model's versions, newest first, optionally only those with `status`."""
    return await catalog.list_versions(name, status=status_, cursor=cursor, limit=limit)


@router.get("/versions/{v}", summary="Describe a version", responses=SELECTED)
async def get_version(name: ModelNamePath, v: SelectorDep, catalog: CatalogDep) -> VersionOut:
    """A version and its files. `v` is a number, `latest` (the highest `ready` version) or
    an alias such as `@production`."""
    return await catalog.get_version(name, v)


@router.patch(
    "/versions/{v}", summary="Update a version", responses=problem_responses(400, 404, 409, 422)
)
async def update_version(
    name: ModelNamePath, v: SelectorDep, body: VersionUpdate, catalog: CatalogDep
) -> VersionOut:
    """Change `description` and `tags` (any version) or `metadata` (pending versions only)."""
    return await catalog.update_version(name, v, body)


@router.post(
    "/versions/{v}/finalize",
    summary="Finalize a version",
    responses=problem_responses(400, 404, 409, 422),
)
async def finalize_version(name: ModelNamePath, v: SelectorDep, catalog: CatalogDep) -> VersionOut:
    """Make a pending version `ready` once every file's bytes are stored and verified;
    409 lists the `missing` paths otherwise. A ready version never changes its files."""
    return await catalog.finalize_version(name, v)


@router.post(
    "/versions/{v}/archive",
    summary="Archive a version",
    responses=problem_responses(400, 404, 409, 422),
)
async def archive_version(name: ModelNamePath, v: SelectorDep, catalog: CatalogDep) -> VersionOut:
    """Soft-delete: the version stays readable by number but is never `latest`. Refused
    (409) while an alias points at it."""
    return await catalog.archive_version(name, v)


@router.delete(
    "/versions/{v}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a version",
    responses=problem_responses(400, 404, 409, 422),
)
async def delete_version(name: ModelNamePath, v: SelectorDep, catalog: CatalogDep) -> Response:
    """Delete the version's records (409 while an alias points at it). Its number is never
    reused; bytes no other version refers to are removed by garbage collection later."""
    await catalog.delete_version(name, v)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
