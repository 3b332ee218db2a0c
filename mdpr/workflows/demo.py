"""``mdpr demo``: the whole pipeline on built-in synthetic data, as the commands a user would type.

The workflow decides the steps (prepare, train, evaluate, extract, query) and their exact command lines;
the caller runs each command line (the CLI runs it through the real ``mdpr`` application, so every step
prints what that command prints) and gets back the metrics, the artefacts and the commands to repeat
each step by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from mdpr.data.records import mdpr_home
from mdpr.errors import MdprError
from mdpr.fileio import check_output_folder

#: ``run_step(index, title, argv)`` runs one ``mdpr`` command line (argv without the program name).
RunStep = Callable[[int, str, List[str]], None]


@dataclass
class DemoRequest:
    out: Path = Path("mdpr-demo")
    ids: int = 100
    images_per_id: int = 16
    epochs: Optional[int] = None
    device: str = "auto"
    name: str = "demo"
    overrides: List[str] = field(default_factory=list)
    threads: Optional[int] = None  #: CPU threads of every step that runs the model (default: each step's own)
    workers: Optional[int] = None  #: parallel image decoders of every step that decodes images


@dataclass
class DemoResult:
    metrics: Dict[str, Any]  #: the evaluation step's result (``EvaluationResult.to_dict``)
    artefacts: List[tuple]  #: (what, where)
    commands: List[List[str]]  #: each step as a user would type it (a fresh run, not the resume)
    seconds: float


def run_demo(request: DemoRequest, run_step: RunStep) -> DemoResult:
    """Prepare the demo data, train demo-cpu, evaluate, index the gallery and query one probe."""
    out = request.out
    if out.exists() and not out.is_dir():
        raise MdprError(f"out {out} is a file; pass a folder for the demo's artefacts.", keys=["out"])
    check_output_folder(out, "the demo's folder")
    check_output_folder(mdpr_home(), "MDPR_HOME")
    started = time.perf_counter()
    data, run = out / "data", out / "run"
    weights = run / "model.pt"
    store, picture, metrics_file = out / "gallery.h5", out / "ranked.png", out / "metrics.json"
    device = request.device

    prepare = ["prepare", "demo", str(data), "--name", request.name, "--ids", str(request.ids), "--images-per-id",
               str(request.images_per_id)]
    train = ["train", "--dataset", request.name, "--recipe", "demo-cpu", "--output", str(run), "--device", device]
    for item in request.overrides:
        train += ["--set", item]
    if request.epochs is not None:
        train += ["--epochs", str(request.epochs)]
    if (run / "last.pt").is_file():  # an interrupted (or finished) earlier demo: continue it rather than start over
        train_now = ["train", "--resume", str(run), "--device", device]
        if request.epochs is not None:
            train_now += ["--epochs", str(request.epochs)]
    else:
        train_now = train
        for stale in (store, picture, metrics_file):  # artefacts of an earlier model would not match the new one
            stale.unlink(missing_ok=True)
    evaluate = ["evaluate", "--dataset", request.name, "--weights", str(weights), "--device", device,
                "--save-metrics", str(metrics_file)]
    extract = ["extract", "--dataset", request.name, "--split", "gallery", "--weights", str(weights), "--output",
               str(store), "--device", device]

    run_step(1, "Prepare the synthetic dataset", prepare)
    probe = _first_query_image(request.name)
    query = ["query", str(probe), "--gallery", str(store), "--weights", str(weights), "--top-k", "5",
             "--output", str(picture), "--device", device]
    runtime = [*(["--threads", str(request.threads)] if request.threads is not None else []),
               *(["--workers", str(request.workers)] if request.workers is not None else [])]
    for step in [train, evaluate, extract, query] + ([train_now] if train_now is not train else []):
        step += runtime
    run_step(2, "Train (demo-cpu recipe)", train_now)
    run_step(3, "Evaluate on query/gallery", evaluate)
    run_step(4, "Index the gallery into an HDF5 feature store", extract)
    run_step(5, "Query one probe", query)

    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    artefacts = [("synthetic dataset (Market-1501 layout)", data),
                 ("training run: config, metrics.jsonl, training.png, checkpoints", run),
                 ("trained model", weights), ("evaluation metrics (JSON)", metrics_file),
                 ("gallery feature store (HDF5)", store), ("ranked list of the probe", picture)]
    return DemoResult(metrics, artefacts, [prepare, train, evaluate, extract, query], time.perf_counter() - started)


def _first_query_image(name: str) -> Path:
    from mdpr.data import load_dataset

    manifest = load_dataset(name)
    if not manifest.query:
        raise MdprError(f"The demo dataset '{name}' has no query images; re-run with more ids.", keys=["ids"])
    return manifest.image_path(manifest.query[0])
