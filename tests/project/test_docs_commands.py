"""Every `mdpr` command shown in README.md and docs/ works, so the docs cannot rot.

* Every `mdpr ...` line of every fenced block (bash, sh, console or text) must parse: the subcommand exists,
  every option is one of its options, required arguments are there.
* Every command of a runnable block (bash, sh, console) is executed, file by file in the order a reader meets
  them, in one sandbox (working directory, HOME and MDPR_HOME) as one reader following the docs, on tiny
  settings: the demo dataset is made small, and new training runs get a tiny input size and one epoch unless
  the doc sets the epochs. Commands that need hardware this machine lacks (`--gpus N`) must fail with one clear
  sentence instead. The README's `mdpr demo` leaves the trained model the later docs use.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import typer
from typer.testing import CliRunner

from mdpr.cli import app

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = {"bash", "sh", "console", "shell"}
runner = CliRunner()

#: the order a reader meets the docs; files not listed run afterwards in name order
ORDER = ["README.md", "docs/getting-started.md", "docs/prepare.md", "docs/datasets.md", "docs/training.md",
         "docs/evaluate.md", "docs/extract.md", "docs/feature-store.md", "docs/query.md",
         "docs/visualize-attention.md", "docs/export.md", "docs/model.md"]

TINY_DATA = {"--ids": "8", "--images-per-id": "4"}
TINY_SETS = ["input.size_train=[64,32]", "input.size_test=[64,32]", "model.embedding_dim=16",
             "dataloader.batch_size=8"]


@dataclass
class DocCommand:
    file: str
    line: int
    text: str  # the command as written, continuation lines joined
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_files() -> List[str]:
    files = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
    return sorted(files, key=lambda f: (ORDER.index(f) if f in ORDER else len(ORDER), f))


def doc_commands(file: str) -> List[DocCommand]:
    commands: List[DocCommand] = []
    lang = None
    pending, start = "", 0
    for number, raw in enumerate((ROOT / file).read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", raw)
        if fence:
            lang = None if lang is not None else (fence.group(1) or "text")
            continue
        if lang is None:
            continue
        line = raw.strip()
        if pending:
            pending += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(DocCommand(file, start, pending, lang in RUNNABLE))
                pending = ""
            continue
        line = line[2:] if line.startswith("$ ") else line
        if line.startswith("mdpr ") or line == "mdpr":
            if line.endswith("\\"):
                pending, start = line.rstrip("\\").strip(), number
            else:
                commands.append(DocCommand(file, number, line, lang in RUNNABLE))
    return commands


ALL = [c for f in doc_files() for c in doc_commands(f)]


def _is_synopsis(text: str) -> bool:
    # "mdpr extract --images DIR | --dataset NAME [--split ...]" describes the syntax, it is not a command
    return bool(re.search(r"\[|\||\.\.\.|\bDIR\b|\bCKPT\b|\bNAME\b|\bROOT\b|\bDATASET\b|\bPROBE\b|\bIMAGE\b", text))


def _placeholder_args(text: str) -> List[str]:
    import shlex

    text = re.sub(r"\$\([^)]*\)", "probe.jpg", text)
    return shlex.split(text)[1:]


def test_docs_show_commands() -> None:
    files = {c.file for c in ALL}
    assert "README.md" in files and len([c for c in ALL if c.runnable]) >= 20


@pytest.mark.parametrize("cmd", [c for c in ALL if not _is_synopsis(c.text)], ids=lambda c: f"{c.file}:{c.line}")
def test_every_doc_command_parses(cmd: DocCommand) -> None:
    """Subcommand and options exist and the arguments fit (nothing is executed)."""
    group = typer.main.get_command(app)
    args = _placeholder_args(cmd.text)
    if not args:
        return
    ctx = typer.Context(group, info_name="mdpr")
    sub = group.get_command(ctx, args[0])
    assert sub is not None, f"{cmd.where}\n  unknown subcommand {args[0]!r}"
    try:
        sub.make_context(args[0], list(args[1:]), parent=ctx)
    except Exception as exc:  # usage errors (unknown option, missing argument, bad choice)
        pytest.fail(f"{cmd.where}\n  does not parse: {exc}")


# ------------------------------------------------------------------------------------------------ execution
def _expand(text: str, cwd: Path, env: Dict[str, str]) -> List[str]:
    """Shell word expansion of the command's arguments ($(...), globs, ~, quotes), as a reader's shell does."""
    out = subprocess.run(["bash", "-c", f"set -- {text[len('mdpr'):]}; printf '%s\\0' \"$@\""], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split("\0")[:-1]]


def _option_value(args: List[str], option: str) -> Tuple[int, str]:
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            return i, args[i + 1]
        if a.startswith(option + "="):
            return i, a.split("=", 1)[1]
    return -1, ""


def _tiny(args: List[str]) -> List[str]:
    """Tiny settings: a small demo dataset, small images, one epoch unless the doc chooses the epochs."""
    args = list(args)
    sub = args[0] if args else ""
    if (sub == "prepare" and args[1:2] == ["demo"]) or sub == "demo":
        for option, value in TINY_DATA.items():
            i, _ = _option_value(args, option)
            if i >= 0:
                args[i + 1] = value
            else:
                args += [option, value]
    if sub in ("train", "demo") and "--resume" not in args:
        for item in TINY_SETS:
            args += ["--set", item]
        if "--epochs" not in args:
            args += ["--epochs", "1"]
    if sub == "demo" and "--device" not in args:
        args += ["--device", "cpu"]
    return args


def _needs_gpus(args: List[str]) -> int:
    i, value = _option_value(args, "--gpus")
    return int(value) if i >= 0 and value.isdigit() else 0


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """One working directory, HOME and MDPR_HOME shared by all docs, as one reader following them in order."""
    base = tmp_path_factory.mktemp("docs-walkthrough")
    paths = {"work": base / "work", "home": base / "home", "mdpr_home": base / "mdpr-home"}
    for p in paths.values():
        p.mkdir()
    return paths


def _runnable_files() -> List[str]:
    return [f for f in doc_files() if any(c.runnable for c in doc_commands(f))]


@pytest.mark.slow
@pytest.mark.parametrize("file", _runnable_files())
def test_doc_commands_run(file: str, walkthrough: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = walkthrough["work"]
    env = dict(os.environ, HOME=str(walkthrough["home"]), MDPR_HOME=str(walkthrough["mdpr_home"]))
    monkeypatch.setenv("HOME", env["HOME"])
    monkeypatch.setenv("MDPR_HOME", env["MDPR_HOME"])
    monkeypatch.chdir(sandbox)
    for cmd in [c for c in doc_commands(file) if c.runnable]:
        args = _tiny(_expand(cmd.text, sandbox, env))
        code, stderr, output = _run(args, sandbox, env)
        gpus = _needs_gpus(args)
        if gpus > torch.cuda.device_count():
            assert code == 2 and "GPU" in stderr, f"{cmd.where}\n{output}"
            continue
        assert code == 0, f"{cmd.where}\n  ran as: mdpr {' '.join(args)}\n{output}"


def _own_process(args: List[str]) -> bool:
    """Commands that load ONNX Runtime / OpenVINO or start processes run as a reader's shell runs them, in a
    process of their own (those runtimes bring native thread pools and signal handlers); the others run in this
    process through the same typer app, which saves a Python and torch start-up (seconds) per command."""
    torchscript = args[:1] == ["export"] and _option_value(args, "--format")[1] == "torchscript"
    return (args[:1] == ["export"] and not torchscript) or any(a in args for a in ("--backend", "--procs", "--gpus"))


def _run(args: List[str], cwd: Path, env: Dict[str, str]) -> Tuple[int, str, str]:
    """(exit status, stderr, everything printed) of ``mdpr ARGS``."""
    if _own_process(args):
        done = subprocess.run([sys.executable, "-m", "mdpr", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=900)
        return done.returncode, done.stderr, done.stdout + done.stderr
    result = runner.invoke(app, args)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        output += "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stderr, output
