"""A rich progress display for pushes and pulls: one bar per file, and an overall bar
with throughput, fed by the SDK's ``TransferEvent`` hook."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from client.transfer import TransferEvent


class TransferProgress:
    """``with TransferProgress(console, "uploading") as hook: client.push(..., progress=hook)``.
    The overall bar counts only bytes that really move (skipped files and parts already
    uploaded by an interrupted push are left out), so its speed is the real throughput."""

    def __init__(self, console: Console, verb: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.verb = verb
        self.files: dict[str, TaskID] = {}
        self.overall: TaskID | None = None
        self.moved = 0
        self.skipped: list[str] = []
        self.sent: list[str] = []
        self.resumed_bytes = 0

    def __enter__(self) -> TransferProgress:
        self.progress.start()
        self.overall = self.progress.add_task(f"[bold]{self.verb}", total=0)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def _task(self, event: TransferEvent) -> TaskID:
        if event.path not in self.files:
            self.files[event.path] = self.progress.add_task(f"  {event.path}", total=event.size)
            self._grow(event.size)
        return self.files[event.path]

    def _grow(self, nbytes: int) -> None:
        assert self.overall is not None
        total = self.progress.tasks[self.overall].total or 0
        self.progress.update(self.overall, total=max(0, total + nbytes))

    def __call__(self, event: TransferEvent) -> None:
        first = event.path not in self.files
        task = self._task(event)
        if event.kind == "hashing":
            self.progress.update(task, description=f"  {event.path} [dim](hashing)")
            self.progress.advance(task, event.nbytes)
        elif event.kind == "hashed":
            self.progress.update(task, description=f"  {event.path}", completed=0)
        elif event.kind == "skip":
            self.skipped.append(event.path)
            self._grow(-event.size)
            self.progress.update(
                task, completed=event.size, description=f"  {event.path} [dim](already there)"
            )
        elif event.kind == "start" and (first or event.path not in self.sent):
            self.sent.append(event.path)
            if event.nbytes:
                self.resumed_bytes += event.nbytes
                self._grow(-event.nbytes)
                self.progress.update(task, completed=event.nbytes)
        elif event.kind == "advance":
            self.moved += event.nbytes
            self.progress.advance(task, event.nbytes)
            assert self.overall is not None
            self.progress.advance(self.overall, event.nbytes)
        elif event.kind == "done":
            self.progress.update(task, completed=event.size)
