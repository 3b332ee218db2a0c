"""The typer application and the conventions every subcommand shares.

Subcommand modules import ``command`` from here; heavy libraries (torch, h5py) are imported
inside the command functions so that ``mdpr --help`` stays instant.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
import traceback
from enum import Enum
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar

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

def _is_terminal(stderr: bool) -> bool:
    """Whether stderr (or stdout) is a terminal, at the time of the call (CliRunner swaps the streams)."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _console(stderr: bool) -> Console:
    """Rich consoles that wrap at the terminal's width, and not at all (no 80-column folding of paths and
    messages) when the output is a file, a pipe or a CI log."""
    if _is_terminal(stderr):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True)


def _readable_type(label: Optional[str]) -> Optional[str]:
    """typer 0.2x shows its internal type names (``<bool>``, ``<list[Path]>``, ``<int range>``); show what a user
    types instead: nothing for flags, PATH, INTEGER, NUMBER, TEXT, choices as ``a|b``, lists with ``...``."""
    if not label:
        return label
    text = label[1:-1] if label.startswith("<") and label.endswith(">") else label
    words = {"bool": "", "path": "PATH", "Path": "PATH", "file": "FILE", "directory": "DIR", "int": "INTEGER",
             "int range": "INTEGER", "float": "NUMBER", "float range": "NUMBER", "str": "TEXT"}
    if text.startswith("list[") and text.endswith("]"):
        inner = _readable_type(text[5:-1]) or "VALUE"
        return inner + "..."
    if "," in text:
        return ",".join(words.get(part, part) for part in text.split(","))
    return words.get(text, text)


def _patch_typer_help() -> None:
    """Readable types and usage in every --help (typer's own rendering otherwise; best effort across versions)."""
    try:
        from typer import core
    except ImportError:  # pragma: no cover - very old typer
        return
    for cls_name in ("TyperOption", "TyperArgument"):
        cls = getattr(core, cls_name, None)
        original = getattr(cls, "display_type_rich", None)
        if cls is None or original is None or getattr(original, "_mdpr", False):
            continue

        def display_type_rich(self: Any, ctx: Any, _original: Any = original) -> Optional[str]:
            if getattr(self, "is_flag", False) and not getattr(self, "metavar", None):
                return ""
            return _readable_type(_original(self, ctx))

        display_type_rich._mdpr = True  # type: ignore[attr-defined]
        cls.display_type_rich = display_type_rich
    argument = getattr(core, "TyperArgument", None)
    usage = getattr(argument, "_usage_display_name", None)
    if argument is not None and usage is not None and not getattr(usage, "_mdpr", False):

        def usage_display_name(self: Any) -> str:
            name = str(self.display_name_raw).upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        usage_display_name._mdpr = True  # type: ignore[attr-defined]
        argument._usage_display_name = usage_display_name


_patch_typer_help()


def _one_line_usage_errors() -> None:
    """typer prints a usage error as a usage line, a hint and a framed panel; print it as one sentence on stderr
    (``Error: Invalid value for '--top-k': ...; see `mdpr query --help`.``), as every other mdpr error."""
    try:
        from typer import rich_utils
    except ImportError:  # pragma: no cover - typer without rich
        return
    if getattr(rich_utils.rich_format_error, "_mdpr", False):
        return

    def rich_format_error(self: Any) -> None:
        if self.__class__.__name__ == "NoArgsIsHelpError":
            return
        ctx = getattr(self, "ctx", None)
        message = " ".join(str(self.format_message()).split()).rstrip(".")
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        err_console.print(f"[bold red]Error:[/] {escape(message + hint)}.", highlight=False, soft_wrap=True)

    rich_format_error._mdpr = True  # type: ignore[attr-defined]
    rich_utils.rich_format_error = rich_format_error


_one_line_usage_errors()

#: --help's width when stdout is a file, a pipe or a CI log (typer would fold it at 80 columns).
PIPED_HELP_WIDTH = 240


def _wide_help_when_piped() -> None:
    """--help wraps at the terminal's width, and at :data:`PIPED_HELP_WIDTH` when stdout is not a terminal
    (unless the user chose a width with TERMINAL_WIDTH or COLUMNS)."""
    try:
        from typer import rich_utils
    except ImportError:  # pragma: no cover - typer without rich
        return
    original = rich_utils._get_rich_console
    if getattr(original, "_mdpr", False):
        return

    def get_rich_console(stderr: bool = False) -> Console:
        console = original(stderr)
        if not _is_terminal(stderr) and not (os.environ.get("TERMINAL_WIDTH") or os.environ.get("COLUMNS")):
            console.width = PIPED_HELP_WIDTH
        return console

    get_rich_console._mdpr = True  # type: ignore[attr-defined]
    rich_utils._get_rich_console = get_rich_console


_wide_help_when_piped()

console = _console(stderr=False)
err_console = _console(stderr=True)

class Backend(str, Enum):
    """Inference backends of --backend (extract, query, evaluate)."""

    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


#: The choices of --device, the same in every command (mdpr.runtime.resolve_device).
DEVICE_HELP = "auto (cuda when available, else mps, else cpu), cpu, cuda, cuda:N or mps."
#: --threads, the same in every command that runs the model (mdpr.runtime.choose_cpu_threads).
THREADS_HELP = "CPU threads for the model (default: one per core; one when the machine is already busy)."

BACKEND_HELP = ("torch (default for a checkpoint), onnxruntime or openvino (exports the checkpoint once into a cache; "
                "extras mdpr\\[onnx], mdpr\\[openvino]).")

#: Exit status for a user error (bad input); typer's own usage errors also exit with 2.
USER_ERROR = 2


def one_line(message: str) -> str:
    """The message with every character that is not printable (line breaks included: ``\\n``, ``\\x85``, the
    surrogate escapes of undecodable file names) shown as its escape, so that it stays one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def fail(message: str) -> None:
    """Print one red sentence on stderr and exit with the user-error status."""
    message = one_line(message)
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


#: Bounds of every numeric option, by flag (a command's own ``min=``/``max=`` wins): checked by the parser, before
#: any work, thread or process starts, and shown in --help. Upper bounds are far above any useful value; they keep
#: a typo (``--threads 100000``, ``--batch-size 99999999999999999999``) from reaching a library that crashes on it.
OPTION_BOUNDS: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "--threads": (1, 1024), "--workers": (0, 256), "--num-workers": (0, 256), "--batch-size": (1, 65536),
    "--top-k": (1, 100_000), "--rerank-pool": (1, 100_000), "--k1": (1, 1000), "--k2": (1, 1000),
    "--lambda": (0.0, 1.0), "--aqe-k": (1, 1000), "--aqe-alpha": (0.0, 100.0), "--seed": (0, 2**32 - 1),
    "--max-rank": (1, 100_000), "--opset": (11, 20), "--calibration-images": (1, 100_000),
    "--max-map-drop": (0.0, 100.0), "--checkpoint-every": (0.0, 7 * 24 * 3600.0), "--recall": (0.0, 1.0),
    "--nlist": (1, 1 << 20), "--m": (1, 4096), "--nbits": (1, 16), "--hnsw-m": (2, 512),
    "--ef-construction": (1, 1 << 16), "--shards": (1, 1024), "--rows-per-file": (1, 1 << 26),
    "--ids": (2, 100_000), "--images-per-id": (2, 10_000), "--cameras": (1, 100), "--gpus": (1, 1024),
    "--procs": (1, 1024), "--epochs": (1, 100_000), "--eval-period": (-1, 100_000),
    "--checkpoint-period": (0, 100_000), "--height": (16, 4096),
}


def _bound_options(fn: Callable[..., Any]) -> None:
    """Give every numeric option of ``fn`` its :data:`OPTION_BOUNDS` (typer turns them into checked ranges)."""
    for parameter in inspect.signature(fn).parameters.values():
        info = parameter.default
        decls = getattr(info, "param_decls", None)
        if not decls or not hasattr(info, "min"):
            continue
        annotation = str(parameter.annotation)
        if "int" not in annotation and "float" not in annotation:
            continue
        for decl in decls:
            if decl in OPTION_BOUNDS:
                low, high = OPTION_BOUNDS[decl]
                if info.min is None:
                    info.min = low
                if info.max is None:
                    info.max = high
                break


def command(name: str, flags: Optional[Dict[str, str]] = None, app_: Optional[typer.Typer] = None,
            resumable: bool = False, **kwargs: Any) -> Callable[[F], F]:
    """Register a subcommand whose ``MdprError`` becomes one clear sentence and exit status 2.

    ``flags`` maps the argument names a library message may use to this command's flags.
    ``app_`` registers on a sub-application (``mdpr index build``) instead of the root.
    ``resumable``: the same command line, run again after Ctrl-C, continues where it stopped (the interrupt
    message says so only then).
    """
    interrupted = ("[yellow]Interrupted.[/] Run the same command again to continue where it stopped." if resumable
                   else "[yellow]Interrupted.[/] Nothing written before was changed; run the same command again to "
                        "start over.")

    def decorate(fn: F) -> F:
        _bound_options(fn)

        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except MdprError as exc:
                if debug_enabled():
                    traceback.print_exc()
                fail(in_flag_terms(str(exc), flags, exc.keys))
            except OSError as exc:  # a read-only folder, a full disk... met while working: one sentence, the path
                from mdpr.fileio import USER_OS_ERRORS, os_error_sentence

                if exc.filename is None and exc.errno not in USER_OS_ERRORS:
                    raise  # not about the user's files: a bug, keep its traceback
                if debug_enabled():
                    traceback.print_exc()
                fail(os_error_sentence(exc))
            except KeyboardInterrupt:
                err_console.print(interrupted, highlight=False)
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
