"""``mdpr extract``: embed image files into a feature store (resumable, appendable)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from mdpr.errors import MdprError
from mdpr.inference import FeatureExtractor, ImageItem, Progress

Note = Callable[[str], None]
SPLITS = ("query", "gallery", "train")


@dataclass
class ExtractRequest:
    """Images (a folder, or a prepared dataset's split) to embed into the store ``output``."""

    output: Optional[Path] = None  #: None: MDPR_HOME/stores/<folder name>.h5 (``images`` only)
    weights: Optional[Path] = None  #: None: the most recent model trained with ``mdpr train``
    images: Optional[Path] = None
    dataset: Optional[str] = None
    split: str = "gallery"
    device: str = "auto"
    batch_size: int = 64
    workers: Optional[int] = None
    threads: Optional[int] = None
    flip: bool = False
    half: bool = False
    append: bool = False
    checkpoint_interval: float = 300.0  #: seconds between refreshes of the store file
    backend: Optional[str] = None  #: torch, onnxruntime or openvino (None: torch for a checkpoint)


def select_images(request: ExtractRequest) -> Tuple[List[ImageItem], Path, str]:
    """``(items, root, source)`` of what ``request`` names (exactly one of ``images`` / ``dataset``)."""
    from mdpr.inference import items_from_folder

    if (request.images is None) == (request.dataset is None):
        raise MdprError("Pass exactly one of images FOLDER or dataset NAME to say which images to index.")
    if request.images is not None:
        folder = request.images.expanduser().resolve()
        return items_from_folder(folder), folder if folder.is_dir() else folder.parent, str(request.images)
    from mdpr.data.records import load_dataset

    if request.split not in SPLITS:
        raise MdprError(f"split must be one of {', '.join(SPLITS)}, not {request.split!r}.")
    manifest = load_dataset(str(request.dataset))
    records = manifest.split(request.split)
    if not records:
        raise MdprError(f"Dataset '{manifest.name}' has no {request.split} images; choose another split.")
    train = request.split == "train"
    items = [ImageItem(Path(manifest.image_path(r)).resolve(), r.orig_pid if train else r.pid, r.camid) for r in records]
    return items, Path(manifest.root).resolve(), f"{manifest.name}/{request.split}"


def run_extract(request: ExtractRequest, progress: Optional[Progress] = None,
                note: Optional[Note] = None) -> ExtractionSummary:
    """Check the inputs and the output path, load the model, and embed the images into the store."""
    from mdpr.fileio import check_output_file
    from mdpr.runtime import cpu_threads
    from mdpr.workflows.history import default_store_path, latest_model, record_store

    if request.batch_size < 1:
        raise MdprError(f"batch_size must be at least 1, got {request.batch_size}.")
    items, root, source = select_images(request)
    weights = request.weights
    if weights is None:
        weights = latest_model()
        if note is not None:
            note(f"using the most recent trained model {weights} (choose another with weights CKPT).")
    output = request.output
    if output is None:
        if request.images is None:
            raise MdprError("Name the store to write with output STORE.h5 (a default is only chosen for an image "
                            "folder).", keys=["output STORE.h5"])
        output = default_store_path(request.images)
        if note is not None:
            note(f"writing the store {output} (choose another with output STORE.h5).")
    check_output_file(output, "the feature store")
    with cpu_threads(request.threads) as (_, why):
        extractor = FeatureExtractor(weights, device=request.device, batch_size=request.batch_size,
                                     num_workers=request.workers, flip=request.flip, backend=request.backend)
        if why == "busy" and extractor.device.type == "cpu" and note is not None:
            note("the CPU is busy with other processes, so the model runs on 1 thread (faster then); choose with "
                 "threads.")
        summary = extract_to_store(extractor, items, output, root=root, half=request.half,
                                   append=request.append, checkpoint_interval=request.checkpoint_interval,
                                   progress=progress)
    summary.source = source
    record_store(summary.output, weights, extractor.fingerprint, summary.total, source, note)
    return summary

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ExtractionSummary:
    output: Path
    total: int  #: rows in the store now
    added: int  #: rows added by this run
    already_stored: int  #: requested images that were already in the store (resumed / appended runs)
    failed: List[Tuple[str, str]]  #: images of this run that could not be read (stored path, reason)
    seconds: float
    resumed: bool  #: an interrupted run was continued
    dim: int
    dtype: str
    source: str = ""  #: what was indexed ("crops/", "demo/gallery")

    def to_json(self) -> Dict[str, Any]:
        """What ``mdpr extract --json`` prints."""
        return {"store": str(self.output), "source": self.source, "rows": self.total, "added": self.added,
                "already_stored": self.already_stored, "resumed": self.resumed, "dim": self.dim, "dtype": self.dtype,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
                "failed": [{"path": path, "reason": reason} for path, reason in self.failed]}

    @property
    def images_per_second(self) -> float:
        done = self.added + len(self.failed)
        return done / self.seconds if self.seconds > 0 else 0.0


def extract_to_store(
    extractor: FeatureExtractor,
    items: Sequence[ImageItem],
    output: PathLike,
    *,
    root: Optional[PathLike] = None,
    half: bool = False,
    append: bool = False,
    checkpoint_interval: float = 300.0,
    progress: Optional[Progress] = None,
) -> ExtractionSummary:
    """Embed ``items`` into the feature store ``output``: resumable, never duplicating, never fatal per image.

    A new store records ``root`` (paths are stored relative to it). Re-running after an interruption
    continues where it stopped. A *complete* store only takes new images with ``append=True``; any
    existing store must come from the same weights and options. Features are stored L2-normalised.
    ``progress(done, total)`` counts this run's images.
    """
    from mdpr.store import StoreMeta, StoreWriter, path_key

    out = Path(output).expanduser()
    meta = StoreMeta(
        dim=extractor.feature_dim,
        dtype="float16" if half else "float32",
        fingerprint=extractor.fingerprint,
        normalized=True,
        flip=extractor.flip,
        model_config=extractor.config.to_dict(),
        preprocessing=extractor.preprocessing,
        root=str(Path(root).expanduser().resolve()) if root is not None else None,
        weights=str(Path(extractor.weights).resolve()) if extractor.weights is not None else "",
        backend=extractor.backend,
        precision=extractor.precision,
    )
    started = time.monotonic()
    writer = StoreWriter(out, meta, checkpoint_interval=checkpoint_interval)
    try:
        store_root = writer.meta.root
        keys = [path_key(it.path, store_root) for it in items]
        pending = [i for i, key in enumerate(keys) if key not in writer]
        resumed = writer.recovered or (not writer.complete and writer.stored_rows > 0)
        if writer.complete and not append and len(writer) > 0:
            # Images that failed before are only retried when resuming or appending.
            new = [i for i in pending if keys[i] not in writer.failed]
            if new:
                raise MdprError(
                    f"{out} already holds a complete store of {len(writer)} images; add --append to add the "
                    f"{len(new)} new one(s), or choose another --output."
                )
            pending = []
        failed: List[Tuple[str, str]] = []
        added = 0
        todo = [items[i] for i in pending]
        for batch in extractor.iter_batches([it.path for it in todo], progress):
            sel = [todo[i] for i in batch.indices]
            bad = [(keys[pending[i]], reason) for i, reason in batch.failed]
            added += writer.add(
                batch.features,
                [keys[pending[i]] for i in batch.indices],
                pids=[it.pid for it in sel],
                camids=[it.camid for it in sel],
                failed=bad,
            )
            failed.extend(bad)
            writer.maybe_checkpoint()
    except KeyboardInterrupt:
        writer.close(complete=False, interrupted=True)  # keep what was done in the store file itself
        raise
    except MdprError:
        writer.close(complete=writer.complete)
        raise
    except BaseException:
        writer.abort()
        raise
    writer.close(complete=True)
    return ExtractionSummary(
        output=out,
        total=writer.stored_rows,
        added=added,
        already_stored=len(items) - len(pending),
        failed=failed,
        seconds=time.monotonic() - started,
        resumed=resumed,
        dim=writer.meta.dim,
        dtype=writer.meta.dtype,
    )
