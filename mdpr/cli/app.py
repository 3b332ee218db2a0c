"""The typer application and the conventions every subcommand shares.

Subcommand modules import ``command`` from here; heavy libraries (torch, h5py) are imported
inside the command functions so that ``mdpr --help`` stays instant.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from typing import Any, Callable, Dict, Optional, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mdpr import __version__
from mdpr.errors import MdprError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="mdpr",
    help="Person re-identification with MDPR: prepare datasets, train, evaluate, index and search.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)

#: Exit status for a user error (bad input); typer's own usage errors also exit with 2.
USER_ERROR = 2


def fail(message: str) -> None:
    """Print one red sentence on stderr and exit with the user-error status."""
    # escape: messages quote user input and commands such as pip install "mdpr[onnx]", never rich markup
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(USER_ERROR)


def in_flag_terms(message: str, flags: Optional[Dict[str, str]], keys: Sequence[str] = ()) -> str:
    """Library messages name arguments and config keys (``top_k``); the CLI names its flags (``--top-k``).

    With ``keys`` (the names the message says it uses) only those are translated.
    """
    for key, flag in (flags or {}).items():
        if keys and key not in keys:
            continue
        message = re.sub(rf"(?<![\w.-]){re.escape(key)}(?![\w-])", flag, message)
    return message


def debug_enabled() -> bool:
    """``MDPR_DEBUG=1`` shows the traceback behind a user error (for bug reports)."""
    return os.environ.get("MDPR_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def command(name: str, flags: Optional[Dict[str, str]] = None, app_: Optional[typer.Typer] = None,
            **kwargs: Any) -> Callable[[F], F]:
    """Register a subcommand whose ``MdprError`` becomes one clear sentence and exit status 2.

    ``flags`` maps the argument names a library message may use to this command's flags.
    ``app_`` registers on a sub-application (``mdpr index build``) instead of the root.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except MdprError as exc:
                if debug_enabled():
                    traceback.print_exc()
                fail(in_flag_terms(str(exc), flags, exc.keys))
            except KeyboardInterrupt:
                err_console.print("[yellow]Interrupted.[/] Re-run the same command to continue where it stopped.")
                raise typer.Exit(130) from None

        (app_ or app).command(name, **kwargs)(guarded)
        return fn

    return decorate


def note_printer(flags: Optional[Dict[str, str]] = None, label: str = "Note") -> Callable[[str], None]:
    """A ``note(message)`` callback for workflows: one dim line on stderr, in this command's flag terms."""

    def note(message: str) -> None:
        err_console.print(f"[dim]{label}: {escape(in_flag_terms(message, flags))}[/]", highlight=False, soft_wrap=True)

    return note


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")
    sys.stdout.flush()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mdpr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Person re-identification with MDPR: prepare datasets, train, evaluate, index and search."""
