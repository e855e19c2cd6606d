"""`python -m serving`: serve one model file over the Open Inference Protocol."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from enum import Enum
from typing import Any

from pydantic import ValidationError

from contract.logs import configure_logging
from serving.artifacts import ArtifactError
from serving.server import run_workers, serve
from serving.settings import ServingSettings

EPILOG = """Every option can also come from the environment: --max-batch-size 8 is
MODELPLANE_SERVING_MAX_BATCH_SIZE=8 (lists: a JSON array). Flags win over the environment.
SIGTERM drains: readiness turns 503, in-flight calls finish, the process exits 0."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve one PyTorch model over the Open Inference Protocol (KServe v2).",
        epilog=EPILOG,
        argument_default=argparse.SUPPRESS,
    )
    for name, field in ServingSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"MODELPLANE_SERVING_{name.upper()}"
        default = (
            ""
            if field.is_required()
            else f"; default {_show(field.get_default(call_default_factory=True))}"
        )
        help_text = f"{field.description} [env {env}{default}]"
        kind: Any = field.annotation
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif kind == list[str]:
            parser.add_argument(
                flag, action="append", metavar="VALUE", help=help_text + " (repeatable)"
            )
        elif isinstance(kind, type) and issubclass(kind, Enum):
            parser.add_argument(flag, choices=[m.value for m in kind], help=help_text)
        else:
            parser.add_argument(flag, metavar=name.upper(), help=help_text)
    return parser


def _show(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    given = vars(build_parser().parse_args(argv))
    try:
        settings = ServingSettings(**given)
    except ValidationError as exc:
        print(f"python -m serving: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    # Our own lines (lifecycle transitions, a handful) at info; uvicorn's at --log-level.
    configure_logging(
        settings.log_format,
        logging.INFO,
        static={"process": "serving", "model": settings.name, "version": settings.version}
        | ({"replica": settings.replica_id} if settings.replica_id else {}),
        default_request_id=settings.request_id,
    )
    if settings.workers > 1:
        return run_workers(settings, argv)
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
