"""The one HTTP toolkit of the SDK, the CLI, the deployer and serving processes (the
gateway keeps its aiohttp pool, a measured hot path). Large downloads: `contract.download`.

- `make_client`: an ``httpx.Client`` configured once (timeouts, keep-alive limits, a
  User-Agent, TCP_NODELAY, a bearer token that only ever goes to its own origin).
- `RetryPolicy`: the one retry policy (tenacity): idempotent requests are retried on
  transport errors and 503 (``Retry-After`` honoured, capped), others only when the
  connection could not be opened (nothing was sent); exponential backoff with jitter,
  bounded attempts (and time, when asked).
- `redirect_target` and `same_origin`: which redirects are followed, where credentials go.

Everything raises httpx's own exceptions (``httpx.TransportError``, ``httpx.HTTPStatusError``
carrying the answer), which each caller maps to its own errors once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urljoin

import httpx
import tenacity

T = TypeVar("T")

USER_AGENT = "modelplane"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({503})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

# -- clients -----------------------------------------------------------------------------


def same_origin(a: str | httpx.URL, b: str | httpx.URL) -> bool:
    """Same scheme, host and port: the only peer a credential is sent to."""
    x, y = httpx.URL(str(a)), httpx.URL(str(b))
    return (x.scheme, x.host, x.port) == (y.scheme, y.host, y.port)


class Bearer(httpx.Auth):
    """A bearer token sent to its own origin only: a presigned store URL carries its own
    signature, and another host never sees our key, whichever client asks it."""

    def __init__(self, token: str, origin: str) -> None:
        self.token, self.origin = token, origin

    def headers_for(self, url: str | httpx.URL) -> dict[str, str]:
        ours = same_origin(url, self.origin)
        return {"Authorization": f"Bearer {self.token}"} if ours else {}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.headers_for(request.url))
        yield request


def make_client(
    base_url: str = "",
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    user_agent: str = USER_AGENT,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
    max_connections: int = 32,
    max_keepalive: int = 16,
) -> httpx.Client:
    """A pooled client. Nagle is off: our requests and answers are small JSON bodies on
    kept-alive connections, where Nagle plus delayed ACKs cost ~40 ms a round trip.
    Redirects are not followed by httpx (`redirect_target` decides, per call)."""
    transport = httpx.HTTPTransport(
        socket_options=NODELAY,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_keepalive
        ),
    )
    return httpx.Client(
        base_url=base_url,
        auth=Bearer(token, base_url) if token else None,
        headers={"User-Agent": user_agent, **(headers or {})},
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        transport=transport,
    )


def auth_headers(client: httpx.Client, url: str | httpx.URL) -> dict[str, str]:
    """What `client` would authenticate a request to ``url`` with (for `BulkReader`)."""
    auth = client.auth
    return auth.headers_for(url) if isinstance(auth, Bearer) else {}


def redirect_target(response: httpx.Response) -> str | None:
    """The absolute URL a download answer sends us to, or ``None`` if it is not a redirect.

    The one rule for every download: any redirect status with a ``Location`` is followed,
    once (the presigned URL is read; a redirect from it is not followed again), and the
    caller's `Bearer` keeps the token to the control plane's origin. The SDK used to follow
    307 only (what the control plane answers) and treated a 302 as an error; the deployer
    followed 302/303/307. The deployer's wider rule won: for a GET every redirect status
    means "read it there", and a proxy or balancer in front of the control plane may turn a
    307 into a 302. Credentials never follow a redirect to another origin either way."""
    location: str | None = response.headers.get("location")
    if response.status_code not in REDIRECTS or not location:
        return None
    return urljoin(str(response.request.url), location)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), ``None`` if absent or bad."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# -- retries -----------------------------------------------------------------------------

NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to try again. ``attempts`` counts the first try; each wait is
    ``backoff * 2**n`` plus up to ``backoff`` of jitter, at most ``max_backoff``, and at
    least a 503's ``Retry-After`` (itself capped at ``max_backoff``). ``deadline`` bounds
    the whole call in seconds; ``stop``, once set, ends the retrying (a worker shutting
    down). ``log`` gets a warning before each wait."""

    attempts: int = 5
    backoff: float = 0.2
    max_backoff: float = 8.0
    deadline: float | None = None
    stop: threading.Event | None = None
    log: logging.Logger | None = None

    def run(self, call: Callable[[], T], *, idempotent: bool) -> T:
        """``call()``, again while it raises or answers what is worth retrying. A call may
        answer an ``httpx.Response`` (a 503 is retried, and the last one returned) or raise
        ``httpx.HTTPStatusError`` (a 503 is retried, and the last one raised)."""
        retrying = tenacity.Retrying(
            stop=self._stop_condition(),
            wait=self._waiter(),
            retry=tenacity.retry_if_exception(lambda e: _worth_retrying(e, idempotent))
            | tenacity.retry_if_result(lambda r: idempotent and _unavailable(r) is not None),
            sleep=self._sleep,
            before_sleep=self._before_sleep if self.log is not None else None,
            reraise=True,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        return retrying(call)

    def _sleep(self, seconds: float) -> None:
        if self.stop is None:
            time.sleep(seconds)
        else:
            self.stop.wait(seconds)  # set meanwhile: the stop condition ends it next

    def _stop_condition(self) -> tenacity.stop.stop_base:
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(max(1, self.attempts))
        if self.deadline is not None:
            stop = stop | tenacity.stop_before_delay(self.deadline)
        if (event := self.stop) is not None:
            stop = stop | tenacity.stop_when_event_set(event)
        return stop

    def _waiter(self) -> Callable[[tenacity.RetryCallState], float]:
        exponential = tenacity.wait_exponential(
            multiplier=self.backoff, max=self.max_backoff
        ) + tenacity.wait_random(0, self.backoff)

        def wait(state: tenacity.RetryCallState) -> float:
            delay = min(exponential(state), self.max_backoff)
            outcome = state.outcome
            answer = None
            if outcome is not None:
                answer = _unavailable(outcome.exception() if outcome.failed else outcome.result())
            if answer is not None and (after := retry_after(answer)) is not None:
                delay = max(delay, min(after, self.max_backoff))
            return delay

        return wait

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        assert self.log is not None and state.outcome is not None and state.next_action
        failed = state.outcome.failed
        what = _what_failed(state.outcome.exception() if failed else state.outcome.result())
        wait = state.next_action.sleep
        self.log.warning("%s; try %d in %.1fs", what, state.attempt_number + 1, wait)


def _what_failed(outcome: object) -> str:
    """One line for the log: the request (without its query: presigned URLs carry a
    signature) and what came of it."""
    request: httpx.Request | None = None
    if isinstance(outcome, httpx.Response):
        request, what = outcome.request, f"answered {outcome.status_code}"
    elif isinstance(outcome, httpx.HTTPError):
        with contextlib.suppress(RuntimeError):  # an error raised outside a request
            request = outcome.request
        what = describe(outcome)
    else:
        what = describe(outcome) if isinstance(outcome, BaseException) else repr(outcome)
    if request is None:
        return what
    return f"{request.method} {request.url.copy_with(query=None)}: {what}"


def _unavailable(outcome: object) -> httpx.Response | None:
    """The answer, when it is one worth trying again."""
    if isinstance(outcome, httpx.HTTPStatusError):
        outcome = outcome.response
    if isinstance(outcome, httpx.Response) and outcome.status_code in RETRY_STATUSES:
        return outcome
    return None


def _worth_retrying(exc: BaseException, idempotent: bool) -> bool:
    if isinstance(exc, NEVER_SENT):
        return True
    if isinstance(exc, httpx.TransportError):
        return idempotent
    return idempotent and _unavailable(exc) is not None


def describe(exc: BaseException) -> str:
    """An exception as one line."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
