"""The suite never writes into the user's MDPR_HOME, not even from fixtures shared by a module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_home() -> str:
    return os.environ.get("MDPR_HOME", "")


def test_module_fixtures_get_a_temporary_home(module_home: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    assert module_home and Path(module_home).is_relative_to(base)
    assert Path(os.environ["MDPR_HOME"]).is_relative_to(base) and os.environ["MDPR_HOME"] != module_home
