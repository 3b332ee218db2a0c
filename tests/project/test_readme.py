"""README.md must give one install and one test command, and CI must run exactly those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section_command(readme: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}.*?```bash\n(.*?)```", readme, re.S | re.M)
    assert m, f"README.md has no '## {heading}' section with a bash block"
    lines = [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) == 1, f"'{heading}' must be one command, got {lines}"
    return lines[0]


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _section_command(readme, "Install") in ci_lines
    assert _section_command(readme, "Run the tests") in ci_lines


def test_readme_has_a_one_command_main_job() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _section_command(readme, "Run the main job").startswith("mdpr ")


def test_the_tour_names_only_real_subcommands_and_flags() -> None:
    """Each row of the README's tour starts with a command: its subcommand exists and so does every flag, and
    every subcommand has a row."""
    from typing import Any

    import typer.main

    from mdpr.cli import app

    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## Tour of the subcommands"):]
    rows = re.findall(r"^\| `(mdpr [^`]+)` \|", tour, re.M)
    root: Any = typer.main.get_command(app)
    assert {row.split()[1] for row in rows} == set(root.commands), "the tour names every subcommand once or more"
    for row in rows:
        words = row.split()[1:]
        command: Any = root
        while hasattr(command, "commands") and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        assert not hasattr(command, "commands"), f"`{row}`: no such subcommand"
        flags = {opt for param in command.params for opt in param.opts}
        for word in words:
            if word.startswith("--"):
                assert word in flags, f"`{row}`: {word} is not an option of this command"
