"""Release readiness: `python -m build` gives a wheel and an sdist that install in a clean venv and work."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("build")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_wheel_and_sdist_install_and_run(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: build with this environment's setuptools, no download
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)])
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1

    names = zipfile.ZipFile(wheels[0]).namelist()
    for needed in ("mdpr/py.typed", "mdpr/recipes/demo-cpu.yaml", "mdpr/recipes/dukemtmc.yaml", "mdpr/cli/demo.py"):
        assert needed in names, needed
    assert not any(n.startswith("tests/") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheels[0]).read(meta).decode()
    for field in ("Requires-Python: >=3.9", "License", "Classifier: ", "Project-URL: ", "Requires-Dist: torch>=2.1"):
        assert field in metadata, field
    sdist_names = tarfile.open(sdists[0]).getnames()
    assert any(n.endswith("/README.md") for n in sdist_names) and any(n.endswith("/LICENSE") for n in sdist_names)

    # a clean venv: only the wheel is installed in it; the (heavy) dependencies come from this environment
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip runs from this environment (--python): no ensurepip, seconds saved
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    new_site = _run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(new_site, "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps", "--no-index",
          str(wheels[0])])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, MDPR_HOME=str(tmp_path / "home"))
    where = _run([str(bin_dir / "python"), "-c", "import mdpr; print(mdpr.__file__)"], cwd=work, env=env).stdout
    assert str(env_dir) in where, where  # the installed wheel, not the source tree
    help_text = _run([str(bin_dir / "mdpr"), "--help"], cwd=work, env=env).stdout
    for sub in ("demo", "prepare", "train", "evaluate", "extract", "query", "export"):
        assert sub in help_text
    demo = _run([str(bin_dir / "mdpr"), "demo", "--out", "demo", "--ids", "8", "--images-per-id", "4", "--epochs", "1",
                 "--device", "cpu", "--set", "input.size_train=[64,32]", "--set", "input.size_test=[64,32]",
                 "--set", "model.embedding_dim=16", "--set", "dataloader.batch_size=8"], cwd=work, env=env)
    assert "Demo finished" in demo.stdout
    assert (work / "demo" / "ranked.png").is_file()
