"""`python -m gateway`: the stable URL as a process of its own (flags: `GatewaySettings`)."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError
from pydantic_settings import CliApp

from contract.logs import configure_logging
from gateway.server import serve
from gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = CliApp.run(GatewaySettings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        print(f"python -m gateway: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, logging.INFO, static={"process": "gateway"})
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per feed poll and report
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
