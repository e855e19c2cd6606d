"""API keys checked from memory: no database round trip per call.

A bearer token is hashed (sha256, hex) at once; what the control plane said of it (a
`KeyGrant`, or "no such key") is kept under that hash, never the token. A miss asks the
`Verifier` once per token however many calls wait on it; an invalid token is remembered for
``negative_s`` (1 s) so a flood of bad keys does not become a flood of checks. Revoked or
expired keys are dropped by id (`forget`, from the route feed's ``revoked_keys``) and refused
from then on, also when a check still in flight answers with their grant afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from fnmatch import fnmatchcase
from typing import Protocol, TypeAlias

from contract.schemas import Scope
from contract.traffic import KeyGrant

log = logging.getLogger("modelplane.gateway")

Verifier: TypeAlias = Callable[[str], Awaitable[KeyGrant | None]]
# `read` and the scopes that imply it (contract.schemas.Scope); `worker` and `gateway` do not.
READS = frozenset({Scope.read, Scope.write, Scope.deploy, Scope.promote, Scope.admin})
MAX_GRANTS = 100_000
MAX_NEGATIVE = 10_000
MAX_REVOKED = 100_000


class Denied(Exception):
    """A call refused: ``status`` 401 (no valid key) or 403 (a key that may not call this)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Unverifiable(Exception):
    """The control plane could not be asked about a key just now (503, not cached)."""


class Grant:
    """What is kept of a verified key."""

    __slots__ = ("key_id", "name", "reads", "globs", "expires", "allowed")

    def __init__(self, grant: KeyGrant) -> None:
        self.key_id = grant.key_id
        self.name = grant.name
        self.reads = any(s in READS for s in grant.scopes)
        self.globs = tuple(grant.model_globs)
        self.expires = grant.expires_at.timestamp() if grant.expires_at else None
        self.allowed: dict[str, bool] = {}  # model → may call it (globs matched once)

    def reach(self, model: str, deployment: str) -> None:
        """Pass when the key's model globs (if any) match ``model``, else `Denied` (403)."""
        allowed = self.allowed.get(model)
        if allowed is None:
            allowed = not self.globs or any(fnmatchcase(model, g) for g in self.globs)
            if len(self.allowed) < 1024:
                self.allowed[model] = allowed
        if not allowed:
            raise Denied(403, f"the API key {self.name!r} may not call {deployment!r}")


class KeyWatch(Protocol):
    """Told of each grant a call passed with and of each grant dropped (the native gateway
    keeps HAProxy's keys map by it)."""

    def granted(self, digest: str, grant: Grant) -> None: ...

    def dropped(self, digest: str) -> None: ...


class KeyCache:
    """Grants by token hash, filled by the verifier, emptied by `forget`."""

    def __init__(self, verifier: Verifier, *, negative_s: float = 1.0) -> None:
        self._verifier = verifier
        self._negative_s = negative_s
        self._grants: dict[str, Grant] = {}
        self._by_id: dict[str, set[str]] = {}
        self._negative: dict[str, float] = {}  # hash → monotonic time it stops counting
        self._loading: dict[str, asyncio.Future[Grant | None]] = {}
        self._revoked: dict[str, None] = {}  # ordered: the oldest go first past the bound
        self.watch: KeyWatch | None = None

    def __len__(self) -> int:
        return len(self._grants)

    async def check(self, authorization: bytes | None) -> Grant:
        """The grant of a valid, unexpired key that may read, or raise `Denied` (401/403)
        or `Unverifiable` (503). Its globs: `Grant.reach`, once the model is known."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            raise Denied(401, "missing API key: send 'Authorization: Bearer mp_...'")
        token = authorization[7:].strip()
        digest = hashlib.sha256(token).hexdigest()
        grant = self._grants.get(digest)
        if grant is None:
            grant = await self._load(digest, token.decode("latin-1"))
            if grant is None:
                raise Denied(401, "invalid API key")
        if grant.expires is not None and time.time() >= grant.expires:
            self._drop(digest)
            raise Denied(401, f"the API key {grant.name!r} has expired")
        if not grant.reads:
            raise Denied(403, f"the API key {grant.name!r} lacks the read scope")
        if self.watch is not None:
            self.watch.granted(digest, grant)
        return grant

    def forget(self, key_ids: Iterable[str]) -> None:
        """Drop the grants of these keys (revoked or expired) and refuse them from now on."""
        for key_id in key_ids:
            if key_id in self._revoked:
                continue
            self._revoked[key_id] = None
            if len(self._revoked) > MAX_REVOKED:
                del self._revoked[next(iter(self._revoked))]
            for digest in list(self._by_id.get(key_id, ())):
                self._drop(digest)

    async def _load(self, digest: str, token: str) -> Grant | None:
        until = self._negative.get(digest)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._negative[digest]
        loading = self._loading.get(digest)
        if loading is None:
            loading = asyncio.ensure_future(self._verify(digest, token))
            self._loading[digest] = loading
            loading.add_done_callback(lambda _: self._loading.pop(digest, None))
        return await asyncio.shield(loading)

    async def _verify(self, digest: str, token: str) -> Grant | None:
        try:
            found = await self._verifier(token)
        except Exception as exc:
            log.warning("key check failed: %r", exc)
            raise Unverifiable("the control plane cannot check API keys just now") from exc
        if found is None or (found.key_id is not None and found.key_id in self._revoked):
            if len(self._negative) >= MAX_NEGATIVE:
                del self._negative[next(iter(self._negative))]
            self._negative[digest] = time.monotonic() + self._negative_s
            return None
        grant = Grant(found)
        if len(self._grants) >= MAX_GRANTS:
            self._drop(next(iter(self._grants)))
        self._grants[digest] = grant
        if grant.key_id is not None:
            self._by_id.setdefault(grant.key_id, set()).add(digest)
        return grant

    def _drop(self, digest: str) -> None:
        grant = self._grants.pop(digest, None)
        if grant is not None and self.watch is not None:
            self.watch.dropped(digest)
        if grant is not None and grant.key_id is not None:
            digests = self._by_id.get(grant.key_id)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self._by_id[grant.key_id]
