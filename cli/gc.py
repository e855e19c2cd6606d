"""`modelplane gc [--dry-run]`: ask the control plane to collect garbage, print the report.

A module of its own, registered by one function (``register``) like the other groups. The
control plane and token come from the global `--url`/`--token`, MODELPLANE_URL/TOKEN or
the saved credentials (client/config.py); the call needs a key with the `admin` scope.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.output import Output, OutputOpt, show, size, table
from contract.paths import API_PREFIX
from contract.schemas import GcReport


def register(app: typer.Typer) -> None:
    app.command("gc")(gc_command)


def gc_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be removed.")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Remove blobs no version, alias or deployment revision refers to, and abandoned
    direct uploads (POST /api/v1/gc). With --dry-run, list what would go."""
    with ctx.obj.client() as sdk:
        raw = sdk.transport.json(
            "POST", f"{API_PREFIX}/gc", params={"dry_run": str(dry_run).lower()}
        )
    report = GcReport.model_validate(raw)
    show(output, report, lambda: _table(report))


def _table(report: GcReport) -> Any:
    if report.skipped:
        return "another control-plane replica is collecting garbage: nothing done"
    verb = "would remove" if report.dry_run else "removed"
    rows = table("sha256", "size", "modified", title=f"blobs {verb}")
    for blob in report.blobs:
        rows.add_row(blob.sha256, size(blob.size), blob.modified.isoformat(timespec="seconds"))
    rows.caption = (
        f"{verb} {len(report.blobs)} blobs ({size(report.bytes)}), "
        f"{len(report.uploads)} abandoned uploads; {report.kept_recent} unreferenced blobs "
        "kept (younger than the grace period)"
    )
    return rows
