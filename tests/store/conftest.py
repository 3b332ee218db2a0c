"""Every store test runs on both layouts: one HDF5 file, and a master file over segment files."""

from __future__ import annotations

import pytest

import mdpr.store.hdf5
import mdpr.store.writer


@pytest.fixture(autouse=True, params=["single", "segments"])
def store_layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``single``: stores are written whole (the layout of earlier mdpr versions); ``segments``: write_store
    splits rows into segments of 3 and every StoreWriter fold adds a segment."""
    if request.param == "single":
        monkeypatch.setattr(mdpr.store.writer, "DEFAULT_LAYOUT", "single")
    else:
        monkeypatch.setattr(mdpr.store.writer, "DEFAULT_LAYOUT", "segments")
        monkeypatch.setattr(mdpr.store.hdf5, "DEFAULT_SEGMENT_ROWS", 3)
    return str(request.param)
