"""The public Python API: every name mdpr exports resolves, and `import mdpr` stays light."""

from __future__ import annotations

import subprocess
import sys

import mdpr


def test_every_exported_name_resolves() -> None:
    for name in mdpr.__all__:
        assert getattr(mdpr, name) is not None, name


def test_import_mdpr_does_not_import_torch() -> None:
    code = "import sys, mdpr; assert 'torch' not in sys.modules and 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        mdpr.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_the_documented_pipeline_script_runs(tmp_path, monkeypatch) -> None:
    """docs/python-api.md's "whole pipeline in a script" block, executed as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "python-api.md").read_text(encoding="utf-8")
    section = text.split("## The whole pipeline in a script", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["metrics"].num_valid_queries > 0
    assert namespace["found"].probes[0].results[0]["rank"] == 1
