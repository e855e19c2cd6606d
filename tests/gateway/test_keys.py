"""The key cache: grants by token hash, one check per token, revocation, expiry, globs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from contract.traffic import KeyGrant
from gateway.keys import Denied, KeyCache, Unverifiable

GOOD = "mp_good"


class Verifier:
    """The control plane's answer, counting the questions."""

    def __init__(self, grants: dict[str, KeyGrant]) -> None:
        self.grants = grants
        self.asked: list[str] = []

    async def __call__(self, token: str) -> KeyGrant | None:
        self.asked.append(token)
        await asyncio.sleep(0.01)
        return self.grants.get(token)


def grant(key_id: str = "k1", scopes: tuple[str, ...] = ("read",), **extra: object) -> KeyGrant:
    return KeyGrant(key_id=key_id, name=f"key-{key_id}", scopes=list(scopes), **extra)  # type: ignore[arg-type]


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


async def test_concurrent_misses_ask_once_and_hits_ask_never() -> None:
    verifier = Verifier({GOOD: grant()})
    keys = KeyCache(verifier)
    await asyncio.gather(*(keys.check(bearer(GOOD)) for _ in range(20)))
    await keys.check(bearer(GOOD))
    assert verifier.asked == [GOOD] and len(keys) == 1


async def test_invalid_tokens_are_cached_negatively_for_a_second() -> None:
    verifier = Verifier({})
    keys = KeyCache(verifier, negative_s=0.2)
    for _ in range(3):
        with pytest.raises(Denied) as caught:
            await keys.check(bearer("mp_bad"))
        assert caught.value.status == 401
    assert verifier.asked == ["mp_bad"]
    await asyncio.sleep(0.25)
    with pytest.raises(Denied):
        await keys.check(bearer("mp_bad"))
    assert len(verifier.asked) == 2


async def test_missing_or_malformed_header_is_401() -> None:
    keys = KeyCache(Verifier({}))
    for header in (None, b"", b"Basic abc", b"mp_x"):
        with pytest.raises(Denied) as caught:
            await keys.check(header)
        assert caught.value.status == 401


async def test_forget_stops_a_key_at_once_even_if_a_check_answers_later() -> None:
    verifier = Verifier({GOOD: grant()})
    keys = KeyCache(verifier)
    await keys.check(bearer(GOOD))
    keys.forget(["k1"])
    with pytest.raises(Denied) as caught:
        await keys.check(bearer(GOOD))  # asked again; the grant comes back, and is refused
    assert caught.value.status == 401 and len(verifier.asked) == 2


async def test_an_expired_key_is_refused_by_the_local_clock() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.2)
    keys = KeyCache(Verifier({GOOD: grant(expires_at=soon)}))
    await keys.check(bearer(GOOD))
    await asyncio.sleep(0.25)
    with pytest.raises(Denied) as caught:
        await keys.check(bearer(GOOD))
    assert caught.value.status == 401 and "expired" in str(caught.value)


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [(("read",), True), (("write",), True), (("deploy",), True), (("promote",), True),
     (("admin",), True), (("worker",), False), (("gateway",), False)],
)  # fmt: skip
async def test_read_or_a_scope_implying_it(scopes: tuple[str, ...], allowed: bool) -> None:
    keys = KeyCache(Verifier({GOOD: grant(scopes=scopes)}))
    if allowed:
        await keys.check(bearer(GOOD))
        return
    with pytest.raises(Denied) as caught:
        await keys.check(bearer(GOOD))
    assert caught.value.status == 403 and "read scope" in str(caught.value)


async def test_model_globs_are_matched_case_sensitively() -> None:
    keys = KeyCache(Verifier({GOOD: grant(model_globs=["team-a-*"])}))
    found = await keys.check(bearer(GOOD))
    found.reach("team-a-mlp", "d")
    for model in ("team-b-mlp", "TEAM-A-mlp"):
        with pytest.raises(Denied) as caught:
            found.reach(model, "d")
        assert caught.value.status == 403


async def test_a_verifier_failure_is_503_and_not_cached() -> None:
    calls = []

    async def broken(token: str) -> KeyGrant | None:
        calls.append(token)
        raise ConnectionError("control plane away")

    keys = KeyCache(broken)
    for _ in range(2):
        with pytest.raises(Unverifiable):
            await keys.check(bearer(GOOD))
    assert len(calls) == 2
