"""Versions as the API shows them (rows → ``VersionOut``), with where to upload what is
missing and where to download each file."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from sqlalchemy import Row

from contract.enums import VersionStatus
from contract.paths import API_PREFIX
from contract.schemas import FileOut, MultipartOffer, UploadInfo, VersionOut
from registry.services.context import Context


def file_url(model: str, version: int, path: str) -> str:
    return f"{API_PREFIX}/models/{model}/versions/{version}/files/{quote(path)}"


def _upload_info(ctx: Context, model: str, version: int, path: str, size: int) -> UploadInfo:
    url = file_url(model, version, path)
    offer = None
    if ctx.direct is not None and size >= ctx.settings.multipart_threshold:
        part_size = ctx.part_size(size)
        offer = MultipartOffer(
            url=f"{url}/multipart", part_size=part_size, parts=max(1, math.ceil(size / part_size))
        )
    return UploadInfo(url=url, multipart=offer)


def version_out(ctx: Context, model: str, rows: list[Row[Any]] | Any) -> VersionOut:
    """A version from ``VersionRepository.detail`` rows (one per file, same version)."""
    first = rows[0]
    pending = first.status == VersionStatus.pending
    files = [
        FileOut(
            path=r.path,
            size=r.size,
            sha256=r.sha256,
            present=r.stored is not None,
            upload=_upload_info(ctx, model, first.version, r.path, r.size)
            if pending and r.stored is None
            else None,
        )
        for r in rows
        if r.path is not None
    ]
    return VersionOut(
        model=model,
        version=first.version,
        status=first.status,
        format=first.format,
        description=first.description,
        tags=first.tags,
        metadata=first.metadata_,
        signature=first.signature,
        source=first.source,
        created_by=first.created_by,
        created_at=first.created_at,
        updated_at=first.updated_at,
        files=files,
    )
