"""The canary controller: a loop in every control-plane process that walks each canary
through its steps on the counts gateways report (``traffic_counts``).

Every ``tick``: one query finds the deployments whose canary waits or runs; each is then
locked (``FOR UPDATE`` on Postgres, so two control planes never both advance the same
step), its canary re-read under the lock, and moved on only if still due:

- waiting: a ready canary replica → running at the first step; a failed one, or none ready
  within ``ready_timeout_s`` → rolled back;
- running: once the step has ``min_calls`` calls, an error rate above ``max_error_rate``
  or a p99 above ``max_p99_ms`` → rolled back at once (not at the interval's end); at the
  interval's end, enough healthy calls → the next step (100: promoted), too few → the step
  waits and says so.

State lives in the database only: a control plane restarted mid-canary resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from contract.traffic import CanaryOut, CanarySpec, CanaryState, Figures
from registry.db import reading, utcnow
from registry.repositories.deployments import DeploymentRepository, ReplicaRepository
from registry.repositories.traffic import TrafficRepository
from registry.services.context import Context
from registry.services.traffic import ACTIVE, active_canary, end_canary, promote, set_step
from registry.tables import DeploymentRow

log = logging.getLogger("modelplane.canary")

Clock = Callable[[], datetime]


def breach(spec: CanarySpec, figures: Figures) -> str | None:
    """Why the canary's figures fail its thresholds (``None``: healthy, or too few calls)."""
    if figures.calls < spec.min_calls:
        return None
    if figures.error_rate > spec.max_error_rate:
        return (
            f"error rate {figures.error_rate:.4g} > max_error_rate {spec.max_error_rate:g} "
            f"({figures.errors} errors in {figures.calls} calls)"
        )
    p99 = figures.p99_ms
    if spec.max_p99_ms is not None and p99 is not None and p99 > spec.max_p99_ms:
        return f"p99 {p99:.1f} ms > max_p99_ms {spec.max_p99_ms:g} over {figures.calls} calls"
    return None


class CanaryController:
    def __init__(
        self,
        ctx: Context,
        changed: Callable[[str], None],
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._ctx = ctx
        self._changed = changed  # told (after commit) whose routes changed
        self._clock = clock

    async def tick(self) -> list[str]:
        """One pass over every canary waiting or running; the deployments whose routes
        changed."""
        async with reading(self._ctx.sessions) as session:
            ids = await DeploymentRepository(session).with_canary(s.value for s in ACTIVE)
        moved = []
        for deployment_id in ids:
            try:
                name = await self._advance(deployment_id)
            except Exception:
                log.exception("canary of deployment %d: this pass failed", deployment_id)
                continue
            if name is not None:
                self._changed(name)
                moved.append(name)
        return moved

    async def _advance(self, deployment_id: int) -> str | None:
        async with self._ctx.sessions.begin() as session:
            locked = await DeploymentRepository(session).lock([deployment_id])
            if not locked:
                return None
            deployment, model = locked[0]
            canary = active_canary(deployment)  # re-read under the lock: still due?
            if canary is None or deployment.status == "deleting":
                return None
            now = self._clock()
            if canary.state is CanaryState.waiting:
                moved = await self._waiting(session, deployment, model, canary, now)
            else:
                moved = await self._running(session, deployment, model, canary, now)
            return deployment.name if moved else None

    async def _failed_replica(
        self, session: AsyncSession, deployment: DeploymentRow, canary: CanaryOut
    ) -> tuple[str | None, bool]:
        """(why a canary replica failed, whether one is ready)."""
        replicas = [
            r
            for r in await ReplicaRepository(session).of_deployments([deployment.id])
            if r.revision == canary.revision and r.desired == "run"
        ]
        failed = next((r for r in replicas if r.state == "failed"), None)
        why = None
        if failed is not None:
            why = f"canary revision {canary.revision} replica {failed.index} failed: "
            why += str(failed.reason)
        return why, any(r.state == "ready" for r in replicas)

    async def _waiting(
        self,
        session: AsyncSession,
        deployment: DeploymentRow,
        model: str,
        canary: CanaryOut,
        now: datetime,
    ) -> bool:
        failed, ready = await self._failed_replica(session, deployment, canary)
        timeout = canary.spec.ready_timeout_s
        if failed is not None:
            await self._roll_back(session, deployment, model, canary, failed)
        elif ready:
            await set_step(self._ctx, session, deployment, model, canary, 0, now)
        elif now >= canary.started_at + timedelta(seconds=timeout):
            why = f"canary revision {canary.revision} not ready within {timeout:g} s"
            await self._roll_back(session, deployment, model, canary, why)
        else:
            return False
        return True

    async def _running(
        self,
        session: AsyncSession,
        deployment: DeploymentRow,
        model: str,
        canary: CanaryOut,
        now: datetime,
    ) -> bool:
        spec = canary.spec
        since = canary.step_started_at or canary.started_at
        counts = TrafficRepository(session)
        figures = (await counts.totals(deployment.id, canary.revision, since)).figures()
        base = (await counts.totals(deployment.id, canary.base_revision, since)).figures()
        failed, _ = await self._failed_replica(session, deployment, canary)
        if (why := failed or breach(spec, figures)) is not None:
            await self._roll_back(session, deployment, model, canary, why, figures, base)
            return True
        if now < since + timedelta(seconds=spec.interval_s):
            return False
        if figures.calls < spec.min_calls:
            waits = (
                f"step {canary.step + 1} ({canary.percent:g}%) waits for calls: "
                f"{figures.calls} of min_calls {spec.min_calls}"
            )
            if (canary.reason, canary.figures) != (waits, figures):
                update = {"reason": waits, "figures": figures, "base_figures": base}
                deployment.canary = canary.model_copy(update=update).model_dump(mode="json")
            return False
        step = canary.step + 1
        if step >= len(spec.steps) or spec.steps[step] >= 100:
            why = (
                f"healthy at every step: {figures.calls} calls at {canary.percent:g}%, "
                f"error rate {figures.error_rate:.4g}"
            )
            await promote(self._ctx, session, deployment, model, canary, why, figures, base)
        else:
            await set_step(self._ctx, session, deployment, model, canary, step, now, figures, base)
        return True

    async def _roll_back(
        self,
        session: AsyncSession,
        deployment: DeploymentRow,
        model: str,
        canary: CanaryOut,
        why: str,
        figures: Figures | None = None,
        base: Figures | None = None,
    ) -> None:
        log.warning("canary of %s rolled back: %s", deployment.name, why)
        await end_canary(
            self._ctx,
            session,
            deployment,
            model,
            canary,
            CanaryState.rolled_back,
            why,
            figures,
            base,
        )
