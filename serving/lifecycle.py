"""The seam to the control plane: a serving process reports its state changes here.

`Lifecycle` receives every transition (`loading` → `warming` → `ready` → `draining` →
`stopped`, or `failed` with a reason). Without `--register-url` it only logs; with it,
`HttpAnnouncer` registers the endpoint, heartbeats and deregisters, as
docs/deployments-contract.md ("Serving registration") has it: `POST {register_url}/endpoints`
`{"url", "replica_id", "status", "reason"}` → `{"id"}`; `POST …/endpoints/{id}/heartbeat`
`{"status", "reason"}` on every transition and heartbeat period; `DELETE …/endpoints/{id}`
after draining. The control-plane side belongs to the deployments issue.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Protocol

import httpx

from contract.enums import EndpointStatus
from contract.http import describe, make_client

log = logging.getLogger("serving.lifecycle")
TIMEOUT = 5.0


class Lifecycle(Protocol):
    def changed(self, state: EndpointStatus, reason: str | None = None) -> None:
        """Called on each transition, from any thread; must not raise or block for long."""

    def close(self, timeout: float = 5.0) -> None:
        """Called once before the process exits: deliver what is pending, within `timeout`."""

    def report(self, optimization: dict[str, Any]) -> None:
        """What deploy-time optimisation did (contract.optimize.OptimizationReport): sent
        with every later registration and heartbeat."""


class LoggingLifecycle:
    def changed(self, state: EndpointStatus, reason: str | None = None) -> None:
        log.info("endpoint %s%s", state.value, f": {reason}" if reason else "")

    def close(self, timeout: float = 5.0) -> None:
        pass

    def report(self, optimization: dict[str, Any]) -> None:
        log.info("optimization %s", optimization)


class HttpAnnouncer:
    """Announces the endpoint to a control plane from one background thread, in order;
    between changes it heartbeats. Failures are logged, never fatal, and not retried here:
    the next heartbeat (or, before an id is known, the next registration) is the retry."""

    def __init__(
        self,
        register_url: str,
        endpoint: dict[str, Any],
        heartbeat_s: float,
        *,
        token: str | None = None,
        request_id: str | None = None,
    ) -> None:
        # the control plane's events about us carry the request id
        headers = {"X-Request-ID": request_id} if request_id else {}
        self._http = make_client(
            register_url.rstrip("/"),
            token=token,
            headers=headers,
            user_agent="modelplane-serving",
            timeout=TIMEOUT,
            connect_timeout=TIMEOUT,
            max_connections=1,
            max_keepalive=1,
        )
        self._endpoint = endpoint
        self._heartbeat_s = heartbeat_s
        self._state = EndpointStatus.loading
        self._id: str | None = None
        self._optimization: dict[str, Any] | None = None
        self._changes: queue.SimpleQueue[tuple[EndpointStatus, str | None] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)
        self._thread.start()

    def changed(self, state: EndpointStatus, reason: str | None = None) -> None:
        LoggingLifecycle().changed(state, reason)
        self._changes.put((state, reason))

    def report(self, optimization: dict[str, Any]) -> None:
        LoggingLifecycle().report(optimization)
        self._optimization = optimization  # read by the announcer thread on its next send

    def close(self, timeout: float = 5.0) -> None:
        self._changes.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                change = self._changes.get(timeout=self._heartbeat_s)
            except queue.Empty:
                self._send(self._state, None)  # heartbeat
                continue
            if change is None:
                self._http.close()
                return
            self._state = change[0]
            self._send(*change)

    def _send(self, state: EndpointStatus, reason: str | None) -> None:
        body: dict[str, Any] = {"status": state.value, "reason": reason}
        if self._optimization is not None:
            body["optimization"] = self._optimization
        if self._id is None:
            answer = self._call("POST", "/endpoints", {**self._endpoint, **body})
            self._id = str(answer["id"]) if answer and "id" in answer else None
        elif state is EndpointStatus.stopped:
            self._call("DELETE", f"/endpoints/{self._id}", None)
        else:
            self._call("POST", f"/endpoints/{self._id}/heartbeat", body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            log.warning("announce %s %s failed: %s", method, path, describe(exc))
            return None
        if not response.is_success:
            log.warning("announce %s %s failed: %s", method, path, response.status_code)
            return None
        try:
            parsed = response.json() if response.content else None
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
