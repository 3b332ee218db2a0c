from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from mdpr import __version__
from mdpr.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_piped_help_is_not_folded_at_80_columns(monkeypatch) -> None:
    """In a pipe, a log or CI each option's help stays on its row (typer would fold it at 80 columns)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    result = runner.invoke(app, ["query", "--help"])  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    for text in ("auto (a fresh faiss index beside the store, else exact search), exact, or the folder of an index.",
                 "extras mdpr[onnx], mdpr[openvino]).",  # brackets shown, not taken for rich markup
                 "Feature store written by `mdpr extract`; default: the most recently written store."):
        assert any(text in row for row in rows), text
    monkeypatch.setenv("COLUMNS", "80")  # a width the user chose still wins
    narrow = runner.invoke(app, ["query", "--help"]).stdout
    assert max(len(row) for row in narrow.splitlines()) <= 80


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "mdpr", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mdpr {__version__}"


def test_error_messages_keep_square_brackets() -> None:
    from mdpr.cli.app import command
    from mdpr.errors import MdprError

    @command("raise-brackets-for-test")
    def _raise() -> None:
        raise MdprError('install the extra: pip install "mdpr[onnx]".')

    try:
        result = runner.invoke(app, ["raise-brackets-for-test"])
    finally:  # keep the test's command out of the real CLI
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "raise-brackets-for-test"]
    assert result.exit_code == 2
    assert 'pip install "mdpr[onnx]"' in result.stderr
