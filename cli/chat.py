"""`modelplane chat NAME`: talk to a language-model deployment from the terminal.

Each turn goes to the deployment's stable URL (`/serve/NAME/v1/chat/completions`, OpenAI's
API) with `stream: true` through the SDK (`Client.chat`), and the reply is written as its
tokens arrive. The conversation is kept and sent again with each turn. `--prompt` asks
once and exits (for scripts); without it the loop reads lines until an empty EOF (Ctrl-D),
`/exit` or Ctrl-C; `/reset` forgets the conversation. An error of one turn is one line on
stderr and the loop goes on (one-shot: the exit code says so).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.output import err
from client.errors import ModelplaneError

PROMPT = "you> "


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)


def chat_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A deployment of a language model.")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Ask once, print the reply, exit.")
    ] = None,
    system: Annotated[
        str | None, typer.Option("--system", help="A system message that opens the conversation.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Most tokens per reply.")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option("--temperature", min=0.0, max=2.0, help="0 is greedy (the same reply)."),
    ] = None,
) -> None:
    """Chat with a language-model deployment: replies stream to the terminal."""
    sdk = ctx.obj.client()
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    params = {k: v for k, v in params.items() if v is not None}
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        history.append({"role": "user", "content": prompt})
        _reply(sdk, name, history, params)
        return
    err.print(f"chatting with [bold]{name}[/bold]: /reset forgets, /exit or Ctrl-D leaves")
    while (line := _read()) is not None:
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            del history[1 if system else 0 :]
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            _reply(sdk, name, history, params)
        except (ModelplaneError, KeyboardInterrupt) as exc:
            history.pop()  # the turn did not happen: the next one is sent without it
            said = str(exc) if isinstance(exc, ModelplaneError) else "interrupted"
            err.print(f"[bold red]error:[/bold red] {escape(said)}", markup=True, highlight=False)


def _reply(sdk: Any, name: str, history: list[dict[str, str]], params: dict[str, Any]) -> None:
    """Stream one reply to stdout and add it to the conversation."""
    parts: list[str] = []
    stream = sdk.chat(name, history, stream=True, **params)
    try:
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
            parts.append(delta)
    finally:
        stream.close()  # on Ctrl-C too: the connection closes and the server stops generating
        if parts:
            sys.stdout.write("\n")
            sys.stdout.flush()
    history.append({"role": "assistant", "content": "".join(parts)})


def _read() -> str | None:
    try:
        return input(PROMPT if sys.stdin.isatty() else "")
    except EOFError:
        return None
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return None
