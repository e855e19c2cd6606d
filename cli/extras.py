"""Which `pip install modelplane[...]` extra a missing module belongs to, so a command that
needs the server side (`up`, `server`, `migrate`, `worker`, `stack`, `keys … --offline`) says
in one line what to install when only the SDK and the command line are."""

from __future__ import annotations

# import name -> extra (pyproject.toml's [project.optional-dependencies])
EXTRA_OF = {
    **dict.fromkeys(
        (
            "fastapi",
            "starlette",
            "uvicorn",
            "uvloop",
            "sqlalchemy",
            "alembic",
            "asyncpg",
            "aiosqlite",
            "boto3",
            "botocore",
            "pydantic_settings",
            "multipart",
            "python_multipart",
            "aiohttp",
            "orjson",
            "prometheus_client",
            "fastapi_offline",
            "jinja2",
        ),
        "server",
    ),
    "torch": "torch",
    "safetensors": "torch",
    "PIL": "pipeline",
    "tokenizers": "pipeline",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``error`` is about, or ``None`` when it is not one
    of ours (then it is a bug, not an installation choice)."""
    return EXTRA_OF.get((error.name or "").split(".")[0])


def install_hint(command: str, error: ModuleNotFoundError) -> str | None:
    """One line for the user, or ``None`` when the missing module is no extra's."""
    extra = missing_extra(error)
    if extra is None:
        return None
    return (
        f"`modelplane {command}` needs modelplane[{extra}], which is not installed "
        f"(no module {error.name!r}): pip install 'modelplane[{extra}]'"
    )
