"""`modelplane keys …`: API keys, over the API or (`--offline`) straight in the database,
and the credentials `modelplane up` mints on its first start."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

keys_app = typer.Typer(
    name="keys",
    help="API keys: create (the token is shown once), list, revoke.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()  # the token goes to stdout alone, so `$(modelplane keys create …)` works

CREDENTIALS = "credentials.json"  # {"url", "token"}: the admin key `up` minted
WORKER_CREDENTIALS = "worker-credentials.json"  # the embedded deployer worker's key
GATEWAY_CREDENTIALS = "gateway-credentials.json"  # `modelplane stack`'s gateways' key
DEFAULT_URL = "http://127.0.0.1:8000"


def write_credentials(path: Path, url: str, token: str) -> None:
    """``{"url", "token"}`` readable by the owner only (0600), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps({"url": url, "token": token}, indent=2).encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(temp, path)


def read_credentials(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("token"), str):
        return {k: str(v) for k, v in data.items()}
    return None


def _saved_token(database_url: str, path: Path) -> str | None:
    """The token saved at ``path`` when it is still a valid key in this database."""
    from registry.services.keys import check_token

    saved = read_credentials(path)
    if saved is None:
        return None
    return saved["token"] if asyncio.run(check_token(database_url, saved["token"])) else None


def _mint(database_url: str, name: str, scopes: list[str], by: str) -> str:
    from contract.schemas import KeyCreate
    from registry.services.keys import mint_key

    body = KeyCreate.model_validate({"name": name, "scopes": scopes, "owner": by})
    return asyncio.run(mint_key(database_url, body, by=by)).token


def ensure_up_credentials(database_url: str, home: Path, url: str) -> str:
    """`up`'s keys: the admin key in ``home/credentials.json`` (minted and printed once, on
    the first start or when the saved one no longer works) and the embedded worker's key in
    ``home/worker-credentials.json``. Returns the worker's token."""
    admin_path, worker_path = home / CREDENTIALS, home / WORKER_CREDENTIALS
    admin = _saved_token(database_url, admin_path)
    if admin is None:
        admin = _mint(database_url, "admin", ["admin"], by="modelplane up")
        console.print("[bold yellow]First start: an admin API key was created.[/bold yellow]")
        console.print(f"  token (shown once): [bold]{admin}[/bold]")
        console.print(f"  saved to {admin_path} (mode 0600), where the CLI and SDK find it")
        console.print("  use it as: curl -H 'Authorization: Bearer mp_...'")
    else:
        console.print(f"  API key: {admin_path}")
    write_credentials(admin_path, url, admin)
    return ensure_service_key(database_url, worker_path, url, "embedded worker", "worker")


def ensure_service_key(
    database_url: str, path: Path, url: str, name: str, scope: str, by: str = "modelplane up"
) -> str:
    """The token of a process's own key (a worker's, the gateways'): the one saved at
    ``path`` while it is still valid, else a new key of that one ``scope``, saved there."""
    token = _saved_token(database_url, path)
    if token is None:
        token = _mint(database_url, name, [scope], by=by)
    write_credentials(path, url, token)
    return token


def resolve_target(url: str | None, token: str | None) -> tuple[str, str | None]:
    """Where to call and with which key: the whole CLI's one order (``client/config.py``):
    arguments, MODELPLANE_URL / MODELPLANE_TOKEN, $MODELPLANE_HOME/credentials.json,
    ~/.config/modelplane/credentials.json; a saved token only with the URL saved with it."""
    from client.config import resolve

    found = resolve(url, token)
    return found.url, found.token


def _call(method: str, path: str, url: str | None, token: str | None, **kw: Any) -> Any:
    base, key = resolve_target(url, token)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        answer = httpx.request(method, f"{base}/api/v1{path}", headers=headers, timeout=30, **kw)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {base}[/red]: {exc}")
        raise typer.Exit(1) from exc
    try:
        body = answer.json() if answer.content else None
    except ValueError:  # not our API (a proxy's page): say what came back
        body = None
    if answer.status_code >= 400 or body is None:
        detail = body.get("detail") if isinstance(body, dict) else answer.text[:300]
        console.print(f"[red]{answer.status_code}[/red] {detail}")
        raise typer.Exit(1)
    return body


def _database_url() -> str:
    from registry.migrate import upgrade_to_head
    from registry.settings import Settings

    settings = Settings()
    upgrade_to_head(settings.database_url)
    return settings.database_url


Url = Annotated[str | None, typer.Option(help="Control plane URL (else MODELPLANE_URL, saved).")]
Token = Annotated[str | None, typer.Option(help="API key (else MODELPLANE_TOKEN, saved).")]
Offline = Annotated[
    bool,
    typer.Option(help="Write the database of MODELPLANE_DATABASE_URL directly (no server)."),
]


@keys_app.command("create")
def create_key_command(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read,write,deploy,promote,admin,worker.")
    ],
    model_glob: Annotated[
        list[str] | None, typer.Option(help="Restrict to models matching (repeatable).")
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Who the key is for.")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Expire after.")] = None,
    offline: Offline = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Create a key and print its token (once: only its hash is stored). `--offline` needs
    no server: it mints the first admin key."""
    from pydantic import ValidationError

    from contract.schemas import KeyCreate

    body: dict[str, Any] = {
        "name": name,
        "scopes": [s.strip() for s in scopes.split(",") if s.strip()],
        "model_globs": model_glob or [],
        "owner": owner,
    }
    if expires_in_days is not None:
        body["expires_at"] = datetime.now(UTC) + timedelta(days=expires_in_days)
    try:
        spec = KeyCreate.model_validate(body)
    except ValidationError as exc:
        console.print(f"[red]invalid key[/red]: {exc}")
        raise typer.Exit(2) from exc
    if offline:
        from registry.services.keys import mint_key

        created = asyncio.run(mint_key(_database_url(), spec, by="modelplane keys --offline"))
        answer = created.model_dump(mode="json")
    else:
        answer = _call("POST", "/keys", url, token, json=spec.model_dump(mode="json"))
    console.print(
        f"key {answer['id']} ({', '.join(answer['scopes'])}) created; the token is shown once:"
    )
    out.print(answer["token"], soft_wrap=True, highlight=False, markup=False)


@keys_app.command("list")
def list_keys_command(
    revoked: Annotated[bool, typer.Option(help="Include revoked keys.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """List keys (never their tokens)."""
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, "revoked": revoked}
        if cursor:
            params["cursor"] = cursor
        page = _call("GET", "/keys", url, token, params=params)
        for key in page["items"]:
            state = "revoked" if key["revoked_at"] else "active"
            globs = ",".join(key["model_globs"]) or "*"
            line = (f"{key['id']}  {key['prefix']}  {state:7}  {','.join(key['scopes']):20}  "
                    f"models={globs}  {key['name']}")  # fmt: skip
            out.print(line, soft_wrap=True, highlight=False, markup=False)
        cursor = page.get("next_cursor")
        if not cursor:
            return


@keys_app.command("revoke")
def revoke_key_command(
    key_id: Annotated[str, typer.Argument(help="The key's id (`keys list`).")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Revoke a key: it stops working on its next request."""
    answer = _call("POST", f"/keys/{key_id}/revoke", url, token)
    console.print(f"key {answer['id']} revoked at {answer['revoked_at']}")
