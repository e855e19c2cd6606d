"""Choosing an endpoint: shares, pins, version-addressed paths, lanes without endpoints."""

from __future__ import annotations

from collections import Counter

import pytest

from contract.traffic import Lane, LaneRole, Route, RouteFeed
from gateway.routes import NoVersion, RouteTable, path_version


def lane(revision: int, version: int, role: str, percent: float, *urls: str) -> Lane:
    return Lane(
        revision=revision, version=version, role=LaneRole(role), percent=percent,
        endpoints=list(urls),
    )  # fmt: skip


def table(*lanes: Lane) -> RouteTable:
    routes = [Route(deployment="d", model="m", lanes=list(lanes))]
    t = RouteTable()
    t.apply(RouteFeed(cursor="1", auth=False, routes=routes))
    return t


def test_a_90_10_split_is_observed_within_3_points_over_5000_picks() -> None:
    plan = table(lane(1, 7, "primary", 90, "http://a"), lane(2, 8, "split", 10, "http://b"))
    plan_ = plan.lookup("d")
    assert plan_ is not None
    seen = Counter(plan_.choose()[0].version for _ in range(5000))  # type: ignore[union-attr]
    assert abs(seen[8] / 5000 * 100 - 10) <= 3
    assert seen[7] + seen[8] == 5000


def test_a_lane_without_endpoints_gives_its_share_to_the_others() -> None:
    plan = table(lane(1, 7, "primary", 90, "http://a"), lane(2, 8, "split", 10)).lookup("d")
    assert plan is not None
    assert {plan.choose()[0].version for _ in range(200)} == {7}  # type: ignore[union-attr]


def test_a_canary_at_zero_percent_gets_nothing() -> None:
    plan = table(lane(1, 7, "primary", 100), lane(2, 8, "canary", 0, "http://b")).lookup("d")
    assert plan is not None
    assert plan.choose() == (None, [])  # no ready endpoint: the caller gets a 503


def test_pins_reach_only_their_version_shadow_included() -> None:
    plan = table(
        lane(1, 7, "primary", 100, "http://a", "http://a2"),
        lane(3, 9, "shadow", 20, "http://s"),
    ).lookup("d")
    assert plan is not None
    assert {plan.choose(9)[0].urls[0] for _ in range(10)} == {"http://s"}  # type: ignore[union-attr]
    pool, others = plan.choose(7)
    assert pool is not None and pool.revision == 1 and others == []
    assert {pool.order()[0] for _ in range(4)} == {"http://a", "http://a2"}  # round robin
    assert plan.choose()[0].version == 7  # type: ignore[union-attr]  # shadow: no unpinned call


def test_a_version_not_served_is_named_with_those_that_are() -> None:
    plan = table(
        lane(1, 7, "primary", 90, "http://a"),
        lane(2, 9, "split", 10, "http://b"),
        lane(3, 8, "canary", 0),  # no endpoints: not served
    ).lookup("d")
    assert plan is not None
    with pytest.raises(NoVersion) as caught:
        plan.choose(8)
    assert str(caught.value) == "deployment 'd' serves no version 8; it serves 7, 9"


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/v2/models/m/versions/8/infer", 8),
        ("/v2/models/m/versions/8", 8),
        ("/v2/models/m/versions/12/ready", 12),
        ("/v1/models/m/versions/3", 3),
        ("/v1/models/m/versions/3:predict", 3),
        ("/v1/models/m/versions/3/metadata", 3),
        ("/predictions/m/5", 5),
        ("/v2/models/m/infer", None),
        ("/v1/models/m:predict", None),
        ("/predictions/m", None),
        ("/v2/models/m/versions/x/infer", None),
    ],
)
def test_version_addressed_paths(path: str, version: int | None) -> None:
    assert path_version(path) == version


def test_a_feed_replaces_the_table_whole() -> None:
    t = table(lane(1, 7, "primary", 100, "http://a"))
    t.apply(RouteFeed(cursor="2", auth=True, routes=[]))
    assert t.lookup("d") is None and t.auth
