"""Registry commands: `models`, `versions`, `alias`, `push`, `pull`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.deploy import load_arrays
from cli.output import (
    Output,
    OutputOpt,
    ago,
    err,
    fail,
    parse_pairs,
    say,
    show,
    size,
    table,
    tags,
)
from cli.progress import TransferProgress
from contract.schemas import AliasMove, AliasOut, ModelOut, VersionOut, VersionSummary

models = typer.Typer(help="Models: list, create, show, delete.", no_args_is_help=True)
versions = typer.Typer(help="Versions of a model: list, show.", no_args_is_help=True)
alias = typer.Typer(help="Aliases: set, list, history, rollback.", no_args_is_help=True)

ModelArg = Annotated[str, typer.Argument(help="Model name.")]
VersionArg = Annotated[str, typer.Argument(help="A number, 'latest', or an alias ('production').")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="key=value; repeatable.")]


def register(app: typer.Typer) -> None:
    app.add_typer(models, name="models")
    app.add_typer(versions, name="versions")
    app.add_typer(alias, name="alias")
    app.command()(push)
    app.command()(pull)


def _client(ctx: typer.Context) -> Any:
    return ctx.obj.client()


# -- models --------------------------------------------------------------------------------


def _models_table(items: list[ModelOut]) -> Any:
    t = table("NAME", "DESCRIPTION", "TAGS", "UPDATED")
    for m in items:
        t.add_row(
            m.name,
            m.description.splitlines()[0] if m.description else "",
            tags(m.tags),
            ago(m.updated_at),
        )
    return t


@models.command("ls")
def list_models(
    ctx: typer.Context,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Name substring.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="key:value; repeatable.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List models."""
    items = _client(ctx).list_models(q=query, tags=parse_pairs(tag, "tag", ":"))
    show(output, items, lambda: _models_table(items))


@models.command("create")
def create_model(
    ctx: typer.Context,
    name: ModelArg,
    description: Annotated[str, typer.Option(help="Markdown description.")] = "",
    tag: TagOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a model."""
    model = _client(ctx).create_model(name, description, parse_pairs(tag, "tag"))
    show(output, model, lambda: f"created model [bold]{model.name}[/bold]")


@models.command("show")
def show_model(ctx: typer.Context, name: ModelArg, output: OutputOpt = Output.table) -> None:
    """A model with its versions and aliases."""
    sdk = _client(ctx)
    model = sdk.get_model(name)
    if output is Output.json:
        show(output, model, None)
        return
    say(f"[bold]{model.name}[/bold]  {tags(model.tags)}")
    if model.description:
        say(model.description)
    aliases = sdk.list_aliases(name)
    say(_aliases_table(aliases) if aliases else "no aliases")
    items = sdk.list_versions(name, limit=20)
    say(_versions_table(items) if items else "no versions")


@models.command("rm")
def delete_model(
    ctx: typer.Context,
    name: ModelArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a model and its versions (refused while it has aliases)."""
    if not yes and not typer.confirm(f"delete model {name!r} and all its versions?"):
        raise typer.Exit(1)
    _client(ctx).delete_model(name)
    err.print(f"deleted model [bold]{name}[/bold]")


# -- versions ------------------------------------------------------------------------------


def _versions_table(items: list[VersionSummary]) -> Any:
    t = table("VERSION", "STATUS", "FORMAT", "TAGS", "BY", "CREATED")
    for v in items:
        t.add_row(
            str(v.version),
            v.status.value,
            v.format or "-",
            tags(v.tags),
            v.created_by,
            ago(v.created_at),
        )
    return t


def _version_detail(v: VersionOut) -> Any:
    t = table(
        "PATH",
        "SIZE",
        "SHA256",
        title=f"{v.model} version {v.version} ({v.status.value}, {v.format or 'no format'})",
    )
    for f in v.files:
        t.add_row(f.path, size(f.size), f.sha256 if f.present else f"{f.sha256} (not uploaded)")
    return t


@versions.command("ls")
def list_versions(
    ctx: typer.Context,
    model: ModelArg,
    status: Annotated[str | None, typer.Option(help="pending, ready, failed, archived.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List a model's versions, newest first."""
    items = _client(ctx).list_versions(model, status=status)
    show(output, items, lambda: _versions_table(items))


@versions.command("show")
def show_version(
    ctx: typer.Context,
    model: ModelArg,
    version: VersionArg = "latest",
    output: OutputOpt = Output.table,
) -> None:
    """A version with its files and digests."""
    v = _client(ctx).get_version(model, version)

    def detail() -> Any:
        if v.signature:
            say(_version_detail(v))
            return "signature: " + json.dumps(v.signature)
        return _version_detail(v)

    show(output, v, detail)


# -- aliases -------------------------------------------------------------------------------


def _aliases_table(items: list[AliasOut]) -> Any:
    t = table("ALIAS", "VERSION", "UPDATED")
    for a in items:
        t.add_row(a.alias, str(a.version), ago(a.updated_at))
    return t


@alias.command("set")
def set_alias(
    ctx: typer.Context,
    model: ModelArg,
    name: Annotated[str, typer.Argument(help="Alias name, e.g. production.")],
    version: Annotated[int, typer.Argument(help="A ready version number.")],
    output: OutputOpt = Output.table,
) -> None:
    """Point an alias at a version (deployments following it roll out)."""
    moved = _client(ctx).set_alias(model, name, version)
    show(output, moved, lambda: f"{model}@{moved.alias} -> version {moved.version}")


@alias.command("ls")
def list_aliases(ctx: typer.Context, model: ModelArg, output: OutputOpt = Output.table) -> None:
    """List a model's aliases."""
    items = _client(ctx).list_aliases(model)
    show(output, items, lambda: _aliases_table(items))


@alias.command("history")
def alias_history(
    ctx: typer.Context,
    model: ModelArg,
    name: Annotated[str, typer.Argument(help="Alias name.")],
    output: OutputOpt = Output.table,
) -> None:
    """Every move of an alias, newest first."""
    items: list[AliasMove] = _client(ctx).alias_history(model, name)

    def render() -> Any:
        t = table("FROM", "TO", "BY", "WHEN")
        for m in items:
            t.add_row(
                str(m.from_version or "-"), str(m.to_version or "-"), m.actor, ago(m.moved_at)
            )
        return t

    show(output, items, render)


@alias.command("rollback")
def rollback_alias(
    ctx: typer.Context,
    model: ModelArg,
    name: Annotated[str, typer.Argument(help="Alias name.")],
    output: OutputOpt = Output.table,
) -> None:
    """Move an alias back to the version it pointed at before its last move."""
    moved = _client(ctx).rollback_alias(model, name)
    show(output, moved, lambda: f"{model}@{moved.alias} -> version {moved.version}")


@alias.command("rm")
def delete_alias(
    ctx: typer.Context, model: ModelArg, name: Annotated[str, typer.Argument(help="Alias name.")]
) -> None:
    """Delete an alias (its history is kept)."""
    _client(ctx).delete_alias(model, name)
    err.print(f"deleted alias {model}@{name}")


# -- push / pull ---------------------------------------------------------------------------


def push(
    ctx: typer.Context,
    name: ModelArg,
    path: Annotated[Path, typer.Argument(help="A model file, or a directory of files.")],
    alias_: Annotated[
        str | None, typer.Option("--alias", help="Point this alias at the new version.")
    ] = None,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="torchscript, torch_export, safetensors, onnx, hf_causal_lm, hf_embedding, "
            "... (default: from the suffix, a directory with config.json and .safetensors is "
            "hf_causal_lm; a scikit-learn estimator: convert it to .onnx, push_sklearn does).",
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="Markdown description.")] = "",
    tag: TagOpt = None,
    metadata: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    signature: Annotated[
        str | None, typer.Option(help="JSON {inputs, outputs} or a path to a JSON file.")
    ] = None,
    example: Annotated[
        list[str] | None,
        typer.Option(
            "--example",
            help="An example input, FILE.npy or NAME=FILE.npy (repeatable), recorded in the "
            "version's metadata: a TorchScript model without a signature warms up on it.",
        ),
    ] = None,
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Parts or files at once.")] = 4,
    output: OutputOpt = Output.table,
) -> None:
    """Upload a new version: hashed locally, only missing files sent (large ones in
    parallel parts), resumed if an earlier push was interrupted."""
    meta = _json_object(metadata, "--metadata") if metadata else None
    sig = _json_object(signature, "--signature") if signature else None
    arrays = load_arrays(example, "--example") if example else None
    sdk = ctx.obj.client(concurrency=parallel)
    with TransferProgress(err, f"push {name}") as progress:
        version = sdk.push(
            name,
            path,
            alias=alias_,
            format=format_,
            description=description,
            tags=parse_pairs(tag, "tag"),
            metadata=meta,
            signature=sig,
            example=arrays,
            progress=progress,
        )
    sent, skipped = len(progress.sent), len(progress.skipped)
    note = f"{sent} uploaded ({size(progress.moved)}), {skipped} already stored"
    if progress.resumed_bytes:
        note += f", resumed with {size(progress.resumed_bytes)} already uploaded"
    where = f" @{alias_}" if alias_ else ""
    show(
        output,
        version,
        lambda: (
            f"pushed [bold]{name}[/bold] version {version.version}{where} "
            f"({version.status.value}): {note}"
        ),
    )


def pull(
    ctx: typer.Context,
    name: ModelArg,
    version: VersionArg = "latest",
    dest: Annotated[Path, typer.Option("--dest", "-d", help="Directory to write into.")] = Path(
        "."
    ),
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Ranged reads at once.")] = 4,
    output: OutputOpt = Output.table,
) -> None:
    """Download a version's files, sha256-verified; an interrupted pull resumes."""
    sdk = ctx.obj.client(concurrency=parallel)
    with TransferProgress(err, f"pull {name}") as progress:
        v = sdk.pull(name, version, dest, progress=progress)
    show(
        output,
        v,
        lambda: (
            f"pulled {name} version {v.version} into {dest}: {len(v.files)} files, "
            f"{len(progress.skipped)} already there"
        ),
    )


def _json_object(text: str, option: str) -> dict[str, Any]:
    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).read_text()
        except OSError as exc:
            fail(f"{option}: cannot read {text}: {exc.strerror}")
    try:
        doc = json.loads(source)
    except ValueError as exc:
        fail(f"{option} is not valid JSON: {exc}")
    if not isinstance(doc, dict):
        fail(f"{option} must be a JSON object")
    return doc
