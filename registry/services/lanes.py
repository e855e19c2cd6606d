"""A deployment's lanes (``DeploymentRow.lanes``): which revisions take calls, in which role
and share. Pure functions over the stored list of ``LaneOut`` dicts; ``None`` stored means
the current revision alone (a plain deployment, as during a rolling update)."""

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
    """Revisions named in the lanes: their replicas run whatever the current revision is."""
    return {int(item["revision"]) for item in stored or []}


def of_role(stored: Stored, role: LaneRole) -> list[dict[str, Any]]:
    return [item for item in stored or [] if item["role"] == role]


def compact(items: list[dict[str, Any]]) -> Stored:
    """``None`` when only a primary taking every call is left."""
    if len(items) == 1 and items[0]["role"] == LaneRole.primary and items[0]["percent"] == 100:
        return None
    return items or None


def retarget(stored: Stored, revision: int, version: int) -> Stored:
    """A new current revision: the primary lane moves to it, a canary lane goes (a canary
    ends before any rolling update); splits and a shadow stay."""
    if not stored:
        return None
    kept = [item for item in stored if item["role"] not in (LaneRole.primary, LaneRole.canary)]
    share = 100 - sum(item["percent"] for item in kept if item["role"] == LaneRole.split)
    return compact([lane(revision, version, LaneRole.primary, share), *kept])


def base_alone(stored: Stored, revision: int, version: int) -> list[dict[str, Any]]:
    """After a canary ends without promotion: the base takes every call (listed, so the
    canary's replicas get no call while they stop), a shadow stays."""
    return [
        lane(revision, version, LaneRole.primary, 100),
        *of_role(stored, LaneRole.shadow),
    ]
