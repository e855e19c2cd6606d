"""``…/versions/{v}/files/{path}``: upload (proxied or direct multipart) and download."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from contract.schemas import FileOut, MultipartOut
from registry.deps import FileDep, FilePathDep, ModelNamePath, SelectorDep
from registry.problems import problem, problem_responses

router = APIRouter(prefix="/models/{name}/versions/{v}/files", tags=["files"])

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
WRITE_ERRORS = problem_responses(400, 404, 409, 413, 422, 503)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for one satisfiable range, ``None`` for the whole file.

    Raises ``ValueError`` when unsatisfiable. Multi-range requests get the whole file
    (RFC 9110 lets a server ignore ``Range``)."""
    if header is None or (match := _RANGE.match(header.strip())) is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise ValueError("range starts past the end")
    return start, end


@router.put("/{path:path}", summary="Upload a file through the registry", responses=WRITE_ERRORS)
async def upload_file(
    name: ModelNamePath, v: SelectorDep, path: FilePathDep, request: Request, files: FileDep
) -> FileOut:
    """Stream the raw bytes of one manifest file as the request body. They are hashed on
    the fly and published only if size and sha256 match the manifest (400 with both
    digests otherwise). 409 once the version is ready; 413 over the upload limit."""
    length = request.headers.get("content-length")
    size = int(length) if length is not None and length.isdigit() else None
    return await files.upload(name, v, path, request.stream(), size)


@router.post(
    "/{path:path}/multipart", summary="Start or resume a direct upload", responses=WRITE_ERRORS
)
async def start_multipart_upload(
    name: ModelNamePath, v: SelectorDep, path: FilePathDep, files: FileDep
) -> MultipartOut:
    """S3 stores only: presigned URLs, one per part (`PUT` each part's bytes there, in
    parallel if you like). Asking again resumes the same upload and lists the parts already
    done in `completed_parts`. On the folder store this is 409: use `PUT` instead."""
    return await files.start_multipart(name, v, path)


@router.post(
    "/{path:path}/multipart/complete",
    summary="Complete a direct upload",
    responses=WRITE_ERRORS,
)
async def complete_multipart_upload(
    name: ModelNamePath, v: SelectorDep, path: FilePathDep, files: FileDep
) -> FileOut:
    """Assemble the uploaded parts, read the object back and check its sha256 and size
    against the manifest (400 with both digests otherwise), then publish it."""
    return await files.complete_multipart(name, v, path)


@router.get(
    "/{path:path}",
    summary="Download a file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
        206: {"description": "the requested range"},
        304: {"description": "unchanged (`If-None-Match`)"},
        307: {"description": "redirect to a presigned URL (`redirect=true`, S3 only)"},
        **problem_responses(400, 404, 416, 422, 503),
    },
)
async def download_file(
    name: ModelNamePath,
    v: SelectorDep,
    path: FilePathDep,
    request: Request,
    files: FileDep,
    redirect: Annotated[bool, Query(description="answer 307 to a presigned URL (S3)")] = False,
) -> Response:
    """Stream the file. Supports one `Range` (206/416); `ETag` is the quoted sha256 and
    `If-None-Match` gives 304. With `redirect=true` on an S3 store the answer is a 307 to
    a presigned URL of the object."""
    ref = await files.downloadable(name, v, path)
    headers = {"ETag": f'"{ref.sha256}"', "Accept-Ranges": "bytes"}
    if _etag_matches(request.headers.get("if-none-match"), ref.sha256):
        return Response(status_code=304, headers=headers)
    if redirect and (url := files.presigned_url(ref)) is not None:
        return RedirectResponse(url, status_code=307, headers=headers)
    try:
        span = parse_range(request.headers.get("range"), ref.size)
    except ValueError:
        return problem(
            416,
            "range-not-satisfiable",
            f"the file is {ref.size} bytes",
            instance=request.url.path,
            headers={"Content-Range": f"bytes */{ref.size}"},
        )
    if ref.size == 0:
        return Response(b"", headers=headers, media_type="application/octet-stream")
    start, end = span or (0, ref.size - 1)
    headers["Content-Length"] = str(end - start + 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{ref.size}"
    body = await files.open(ref, start, end)
    return StreamingResponse(
        body,
        status_code=206 if span else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


def _etag_matches(header: str | None, sha256: str) -> bool:
    if header is None:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or f'"{sha256}"' in tags
