"""The seam to the control plane: a serving process reports its state changes here.

`Lifecycle` receives every transition (`loading` → `warming` → `ready` → `draining` →
`stopped`, or `failed` with a reason). Without `--register-url` it only logs; with it,
`HttpAnnouncer` registers the endpoint, heartbeats and deregisters. The registry side of
that exchange belongs to the deployments issue; the request shapes here follow DESIGN.md's
`POST /endpoints`, `POST /endpoints/{id}/heartbeat`, `DELETE /endpoints/{id}`.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from enum import StrEnum
from typing import Any, Protocol

import orjson

log = logging.getLogger("serving.lifecycle")


class EndpointState(StrEnum):
    loading = "loading"
    warming = "warming"
    ready = "ready"
    draining = "draining"
    stopped = "stopped"
    failed = "failed"


class Lifecycle(Protocol):
    def changed(self, state: EndpointState, reason: str | None = None) -> None:
        """Called on each transition, from any thread; must not raise or block for long."""


class LoggingLifecycle:
    def changed(self, state: EndpointState, reason: str | None = None) -> None:
        log.info("endpoint %s%s", state.value, f": {reason}" if reason else "")


class HttpAnnouncer:
    """Announces the endpoint to a control plane; failures are logged, never fatal."""

    def __init__(self, register_url: str, endpoint: dict[str, Any], heartbeat_s: float) -> None:
        self._base = register_url.rstrip("/")
        self._endpoint = endpoint
        self._heartbeat_s = heartbeat_s
        self._state = EndpointState.loading
        self._id: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def changed(self, state: EndpointState, reason: str | None = None) -> None:
        LoggingLifecycle().changed(state, reason)
        self._state = state
        body = {**self._endpoint, "status": state.value, "reason": reason}
        threading.Thread(target=self._send, args=(body,), daemon=True).start()
        if state in (EndpointState.stopped, EndpointState.failed):
            self._stop.set()

    def _send(self, body: dict[str, Any]) -> None:
        with self._lock:
            if self._id is None:
                answer = self._call("POST", "/api/v1/endpoints", body)
                self._id = str(answer.get("id")) if answer else None
                if self._id is not None:
                    threading.Thread(target=self._beat, daemon=True).start()
            elif body["status"] == EndpointState.stopped:
                self._call("DELETE", f"/api/v1/endpoints/{self._id}", None)
            else:
                self._call("POST", f"/api/v1/endpoints/{self._id}/heartbeat", body)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            self._send({**self._endpoint, "status": self._state.value})

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                raw = response.read()
        except OSError as exc:
            log.warning("announce %s %s failed: %s", method, path, exc)
            return None
        parsed = orjson.loads(raw) if raw else None
        return parsed if isinstance(parsed, dict) else None
