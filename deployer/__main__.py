"""`python -m deployer`: a worker that runs the control plane's replicas on this machine.

The flags are `WorkerSettings`' own (pydantic-settings' CLI, `--help` lists them with their
`MODELPLANE_WORKER_*` variables)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from pydantic import ValidationError
from pydantic_settings import CliApp

from contract.logs import configure_logging
from deployer.settings import WorkerSettings
from deployer.worker import Worker


def main(argv: list[str] | None = None) -> int:
    try:
        settings = CliApp.run(WorkerSettings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        print(f"python -m deployer: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_format,
        settings.log_level,
        static={"process": "deployer", "worker": settings.name},
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe and heartbeat
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("deployer").info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Worker(settings, stop).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
