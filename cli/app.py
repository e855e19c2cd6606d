"""The `modelplane` command line: the platform commands (`up`, `server`, `migrate`, `worker`,
`stack`), `login`, and the command groups of other modules (`cli/catalog.py`, `cli/deploy.py`,
`cli/keys.py`, `cli/gc.py`), each registered by one small function below.

Importing this module loads the SDK and the command line only: the platform commands import
the server side (registry/, deployer/, devstack/) when they run, so `pip install modelplane`
without `[server]` runs every other command, and those say which extra to install."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import pydantic
import typer
from rich.console import Console
from typer.core import TyperGroup

from cli.extras import install_hint
from cli.output import fail
from client.errors import Forbidden, ModelplaneError, Unauthorized

if TYPE_CHECKING:
    from registry.settings import Settings


class OneLineErrors(TyperGroup):
    """Every SDK error, unreadable file, missing extra or interrupt ends the command with one
    line on stderr and a non-zero exit code, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            hint = install_hint(ctx.invoked_subcommand or "", exc)
            if hint is None:
                raise
            fail(hint)
        except (Unauthorized, Forbidden) as exc:
            fail(f"{exc} (check the token: `modelplane login`, MODELPLANE_TOKEN or --token)")
        except ModelplaneError as exc:
            fail(str(exc))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            fail(f"{type(exc).__name__}: {exc}")
        except pydantic.ValidationError as exc:
            fail(f"unexpected answer from the server ({exc.error_count()} fields): {exc.title}")
        except BrokenPipeError:  # `modelplane events | head`: the reader left, not an error
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)


app = typer.Typer(
    name="modelplane",
    help="Modelplane: a model registry and model-serving platform.",
    no_args_is_help=True,
    add_completion=False,
    cls=OneLineErrors,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@dataclass
class Target:
    """Where commands talk to: `--url`/`--token`, else MODELPLANE_URL/TOKEN, else the saved
    credentials (see client/config.py)."""

    url: str | None = None
    token: str | None = None

    def client(self, **options: Any) -> Any:
        from client.sdk import Client

        return Client(self.url, self.token, **options)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="Control plane URL (default: MODELPLANE_URL, saved login).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="API token (default: MODELPLANE_TOKEN, saved login).")
    ] = None,
) -> None:
    """Modelplane: a model registry and model-serving platform."""
    ctx.obj = Target(url, token)


def _register_keys() -> None:
    from cli.keys import keys_app

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

    given: dict[str, Any] = {"home": home, "host": host, "port": port}
    overrides = {k: v for k, v in given.items() if v}
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
    from cli.keys import ensure_up_credentials

    url = _reach(settings.host, settings.port)
    return ensure_up_credentials(settings.database_url, Path(settings.home), url)


def _start_worker(host: str, port: int, home: Path, token: str | None) -> subprocess.Popen[bytes]:
    """`python -m deployer` pointed at this control plane, as a child process. It gets
    SIGTERM when `up` exits however it does (uvicorn re-raises SIGTERM after its shutdown,
    which skips `finally`). Its API key goes in MODELPLANE_WORKER_TOKEN."""
    command = [sys.executable, "-m", "deployer", "--control-plane", _reach(host, port)]
    command += ["--cache-dir", str(home.resolve() / "cache"), "--name", "embedded"]
    from contract.children import die_with_parent

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

    overrides: dict[str, Any] = {"workers": workers} if workers else {}
    settings = Settings(**overrides)
    if migrate:
        upgrade_to_head(settings.database_url)
    _announce(settings.host, settings.port, settings.database_url, settings.storage_url)
    serve(settings)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def worker(ctx: typer.Context) -> None:
    """Run a deployer worker on this machine (`python -m deployer`; `--help` lists its
    options)."""
    from deployer.__main__ import main as run_worker

    raise typer.Exit(run_worker(list(ctx.args)))


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
    gateways: Annotated[
        int, typer.Option(min=0, help="Gateway processes serving /serve/ (0: none).")
    ] = 2,
    gateway_port: Annotated[
        int, typer.Option(help="The gateways' balancer's port on 127.0.0.1 (0: free).")
    ] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Deployer workers.")] = 2,
    lease_ttl_s: Annotated[float, typer.Option(help="Worker lease TTL (seconds).")] = 15.0,
) -> None:
    """Run docker-compose.yml's topology natively: the local Postgres, SeaweedFS, a one-shot
    migration, control planes behind a TCP balancer, gateway processes (the stable URL,
    HAProxy when installed) behind another, and deployer workers on hosts of their own
    (network namespaces when permitted). Ctrl-C stops everything."""
    from devstack.stack import StackConfig, run

    config = StackConfig(
        home=home,
        port=port,
        database=database,
        postgres=postgres,
        netns=netns,
        control_planes=control_planes,
        gateways=gateways,
        gateway_port=gateway_port,
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
    console.print(f"  Dashboard:          [cyan]{base}/ui/[/cyan]")
    console.print(f"  database: {_redact(database_url)}   artifacts: {storage_url}")


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


@app.command()
def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Argument(help="Control plane URL.")] = None,
    token: Annotated[
        str | None, typer.Option(help="API token (asked for when omitted; empty: none).")
    ] = None,
) -> None:
    """Save a control plane URL and token to ~/.config/modelplane/credentials.json (0600),
    after checking that they work."""
    from client.config import resolve, save_credentials
    from client.sdk import Client

    target: Target = ctx.obj
    url = url or target.url or resolve().url
    if token is None:
        token = target.token or typer.prompt("Token", default="", hide_input=True) or None
    with Client(url, token) as sdk:
        sdk.list_models(limit=1)  # 401/403 and a wrong URL fail here, before saving
        saved = save_credentials(sdk.url, token)
    console.print(f"logged in to [cyan]{url}[/cyan]; saved to {saved}")


def _register_groups() -> None:
    from cli import catalog, chat, deploy, gc, traffic

    catalog.register(app)
    deploy.register(app)
    traffic.register(app)
    gc.register(app)
    chat.register(app)


_register_groups()

if __name__ == "__main__":
    app()
