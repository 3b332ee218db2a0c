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


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "mdpr", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mdpr {__version__}"
