"""The generated options table of docs/cli.md: one row per option, one column per command.

``python -m mdpr.cli.reference > docs/cli.md`` rewrites the page; a test rebuilds it from the real typer
application and compares, so the page cannot drift from the command line.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import typer

from mdpr.cli import app

HEADER = """# Command-line options

Generated from the `mdpr` command line by `python -m mdpr.cli.reference > docs/cli.md` (a test checks that
this page is current). One row per option, one column per command; a cell shows the option's short name
when it has one. `mdpr COMMAND --help` explains each option.

The same names mean the same thing everywhere: `-w/--weights` is the model to use, `-o/--output` the output
path, `--device`, `--threads` and `--workers` where images are decoded or a model runs, `--json` one JSON
object on stdout.
"""


def _commands(group: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    # typer builds click-style command objects (its own vendored click): use them by their duck type
    found: List[Tuple[str, Any]] = []
    ctx = group.context_class(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        full = f"{prefix}{name}"
        if hasattr(cmd, "list_commands"):
            found.extend(_commands(cmd, f"{full} "))
        else:
            found.append((full, cmd))
    return found


def options_table() -> str:
    """The Markdown page."""
    root: Any = typer.main.get_command(app)
    commands = _commands(root)
    rows: Dict[str, Dict[str, str]] = {}
    for name, cmd in commands:
        for param in cmd.params:
            if param.param_type_name != "option" or param.hidden or "--help" in param.opts:
                continue
            longs = [o for o in param.opts if o.startswith("--")]
            shorts = [o for o in param.opts if not o.startswith("--")]
            key = " / ".join(longs + list(param.secondary_opts))
            rows.setdefault(key, {})[name] = ", ".join(shorts) or "x"
    names = [name for name, _ in commands]
    lines = [HEADER, "| option | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for key in sorted(rows, key=lambda k: k.lstrip("-").lower()):
        cells = [rows[key].get(n, "") for n in names]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(options_table(), end="")
