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
