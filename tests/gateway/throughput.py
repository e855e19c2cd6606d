"""Throughput through ``python -m gateway`` against a real serving process (not a test):

    .venv/bin/python -m tests.gateway.throughput

The MLP of ``bench/inference.py`` served by ``python -m serving``; a gateway process
following a fake registry (auth on, the key cached after its first call); ``wrk`` posting
binary and JSON v2 calls at concurrency 1 and 32, directly and through the gateway; CPU
seconds per call of both processes read from ``/proc``."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.inference import MODELS, lua_script, request_files, run_wrk, save, server
from contract.traffic import KeyGrant, Lane, LaneRole, Route
from tests.gateway.harness import ControlPlane, FakeRegistry, Process, ThreadServer, free_port

SECONDS = 8


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gateway-throughput-"))
    model = MODELS["mlp"]
    path = save(model, tmp)
    with server(path, "mlp", []) as url:
        port = url.rsplit(":", 1)[1]
        serving = int(subprocess.check_output(["pgrep", "-f", "--", f"--port {port}"]).split()[0])
        plane = ControlPlane(wait_s=5)
        plane.keys = {"mp_reader": KeyGrant(key_id="r", name="r", scopes=["read"])}
        lane = Lane(revision=1, version=1, role=LaneRole.primary, percent=100, endpoints=[url])
        plane.publish(Route(deployment="mlp", model="mlp", lanes=[lane]), auth=True)
        registry = ThreadServer(FakeRegistry(plane, "mp_gw"))
        gw_port = free_port()
        argv = [sys.executable, "-m", "gateway", "--registry-url", registry.url,
                "--port", str(gw_port)]  # fmt: skip
        gateway = Process(argv, gw_port, tmp / "gateway.log", "/readyz", MODELPLANE_TOKEN="mp_gw")
        try:
            for kind, (body, headers) in request_files(model, tmp).items():
                auth = {**headers, "Authorization": "Bearer mp_reader"}
                script = lua_script(body, auth, tmp, "-auth")
                for c in (1, 32):
                    run_wrk(f"{url}/v2/models/mlp/infer", script, c, 2, 1)  # warm-up
                    direct = run_wrk(f"{url}/v2/models/mlp/infer", script, c, SECONDS, 1)
                    s0, g0 = cpu_s(serving), cpu_s(gateway.proc.pid)
                    via = run_wrk(f"{gateway.url}/serve/mlp/v2/models/mlp/infer", script, c,
                                  SECONDS, 1)  # fmt: skip
                    s1, g1 = cpu_s(serving), cpu_s(gateway.proc.pid)
                    calls = via.rate * SECONDS
                    gw_us, serving_us = (1e6 * (g1 - g0) / calls, 1e6 * (s1 - s0) / calls)
                    print(
                        f"{kind} c={c}: direct {direct.rate:.0f}/s p50 {direct.p50_ms:.2f} ms; "
                        f"gateway {via.rate:.0f}/s p50 {via.p50_ms:.2f} ms errors {via.errors}; "
                        f"ratio {via.rate / direct.rate:.2f}; CPU per call: gateway "
                        f"{gw_us:.0f} us, serving {serving_us:.0f} us",
                        flush=True,
                    )
        finally:
            gateway.stop()
            registry.stop()


if __name__ == "__main__":
    main()
