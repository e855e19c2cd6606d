"""The worker's HTTP client to the control plane (docs/deployments-contract.md)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import httpx

from contract.paths import API_PREFIX
from deployer.contract import (
    Assignment,
    FileRef,
    HeartbeatAnswer,
    ReplicaReport,
    WorkerLease,
    WorkerRegistration,
)

log = logging.getLogger("deployer.client")

T = TypeVar("T")
TIMEOUT = httpx.Timeout(10.0, connect=3.0)
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=3.0)
CHUNK = 1 << 20
RANGED_AFTER = 32 << 20  # files larger than this come in parallel ranges
PIECE = 8 << 20  # one ranged GET
PARALLEL = 8  # ranged GETs in flight (at most PARALLEL * PIECE bytes held)
PIECE_TRIES = 3


class WorkerLapsed(Exception):
    """The control plane no longer knows this worker (404): register again."""


class ControlPlaneError(Exception):
    """The control plane answered an error that retrying will not fix."""


class ControlPlane:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        stop: threading.Event | None = None,
    ) -> None:
        self.root = base_url.rstrip("/")
        self.api = self.root + API_PREFIX
        self._http = httpx.Client(base_url=self.api, timeout=TIMEOUT)
        self.token = token
        # sent to the control plane only, never to another host (a presigned store URL)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._retries = retries
        self._backoff_s = backoff_s
        self._stop = stop or threading.Event()  # set: no more waiting between retries

    def close(self) -> None:
        self._http.close()

    def register(self, body: WorkerRegistration) -> WorkerLease:
        answer = self._retrying(lambda: self._post("/workers", body.model_dump()))
        return WorkerLease.model_validate(answer)

    def heartbeat(self, worker_id: str, reports: list[ReplicaReport]) -> list[Assignment]:
        body = {"replicas": [r.model_dump() for r in reports]}
        answer = self._retrying(lambda: self._post(f"/workers/{worker_id}/heartbeat", body))
        return HeartbeatAnswer.model_validate(answer).assignments

    def download(self, ref: FileRef) -> Iterator[bytes]:
        """The file's bytes in order, in chunks (absolute URLs and paths under the API both
        work). A large file comes in parallel ranged GETs, straight from the object store
        when the control plane offers a presigned URL, else through the control plane."""
        url = self.file_url(ref)
        headers = self._auth if url.startswith(self.root + "/") else {}
        if ref.size > RANGED_AFTER:
            source, source_headers = self._source(url, headers)
            yield from self._ranges(ref, source, source_headers)
            return
        with self._http.stream("GET", url, headers=headers, timeout=DOWNLOAD_TIMEOUT) as response:
            if response.status_code != 200:
                response.read()
                raise ControlPlaneError(
                    f"download of {ref.path} answered {response.status_code}: {response.text[:300]}"
                )
            yield from response.iter_bytes(CHUNK)

    def _source(self, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Where to read a file's ranges: the presigned store URL the control plane redirects
        to (S3 stores), or the control plane itself."""
        if url.startswith(self.root + "/"):
            with self._http.stream(  # a store without presigned URLs answers the bytes:
                "GET",  # closed unread
                url,
                params={"redirect": "true"},
                headers=headers,
                follow_redirects=False,
            ) as answer:
                location = answer.headers.get("location")
                if answer.status_code in (302, 303, 307) and location:
                    return location, {}  # our key is not for the store
        return url, headers

    def _ranges(self, ref: FileRef, url: str, headers: dict[str, str]) -> Iterator[bytes]:
        """The file in order, ``PARALLEL`` ranged GETs of ``PIECE`` bytes in flight."""
        spans = deque((a, min(a + PIECE, ref.size) - 1) for a in range(0, ref.size, PIECE))
        limits = httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=PARALLEL)
        with (
            httpx.Client(timeout=DOWNLOAD_TIMEOUT, limits=limits) as http,
            ThreadPoolExecutor(PARALLEL, thread_name_prefix="range") as pool,
        ):
            flying: deque[Future[bytes]] = deque()
            try:
                while spans or flying:
                    while spans and len(flying) < PARALLEL:
                        start, end = spans.popleft()
                        flying.append(pool.submit(self._piece, http, url, headers, start, end))
                    yield flying.popleft().result()
            finally:
                for future in flying:
                    future.cancel()

    def _piece(
        self, http: httpx.Client, url: str, headers: dict[str, str], start: int, end: int
    ) -> bytes:
        wanted = {**headers, "Range": f"bytes={start}-{end}"}
        for attempt in range(PIECE_TRIES):
            try:
                answer = http.get(url, headers=wanted)
            except httpx.TransportError:
                if attempt == PIECE_TRIES - 1 or self._stop.is_set():
                    raise
                continue
            if answer.status_code == 206 and len(answer.content) == end - start + 1:
                return answer.content
            if answer.status_code < 500 or attempt == PIECE_TRIES - 1:
                raise ControlPlaneError(
                    f"range {start}-{end} of {url.split('?')[0]} answered "
                    f"{answer.status_code} with {len(answer.content)} bytes"
                )
        raise AssertionError("unreachable")

    def file_url(self, ref: FileRef) -> str:
        """Absolute URLs as given; `/api/v1/...` from the root; anything else under the API."""
        if "://" in ref.url:
            return ref.url
        return self.root + ref.url if ref.url.startswith("/") else f"{self.api}/{ref.url}"

    def _post(self, path: str, body: object) -> object:
        response = self._http.post(path, json=body, headers=self._auth)
        if response.status_code == 404 and path.startswith("/workers/"):
            raise WorkerLapsed(path)
        if response.status_code >= 500:
            raise httpx.HTTPStatusError(
                f"{response.status_code} from {path}", request=response.request, response=response
            )
        if response.status_code >= 400:
            raise ControlPlaneError(f"{path} answered {response.status_code}: {response.text}")
        return response.json()

    def _retrying(self, call: Callable[[], T]) -> T:
        """Retries transport errors and 5xx with exponential backoff (brief outages)."""
        delay = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                return call()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if attempt == self._retries or self._stop.is_set():
                    raise
                log.warning("control plane unreachable (%s); retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
