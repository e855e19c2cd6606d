"""The worker loop: register, heartbeat, plan, act; every error logged with its ids."""

from __future__ import annotations

import logging
import socket
import threading
import time

from contract.logs import request_id
from deployer.client import ControlPlane, WorkerLapsed
from deployer.contract import Assignment, ReplicaReport, WorkerLease, WorkerRegistration
from deployer.executor import Executor
from deployer.metrics import WorkerMetrics
from deployer.plan import Action, plan
from deployer.settings import WorkerSettings

log = logging.getLogger("deployer.worker")


class Worker:
    def __init__(self, settings: WorkerSettings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.control_plane = ControlPlane(settings.control_plane, token=settings.token, stop=stop)
        self.metrics = WorkerMetrics()
        self.executor = Executor(settings, self.control_plane, self.metrics)
        self.metrics_url: str | None = None
        if settings.metrics_port is not None:
            server, _ = self.metrics.serve(settings.metrics_address, settings.metrics_port)
            host, port = str(server.server_address[0]), server.server_address[1]
            self.metrics_url = f"http://{host}:{port}/metrics"
            log.info("metrics on %s", self.metrics_url)
        self.lease: WorkerLease | None = None
        self.assignments: list[Assignment] = []
        self._last_reports: list[ReplicaReport] | None = None
        self._next_heartbeat = 0.0
        self._last_heartbeat = 0.0
        self._gpus: list[int] = []

    def registration(self) -> WorkerRegistration:
        return WorkerRegistration(
            name=self.settings.name,
            host=socket.gethostname(),
            address=self.settings.address,
            gpus=self.settings.gpu_ids(),
            cpu_slots=self.settings.cpu_slots,
        )

    def register(self, stop: threading.Event) -> None:
        """Registers, retrying with backoff for as long as the control plane is away."""
        body, delay = self.registration(), 0.5
        self._gpus = body.gpus
        while not stop.is_set():
            try:
                self.lease = self.control_plane.register(body)
            except Exception as exc:
                log.warning("registering with %s failed: %s", self.settings.control_plane, exc)
                self.metrics.errors.labels("register").inc()
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            log.info(
                "registered as worker %s (gpus %s, cpu slots %d, heartbeat %.1fs)",
                self.lease.id,
                body.gpus,
                body.cpu_slots,
                self.lease.heartbeat_s,
            )
            if self.settings.serving_heartbeat_s is None:
                self.executor.serving_heartbeat_s = self.lease.heartbeat_s
            self._next_heartbeat = 0.0
            return

    def run(self, stop: threading.Event) -> None:
        self.register(stop)
        try:
            while not stop.is_set():
                try:
                    self.tick(time.monotonic())
                except WorkerLapsed:
                    log.warning("control plane forgot worker %s: registering again", self._id)
                    self.register(stop)
                except Exception:
                    log.exception("worker %s: tick failed", self._id)
                    self.metrics.errors.labels("tick").inc()
                stop.wait(self.settings.poll_s)
        finally:
            log.info("stopping: draining %d replicas", len(self.executor.replicas))
            self.executor.shutdown(self.settings.drain_timeout_s)
            self.control_plane.close()

    @property
    def _id(self) -> str:
        return self.lease.id if self.lease else "(unregistered)"

    def tick(self, now: float) -> None:
        """Act on what is known, tell the control plane (now if anything changed), act on
        its answer: a finished pull starts its process without waiting for a round trip."""
        self.executor.observe(now)
        self._act(now)
        reports = self.executor.reports(now)
        self.metrics.set_replicas(r.state.value for r in reports)
        claim = self._free_capacity() and now >= self._last_heartbeat + self.settings.claim_s
        if claim or now >= self._next_heartbeat or reports != self._last_reports:
            self._heartbeat(reports, now)
            self._act(now)

    def _free_capacity(self) -> bool:
        """Room for one more replica: the control plane would give us one on a heartbeat."""
        wanted = [
            r.assignment
            for r in self.executor.replicas.values()
            if r.assignment.desired == "run" and r.state.failed_reason is None
        ]
        cpu = sum(1 for a in wanted if not a.gpu_ids)
        gpus = sum(len(a.gpu_ids) for a in wanted)
        return cpu < self.settings.cpu_slots or gpus < len(self._gpus)

    def _act(self, now: float) -> None:
        for action in plan(self.assignments, self.executor.states(), now, self.executor.policy):
            self._apply(action, now)

    def _heartbeat(self, reports: list[ReplicaReport], now: float) -> None:
        assert self.lease is not None
        try:
            self.assignments = self.control_plane.heartbeat(self.lease.id, reports)
        except WorkerLapsed:
            raise
        except Exception as exc:  # keep running what we have; the lease may lapse
            log.warning("worker %s: heartbeat failed: %s", self.lease.id, exc)
            self.metrics.errors.labels("heartbeat").inc()
            self._next_heartbeat = now + min(self.lease.heartbeat_s, 2.0)
            return
        self.executor.remember(self.assignments)
        self._last_reports = reports
        self._last_heartbeat = now
        self._next_heartbeat = now + self.lease.heartbeat_s

    def _apply(self, action: Action, now: float) -> None:
        token = request_id.set(self._request_id_of(action))  # on the action's log lines
        try:
            self._apply_logged(action, now)
        finally:
            request_id.reset(token)

    def _request_id_of(self, action: Action) -> str | None:
        assignment = getattr(action, "assignment", None)
        if assignment is None:
            known = self.executor.replicas.get(getattr(action, "replica_id", ""))
            assignment = known.assignment if known is not None else None
        return assignment.request_id if assignment is not None else None

    def _apply_logged(self, action: Action, now: float) -> None:
        try:
            self.executor.apply(action, now)
        except Exception as exc:
            rid = getattr(action, "replica_id", None) or getattr(
                getattr(action, "assignment", None), "replica_id", "?"
            )
            log.exception("worker %s: %s for replica %s failed", self._id, action, rid)
            self.metrics.errors.labels("action").inc()
            self.executor.fail(str(rid), f"{type(action).__name__.lower()} failed: {exc}")
