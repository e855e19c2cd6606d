"""Deploy-time optimisation rules the control plane holds: refuse at deploy time (422) what
no worker could do, rather than fail a replica on a worker (contract/optimize.py)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from contract.examples import example_of
from contract.optimize import EXAMPLES_FILE, OptimizeMode, checkable, refusal
from contract.schemas import DeploymentSpec
from registry.errors import Unprocessable
from registry.repositories.fleet import version_files
from registry.tables import VersionRow


async def check_optimize(session: AsyncSession, spec: DeploymentSpec, version: VersionRow) -> None:
    """Raises `Unprocessable` saying why `spec.optimize` cannot apply to `version`."""
    if spec.optimize.mode is OptimizeMode.none:
        return
    examples = checkable(example_of(version.metadata_))
    if not examples:
        files = (await version_files(session, {version.id}))[version.id]
        examples = any(f.path == EXAMPLES_FILE for f in files)
    if (why := refusal(spec.optimize, version.format, spec.device, examples)) is not None:
        raise Unprocessable(why)
