"""Helpers of the robustness suite (tests/robustness): run the real CLI, assert "one sentence, no traceback"."""

from __future__ import annotations

from typing import Any, List

from typer.testing import CliRunner

from mdpr.cli import app

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_sentence(result: Any, *expected: str) -> str:
    """A refused command: non-zero exit, no traceback, exactly one line on stderr (the ``Error:`` sentence)."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines: List[str] = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Note:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]
