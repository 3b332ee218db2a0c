"""Fixtures of the robustness suite: a tiny checkpoint and a folder of crops, made once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from storekit import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt")


@pytest.fixture(scope="session")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from storekit import make_crops

    folder = tmp_path_factory.mktemp("crops")
    make_crops(folder, 8)
    return folder
