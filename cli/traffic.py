"""Traffic from the command line: `deploy`'s split, shadow and canary flags parsed into what
the SDK sends, a deployment's lanes drawn, and `canary status|promote|abort`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from cli.output import Output, OutputOpt, ago, fail, print_json, say, table
from contract.schemas import DeploymentOut
from contract.traffic import CanaryOut, CanaryState, LaneOut, LaneRole

canary = typer.Typer(help="A deployment's canary: status, promote, abort.", no_args_is_help=True)

DeploymentArg = Annotated[str, typer.Argument(help="Deployment name.")]
BAR = 30  # characters of a lane's share bar


def register(app: typer.Typer) -> None:
    app.add_typer(canary, name="canary")


def _client(ctx: typer.Context) -> Any:
    return ctx.obj.client()


# ---- deploy's flags -------------------------------------------------------------------


def _pair(text: str, flag: str) -> tuple[int, float]:
    version, sep, percent = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(version), float(percent)
    except ValueError:
        fail(f"{flag} {text!r}: give VERSION=PERCENT, e.g. 7=90")


def parse_split(text: str | None) -> dict[int, float] | None:
    """`--traffic 7=90,8=10` as ``{7: 90.0, 8: 10.0}`` (the API checks the sum)."""
    if text is None:
        return None
    pairs = [_pair(item.strip(), "--traffic") for item in text.split(",") if item.strip()]
    split = dict(pairs)
    if len(split) != len(pairs):
        fail(f"--traffic {text!r} names a version twice")
    return split


def parse_shadow(text: str | None) -> dict[str, Any] | bool | None:
    """`--shadow 9=20` as ``{"version": 9, "percent": 20}``; `--shadow none`: remove it."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return False
    version, percent = _pair(text.strip(), "--shadow")
    return {"version": version, "percent": percent}


def canary_spec(
    steps: str | None,
    interval_s: float | None,
    max_error_rate: float | None,
    max_p99_ms: float | None,
    min_calls: int | None,
) -> dict[str, Any] | bool | None:
    """`--canary 10,50,100` and its thresholds as a ``CanarySpec`` body; `--canary none`
    goes back to replica-by-replica updates."""
    limits = {
        "interval_s": interval_s,
        "max_error_rate": max_error_rate,
        "max_p99_ms": max_p99_ms,
        "min_calls": min_calls,
    }
    given = {k: v for k, v in limits.items() if v is not None}
    if steps is None:
        if given:
            flag = "--canary-interval" if "interval_s" in given else f"--{next(iter(given))}"
            fail(f"{flag.replace('_', '-')} goes with --canary STEPS")
        return None
    if steps.strip().lower() == "none":
        return False
    try:
        shares = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        fail(f"--canary {steps!r}: give increasing percents, e.g. 10,50,100")
    return {"steps": shares, **given}


# ---- what a deployment's traffic looks like -------------------------------------------


def lanes_view(lanes: list[LaneOut]) -> Any:
    """One line per live revision: role, version and a bar of its share."""
    t = table("REVISION", "VERSION", "ROLE", "SHARE", "")
    for lane in sorted(lanes, key=lambda x: (x.role is not LaneRole.primary, x.revision)):
        filled = round(BAR * lane.percent / 100)
        bar = Text("█" * filled, style="cyan") + Text("·" * (BAR - filled), style="dim")
        t.add_row(
            str(lane.revision),
            f"v{lane.version}",
            lane.role.value,
            f"{lane.percent:g}%" + (" mirrored" if lane.role is LaneRole.shadow else ""),
            bar,
        )
    return t


def _worse(canary_value: float | None, base_value: float | None) -> str:
    if canary_value is None or base_value is None:
        return ""
    return "bold red" if canary_value > base_value * 1.1 + 1e-9 else "green"


def _figure(value: float | None, unit: str, style: str = "") -> Text:
    if value is None:
        return Text("-")
    shown = f"{value:.2%}" if unit == "%" else f"{value:.1f} ms" if unit == "ms" else f"{value:g}"
    return Text(shown, style=style)


def figures_view(c: CanaryOut) -> Any:
    """The canary's figures beside its base's, the canary's worse ones in red."""
    mine, base = c.figures, c.base_figures
    t = table(
        "", f"CANARY r{c.revision} v{c.version}", f"BASE r{c.base_revision} v{c.base_version}"
    )

    def row(label: str, key: str, unit: str) -> None:
        a = getattr(mine, key) if mine else None
        b = getattr(base, key) if base else None
        style = _worse(a, b) if key != "calls" else ""
        t.add_row(label, _figure(a, unit, style), _figure(b, unit))

    row("calls", "calls", "")
    row("error rate", "error_rate", "%")
    row("p50", "p50_ms", "ms")
    row("p99", "p99_ms", "ms")
    return t


STATE_STYLE = {
    CanaryState.waiting: "yellow",
    CanaryState.running: "cyan",
    CanaryState.promoted: "green",
    CanaryState.rolled_back: "bold red",
    CanaryState.aborted: "red",
}


def canary_summary(c: CanaryOut) -> Text:
    spec = c.spec
    steps = " → ".join(
        f"[{s}]" if i == c.step and c.state is CanaryState.running else str(s)
        for i, s in enumerate(spec.steps)
    )
    text = Text()
    text.append(f"canary revision {c.revision} (v{c.version}) over {c.base_revision} ")
    text.append(f"(v{c.base_version}): ")
    text.append(c.state.value, style=STATE_STYLE[c.state])
    text.append(f", step {c.step + 1}/{len(spec.steps)} at {c.percent:g}%\n  steps {steps}")
    p99 = f", p99 ≤ {spec.max_p99_ms:g} ms" if spec.max_p99_ms else ""
    text.append(
        f" every {spec.interval_s:g} s; errors ≤ {spec.max_error_rate:.2%}{p99}, "
        f"≥ {spec.min_calls} calls a step\n  started {ago(c.started_at)}"
    )
    if c.step_started_at:
        text.append(f", this step {ago(c.step_started_at)}")
    if c.reason:
        text.append(f"\n  reason: {c.reason}")
    return text


def show_canary(c: CanaryOut | None, name: str) -> None:
    if c is None:
        say(f"{name} has no canary")
        return
    say(canary_summary(c))
    if c.figures or c.base_figures:
        say(figures_view(c))


# ---- canary commands ------------------------------------------------------------------


def _canary_of(d: DeploymentOut) -> CanaryOut:
    if d.canary is None:
        fail(f"deployment {d.name!r} has no canary: deploy a new version with --canary STEPS")
    return d.canary


@canary.command("status")
def canary_status(
    ctx: typer.Context, name: DeploymentArg, output: OutputOpt = Output.table
) -> None:
    """The canary's step, share and state, why, and its figures beside its base's."""
    d = _client(ctx).get_deployment(name)
    c = _canary_of(d)
    if output is Output.json:
        print_json(c)
        return
    show_canary(c, name)
    say(lanes_view(d.lanes))


@canary.command("promote")
def canary_promote(
    ctx: typer.Context, name: DeploymentArg, output: OutputOpt = Output.table
) -> None:
    """Give the canary all traffic now; the base revision drains."""
    _finish(_client(ctx).promote_canary(name), output)


@canary.command("abort")
def canary_abort(ctx: typer.Context, name: DeploymentArg, output: OutputOpt = Output.table) -> None:
    """Send all traffic back to the base revision now and stop the canary."""
    _finish(_client(ctx).abort_canary(name), output)


def _finish(d: DeploymentOut, output: Output) -> None:
    if output is Output.json:
        print_json(d)
        return
    show_canary(d.canary, d.name)
    say(lanes_view(d.lanes))
