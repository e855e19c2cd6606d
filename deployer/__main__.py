"""`python -m deployer`: a worker that runs the control plane's replicas on this machine."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from pydantic import ValidationError

from contract.logs import configure_logging
from deployer.settings import WorkerSettings
from deployer.worker import Worker

FLAGS = (
    "control_plane",
    "token",
    "name",
    "address",
    "gpus",
    "cpu_slots",
    "cache_dir",
    "cache_max_bytes",
    "port_range",
    "poll_s",
    "claim_s",
    "warm_spare",
    "drain_timeout_s",
    "max_restarts",
    "crash_reset_s",
    "serving_heartbeat_s",
    "serving_log_level",
    "metrics_port",
    "metrics_address",
    "log_format",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployer",
        description="Modelplane deployer worker: claims replicas, pulls their files into a "
        "local cache and runs them as serving processes.",
        epilog="Every option can also come from MODELPLANE_WORKER_<NAME> (flags win). "
        "SIGTERM/SIGINT drain every serving process, then exit.",
        argument_default=argparse.SUPPRESS,
    )
    for name in FLAGS:
        field = WorkerSettings.model_fields[name]
        env = f"MODELPLANE_WORKER_{name.upper()}"
        if name == "token":
            env += " or MODELPLANE_TOKEN"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            metavar=name.upper(),
            help=f"{field.description} [env {env}]",
        )
    parser.add_argument("--log-level", default="INFO", help="worker log level")
    return parser


def main(argv: list[str] | None = None) -> int:
    given = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    level = given.pop("log_level")
    try:
        settings = WorkerSettings(**given)
    except ValidationError as exc:
        print(f"python -m deployer: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_format, level, static={"process": "deployer", "worker": settings.name}
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
