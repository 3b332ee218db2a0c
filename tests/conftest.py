"""Shared fixtures: every test gets its own MDPR_HOME (registrations, runs, stores) and its own torch hub cache
(backbone initialisation files), so that nothing leaks between tests or from the user's machine."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The home of module- and session-scoped fixtures, which pytest sets up before the per-test home below:
    without it they would register their stores and runs in the user's real MDPR_HOME."""
    home = tmp_path_factory.mktemp("mdpr-session-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MDPR_HOME", str(home))
        patch.setenv("TORCH_HOME", str(home / "torch"))
        _offline(patch)
        yield home


@pytest.fixture(autouse=True)
def mdpr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("mdpr-home")
    monkeypatch.setenv("MDPR_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    _offline(monkeypatch)
    return home


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never download: the backbone-file downloader behaves as on a machine without network."""
    import urllib.error

    from mdpr.model import zoo

    def offline(url: str, destination: Path) -> None:
        raise urllib.error.URLError(OSError(101, "Network is unreachable (tests run offline)"))

    monkeypatch.setattr(zoo, "default_downloader", offline)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny tensors: a second OpenMP thread gains nothing there, and on
    busy shared cores threads waiting for each other make tiny convolutions many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def data_dir() -> Path:
    return DATA_DIR
