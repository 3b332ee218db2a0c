"""Export formats and input conventions: every combination passes the parity check at batches 1, 7 and 32,
records what it expects in its own metadata, and the boxmot target writes boxmot's contract."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from storekit import TINY_DIM, tiny_checkpoint
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.errors import MdprError

pytest.importorskip("onnxruntime")
runner = CliRunner()
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (extra mdpr[openvino])")

CASES = [
    ("onnx", "raw255", "m.onnx"),
    ("onnx", "imagenet", "m.onnx"),
    ("torchscript", "raw255", "m.torchscript"),
    ("torchscript", "imagenet", "m.torchscript"),
    pytest.param("openvino", "raw255", "m_openvino_model", marks=needs_openvino),
    pytest.param("openvino", "imagenet", "m_openvino_model", marks=needs_openvino),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.mark.parametrize("fmt, convention, name", CASES)
def test_every_format_and_convention_passes_parity(tmp_path: Path, ckpt: Path, fmt: str, convention: str,
                                                   name: str, one_torch_thread: None) -> None:
    from mdpr.export import export_model, read_export_metadata

    report = export_model(ckpt, tmp_path / name, format=fmt, input_convention=convention)
    assert report.passed
    assert [b.batch for b in report.parity[0].batches] == [1, 7, 32]
    assert report.min_cosine >= 0.99999 and report.max_abs_diff_overall < 1e-3
    meta = read_export_metadata(tmp_path / name)
    assert (meta.format, meta.input_convention, meta.precision) == (fmt, convention, "fp32")
    assert meta.input_size == (64, 32) and meta.feature_dim == TINY_DIM
    assert meta.model_config["model"]["depth"] == 18


def test_imagenet_graph_takes_imagenet_pixels(tmp_path: Path, ckpt: Path, one_torch_thread: None) -> None:
    """Independent of the parity helper: feed the same crop as 0..255 to torch and as ImageNet-normalised to ONNX."""
    import onnxruntime as ort

    from mdpr.export import export_model
    from mdpr.model import load_model

    export_model(ckpt, tmp_path / "i.onnx", input_convention="imagenet", batch_sizes=(2,))
    model, _ = load_model(ckpt)
    pixels = torch.randint(0, 256, (3, 3, 64, 32)).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    session = ort.InferenceSession(str(tmp_path / "i.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": ((pixels / 255 - mean) / std).numpy()})[0]
    with torch.inference_mode():
        ref = model(pixels).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_boxmot_target_contract(tmp_path: Path, ckpt: Path, one_torch_thread: None) -> None:
    import onnx

    out = tmp_path / "mdpr_reid.onnx"
    result = runner.invoke(app, ["export", "-w", str(ckpt), "--target", "boxmot", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == "boxmot" and report["input_convention"] == "imagenet" and report["passed"]
    graph = onnx.load(str(out)).graph
    (inp,), (outp,) = graph.input, graph.output
    assert inp.name == "images" and outp.name == "output"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 32]
    assert [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim] == ["batch", TINY_DIM]
    assert 11 <= report["opset"] <= 20
    sidecar = json.loads((tmp_path / "mdpr_reid.onnx.metadata.json").read_text())
    assert sidecar["img_size"] == [64, 32] and sidecar["preprocess"] == "resize"
    assert sidecar["model_name"] == "mdpr" and sidecar["input_name"] == "images"
    assert sidecar["output_names"] == ["output"] and sidecar["dynamic_batch"] is True
    if HAS_OPENVINO:
        folder = tmp_path / "mdpr_reid_openvino_model"
        assert (folder / "mdpr_reid.xml").is_file() and (folder / "mdpr_reid.bin").is_file()
        assert json.loads((folder / "manifest.json").read_text())["format"] == "openvino"
        assert [p["backend"] for p in report["parity"]] == ["onnxruntime", "openvino"]
        assert str(folder) in report["written"]


def test_boxmot_target_refuses_conflicting_options(tmp_path: Path, ckpt: Path) -> None:
    for extra, message in ((["--input", "raw255"], "--input"), (["--format", "torchscript"], "ONNX file")):
        result = runner.invoke(app, ["export", "-w", str(ckpt), "--target", "boxmot", "-o", str(tmp_path / "b.onnx"), *extra])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "-o", "m.pt"], "must end in .onnx"),
    (["--format", "openvino", "-o", "m"], "_openvino_model"),
    (["--format", "torchscript", "-o", "m.onnx"], ".torchscript"),
    (["--onnx", "a.onnx", "--output", "b.onnx"], "only one of --onnx and --output"),
    (["--onnx", "a.onnx", "--format", "torchscript"], "cannot be combined"),
    ([], "--output PATH"),
])
def test_bad_export_options(tmp_path: Path, ckpt: Path, args: list, message: str) -> None:
    args = [str(tmp_path / a) if a.endswith((".pt", ".onnx")) or a == "m" else a for a in args]
    result = runner.invoke(app, ["export", "-w", str(ckpt), *args])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_missing_runtime_names_the_extra(tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mdpr.export import export_model

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MdprError, match=r'pip install "mdpr\[onnx\]"'):
        export_model(ckpt, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MdprError, match=r'pip install "mdpr\[openvino\]"'):
        export_model(ckpt, tmp_path / "m_openvino_model", format="openvino")


def test_boxmot_target_without_openvino_says_so(tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch,
                                                one_torch_thread: None) -> None:
    from mdpr.export import export_model

    monkeypatch.setitem(sys.modules, "openvino", None)
    report = export_model(ckpt, tmp_path / "b.onnx", target="boxmot", batch_sizes=(1,))
    assert report.passed and not (tmp_path / "b_openvino_model").exists()
    assert any("mdpr[openvino]" in n for n in report.notes)


def test_file_without_mdpr_metadata_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from mdpr.export import read_export_metadata

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(MdprError, match="not written by `mdpr export`"):
        read_export_metadata(tmp_path / "other.onnx")


def test_export_runs_on_the_requested_threads_and_restores_the_callers(tmp_path: Path, monkeypatch) -> None:
    import mdpr.workflows.export as workflow

    seen = []

    class Report:
        notes: list = []

    def export_model(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return Report()

    monkeypatch.setattr(workflow, "export_model", export_model)
    weights = tiny_checkpoint(tmp_path / "tiny.pt")
    before = torch.get_num_threads()
    workflow.run_export(workflow.ExportRequest(weights=weights, output=tmp_path / "m.onnx", threads=1))
    assert seen == [1] and torch.get_num_threads() == before
