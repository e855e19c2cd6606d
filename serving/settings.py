"""The serving process's one settings object: `contract.serving.ServingSpec` plus the API key,
read from flags, the worker's JSON spec and `MODELPLANE_SERVING_*` variables."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, CliSuppress, SettingsConfigDict

from contract.enums import Device, ModelFormat
from contract.serving import Executor, ServingSpec

__all__ = ["Device", "Executor", "ModelFormat", "ServingSettings"]


HELP = """Serve one model over the Open Inference Protocol (KServe v2) and the other protocols.

Every option can also come from the environment: --max-batch-size 8 is
MODELPLANE_SERVING_MAX_BATCH_SIZE=8 (lists: a JSON array). A deployer worker passes all of
them at once, as JSON in MODELPLANE_SERVING_SETTINGS_JSON. Flags win over that JSON, which
wins over the separate variables. The API key comes from MODELPLANE_TOKEN (or
MODELPLANE_SERVING_TOKEN) only: flags show in ps. SIGTERM drains: readiness turns 503,
in-flight calls finish, the process exits 0."""


class ServingSettings(BaseSettings, ServingSpec):
    """Everything one serving process needs; built once, by `serving.__main__` from flags
    and the environment or by `serving.spare` from the worker's JSON."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_SERVING_",
        extra="ignore",
        populate_by_name=True,
        cli_prog_name="python -m serving",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_show_env_vars=True,
        json_schema_extra={"description": HELP},
    )

    token: CliSuppress[str | None] = Field(
        None,
        validation_alias=AliasChoices("MODELPLANE_SERVING_TOKEN", "MODELPLANE_TOKEN"),
        description="API key (worker scope) the announcer sends as 'Authorization: Bearer' "
        "(environment only: MODELPLANE_TOKEN, as the deployer worker sets it)",
        repr=False,
    )

    def spec(self) -> ServingSpec:
        """What this process runs with, as the worker would have sent it."""
        return ServingSpec.model_validate(self.model_dump(exclude={"token"}))
