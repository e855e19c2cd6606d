"""API keys: minting, listing, revoking, and checking a presented token.

A token is ``mp_`` + a 12-character public prefix + 43 characters of secret (32 random
bytes). The database keeps the prefix (to find the row) and the sha256 of the whole token,
never the token: a leaked database yields no usable key. A presented token is checked on
every API request against its row (revoked, expired), so a revocation holds on the next call
on every control-plane process. Gateways keep the keys they verified (``grant_for``) and
learn of revocations and expiries through the route feed (``services/route_feed.py``),
within ``route_feed_poll_s`` and one feed round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from contract.schemas import KeyCreate, KeyCreated, KeyOut, Page, Scope
from contract.traffic import KeyGrant
from registry.db import SessionFactory, reading_connection, utcnow
from registry.errors import Forbidden, Unauthenticated
from registry.principal import Principal, effective
from registry.repositories.base import decode_cursor
from registry.repositories.events import Actor, EventRepository
from registry.repositories.keys import (
    LAST_USED_GRANULARITY,
    KeyRepository,
    key_by_prefix,
    touch_key,
)
from registry.services.paging import to_page
from registry.tables import ApiKeyRow

TOKEN_START = "mp_"
PREFIX_LENGTH = 12
SECRET_BYTES = 32
TOKEN_LENGTH = len(TOKEN_START) + PREFIX_LENGTH + 43  # token_urlsafe(32) is 43 characters


def new_token() -> tuple[str, str]:
    """(prefix, token)."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    return prefix, f"{TOKEN_START}{prefix}{secrets.token_urlsafe(SECRET_BYTES)}"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str | None:
    """The lookup prefix of a well-formed token, else ``None``."""
    if len(token) != TOKEN_LENGTH or not token.startswith(TOKEN_START) or not token.isascii():
        return None
    return token[len(TOKEN_START) : len(TOKEN_START) + PREFIX_LENGTH]


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header; ``Unauthenticated`` otherwise."""
    if not header:
        raise Unauthenticated("this call needs an API key: send 'Authorization: Bearer mp_...'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer mp_...'")
    return token.strip()


async def check_key(connection: AsyncConnection, token: str, now: datetime) -> KeyCheck:
    """The key behind ``token``, read on ``connection``; ``Unauthenticated`` for an unknown,
    wrong, revoked or expired one (the same answer for unknown and wrong: no probing for
    prefixes)."""
    return verify_key(await key_by_prefix(connection, _prefix(token)), token, now)


def _prefix(token: str) -> str:
    prefix = token_prefix(token)
    if prefix is None:
        raise Unauthenticated("the API key is malformed (tokens look like 'mp_' + 55 characters)")
    return prefix


def verify_key(row: Any, token: str, now: datetime) -> KeyCheck:
    """``check_key`` on the key's row (``None``: no key has the token's prefix)."""
    digest = token_sha256(token)
    # compare_digest even for a missing row, so timing does not tell the two apart
    stored = row.token_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(stored.encode(), digest.encode()) or row is None:
        raise Unauthenticated("the API key is not valid")
    if row.revoked_at is not None:
        raise _known(Unauthenticated("the API key was revoked"), row.id)
    if row.expires_at is not None and row.expires_at <= now:
        raise _known(Unauthenticated("the API key has expired"), row.id)
    principal = Principal(
        key_id=row.id,
        name=row.name,
        scopes=effective(row.scopes),
        model_globs=tuple(row.model_globs or ()),
    )
    stale = row.last_used_at is None or row.last_used_at < now - LAST_USED_GRANULARITY
    return KeyCheck(principal, stale)


def _known(exc: Unauthenticated, key_id: str) -> Unauthenticated:
    """The refused key's id, for the audit log (never in the answer)."""
    exc.key_id = key_id  # type: ignore[attr-defined]
    return exc


class KeyCheck(NamedTuple):
    principal: Principal
    stale: bool  # last_used_at is due for an update: ``record_use``


async def authenticate(sessions: SessionFactory, token: str) -> Principal:
    """``check_key`` on a pooled connection of its own, then ``record_use`` when due."""
    now = utcnow()
    async with reading_connection(sessions) as connection:
        check = await check_key(connection, token, now)
    # outside the read: never hold two pooled connections at once
    if check.stale:
        await record_use(sessions, check.principal, now)
    return check.principal


async def grant_for(sessions: SessionFactory, token: str) -> KeyGrant:
    """What a gateway keeps of the key behind ``token`` (``Unauthenticated`` as
    ``check_key``), its use recorded when due: ``POST /gateway/keys:verify`` and the embedded
    gateway's verifier. The scopes are the key's own (the gateway knows which imply read)."""
    now = utcnow()
    async with reading_connection(sessions) as connection:
        row = await key_by_prefix(connection, _prefix(token))
    check = verify_key(row, token, now)
    if check.stale:
        await record_use(sessions, check.principal, now)
    return KeyGrant(
        key_id=row.id,
        name=row.name,
        scopes=list(row.scopes),
        model_globs=list(row.model_globs or ()),
        expires_at=row.expires_at,
    )


async def record_use(sessions: SessionFactory, principal: Principal, now: datetime) -> None:
    if principal.key_id is not None:
        await _touch(sessions, principal.key_id, now)


async def _touch(sessions: SessionFactory, key_id: str, now: datetime) -> None:
    async with sessions.begin() as session:
        await touch_key(await session.connection(), key_id, now)


def key_out(row: ApiKeyRow) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        owner=row.owner,
        prefix=f"{TOKEN_START}{row.prefix}",
        scopes=[Scope(s) for s in row.scopes],
        model_globs=list(row.model_globs or []),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _summary(out: KeyOut) -> dict[str, Any]:
    """What the audit log keeps of a key (never its token or hash)."""
    return out.model_dump(mode="json", exclude={"last_used_at"})


class KeyService:
    """Key management; needs no store, so the CLI runs it straight against a database."""

    def __init__(
        self,
        sessions: SessionFactory,
        actor: Actor,
        principal: Principal,
        revoked: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._actor = actor
        self._principal = principal
        self._revoked = revoked  # told after a revocation commits (the gateways' route feed)

    async def create_key(self, body: KeyCreate) -> KeyCreated:
        principal = self._principal
        if principal.restricted and not body.model_globs:
            # a key may not mint a key that reaches further than itself
            raise Forbidden("a key restricted to some models can only create restricted keys")
        prefix, token = new_token()
        row = ApiKeyRow(
            id=uuid.uuid4().hex,
            prefix=prefix,
            token_sha256=token_sha256(token),
            name=body.name,
            owner=body.owner or principal.name,
            scopes=sorted({s.value for s in body.scopes}),
            model_globs=list(dict.fromkeys(body.model_globs)),
            created_at=utcnow(),
            expires_at=body.expires_at,
        )
        async with self._sessions.begin() as session:
            await KeyRepository(session).add(row)
            out = key_out(row)
            await EventRepository(session).add(
                self._actor, "key.created", model=None, target=f"key:{row.id}",
                after=_summary(out),
            )  # fmt: skip
        return KeyCreated(**out.model_dump(), token=token)

    async def grant(self, token: str) -> KeyGrant:
        """``POST /gateway/keys:verify``: ``grant_for`` the token."""
        return await grant_for(self._sessions, token)

    async def list_keys(
        self, *, cursor: str | None, limit: int, include_revoked: bool
    ) -> Page[KeyOut]:
        after = decode_cursor(cursor, str)
        async with self._sessions() as session:
            rows = await KeyRepository(session).search(
                after=after, limit=limit + 1, include_revoked=include_revoked
            )
            return to_page(rows, limit, lambda r: r.id, key_out)

    async def get_key(self, key_id: str) -> KeyOut:
        async with self._sessions() as session:
            return key_out(await KeyRepository(session).get(key_id))

    async def revoke_key(self, key_id: str) -> KeyOut:
        """Revoke at once (idempotent: a revoked key stays revoked at its first time)."""
        async with self._sessions.begin() as session:
            row = await KeyRepository(session).get(key_id, lock=True)
            before = key_out(row)
            if row.revoked_at is not None:
                return before
            row.revoked_at = utcnow()
            await session.flush()
            out = key_out(row)
            await EventRepository(session).add(
                self._actor, "key.revoked", model=None, target=f"key:{row.id}",
                before=_summary(before), after=_summary(out),
            )  # fmt: skip
        self._revoked()
        return out


async def mint_key(database_url: str, body: KeyCreate, *, by: str = "cli") -> KeyCreated:
    """Create a key straight in the database (no server): the first admin key, `up`'s keys.
    The audit event names ``by`` as its actor."""
    from registry.db import make_engine, make_session_factory

    engine = make_engine(database_url, pool_size=1)
    try:
        actor = Actor(name=by)
        service = KeyService(make_session_factory(engine), actor, _local(by))
        return await service.create_key(body)
    finally:
        await engine.dispose()


async def check_token(database_url: str, token: str) -> Principal | None:
    """The key behind ``token`` when it is valid now, else ``None`` (for `up`)."""
    from registry.db import make_engine, make_session_factory

    engine = make_engine(database_url, pool_size=1)
    try:
        return await authenticate(make_session_factory(engine), token)
    except Unauthenticated:
        return None
    finally:
        await engine.dispose()


def _local(name: str) -> Principal:
    """Whoever holds the database: every scope, no model restriction."""
    return Principal(key_id=None, name=name, scopes=effective([Scope.admin]))
