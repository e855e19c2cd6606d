"""Following the route feed: failures keep the last table, revocations reach the key cache."""

from __future__ import annotations

import asyncio

from contract.traffic import KeyGrant, Lane, LaneRole, Route, RouteFeed
from gateway.follow import Follower
from gateway.keys import KeyCache
from gateway.routes import RouteTable


def feed(cursor: str, *, revoked: list[str] | None = None) -> RouteFeed:
    lane = Lane(revision=1, version=1, role=LaneRole.primary, percent=100, endpoints=["http://a"])
    route = Route(deployment=f"d{cursor}", model="m", lanes=[lane])
    return RouteFeed(cursor=cursor, auth=True, routes=[route], revoked_keys=revoked or [])


async def test_failures_keep_the_last_table_and_the_feed_resumes_from_its_cursor() -> None:
    asked: list[str | None] = []
    answers: list[RouteFeed | Exception] = [
        feed("1"),
        ConnectionError("away"),
        ConnectionError("away"),
        feed("2"),
    ]

    async def fetch(since: str | None) -> RouteFeed:
        asked.append(since)
        if not answers:
            await asyncio.sleep(3600)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    table = RouteTable()
    follower = Follower(fetch, table)
    follower.start()
    try:
        await asyncio.wait_for(follower.ready.wait(), 1)
        assert table.lookup("d1") is not None and table.auth
        for _ in range(100):
            if table.lookup("d2") is not None:
                break
            await asyncio.sleep(0.05)
        assert table.lookup("d2") is not None and table.lookup("d1") is None
        assert asked == [None, "1", "1", "1", "2"]
    finally:
        await follower.close()


async def test_revoked_keys_in_a_feed_are_forgotten() -> None:
    async def verify(token: str) -> KeyGrant | None:
        return KeyGrant(key_id="k", name="k", scopes=["read"])

    async def never(since: str | None) -> RouteFeed:
        raise AssertionError("not followed here")

    keys = KeyCache(verify)
    await keys.check(b"Bearer mp_x")
    follower = Follower(never, RouteTable(), keys)
    follower.apply(feed("1", revoked=["k"]))
    assert len(keys) == 0
