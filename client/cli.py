"""The `modelplane` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from registry.settings import Settings

app = typer.Typer(
    name="modelplane",
    help="Modelplane: a model registry and model-serving platform.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _register_keys() -> None:
    from client.keys_cli import keys_app

    app.add_typer(keys_app)


_register_keys()


@app.command()
def up(
    home: Annotated[
        Path | None, typer.Option(help="Where embedded state lives (MODELPLANE_HOME).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8000).")] = None,
    worker: Annotated[
        bool, typer.Option(help="Run one deployer worker (cache under MODELPLANE_HOME/cache).")
    ] = True,
) -> None:
    """Run the embedded platform: SQLite + a local artifact folder, migrated and served,
    with one deployer worker that runs deployments on this machine."""
    from registry.migrate import upgrade_to_head
    from registry.server import serve
    from registry.settings import Settings

    overrides = {k: v for k, v in {"home": home, "host": host, "port": port}.items() if v}
    settings = Settings(**overrides)
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.database_url)
    _announce(settings.host, settings.port, settings.database_url, settings.storage_url)
    token = _up_credentials(settings) if settings.auth_enabled else None
    home_dir = Path(settings.home)
    child = _start_worker(settings.host, settings.port, home_dir, token) if worker else None
    try:
        serve(settings)
    finally:
        if child is not None:
            _stop_worker(child)


def _reach(host: str, port: int) -> str:
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{reach}:{port}"


def _up_credentials(settings: Settings) -> str:
    """The admin key (saved to $MODELPLANE_HOME/credentials.json, printed on first start) and
    the embedded worker's key; returns the worker's token."""
    from client.keys_cli import ensure_up_credentials

    url = _reach(settings.host, settings.port)
    return ensure_up_credentials(settings.database_url, Path(settings.home), url)


def _start_worker(host: str, port: int, home: Path, token: str | None) -> subprocess.Popen[bytes]:
    """`python -m deployer` pointed at this control plane, as a child process. It gets
    SIGTERM when `up` exits however it does (uvicorn re-raises SIGTERM after its shutdown,
    which skips `finally`). Its API key goes in MODELPLANE_WORKER_TOKEN."""
    command = [sys.executable, "-m", "deployer", "--control-plane", _reach(host, port)]
    command += ["--cache-dir", str(home.resolve() / "cache"), "--name", "embedded"]
    from deployer.children import die_with_parent

    env = {**os.environ, **({"MODELPLANE_WORKER_TOKEN": token} if token else {})}
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent)
    console.print(f"  deployer worker: pid {child.pid}, cache {home / 'cache'}")
    return child


def _stop_worker(child: subprocess.Popen[bytes], timeout: float = 40.0) -> None:
    """SIGTERM by PID: the worker drains its serving processes, then exits."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(5)


@app.command()
def server(
    migrate: Annotated[
        bool, typer.Option(help="Apply database migrations before serving.")
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Run the control plane with settings from MODELPLANE_* (production style)."""
    from registry.migrate import upgrade_to_head
    from registry.server import serve
    from registry.settings import Settings

    settings = Settings(**({"workers": workers} if workers else {}))
    if migrate:
        upgrade_to_head(settings.database_url)
    _announce(settings.host, settings.port, settings.database_url, settings.storage_url)
    serve(settings)


@app.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (Alembic, to head) and exit."""
    from registry.migrate import upgrade_to_head
    from registry.settings import Settings

    settings = Settings()
    upgrade_to_head(settings.database_url)
    console.print(f"[green]database at head[/green]: {_redact(settings.database_url)}")


@app.command()
def stack(
    home: Annotated[Path, typer.Option(help="State, logs and caches.")] = Path(".modelplane/stack"),
    port: Annotated[int, typer.Option(help="The balancer's port on 127.0.0.1 (0: free).")] = 8000,
    database: Annotated[str, typer.Option(help="Postgres database, created if missing.")] = (
        "modelplane_stack"
    ),
    postgres: Annotated[str, typer.Option(help="Postgres server (without a database).")] = (
        "postgresql://postgres@127.0.0.1:5432"
    ),
    netns: Annotated[
        str, typer.Option(help="Workers in network namespaces: auto, on or off (loopback).")
    ] = "auto",
    control_planes: Annotated[int, typer.Option(min=1, help="Control-plane processes.")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="Deployer workers.")] = 2,
    lease_ttl_s: Annotated[float, typer.Option(help="Worker lease TTL (seconds).")] = 15.0,
) -> None:
    """Run docker-compose.yml's topology natively: the local Postgres, SeaweedFS, a one-shot
    migration, control planes behind a TCP balancer, and deployer workers on hosts of their
    own (network namespaces when permitted). Ctrl-C stops everything."""
    from client.stack import StackConfig, run

    config = StackConfig(
        home=home,
        port=port,
        database=database,
        postgres=postgres,
        netns=netns,
        control_planes=control_planes,
        workers=workers,
        lease_ttl_s=lease_ttl_s,
        heartbeat_s=min(3.0, lease_ttl_s / 3),
    )

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    raise typer.Exit(run(config, say=say))


def _announce(host: str, port: int, database_url: str, storage_url: str) -> None:
    base = f"http://{host}:{port}"
    console.print(f"[bold]Modelplane[/bold] control plane on [cyan]{base}[/cyan]")
    console.print(f"  API docs (Swagger): [cyan]{base}/docs[/cyan]")
    console.print(f"  API docs (ReDoc):   [cyan]{base}/redoc[/cyan]")
    console.print(f"  REST API:           [cyan]{base}/api/v1[/cyan]")
    console.print(f"  database: {_redact(database_url)}   artifacts: {storage_url}")


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


if __name__ == "__main__":
    app()
