"""The worker's HTTP client to the control plane (docs/deployments-contract.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx

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
        self.api = self.root + "/api/v1"
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
        """The file's bytes in chunks (absolute URLs and paths under the API both work)."""
        url = self.file_url(ref)
        headers = self._auth if url.startswith(self.root + "/") else {}
        with self._http.stream("GET", url, headers=headers, timeout=DOWNLOAD_TIMEOUT) as response:
            if response.status_code != 200:
                response.read()
                raise ControlPlaneError(
                    f"download of {ref.path} answered {response.status_code}: {response.text[:300]}"
                )
            yield from response.iter_bytes(CHUNK)

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
