"""One HAProxy in master-worker mode, a child of the gateway process: started, reloaded with
a new configuration without dropping a connection, told of keys through its runtime API,
stopped.

A reload (the master CLI's ``reload``) starts a new worker on the same listening sockets;
the old one finishes the calls it has, answers each idle keep-alive connection's next call
with ``Connection: close`` (``option idle-close-on-response``) and leaves, at the latest
after ``hard-stop-after``. The master gets SIGTERM if the gateway process dies (even by
SIGKILL), and its workers leave with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

from contract.children import die_with_parent

log = logging.getLogger("modelplane.gateway")

START_S = 10.0
MIN_VERSION = (2, 6)


class HAProxyError(RuntimeError):
    """HAProxy is missing, refused a configuration, or did not start."""


def find(binary: str = "haproxy") -> str | None:
    """The path of an HAProxy at least `MIN_VERSION`, or ``None``."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.split()
    version = words[2] if len(words) > 2 and words[0] == "HAProxy" else ""
    numbers = tuple(int(p) for p in version.split("-")[0].split(".")[:2] if p.isdigit())
    return path if numbers >= MIN_VERSION else None


class HAProxy:
    """The master process and its sockets, all under ``directory``."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.config = directory / "haproxy.cfg"
        self.master_socket = directory / "master.sock"
        self.admin_socket = directory / "admin.sock"
        self.log_path = directory / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.worker_pid: int | None = None
        self.reloads = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def check(self, text: str) -> None:
        """`HAProxyError` with HAProxy's own words if it would refuse ``text``."""
        candidate = self.directory / "candidate.cfg"
        candidate.write_text(text)
        proc = await asyncio.create_subprocess_exec(
            self.binary, "-c", "-q", "-f", str(candidate),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise HAProxyError(f"HAProxy refused the configuration: {out.decode()[-2000:]}")

    async def start(self, text: str) -> None:
        await self.check(text)
        _write(self.config, text)
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                [self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-f", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent, start_new_session=True,
            )  # fmt: skip
        self.worker_pid = await self._new_worker(None)

    async def reload(self, text: str) -> None:
        """Serve ``text`` from now on; returns once the new worker answers its runtime API.
        `HAProxyError` (and the old configuration keeps serving) when HAProxy refuses it."""
        await self.check(text)
        _write(self.config, text)
        before = self.worker_pid
        await self._command(self.master_socket, "reload")
        self.worker_pid = await self._new_worker(before)
        self.reloads += 1

    async def runtime(self, command: str) -> str:
        """One runtime API command to the current worker; its answer."""
        return await self._command(self.admin_socket, command)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Soft stop (calls in flight finish), then SIGTERM, then SIGKILL."""
        process = self._process
        if process is None:
            return
        for sig, wait in ((signal.SIGUSR1, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            if process.poll() is not None:
                break
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                break
            for _ in range(int(wait / 0.05)):
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        process.wait()
        self._process = None

    async def _new_worker(self, before: int | None) -> int:
        """The pid of a worker other than ``before`` once it answers on the admin socket."""
        deadline = asyncio.get_running_loop().time() + START_S
        last: Exception | None = None
        while asyncio.get_running_loop().time() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise HAProxyError(f"HAProxy exited: {self._tail()}")
            try:
                info = await self._command(self.admin_socket, "show info")
            except OSError as exc:
                last = exc
            else:
                for line in info.splitlines():
                    if line.startswith("Pid:"):
                        pid = int(line.split(":", 1)[1])
                        if pid != before:
                            return pid
            await asyncio.sleep(0.02)
        raise HAProxyError(f"HAProxy's worker did not answer in {START_S} s ({last!r}): "
                           f"{self._tail()}")  # fmt: skip

    async def _command(self, path: Path, command: str) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5.0)
        finally:
            writer.close()
        return data.decode(errors="replace")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
