from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import build_cuhk03_config, cuhk03_images, write_mat_v5

from mdpr.data.datasets.matv5 import MatFileError, load_mat_v5


def test_reads_a_file_written_by_scipy(data_dir: Path) -> None:
    # tests/data/matv5_scipy_reference.mat was written once by scipy.io.savemat (compressed), an
    # independent writer of the format MATLAB uses for the CUHK03 new-protocol config files
    mat = load_mat_v5(data_dir / "matv5_scipy_reference.mat")
    assert [str(x) for x in mat["filelist"].ravel()] == [
        "1_001_1_01.png",
        "1_001_2_06.png",
        "1_002_1_01.png",
        "1_002_2_07.png",
        "2_001_1_03.png",
        "2_001_2_10.png",
    ]
    assert mat["labels"].shape == (6, 1) and mat["labels"].ravel().tolist() == [1, 1, 2, 2, 7, 7]
    assert mat["camId"].dtype == np.uint8 and mat["camId"].ravel().tolist() == [1, 2, 1, 2, 1, 2]
    assert mat["train_idx"].dtype == np.int32 and mat["train_idx"].ravel().tolist() == [1, 2]
    assert mat["query_idx"].ravel().tolist() == [3, 5] and mat["gallery_idx"].ravel().tolist() == [4, 6]
    assert mat["note"] == "written by scipy.io.savemat"


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("big_endian", [False, True])
def test_matlab_style_storage(tmp_path: Path, compress: bool, big_endian: bool) -> None:
    path = tmp_path / "cfg.mat"
    written = build_cuhk03_config(path, cuhk03_images(), [1, 2], compress=compress, big_endian=big_endian)
    read = load_mat_v5(path)
    for key in ("labels", "camId", "train_idx", "query_idx", "gallery_idx"):
        assert read[key].dtype == np.float64 and np.array_equal(read[key], written[key]), key
    assert [str(x) for x in read["filelist"].ravel()] == [str(x) for x in written["filelist"].ravel()]


def test_char_matrix_and_non_integer_doubles(tmp_path: Path) -> None:
    path = tmp_path / "x.mat"
    write_mat_v5(path, {"s": "abc", "v": np.array([[0.5, -2.0]]), "u": np.array([[1, 2]], dtype=np.uint8)})
    read = load_mat_v5(path)
    assert read["s"] == "abc" and read["v"].tolist() == [[0.5, -2.0]] and read["u"].tolist() == [[1, 2]]


def test_rejects_non_mat_and_hdf5(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"hello" * 40)
    with pytest.raises(MatFileError):
        load_mat_v5(bad)
    import h5py

    h5 = tmp_path / "v73.mat"
    with h5py.File(h5, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(MatFileError, match="v7.3"):
        load_mat_v5(h5)
