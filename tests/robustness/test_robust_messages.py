"""Class 9: messages point only at flags that exist and never at an unsafe workaround."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Set

import pytest
import typer

import mdpr
from mdpr.cli import app

PACKAGE = Path(mdpr.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: flags of other programs that messages quote in full commands
FOREIGN = {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--index-url", "--upgrade"}


def _real_flags() -> Set[str]:
    found: Set[str] = {"--help"}

    def walk(command: Any) -> None:
        for param in getattr(command, "params", []):
            found.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def _error_texts() -> Set[str]:
    """The literal parts of every MdprError(...) (and subclass) message in mdpr/, and the CLI's flag mappings."""
    texts: Set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ("MdprError", "NonFiniteLoss", "fail") and node.args:
                    for part in ast.walk(node.args[0]):
                        if isinstance(part, ast.Constant) and isinstance(part.value, str):
                            texts.add(part.value)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("_FLAGS", "FLAGS") for t in node.targets):
                value = ast.literal_eval(node.value) if isinstance(node.value, ast.Dict) else {}
                texts.update(str(v) for v in value.values())
    return texts


def test_every_flag_named_in_a_message_exists() -> None:
    real = _real_flags()
    texts = _error_texts()
    assert len(texts) > 200  # the walk found the messages
    named = {flag for text in texts for flag in FLAG.findall(text)}
    assert "--resume" in named and "--output" in named
    missing = sorted(named - real - FOREIGN)
    assert not missing, f"messages name flags no command has: {missing}"


def test_no_message_suggests_an_unsafe_workaround() -> None:
    for text in _error_texts():
        assert "weights_only=False" not in text and "--no-strict" not in text, text


def test_an_h5_file_as_weights_is_one_safe_sentence(tmp_path) -> None:
    import numpy as np
    from robustkit import cli, one_sentence

    from mdpr.store import StoreMeta, write_store

    store = write_store(tmp_path / "s.h5", StoreMeta(dim=4, fingerprint="x"), np.eye(4, dtype=np.float32)[:2],
                        ["a.jpg", "b.jpg"])
    line = one_sentence(cli("evaluate", "--dataset", "nosuch", "--weights", store))
    assert "weights_only" not in line
    bad = tmp_path / "pickle.pt"
    bad.write_bytes(b"\x80\x04\x95not a checkpoint")
    line = one_sentence(cli("export", "--weights", bad, "--output", tmp_path / "m.onnx"))
    assert "weights_only" not in line and "unsafe" not in line.lower()


def _bad_weights(kind: str, folder: Path, tiny_weights: Path) -> Path:
    import os

    import torch

    path = folder / f"{kind}.pt"
    if kind == "malicious":
        marker = folder / "payload-ran"

        class Payload:
            def __reduce__(self) -> Any:
                return (os.system, (f"touch {marker}",))

        torch.save({"model": Payload()}, path)
    elif kind == "other-architecture":
        import torchvision

        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    else:  # a download cut off half way
        path.write_bytes(tiny_weights.read_bytes()[: tiny_weights.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["malicious", "other-architecture", "truncated"])
@pytest.mark.parametrize("command", ["extract", "visualize-attention", "export"])
def test_bad_weights_are_one_sentence_that_suggests_nothing_unsafe(tiny_weights, crops, tmp_path, kind,
                                                                    command) -> None:
    from robustkit import cli, one_sentence

    weights = _bad_weights(kind, tmp_path, tiny_weights)
    probe = sorted(crops.rglob("*.jpg"))[0]
    args = {"extract": ["extract", "--images", crops, "--output", tmp_path / "o.h5"],
            "visualize-attention": ["visualize-attention", probe, "--output", tmp_path / "viz"],
            "export": ["export", "--output", tmp_path / "m.onnx"]}[command]
    line = one_sentence(cli(*args, "--weights", weights))
    for unsafe in ("weights_only=False", "--no-strict", "strict=False", "unsafe"):
        assert unsafe not in line, line
    assert not (tmp_path / "payload-ran").exists()
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "m.onnx").exists()
