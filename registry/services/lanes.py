"""A deployment's lanes (``DeploymentRow.lanes``): which revisions take calls, in which role
and share. Pure functions over the stored list of ``LaneOut`` dicts; ``None`` stored means
a plain deployment (its current revision, and during a rolling update the old ones still
running: the gateway spreads calls over every ready endpoint).

When lanes are listed (a split, a shadow, a canary) and the primary changes, the old
primary stays as a second ``primary`` lane while its replicas run: ``settle`` shares the
primary's percent between those lanes by ready replicas (as a plain rolling update shares
calls by ready endpoints), and drops the lanes of revisions that no longer serve."""

from __future__ import annotations

from typing import Any

from contract.traffic import LaneOut, LaneRole

Stored = list[dict[str, Any]] | None


def lane(revision: int, version: int, role: LaneRole, percent: float) -> dict[str, Any]:
    return LaneOut(revision=revision, version=version, role=role, percent=percent).model_dump(
        mode="json"
    )


def lanes_of(stored: Stored, revision: int, version: int) -> list[LaneOut]:
    """The lanes as the API shows them: always at least the primary."""
    if not stored:
        return [LaneOut(revision=revision, version=version, role=LaneRole.primary, percent=100)]
    return [LaneOut.model_validate(item) for item in stored]


def live_revisions(stored: Stored) -> set[int]:
    """Revisions a split, shadow or canary lane names: their replicas run whatever the
    current revision is (an old primary's stop one for one, as in a rolling update)."""
    return {int(item["revision"]) for item in stored or [] if item["role"] != LaneRole.primary}


def of_role(stored: Stored, role: LaneRole) -> list[dict[str, Any]]:
    return [item for item in stored or [] if item["role"] == role]


def compact(items: list[dict[str, Any]]) -> Stored:
    """``None`` when only a primary taking every call is left."""
    if len(items) == 1 and items[0]["role"] == LaneRole.primary and items[0]["percent"] == 100:
        return None
    return items or None


def retarget(stored: Stored, revision: int, version: int) -> Stored:
    """A new current revision: it becomes the first primary lane (the old primaries stay
    until their replicas stop: ``settle``), a canary lane goes (a canary ends before any
    rolling update); splits and a shadow stay."""
    if not stored:
        return None
    olds = [item for item in of_role(stored, LaneRole.primary) if int(item["revision"]) != revision]
    kept = [item for item in stored if item["role"] not in (LaneRole.primary, LaneRole.canary)]
    return [lane(revision, version, LaneRole.primary, 0), *olds, *kept]


def settle(
    stored: Stored, revision: int, version: int, ready: dict[int, int], serving: set[int]
) -> Stored:
    """The primary's share (100 less the splits' and the canary's) spread over the current
    revision's lane and the old primaries' still ``serving``, by ``ready`` replicas (all of
    it to the current one while none is ready); ``None`` once the current revision alone
    is left serving with every call."""
    if not stored:
        return None
    others = [item for item in stored if item["role"] != LaneRole.primary]
    share = 100 - sum(item["percent"] for item in others if item["role"] != LaneRole.shadow)
    olds = sorted(
        {
            int(item["revision"]): int(item["version"])
            for item in of_role(stored, LaneRole.primary)
            if int(item["revision"]) != revision and int(item["revision"]) in serving
        }.items()
    )
    primaries = [(revision, version), *olds]
    weights = [ready.get(rev, 0) for rev, _ in primaries]
    total = sum(weights)
    if total == 0:
        weights, total = [1] + [0] * len(olds), 1
    items = [
        lane(rev, ver, LaneRole.primary, round(share * weight / total, 6))
        for (rev, ver), weight in zip(primaries, weights, strict=True)
    ]
    items += others
    if len(items) == 1 and items[0]["percent"] == 100 and serving <= {revision}:
        return None
    return items


def base_alone(stored: Stored, revision: int, version: int) -> list[dict[str, Any]]:
    """After a canary ends without promotion: the base takes every call (listed, so the
    canary's replicas get no call while they stop), a shadow stays."""
    return [
        lane(revision, version, LaneRole.primary, 100),
        *of_role(stored, LaneRole.shadow),
    ]
