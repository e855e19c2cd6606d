"""`python -m serving`: serve one model over the Open Inference Protocol and the others.

The flags are `ServingSettings`' own (pydantic-settings' CLI); a deployer worker sends the
same settings as data instead: `contract.serving.ServingSpec` as JSON, in the environment
for a cold start, or on a warm spare's stdin (`serving.spare`, which calls `run`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pydantic import ValidationError
from pydantic_settings import CliApp

from contract.logs import configure_logging
from contract.serving import SETTINGS_ENV, ServingSpec
from serving.artifacts import ArtifactError
from serving.server import run_workers, serve
from serving.settings import ServingSettings

log = logging.getLogger("serving")


def main(argv: list[str] | None = None) -> int:
    try:
        # The worker's spec enters as init values: below the flags, above MODELPLANE_SERVING_*.
        sent = spec_from_environment()
        argv = sys.argv[1:] if argv is None else argv
        settings = CliApp.run(ServingSettings, cli_args=argv, **sent)
    except ValidationError as exc:
        print(f"python -m serving: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return run(settings)


def spec_from_environment() -> dict[str, Any]:
    """A whole `ServingSpec` from `SETTINGS_ENV`, validated as one document (an unknown or
    missing key is an error, not a silent default); nothing when the variable is unset."""
    text = os.environ.get(SETTINGS_ENV)
    return ServingSpec.model_validate_json(text).model_dump() if text else {}


def run(settings: ServingSettings) -> int:
    """Be the serving process `settings` describe, until it drains."""
    # Our own lines (lifecycle transitions, a handful) at info; uvicorn's at --log-level.
    configure_logging(
        settings.log_format,
        logging.INFO,
        static={"process": "serving", "model": settings.name, "version": settings.version}
        | ({"replica": settings.replica_id} if settings.replica_id else {}),
        default_request_id=settings.request_id,
    )
    spec = settings.spec()
    log.info("starting with settings %s", spec.model_dump_json())  # exactly what it runs with
    if settings.workers > 1:
        # Each worker process reads the same settings as data, as one of ours.
        one = spec.model_copy(update={"workers": 1, "reuse_port": True})
        os.environ[SETTINGS_ENV] = one.model_dump_json()
        return run_workers(settings, [])
    try:
        return serve(settings, reuse_port=settings.reuse_port)
    except ArtifactError as exc:
        print(f"python -m serving: {exc}", file=sys.stderr)
        return 1


def exit_now(code: int) -> None:
    """Exit without the interpreter's finalization: by then the process has drained and
    deregistered, and tearing torch down (a full garbage collection of its modules) takes
    seconds on a busy host, during which a worker still counts the process as running."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
