"""Parsing the one-shot upload form (``multipart/form-data``) into plain values."""

from __future__ import annotations

import re
from typing import BinaryIO

from fastapi import Request
from starlette.datastructures import UploadFile

from contract.schemas import SLUG, check_path
from registry.errors import BadRequest, InvalidPath, TooLarge, UnsupportedMediaType
from registry.services.files import OneShotUpload

FORM_OVERHEAD = 2**20  # room for boundaries and the small fields beside the files


async def parse_upload_form(request: Request, limit: int) -> OneShotUpload:
    """Files spool to temporary files as they arrive (memory stays flat)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the files as multipart/form-data (curl -F file=@…)")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise TooLarge(f"upload of {length} bytes exceeds the limit of {limit}")
    form = await request.form(max_files=1000, max_fields=100)
    files: list[tuple[str, BinaryIO]] = []
    for item in form.getlist("file"):
        if not isinstance(item, UploadFile) or not item.filename:
            raise BadRequest("every `file` part must be a file with a filename")
        files.append((_path(item.filename), item.file))
    result = OneShotUpload(
        files=files,
        format=_field(form.get("format"), "format", 64),
        description=_field(form.get("description"), "description", 65536) or "",
        alias=_field(form.get("alias"), "alias", 63),
        closer=form.close,
    )
    if not files:
        await result.close()
        raise BadRequest("the form has no `file` part")
    if len({p for p, _ in files}) != len(files):
        await result.close()
        raise BadRequest("two `file` parts have the same filename")
    if result.alias is not None and not re.match(SLUG, result.alias):
        await result.close()
        raise BadRequest(f"alias {result.alias!r} is not a valid alias name")
    return result


def _path(filename: str) -> str:
    try:
        return check_path(filename)
    except ValueError as exc:
        raise InvalidPath(f"invalid file path {filename!r}: {exc}") from exc


def _field(value: object, name: str, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise BadRequest(f"form field {name!r} must be text of at most {max_length} characters")
    return value or None
