"""docs/cli.md is the options table of the real command line; `mdpr --help` lists every subcommand."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.cli.reference import options_table

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ["demo", "prepare", "train", "evaluate", "extract", "query", "visualize-attention", "export", "list",
               "index", "store"]


def test_docs_cli_md_is_the_generated_table() -> None:
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == options_table(), (
        "docs/cli.md is out of date: run `python -m mdpr.cli.reference > docs/cli.md`")


def test_one_vocabulary_of_options() -> None:
    table = options_table()
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `--")}
    for name in ("--weights", "--output", "--json", "--device", "--threads", "--workers"):
        assert name in rows, name
    assert "-w" in rows["--weights"] and "-o" in rows["--output"]
    for old in ("--out", "--save", "--save-features", "--num-workers", "--onnx"):
        assert old not in rows, f"{old} should be a hidden alias"


def test_help_lists_every_subcommand_by_name() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout, name


def test_help_shows_no_internal_type_names() -> None:
    runner = CliRunner()
    commands = [[c] for c in SUBCOMMANDS if c not in ("index", "store")]
    commands += [["index", "build"], ["index", "info"], ["store", "compact"], ["store", "export"]]
    for args in commands:
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, args
        for internal in ("<bool>", "<list[", "<str>", "<int", "<path>", "<float"):
            assert internal not in result.stdout, (args, internal)
        usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
        assert "{" not in usage, usage


def test_device_offers_the_same_choices_in_every_command() -> None:
    import typer

    from mdpr.cli.app import DEVICE_HELP
    from mdpr.cli.reference import _commands

    with_device = {}
    for name, cmd in _commands(typer.main.get_command(app)):
        for param in cmd.params:
            if "--device" in getattr(param, "opts", ()):
                with_device[name] = param.help
    assert {"demo", "train", "evaluate", "extract", "query", "visualize-attention", "export"} <= set(with_device)
    for name, text in with_device.items():
        assert text.endswith(DEVICE_HELP), (name, text)  # mps included, train too
