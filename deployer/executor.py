"""Carries out `deployer.plan` actions: pulls into the cache, starts and signals processes.

The executor owns one `Replica` record per replica this worker knows. `observe()` turns what
happened since the last tick (a pull finished, a process exited or became ready) into each
record's `ProcessState`, which is all `plan()` sees; `apply()` performs one action.
Processes are started from the caller's thread only: `PR_SET_PDEATHSIG` ties a serving
process to the thread that forked it, so a worker killed with -9 takes its processes down
(they drain and deregister) instead of leaving orphans that keep claiming their slot.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from pydantic import ValidationError

from contract.children import die_with_parent
from contract.logs import request_id
from contract.serving import SETTINGS_ENV, ServingSpec, SpareJob
from deployer.cache import BlobCache, CacheError, sha256_args
from deployer.client import ControlPlane
from deployer.contract import Assignment, ReplicaReport, ReplicaState, digests
from deployer.metrics import WorkerMetrics
from deployer.plan import (
    Action,
    Fail,
    Forget,
    Kill,
    Policy,
    ProcessState,
    Pull,
    Restart,
    Start,
    Stop,
)
from deployer.settings import WorkerSettings

log = logging.getLogger("deployer.executor")

PROBE_TIMEOUT = httpx.Timeout(0.5)


@dataclass
class Replica:
    assignment: Assignment
    state: ProcessState = field(default_factory=ProcessState)
    path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    log_path: Path | None = None
    spec: ServingSpec | None = None  # what its serving process was last started with
    pull: Future[Path] | None = None
    ready: bool = False
    ready_since: float | None = None
    restarts: int = 0

    def update(self, **changes: object) -> None:
        self.state = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]


class Executor:
    def __init__(
        self,
        settings: WorkerSettings,
        control_plane: ControlPlane,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.control_plane = control_plane
        self.metrics = metrics or WorkerMetrics()
        self.cache = BlobCache(settings.cache_dir, settings.cache_max_bytes)
        self.metrics.track_cache(self.cache.used_bytes)
        self.logs = settings.cache_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.replicas: dict[str, Replica] = {}
        self.policy = Policy(
            max_restarts=settings.max_restarts,
            drain_timeout_s=settings.drain_timeout_s,
            crash_reset_s=settings.crash_reset_s,
        )
        self.serving_heartbeat_s = settings.serving_heartbeat_s or 5.0
        self._pulls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pull")
        self._probe = httpx.Client(timeout=PROBE_TIMEOUT)
        self._next_port = 0
        self._spare: Spare | None = None

    # -- observation -------------------------------------------------------------------

    def states(self) -> dict[str, ProcessState]:
        return {rid: replica.state for rid, replica in self.replicas.items()}

    def observe(self, now: float) -> None:
        for replica in self.replicas.values():
            token = request_id.set(replica.assignment.request_id)  # on every log line
            try:
                self._observe_pull(replica, now)
                self._observe_process(replica, now)
            finally:
                request_id.reset(token)
        self._keep_spare()

    def _keep_spare(self) -> None:
        """One warm spare, started while no replica is loading (not to slow its start)."""
        if not self.settings.warm_spare:
            return
        if self._spare is not None and self._spare.process.poll() is not None:
            log.warning(
                "warm spare exited: %s",
                _exit_text(self._spare.process.returncode, self._spare.log_path),
            )
            self._spare = None
        loading = any(r.process is not None and not r.ready for r in self.replicas.values())
        if self._spare is None and not loading:
            self._spare = Spare.start(self.logs, self._child_env())

    def _observe_pull(self, replica: Replica, now: float) -> None:
        if replica.pull is None or not replica.pull.done():
            return
        future, replica.pull = replica.pull, None
        rid = replica.assignment.replica_id
        try:
            replica.path = future.result()
        except CacheError as exc:  # bad bytes or no room: retrying will not help
            log.error("replica %s: pull failed: %s", rid, exc)
            replica.update(pulling=False, failed_reason=str(exc))
        except Exception as exc:  # the control plane or network: retried with backoff
            log.warning("replica %s: pull failed, will retry: %s", rid, exc)
            replica.update(
                pulling=False,
                exited_at=now,
                crashes=replica.state.crashes + 1,
                exit_reason=f"pull failed: {exc}",
            )
        else:
            replica.update(pulling=False, pulled=True, exited_at=None)

    def _observe_process(self, replica: Replica, now: float) -> None:
        if replica.process is None:
            return
        code = replica.process.poll()
        if code is None:
            if replica.state.stopping_since is None and not replica.ready:
                replica.ready = self._is_ready(replica)
                replica.ready_since = now if replica.ready else None
            # Crashes are forgiven only once a start has stayed up: a model that loads and
            # then dies on every Nth call is a crash loop too, not a string of fresh starts.
            since = replica.ready_since
            if (
                replica.state.crashes
                and since is not None
                and now - since >= self.policy.crash_reset_s
            ):
                replica.update(crashes=0)
            return
        replica.process, replica.ready, replica.ready_since = None, False, None
        rid = replica.assignment.replica_id
        if replica.state.stopping_since is not None:
            log.info("replica %s: stopped (%s)", rid, _exit_text(code, replica.log_path))
            replica.update(pid=None, stopping_since=None)
            return
        reason = _exit_text(code, replica.log_path)
        log.warning("replica %s: serving process %s", rid, reason)
        self.metrics.errors.labels("exit").inc()
        replica.update(
            pid=None, exited_at=now, exit_reason=reason, crashes=replica.state.crashes + 1
        )

    def _is_ready(self, replica: Replica) -> bool:
        url = f"http://{self.settings.address}:{replica.port}/v2/health/ready"
        try:
            return self._probe.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def reports(self, now: float) -> list[ReplicaReport]:
        return [self._report(r, now) for r in self.replicas.values()]

    def _report(self, replica: Replica, now: float) -> ReplicaReport:
        rid, state = replica.assignment.replica_id, replica.state
        if state.failed_reason is not None:
            status, reason = ReplicaState.failed, state.failed_reason
        elif state.pulling:
            status, reason = ReplicaState.pulling, None
        elif state.stopping_since is not None:
            status, reason = ReplicaState.draining, None
        elif state.running:
            status, reason = (ReplicaState.ready if replica.ready else ReplicaState.loading), None
        elif state.exited_at is not None and replica.assignment.desired == "run":
            backoff = self.policy.backoff(state.crashes)  # not a countdown: reports stay equal
            status, reason = (
                ReplicaState.unhealthy,
                f"{state.exit_reason}; retry after {backoff:.0f}s",
            )
        elif replica.assignment.desired == "stop":
            status, reason = ReplicaState.stopped, None
        else:
            status, reason = ReplicaState.pending, None
        return ReplicaReport(replica_id=rid, state=status, reason=reason, restarts=replica.restarts)

    # -- actions ---------------------------------------------------------------------------

    def remember(self, assignments: list[Assignment]) -> None:
        """Keep each known replica's latest assignment (desired may flip to stop)."""
        for assignment in assignments:
            if (replica := self.replicas.get(assignment.replica_id)) is not None:
                replica.assignment = assignment

    def apply(self, action: Action, now: float) -> None:
        match action:
            case Pull(assignment):
                self._pull(assignment)
            case Start(assignment) | Restart(assignment):
                self._start(self.replicas[assignment.replica_id], now)
            case Stop(rid):
                self._signal(self.replicas[rid], signal.SIGTERM)
                self.replicas[rid].update(stopping_since=now)
            case Kill(rid):
                log.warning("replica %s: drain timed out; SIGKILL", rid)
                self._signal(self.replicas[rid], signal.SIGKILL)
            case Fail(rid, reason):
                log.error("replica %s: failed: %s", rid, reason)
                self.replicas[rid].update(failed_reason=reason)
            case Forget(rid):
                self.replicas.pop(rid)
                self.cache.release(rid)

    def fail(self, replica_id: str, reason: str) -> None:
        if (replica := self.replicas.get(replica_id)) is not None:
            replica.update(failed_reason=reason, pulling=False)

    def _pull(self, assignment: Assignment) -> None:
        replica = self.replicas.setdefault(assignment.replica_id, Replica(assignment))
        replica.update(pulling=True)
        pinned = {d for r in self.replicas.values() for d in digests(r.assignment)}
        # The pull thread logs under the caller's request id (contextvars don't follow
        # a submit by themselves).
        context = contextvars.copy_context()
        replica.pull = self._pulls.submit(context.run, self._fetch, assignment, frozenset(pinned))

    def _fetch(self, assignment: Assignment, pinned: frozenset[str]) -> Path:
        started = time.monotonic()
        try:
            return self._fetch_files(assignment, pinned, started)
        except Exception:
            self.metrics.errors.labels("pull").inc()
            self.metrics.pull_seconds.labels("error").observe(time.monotonic() - started)
            raise

    def _fetch_files(self, assignment: Assignment, pinned: frozenset[str], started: float) -> Path:
        downloaded = 0
        pulled = self.cache.ensure_all(assignment.files, self.control_plane.download, pinned)
        for ref, (_, fresh) in zip(assignment.files, pulled, strict=True):
            downloaded += ref.size if fresh else 0
            result = "miss" if fresh else "hit"
            self.metrics.cache_lookups.labels(result).inc()
            self.metrics.cache_bytes.labels(result).inc(ref.size)
        path = self.cache.materialise(assignment)
        self.metrics.pull_seconds.labels("ok").observe(time.monotonic() - started)
        log.info(
            "replica %s: %s v%d pulled in %.2fs (%d bytes downloaded, rest cached)",
            assignment.replica_id,
            assignment.model,
            assignment.version,
            time.monotonic() - started,
            downloaded,
        )
        return path

    def _start(self, replica: Replica, now: float) -> None:
        assignment = replica.assignment
        assert replica.path is not None, "started before its pull finished"
        replica.port = self._free_port()
        try:
            spec = self.serving_spec(assignment, replica.path, replica.port)
        except ValidationError as exc:  # e.g. a format this worker's serving does not know
            log.error("replica %s: cannot be served here: %s", assignment.replica_id, exc)
            replica.update(failed_reason=f"serving settings refused: {_first_error(exc)}")
            return
        replica.spec = spec
        gpus = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in assignment.gpu_ids)}
        spare, self._spare = self._spare, None
        if spare is not None and spare.process.poll() is None:
            job = SpareJob(settings=spec, env=gpus)
            assert spare.process.stdin is not None
            spare.process.stdin.write(job.model_dump_json().encode() + b"\n")
            spare.process.stdin.close()
            replica.process, replica.log_path = spare.process, spare.log_path
        else:
            replica.log_path = self.logs / f"{_safe(assignment.replica_id)}.log"
            settings = {SETTINGS_ENV: spec.model_dump_json()}
            with replica.log_path.open("ab") as sink:
                replica.process = subprocess.Popen(
                    [sys.executable, "-m", "serving"],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env={**self._child_env(), **gpus, **settings},
                    preexec_fn=die_with_parent,
                )
        if replica.state.exited_at is not None:
            replica.restarts += 1
        self.metrics.starts.inc()
        replica.ready = False
        replica.update(pid=replica.process.pid, stopping_since=None)
        log.info(
            "replica %s: started %s v%d (pid %d, port %d, gpus %s, log %s)",
            assignment.replica_id,
            assignment.model,
            assignment.version,
            replica.process.pid,
            replica.port,
            assignment.gpu_ids or "none",
            replica.log_path,
        )

    def _child_env(self) -> dict[str, str]:
        """Serving processes' environment: ours, minus serving settings meant for us, plus
        the worker's API key (an environment variable, not a flag: flags show in ps)."""
        env = _child_env()
        if self.control_plane.token:
            env[TOKEN_ENV] = self.control_plane.token
        return env

    def serving_spec(self, assignment: Assignment, path: Path, port: int) -> ServingSpec:
        """The settings of the serving process for `assignment`, as data (validated here,
        torch-free; the process validates the same model again)."""
        address = self.settings.address
        device = "cpu" if not assignment.gpu_ids and assignment.device == "auto" else None
        signature = assignment.signature
        return ServingSpec.model_validate(
            {
                "name": assignment.model,
                "version": str(assignment.version),
                "format": assignment.format or "torchscript",
                "path": path,
                "host": address,
                "port": port,
                "register_url": self.control_plane.api,
                "replica_id": assignment.replica_id,
                "advertise_url": f"http://{address}:{port}",
                "device": device or assignment.device,
                "max_batch_size": assignment.batching.max_batch_size,
                "max_delay_ms": assignment.batching.max_delay_ms,
                "heartbeat_s": self.serving_heartbeat_s,
                "drain_timeout_s": max(1.0, self.settings.drain_timeout_s * 0.8),
                "log_level": self.settings.serving_log_level,
                "sha256": sha256_args(assignment),
                # hashed by our cache when pulled and unchanged since: not hashed again
                "sha256_verified": all(self.cache.verified(ref) for ref in assignment.files),
                "signature": None if signature is None else orjson.dumps(signature).decode(),
                "allow_pickle": assignment.allow_pickle,
                "optimize": assignment.optimize.model_dump(mode="json"),
                "optimized_cache_dir": self.cache.root / "optimized",
                "request_id": assignment.request_id,
            }
        )

    def _signal(self, replica: Replica, signum: signal.Signals) -> None:
        if replica.process is not None and replica.process.poll() is None:
            log.info(
                "replica %s: %s to pid %d",
                replica.assignment.replica_id,
                signum.name,
                replica.process.pid,
            )
            replica.process.send_signal(signum)

    def _free_port(self) -> int:
        """A port of the range no replica holds that binds now (rotating, to avoid reuse)."""
        ports = self.settings.ports
        taken = {r.port for r in self.replicas.values() if r.process is not None}
        for step in range(len(ports)):
            port = ports[(self._next_port + step) % len(ports)]
            if port in taken:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((self.settings.address, port))
                except OSError:
                    continue
            self._next_port = (self._next_port + step + 1) % len(ports)
            return port
        raise RuntimeError(f"no free port in {self.settings.port_range}")

    # -- shutdown --------------------------------------------------------------------------

    def shutdown(self, timeout: float) -> None:
        """SIGTERM every process, wait for the drains, SIGKILL what remains."""
        running = [r for r in self.replicas.values() if r.process is not None]
        for replica in running:
            self._signal(replica, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for replica in running:
            assert replica.process is not None
            try:
                replica.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(replica, signal.SIGKILL)
                replica.process.wait(5)
        if self._spare is not None:
            self._spare.stop()
        self._pulls.shutdown(wait=False, cancel_futures=True)
        self._probe.close()


@dataclass
class Spare:
    """A `python -m serving.spare` waiting on stdin for the settings of its serving process."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, logs: Path, env: dict[str, str]) -> Spare:
        log_path = logs / f"serving-{time.time_ns()}.log"
        with log_path.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving.spare"],
                stdin=subprocess.PIPE,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        return cls(process, log_path)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # no job: it exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


TOKEN_ENV = "MODELPLANE_TOKEN"


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_SERVING_")}


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}"


def _exit_text(code: int, log_path: Path | None) -> str:
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    last = _last_words(log_path) if log_path is not None else ""
    return f"{how}: {last}" if last else how


def _last_words(path: Path, tail: int = 16384) -> str:
    """What the process said last before exiting: its last error record's message (the
    reason it gave up, e.g. an accuracy check's figures, rather than the web server's
    shutdown lines after it), else its last line."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if (message := _error_message(line)) is not None:
            return message[:500]
    return lines[-1].strip()[:500] if lines else ""


def _error_message(line: str) -> str | None:
    """The message of a JSON or text log line at error level or above, else ``None``."""
    if line.startswith("{"):
        try:
            record = orjson.loads(line)
        except ValueError:
            return None
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            return str(record.get("message", "")).strip() or None
        return None
    for level in (" ERROR ", " CRITICAL "):
        if level in line:
            return line.split(level, 1)[1].strip()
    return None


def _safe(replica_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in replica_id)
