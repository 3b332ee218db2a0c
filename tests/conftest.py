"""Shared fixtures: every test gets its own MDPR_HOME so that registrations never leak."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def mdpr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("mdpr-home")
    monkeypatch.setenv("MDPR_HOME", str(home))
    return home


@pytest.fixture
def data_dir() -> Path:
    return DATA_DIR
