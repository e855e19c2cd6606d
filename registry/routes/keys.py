"""``/keys``: API keys (admin scope). A key's token is shown once, when it is created."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from contract.schemas import KeyCreate, KeyCreated, KeyOut, Page
from registry.deps import Cursor, KeyDep, Limit
from registry.problems import problem_responses

router = APIRouter(prefix="/keys", tags=["keys"])
KeyId = Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]{1,32}$", description="the key's id")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key",
    responses=problem_responses(401, 403, 422),
)
async def create_key(body: KeyCreate, keys: KeyDep) -> KeyCreated:
    """Mint a key with `scopes` (`read`, `write`, `deploy`, `promote`, `admin`, `worker`),
    optionally restricted to models matching `model_globs` and expiring at `expires_at`.
    The answer carries the `token` (`mp_…`) this once; only its hash is stored."""
    return await keys.create_key(body)


@router.get(
    "",
    summary="List API keys",
    responses=problem_responses(400, 401, 403, 422),
)
async def list_keys(
    keys: KeyDep,
    limit: Limit = 100,
    cursor: Cursor = None,
    revoked: Annotated[bool, Query(description="include revoked keys")] = False,
) -> Page[KeyOut]:
    """Keys by id, without their tokens."""
    return await keys.list_keys(cursor=cursor, limit=limit, include_revoked=revoked)


@router.get("/{key_id}", summary="Get an API key", responses=problem_responses(401, 403, 404, 422))
async def get_key(key_id: KeyId, keys: KeyDep) -> KeyOut:
    """One key: scopes, model globs, expiry, revocation and last use (never its token)."""
    return await keys.get_key(key_id)


@router.post(
    "/{key_id}/revoke",
    summary="Revoke an API key",
    responses=problem_responses(401, 403, 404, 422),
)
async def revoke_key(key_id: KeyId, keys: KeyDep) -> KeyOut:
    """The key stops working on its next request, on every control-plane process.
    Revoking a revoked key changes nothing."""
    return await keys.revoke_key(key_id)
