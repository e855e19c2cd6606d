"""Serving commands: `deploy`, `deployments`, `rollback`, `endpoints`, `infer`, `events`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from cli.output import Output, OutputOpt, ago, err, fail, print_json, say, show, table
from cli.traffic import canary_spec, lanes_view, parse_shadow, parse_split, show_canary
from contract.schemas import DeploymentOut, EndpointOut, EventOut, RevisionOut
from contract.traffic import LaneRole

deployments = typer.Typer(help="Deployments: list, show, delete, revisions.", no_args_is_help=True)

DeploymentArg = Annotated[str, typer.Argument(help="Deployment name.")]
WaitOpt = Annotated[bool, typer.Option(help="Wait until the new revision serves.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait.")]


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.add_typer(deployments, name="deployments")
    app.command()(rollback)
    app.command()(endpoints)
    app.command()(infer)
    app.command()(events)


def _client(ctx: typer.Context) -> Any:
    return ctx.obj.client()


def _what(d: DeploymentOut) -> str:
    if len([lane for lane in d.lanes if lane.role is not LaneRole.shadow]) > 1:
        shares = ", ".join(
            f"v{x.version} {x.percent:g}%" for x in d.lanes if x.role is not LaneRole.shadow
        )
        return f"{d.model} ({shares})"
    return f"{d.model}@{d.alias} (v{d.version})" if d.alias else f"{d.model} v{d.version}"


def _summary(d: DeploymentOut) -> str:
    reason = f" ({d.status_reason})" if d.status_reason else ""
    ready = f"{d.observed.ready_replicas}/{d.replicas} ready"
    head = f"[bold]{d.name}[/bold] revision {d.revision}"
    return f"{head}: {_what(d)}, {ready}, {d.status.value}{reason}"


def _finish(
    ctx: typer.Context, d: DeploymentOut, wait: bool, timeout: float, output: Output
) -> None:
    if wait:
        err.print(f"{d.name} revision {d.revision}: {_what(d)}; waiting until it serves…")
        d = _client(ctx).wait_ready(d.name, timeout)
    show(output, d, lambda: _summary(d) + f"\n  stable URL: {_stable_url(ctx, d)}")


def _stable_url(ctx: typer.Context, d: DeploymentOut) -> str:
    """Where to call it: OpenAI's API for a language model, else v2's infer."""
    base = f"{_client(ctx).url}/serve/{d.name}"
    if d.version is not None:
        fmt = _client(ctx).get_version(d.model, d.version).format or ""
        if fmt.startswith("hf_"):
            return f"{base}/v1 (OpenAI API: /v1/chat/completions, /v1/completions, /v1/embeddings)"
    return f"{base}/v2/models/{d.model}/infer"


def deploy(
    ctx: typer.Context,
    name: DeploymentArg,
    model: Annotated[
        str | None, typer.Option(help="Model to serve (default: the deployment name).")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Pin this version.")] = None,
    alias: Annotated[
        str | None, typer.Option(help="Follow this alias (rolls out when it moves).")
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas (default 1).")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per replica (default 0: CPU).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cuda or cpu.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Dynamic batching bound.")] = None,
    max_delay_ms: Annotated[float | None, typer.Option(help="Batching wait.")] = None,
    optimize: Annotated[
        str | None,
        typer.Option(help="none, int8_dynamic, fp16, bf16 or auto: applied before traffic."),
    ] = None,
    max_abs_error: Annotated[
        float | None, typer.Option(help="With --optimize: the largest absolute error allowed.")
    ] = None,
    max_rel_error: Annotated[
        float | None, typer.Option(help="With --optimize: the largest relative error allowed.")
    ] = None,
    min_top1_agreement: Annotated[
        float | None, typer.Option(help="With --optimize: classifiers' top-1 agreement, 0-1.")
    ] = None,
    unchecked: Annotated[
        bool, typer.Option(help="With --optimize: serve it without an accuracy check.")
    ] = False,
    traffic: Annotated[
        str | None,
        typer.Option(help="A fixed split kept live: VERSION=PERCENT,… adding up to 100."),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(help="Mirror a share of calls to a version: VERSION=PERCENT, or none."),
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(
            help="Roll version changes out as a canary: steps, e.g. 10,50,100 (none: off)."
        ),
    ] = None,
    canary_interval: Annotated[
        float | None, typer.Option(help="With --canary: seconds per step.")
    ] = None,
    max_error_rate: Annotated[
        float | None, typer.Option(help="With --canary: roll back above this error rate (0-1).")
    ] = None,
    max_p99_ms: Annotated[
        float | None, typer.Option(help="With --canary: roll back above this p99 (ms).")
    ] = None,
    min_calls: Annotated[
        int | None, typer.Option(help="With --canary: calls a step needs before a verdict.")
    ] = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Deploy a version (or follow an alias, or keep a split of versions live); on an
    existing deployment, roll out the change (as a canary with --canary)."""
    limits = {
        "max_abs_error": max_abs_error,
        "max_rel_error": max_rel_error,
        "min_top1_agreement": min_top1_agreement,
        "unchecked": unchecked or None,
    }
    given = {k: v for k, v in limits.items() if v is not None}
    if given and optimize is None:
        fail(f"--{next(iter(given)).replace('_', '-')} goes with --optimize")
    d = _client(ctx).deploy(
        name,
        model,
        version=version,
        alias=alias,
        replicas=replicas,
        gpus=gpus,
        device=device,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        optimize={"mode": optimize, **given} if optimize is not None else None,
        traffic=parse_split(traffic),
        shadow=parse_shadow(shadow),
        canary=canary_spec(canary, canary_interval, max_error_rate, max_p99_ms, min_calls),
    )
    if d.canary is not None and d.canary.state.value in ("waiting", "running"):
        wait = False  # a canary takes its steps' intervals: `modelplane canary status` shows it
        show_canary(d.canary, d.name)
    _finish(ctx, d, wait, timeout, output)


def _deployments_table(items: list[DeploymentOut]) -> Any:
    t = table("NAME", "MODEL", "VERSION", "ALIAS", "REVISION", "READY", "STATUS", "UPDATED")
    for d in items:
        t.add_row(
            d.name, d.model, str(d.version), d.alias or "-", str(d.revision),
            f"{d.observed.ready_replicas}/{d.replicas}", d.status.value, ago(d.updated_at),
        )  # fmt: skip
    return t


@deployments.command("ls")
def list_deployments(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List deployments."""
    items = _client(ctx).list_deployments()
    show(output, items, lambda: _deployments_table(items))


@deployments.command("show")
def show_deployment(
    ctx: typer.Context, name: DeploymentArg, output: OutputOpt = Output.table
) -> None:
    """A deployment: desired and observed state, replicas, revisions."""
    sdk = _client(ctx)
    d = sdk.get_deployment(name)
    if output is Output.json:
        print_json(d)
        return
    say(_summary(d))
    if d.lanes:
        say(lanes_view(d.lanes))
    if d.canary is not None:
        show_canary(d.canary, d.name)
    t = table("REPLICA", "REVISION", "VERSION", "DESIRED", "STATE", "WORKER", "REASON")
    for r in d.observed.replicas:
        t.add_row(
            r.id[:8],
            str(r.revision),
            str(r.version),
            r.desired.value,
            r.state.value,
            (r.worker or "-")[:12],
            r.reason or "",
        )
    say(t)
    say(_revisions_table(sdk.revisions(name)))


def _revisions_table(items: list[RevisionOut]) -> Any:
    t = table("REVISION", "VERSION", "REASON", "CREATED")
    for r in items:
        t.add_row(str(r.revision), str(r.version), r.reason.value, ago(r.created_at))
    return t


@deployments.command("revisions")
def list_revisions(
    ctx: typer.Context, name: DeploymentArg, output: OutputOpt = Output.table
) -> None:
    """A deployment's revisions, newest first."""
    items = _client(ctx).revisions(name)
    show(output, items, lambda: _revisions_table(items))


@deployments.command("rm")
def delete_deployment(
    ctx: typer.Context,
    name: DeploymentArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Stop and delete a deployment (its replicas drain first)."""
    if not yes and not typer.confirm(f"stop and delete deployment {name!r}?"):
        raise typer.Exit(1)
    gone = _client(ctx).delete_deployment(name) is None
    err.print(
        f"deleted deployment {name}"
        if gone
        else f"deployment {name} is draining; it goes once no replica runs"
    )


def rollback(
    ctx: typer.Context,
    name: DeploymentArg,
    to_revision: Annotated[
        int | None, typer.Option(help="Default: the revision before the current.")
    ] = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Roll a deployment back: a new revision equal to an earlier one, rolled out."""
    d = _client(ctx).rollback(name, to_revision)
    _finish(ctx, d, wait, timeout, output)


def endpoints(ctx: typer.Context, name: DeploymentArg, output: OutputOpt = Output.table) -> None:
    """Where a deployment is served now: serving processes with their status."""
    items: list[EndpointOut] = _client(ctx).endpoints(name)

    def render() -> Any:
        t = table("URL", "STATUS", "REVISION", "VERSION", "WORKER", "HEARTBEAT")
        for e in items:
            status = f"{e.status.value} ({e.reason})" if e.reason else e.status.value
            worker = (e.worker or "-")[:12]
            t.add_row(e.url, status, str(e.revision), str(e.version), worker, ago(e.heartbeat_at))
        return t if items else "no endpoints"

    show(output, items, render)


def load_arrays(specs: list[str], flag: str = "--input") -> list[Any] | dict[str, Any]:
    """`FILE.npy` or `NAME=FILE.npy` per spec: a list, or arrays by name."""
    named: dict[str, Any] = {}
    plain: list[Any] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        source = Path(path if sep else spec)
        try:
            array = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as exc:
            fail(f"{flag} {source}: not a readable .npy file ({exc})")
        if sep:
            named[name] = array
        else:
            plain.append(array)
    if named and plain:
        fail(f"give every {flag} as NAME=FILE.npy, or none")
    return named or plain


def infer(
    ctx: typer.Context,
    name: DeploymentArg,
    input_: Annotated[
        list[str], typer.Option("--input", "-i", help="FILE.npy, or NAME=FILE.npy; repeatable.")
    ],
    version: Annotated[
        int | None, typer.Option(help="Only endpoints of this version (a pin).")
    ] = None,
    direct: Annotated[
        bool, typer.Option(help="Call a serving process directly, not the stable URL.")
    ] = False,
    output_file: Annotated[
        Path | None, typer.Option(help="Save outputs: .npy (one output) or .npz.")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Call a deployment through its stable URL (binary tensors) and print the outputs."""
    arrays = load_arrays(input_)
    results = _client(ctx).infer(name, arrays, version=version, direct=direct)
    if output_file is not None:
        if output_file.suffix == ".npz":
            np.savez(output_file, **results)
        elif len(results) == 1:
            np.save(output_file, next(iter(results.values())))
        else:
            fail(f"{len(results)} outputs: give an .npz file to --output-file")
        err.print(f"saved {', '.join(results)} to {output_file}")
    if output is Output.json:
        print_json(
            {
                k: {"shape": list(v.shape), "datatype": str(v.dtype), "data": v.tolist()}
                for k, v in results.items()
            }
        )
        return
    with np.printoptions(precision=6, suppress=True, threshold=200):
        for key, value in results.items():
            say(f"[bold]{key}[/bold] {value.dtype} {list(value.shape)}", highlight=False)
            say(str(value), highlight=False, markup=False)


def events(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only events about this model.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. alias.moved.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-30T15:00:00Z.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    newest_first: Annotated[bool, typer.Option(help="The most recent events first.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """The audit log, oldest first: who changed what, when."""
    items: list[EventOut] = _client(ctx).events(
        model=model, action=action, since=since, limit=limit, newest_first=newest_first
    )

    def render() -> Any:
        t = table("TIME", "ACTOR", "ACTION", "MODEL", "TARGET", "AFTER")
        for e in items:
            after = "" if e.after is None else str(e.after)
            t.add_row(
                e.time.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                e.model or "-",
                e.target or "-",
                after[:40],
            )
        return t

    show(output, items, render)
