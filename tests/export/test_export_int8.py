"""INT8 export: calibrated static quantisation, accuracy measured on a labelled dataset, refused beyond the limit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from storekit import TINY_DIM, make_crops, tiny_checkpoint
from trainkit import make_dataset
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.errors import MdprError

pytest.importorskip("onnxruntime")
runner = CliRunner()


@pytest.fixture
def setup(tmp_path: Path, one_torch_thread: None):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    make_dataset(tmp_path / "data", name="tiny", size=(32, 64))
    make_crops(tmp_path / "calib", 12, size=(64, 32))
    return ckpt, tmp_path / "calib"


def test_int8_export_reports_the_map_change(setup, tmp_path: Path) -> None:
    from mdpr import FeatureExtractor
    from mdpr.export import read_export_metadata

    ckpt, calib = setup
    out = tmp_path / "m-int8.onnx"
    result = runner.invoke(app, ["export", "-w", str(ckpt), "-o", str(out), "--int8", "--calibrate", str(calib),
                                 "--dataset", "tiny", "--max-map-drop", "100", "--batch-sizes", "1,7", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    int8 = report["int8"]
    assert report["precision"] == "int8" and int8["calibration_images"] == 12 and int8["dataset"] == "tiny"
    assert 0 <= int8["fp32"]["mAP"] <= 1 and 0 <= int8["int8"]["mAP"] <= 1
    assert int8["map_drop_points"] == pytest.approx(100 * (int8["fp32"]["mAP"] - int8["int8"]["mAP"]))
    assert int8["min_cosine_to_fp32"] > 0.9
    assert read_export_metadata(out).precision == "int8"
    extractor = FeatureExtractor(out)
    assert (extractor.backend, extractor.precision, extractor.feature_dim) == ("onnxruntime", "int8", TINY_DIM)



def test_int8_beyond_the_limit_is_not_written_unless_forced(setup, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mdpr.workflows.export as workflow
    from mdpr.evaluation.pipeline import EvaluationResult

    def result(m: float) -> EvaluationResult:
        return EvaluationResult(m, m, m, m, m, [m], 4, 4, 0, 12, {"query": 0, "gallery": 0}, 0, "test", 0.0)

    def measured(summary, *args, **kwargs) -> None:  # an INT8 model 5 mAP points worse
        summary.fp32, summary.int8 = result(0.80), result(0.75)

    monkeypatch.setattr(workflow, "_measure", measured)
    ckpt, calib = setup
    out = tmp_path / "m-int8.onnx"
    request = workflow.ExportRequest(weights=ckpt, output=out, int8=True, calibrate=calib, dataset="tiny",
                                     batch_sizes=(1,))
    with pytest.raises(MdprError, match=r"loses 5\.00 mAP points .* more than the 1 allowed"):
        workflow.run_export(request)
    assert not out.exists() and not list(tmp_path.glob(".mdpr-int8-*"))
    # forced from the command line: written, and the table shows the cost (5 points)
    table = runner.invoke(app, ["export", "-w", str(ckpt), "-o", str(out), "--int8", "--calibrate", str(calib),
                                "--dataset", "tiny", "--batch-sizes", "1", "--force", "--threads", "1", "--workers", "0"])
    assert table.exit_code == 0, table.output
    assert out.is_file()
    assert "INT8 accuracy on tiny" in table.stdout and "change (points)" in table.stdout and "-5.00" in table.stdout


def test_int8_boxmot_target(setup, tmp_path: Path) -> None:
    ckpt, calib = setup
    out = tmp_path / "reid-int8.onnx"
    result = runner.invoke(app, ["export", "-w", str(ckpt), "--target", "boxmot", "-o", str(out), "--int8",
                                 "--calibrate", str(calib), "--force", "--batch-sizes", "1", "--json"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "reid-int8.onnx.metadata.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["input_name"] == "images"
    assert json.loads(result.stdout)["int8"]["fp32"] is None  # not measured: written because of --force


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_int8_openvino_format(setup, tmp_path: Path) -> None:
    from mdpr import FeatureExtractor

    ckpt, calib = setup
    out = tmp_path / "m_openvino_model"
    result = runner.invoke(app, ["export", "-w", str(ckpt), "--format", "openvino", "-o", str(out), "--int8",
                                 "--calibrate", str(calib), "--force", "--batch-sizes", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["backend"] for p in report["parity"]] == ["onnxruntime", "openvino"]
    assert report["parity"][1]["precision"] == "int8" and report["parity"][1]["passed"]
    extractor = FeatureExtractor(out)
    assert (extractor.backend, extractor.precision) == ("openvino", "int8")


@pytest.mark.parametrize("extra, message", [
    (["--calibrate", "EMPTY", "--force"], "holds no images"),
    (["--calibrate", "MISSING", "--force"], "does not exist"),
    (["--calibrate", "CALIB"], "--dataset"),
    ([], "calibration crops (--calibrate)"),
    (["--calibrate", "CALIB", "--force", "--format", "torchscript"], "not format torchscript"),
])
def test_int8_bad_input(setup, tmp_path: Path, extra: list, message: str) -> None:
    ckpt, calib = setup
    (tmp_path / "empty").mkdir()
    names = {"EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing"), "CALIB": str(calib)}
    suffix = ".torchscript" if "torchscript" in extra else ".onnx"
    args = ["export", "-w", str(ckpt), "-o", str(tmp_path / f"m{suffix}"), "--int8", *[names.get(a, a) for a in extra]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_calibration_and_dataset_need_int8(setup, tmp_path: Path) -> None:
    ckpt, calib = setup
    result = runner.invoke(app, ["export", "-w", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--calibrate", str(calib)])
    assert result.exit_code == 2 and "add --int8" in result.stderr


def test_calibration_crops_use_the_checkpoint_transform(setup) -> None:
    from mdpr.config import InputConfig
    from mdpr.export.quantize import calibration_batch

    _, calib = setup
    batch = calibration_batch(calib, InputConfig(size_test=(64, 32)), limit=5)
    assert batch.shape == (5, 3, 64, 32) and batch.dtype == np.float32 and batch.max() <= 255
