"""The gateway's three callables over the control plane's HTTP API (``python -m gateway``).

- ``GET /api/v1/gateway/routes?since=CURSOR&wait_s=25`` → `RouteFeed` (a long poll);
- ``POST /api/v1/gateway/keys:verify`` with a `KeyCheck` → 200 `KeyGrant`, 401/403 → ``None``;
- ``POST /api/v1/gateway/reports`` with a `TrafficReport` → 204.

The gateway's own key (scope ``gateway`` or ``admin``) goes as a bearer token to the
control plane's origin only (`contract.http.Bearer`). Failures raise ``httpx`` errors: the
follower retries, a key check answers 503, a report is merged into the next.
"""

from __future__ import annotations

import httpx

from contract.http import NODELAY, USER_AGENT, Bearer
from contract.paths import API_PREFIX
from contract.traffic import KeyCheck, KeyGrant, RouteFeed, TrafficReport

WAIT_S = 25.0


class RemoteRegistry:
    """`fetch`, `verify` and `report` against one control plane (or a balancer of them)."""

    def __init__(self, url: str, token: str | None, *, wait_s: float = WAIT_S) -> None:
        base = url.rstrip("/") + API_PREFIX
        self._wait_s = wait_s
        self._http = httpx.AsyncClient(
            base_url=base,
            auth=Bearer(token, base) if token else None,
            headers={"User-Agent": f"{USER_AGENT}-gateway"},
            timeout=httpx.Timeout(10.0),
            transport=httpx.AsyncHTTPTransport(
                socket_options=NODELAY, limits=httpx.Limits(max_connections=32)
            ),
        )

    async def fetch(self, since: str | None) -> RouteFeed:
        params: dict[str, str | float] = {"wait_s": self._wait_s}
        if since is not None:
            params["since"] = since
        answer = await self._http.get("/gateway/routes", params=params, timeout=self._wait_s + 10.0)
        answer.raise_for_status()
        return RouteFeed.model_validate_json(answer.content)

    async def verify(self, token: str) -> KeyGrant | None:
        body = KeyCheck(token=token).model_dump_json()
        answer = await self._http.post(
            "/gateway/keys:verify", content=body, headers={"Content-Type": "application/json"}
        )
        if answer.status_code in (401, 403):
            return None
        answer.raise_for_status()
        return KeyGrant.model_validate_json(answer.content)

    async def report(self, report: TrafficReport) -> None:
        answer = await self._http.post(
            "/gateway/reports",
            content=report.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        answer.raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()
