"""``mdpr evaluate``: a model on a prepared dataset's query/gallery split, or two feature stores.

The same functions evaluate during training (:func:`evaluate_extractor`) and in the demo, so every
evaluation extracts, filters and scores the same way and returns one :class:`EvaluationResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from mdpr.errors import MdprError
from mdpr.evaluation.pipeline import EvaluationResult, LabelledFeatures, Note, Progress, Protocol, evaluate_features
from mdpr.fileio import atomic_write_json, check_output_file, check_output_folder

__all__ = [
    "EvaluateRequest",
    "EvaluationResult",
    "Protocol",
    "evaluate_extractor",
    "extract_labelled",
    "load_store_features",
    "run_evaluate",
]


@dataclass
class EvaluateRequest:
    """What to evaluate: ``dataset`` + ``weights``, or ``query_store`` + ``gallery_store``."""

    dataset: Optional[str] = None
    weights: Optional[Path] = None
    query_store: Optional[Path] = None
    gallery_store: Optional[Path] = None
    protocol: Protocol = field(default_factory=Protocol)
    flip: Optional[bool] = None  #: None: the checkpoint's ``train.eval_flip`` (as training evaluates)
    device: str = "auto"
    batch_size: Optional[int] = None  #: None: the checkpoint's ``dataloader.test_batch_size``
    num_workers: Optional[int] = None
    threads: Optional[int] = None
    backend: Optional[str] = None  #: torch, onnxruntime or openvino
    save_features: Optional[Path] = None  #: folder for query.h5 / gallery.h5
    save_metrics: Optional[Path] = None  #: JSON file with :meth:`EvaluationResult.to_dict`


def load_store_features(path: Path, name: str, note: Optional[Note] = None) -> LabelledFeatures:
    """Features and labels of a feature store written by ``mdpr extract`` (or ``save_features``); rows holding
    NaN or infinite features (written by another tool) are left out, and ``note`` says so."""
    from mdpr.store import FeatureStore

    with FeatureStore.open(path) as store:
        if len(store) == 0:
            raise MdprError(f"The {name} feature store {path} is empty; extract features into it first.")
        keep = np.ones(len(store), dtype=bool)
        bad = store.non_finite_rows()
        keep[bad] = False
        if len(bad):
            if not keep.any():
                raise MdprError(f"Every row of the {name} feature store {path} holds NaN or infinite features; "
                                "extract it again.")
            if note is not None:
                note(f"{len(bad)} row(s) of the {name} store {path} hold NaN or infinite features (e.g. row "
                     f"{int(bad[0])}) and are left out of the evaluation.")
        return LabelledFeatures(
            name=name,
            features=store.read_features(dtype=np.float32)[keep],
            pids=np.asarray(store.pids, dtype=np.int64)[keep],
            camids=np.asarray(store.camids, dtype=np.int64)[keep],
            source=str(path),
            fingerprint=store.fingerprint,
            flip=store.flip,
            normalized=store.normalized,
        )


def extract_labelled(extractor: Any, manifest: Any, split: str,
                     progress: Optional[Progress] = None) -> Tuple[LabelledFeatures, List[Any]]:
    """Embed one split of a prepared dataset; returns the features and the records of the readable images."""
    records = manifest.split(split)
    paths = [str(manifest.image_path(r)) for r in records]
    report = (lambda done, total: progress(f"extract:{split}", done, total)) if progress else None
    feats, ok, failed = extractor.extract_paths(paths, progress=report)
    ok = np.asarray(ok, dtype=np.int64)
    if ok.size == 0:
        raise MdprError(f"None of the {len(paths)} {split} images of '{manifest.name}' could be read; "
                        "check the dataset files.")
    kept = [records[i] for i in ok]
    side = LabelledFeatures(
        name=split,
        features=np.asarray(feats, dtype=np.float32),
        pids=np.asarray([r.pid for r in kept], dtype=np.int64),
        camids=np.asarray([r.camid for r in kept], dtype=np.int64),
        source=f"{manifest.name}/{split}",
        fingerprint=extractor.fingerprint if extractor.weights is not None else "",
        flip=extractor.flip,
        normalized=extractor.normalize,
        unreadable=list(failed),
    )
    return side, kept


def evaluate_extractor(extractor: Any, manifest: Any, protocol: Optional[Protocol] = None, *,
                       save_features: Optional[Path] = None, progress: Optional[Progress] = None,
                       note: Optional[Note] = None) -> EvaluationResult:
    """Evaluate a :class:`~mdpr.inference.FeatureExtractor` on ``manifest``'s query/gallery split."""
    if not manifest.query or not manifest.gallery:
        raise MdprError(
            f"Dataset '{manifest.name}' has {len(manifest.query)} query and {len(manifest.gallery)} gallery images; "
            "evaluation needs both (prepare a dataset with a query/gallery split)."
        )
    sides = []
    for split in ("query", "gallery"):
        side, records = extract_labelled(extractor, manifest, split, progress)
        if save_features is not None:
            _save_store(save_features / f"{split}.h5", side, records, extractor, manifest)
        sides.append(side)
    return evaluate_features(sides[0], sides[1], protocol, progress=progress, note=note)


def _save_store(path: Path, side: LabelledFeatures, records: List[Any], extractor: Any, manifest: Any) -> None:
    from mdpr.store import StoreMeta, write_store

    meta = StoreMeta(
        dim=side.features.shape[1], fingerprint=extractor.fingerprint, normalized=bool(extractor.normalize),
        flip=bool(side.flip), model_config=extractor.config.to_dict(), preprocessing=dict(extractor.preprocessing or {}),
        root=str(Path(manifest.root).resolve()),
    )
    write_store(path, meta, side.features, [r.path for r in records], side.pids.tolist(), side.camids.tolist(),
                failed=side.unreadable)


def run_evaluate(request: EvaluateRequest, progress: Optional[Progress] = None,
                 note: Optional[Note] = None) -> EvaluationResult:
    """Evaluate what ``request`` names; every input is checked before any work starts."""
    request.protocol.validate()
    use_stores = request.query_store is not None or request.gallery_store is not None
    use_model = request.dataset is not None or request.weights is not None
    if use_stores and use_model:
        raise MdprError("Pass either a dataset with weights, or query and gallery feature stores, not both.")
    if request.save_metrics is not None:
        check_output_file(request.save_metrics, "save_metrics")
    if use_stores:
        if request.query_store is None or request.gallery_store is None:
            raise MdprError("Pass both query_store and gallery_store (one feature store each).")
        if request.save_features is not None or request.flip:
            raise MdprError("save_features and flip apply to extraction; they cannot be used with stored features.")
        from mdpr.store import check_same_weights

        query = load_store_features(request.query_store, "query", note)
        gallery = load_store_features(request.gallery_store, "gallery", note)
        check_same_weights(gallery, query.fingerprint, f"the weights of the query store {request.query_store}",
                           store_label=f"the gallery store {request.gallery_store}", allow_unknown=True)
        result = evaluate_features(query, gallery, request.protocol, progress=progress, note=note)
    elif request.dataset is not None and request.weights is not None:
        from mdpr.data.records import load_dataset
        from mdpr.inference import FeatureExtractor
        from mdpr.runtime import cpu_threads

        if request.save_features is not None:
            check_output_folder(request.save_features, "save_features")
        manifest = load_dataset(request.dataset)
        with cpu_threads(request.threads):
            extractor = FeatureExtractor(str(request.weights), device=request.device, batch_size=request.batch_size,
                                         num_workers=request.num_workers, flip=request.flip, backend=request.backend)
            result = evaluate_extractor(extractor, manifest, request.protocol, save_features=request.save_features,
                                        progress=progress, note=note)
    else:
        raise MdprError("Say what to evaluate: a dataset with weights, or query and gallery feature stores.")
    if request.save_metrics is not None:
        atomic_write_json(request.save_metrics, result.to_dict())
    return result
