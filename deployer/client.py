"""The worker's HTTP client to the control plane (docs/deployments-contract.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import httpx

from contract.download import BulkReader, Downloader
from contract.http import RetryPolicy, make_client
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
USER_AGENT = "modelplane-deployer"

TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=CONNECT_TIMEOUT)
CHUNK = 1 << 20
RANGED_AFTER = 32 << 20  # files larger than this come in parallel ranges
PIECE = 8 << 20  # one ranged GET
PARALLEL = 8  # ranged GETs in flight (at most PARALLEL * PIECE bytes held)


class WorkerLapsed(Exception):
    """The control plane no longer knows this worker (404): register again."""


class ControlPlaneError(Exception):
    """The control plane answered an error that retrying will not fix."""


class ControlPlane:
    """Registration, heartbeats and file downloads over the toolkit (``contract.http``):
    the token goes to the control plane only, never to a presigned store URL; transport
    errors and 503s are retried by the one policy, at once given up once ``stop`` is set."""

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
        self.token = token
        self._http = make_client(
            self.root,
            token=token,
            user_agent=USER_AGENT,
            timeout=TIMEOUT,
            connect_timeout=CONNECT_TIMEOUT,
        )
        self._bulk = BulkReader(
            timeout=60.0, connect_timeout=CONNECT_TIMEOUT, user_agent=USER_AGENT
        )
        self._policy = RetryPolicy(
            attempts=retries + 1,
            backoff=backoff_s,
            max_backoff=10.0,
            stop=stop or threading.Event(),
            log=log,
        )

    def close(self) -> None:
        self._http.close()
        self._bulk.close()

    def register(self, body: WorkerRegistration) -> WorkerLease:
        # Retried as heartbeats are: a registration whose answer was lost leaves a worker
        # record that lapses by itself.
        return WorkerLease.model_validate(self._post("/workers", body.model_dump()))

    def heartbeat(self, worker_id: str, reports: list[ReplicaReport]) -> list[Assignment]:
        body = {"replicas": [r.model_dump() for r in reports]}
        answer = self._post(f"/workers/{worker_id}/heartbeat", body)
        return HeartbeatAnswer.model_validate(answer).assignments

    def download(self, ref: FileRef) -> Iterator[bytes]:
        """The file's bytes in order, in chunks (absolute URLs and paths under the API both
        work). A large file comes in parallel ranged GETs, straight from the object store
        when the control plane offers a presigned URL, else through the control plane."""
        url = self.file_url(ref)
        if ref.size > RANGED_AFTER:
            downloader = Downloader(
                self._http, self._bulk, self._policy, parallel=PARALLEL, piece=PIECE
            )
            try:
                yield from downloader.pieces(url, ref.size)
            except httpx.HTTPStatusError as exc:
                raise ControlPlaneError(f"download of {ref.path}: {exc}") from exc
            return
        with self._http.stream("GET", url, timeout=DOWNLOAD_TIMEOUT) as response:
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
        """Worker calls repeat harmlessly (a heartbeat reports state; its answer lists every
        assignment), so the policy retries them as idempotent."""
        response = self._policy.run(
            lambda: self._http.post(self.api + path, json=body), idempotent=True
        )
        if response.status_code == 404 and path.startswith("/workers/"):
            raise WorkerLapsed(path)
        if response.status_code >= 500:
            raise httpx.HTTPStatusError(
                f"{response.status_code} from {path}", request=response.request, response=response
            )
        if response.status_code >= 400:
            raise ControlPlaneError(f"{path} answered {response.status_code}: {response.text}")
        return response.json()
