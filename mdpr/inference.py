"""Embedding images with a trained model: the one extraction loop used by `mdpr extract`, `mdpr query`,
evaluation and training's periodic evaluation.

Preprocessing travels with the weights: the checkpoint's ``input`` config gives the test transform
(:func:`mdpr.data.transforms.build_test_transform`: resize to ``input.size_test`` with its interpolation,
RGB, pixel values 0..255); the model subtracts the mean and divides by the std itself.

Files are decoded and resized in DataLoader worker processes while the model runs on the previous
batch; an image that cannot be read is skipped and reported, never fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mdpr.config import Config
from mdpr.data.images import ImageReadError, load_rgb
from mdpr.data.transforms import build_test_transform
from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_text

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[PathLike, Image.Image, np.ndarray]
Progress = Callable[[int, int], None]


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else mps, else cpu; other names are checked to exist."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise MdprError(f"Unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MdprError(f"Device '{name}' was requested but CUDA is not available here; use --device cpu or auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MdprError(f"Device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MdprError(f"Device '{name}' was requested but MPS is not available here; use --device cpu or auto.")
    return dev


def choose_cpu_threads(requested: Optional[int] = None) -> Tuple[int, str]:
    """Torch CPU threads for a command, and why: ``requested``, else one per core, else one when the
    machine is already busy (1-minute load average at least the number of cores).

    Every multi-threaded operation ends by waiting for all its threads; when other processes keep the
    cores busy, a pre-empted thread stalls the others, and a model runs several times slower than on a
    single thread (measured on a loaded 2-core machine: 2.7x for extraction, 35x for one small probe).
    """
    if requested is not None:
        return int(requested), "requested"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0] >= cores
    except (AttributeError, OSError):  # no load average (Windows)
        busy = False
    if busy and cores > 1:
        return 1, "busy"
    return torch.get_num_threads(), "default"


def default_num_workers(device: torch.device) -> int:
    """Decoding processes: enough to keep a GPU fed; on CPU one, since decoding is cheap next to the model
    and every extra process takes cores from the model's own threads."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 1 if cpus >= 2 else 0
    return max(1, min(8, cpus - 1))


class ImageFileDataset(Dataset):
    """Decodes and transforms image files by index; a file that cannot be read yields ``None`` and the reason.

    Picklable (plain paths and a picklable transform), so it works with any DataLoader start method.
    """

    def __init__(self, paths: Sequence[PathLike], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], str]:
        path = self.paths[index]
        try:
            return index, self.transform(load_rgb(path)), ""
        except ImageReadError as exc:
            return index, None, _reason(exc, path)
        except (OSError, ValueError, SyntaxError, MemoryError) as exc:  # decoded but unusable (e.g. a 0-pixel image)
            return index, None, f"{type(exc).__name__}: {exc}"


def _reason(exc: Exception, path: str) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def collate_images(items: List[Tuple[int, Optional[torch.Tensor], str]]) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Tuple[int, str]]]:
    """``(indices of decoded images, stacked tensor or None, [(index, reason) of failures])``."""
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, r) for i, t, r in items if t is None]
    indices = torch.tensor([i for i, _ in ok], dtype=torch.int64)
    batch = torch.stack([t for _, t in ok]) if ok else None
    return indices, batch, failed


@dataclass
class ExtractedBatch:
    indices: np.ndarray  #: (M,) positions in the input list of the images in ``features``
    features: np.ndarray  #: (M, D) float32
    failed: List[Tuple[int, str]]  #: (position, reason) of images that could not be read


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module  # DataParallel / DistributedDataParallel
    return model


class FeatureExtractor:
    """Turn person crops into (N, D) float32 features with a trained MDPR model.

    >>> extractor = FeatureExtractor("model.pt", device="auto")          # doctest: +SKIP
    >>> feats = extractor(["a.jpg", pil_image, rgb_uint8_array])         # doctest: +SKIP

    Inputs: file paths, PIL images, or numpy arrays of shape (H, W, 3), dtype uint8, in **RGB** order
    (convert OpenCV's BGR frames with ``frame[:, :, ::-1]``). The preprocessing is the checkpoint's,
    identical to `mdpr extract`. ``flip=True`` averages each feature with the mirrored image's;
    ``normalize=True`` L2-normalises the output (the default returns the model's raw feature).
    """

    def __init__(
        self,
        weights: PathLike,
        device: Union[str, torch.device] = "auto",
        batch_size: int = 64,
        num_workers: Optional[int] = None,
        flip: bool = False,
        normalize: bool = False,
    ) -> None:
        from mdpr.model import load_model

        path = Path(weights).expanduser()
        if not path.is_file():
            raise MdprError(f"Weights file {path} does not exist; pass a checkpoint written by `mdpr train` or an official MDPR .pth.")
        model, config = load_model(path, map_location="cpu")
        self.weights: Optional[Path] = path
        self._setup(model, config, resolve_device(device), batch_size, num_workers, flip, normalize)
        self._fingerprint: Optional[str] = None

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        config: Config,
        device: Union[str, torch.device, None] = None,
        batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
        flip: bool = False,
        normalize: bool = False,
    ) -> FeatureExtractor:
        """Wrap a model already in memory (e.g. during training). ``device=None`` keeps the model where it is.

        The model is switched to eval mode only while extracting, then put back in its previous mode.
        """
        self = cls.__new__(cls)
        self.weights = None
        inner = _unwrap(model)
        if device is None:
            param = next(inner.parameters(), None)
            dev = param.device if param is not None else torch.device("cpu")
        else:
            dev = resolve_device(device)
        self._setup(inner, config, dev, batch_size or config.dataloader.test_batch_size, num_workers, flip, normalize)
        self._fingerprint = None
        return self

    def _setup(self, model: torch.nn.Module, config: Config, device: torch.device, batch_size: int,
               num_workers: Optional[int], flip: bool, normalize: bool) -> None:
        if int(batch_size) < 1:
            raise MdprError(f"Batch size must be at least 1, not {batch_size}.")
        if num_workers is not None and int(num_workers) < 0:
            raise MdprError(f"Number of workers must be 0 or more, not {num_workers}.")
        self.model = model.to(device)
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        self.num_workers = default_num_workers(device) if num_workers is None else int(num_workers)
        self.flip = bool(flip)
        self.normalize = bool(normalize)
        self.transform = build_test_transform(config.input)

    # -- description
    @property
    def feature_dim(self) -> int:
        dim = getattr(self.model, "feature_dim", None)
        if dim is None:
            with torch.inference_mode(), _eval_mode(self.model):
                h, w = self.config.input.size_test
                dim = int(self.model(torch.zeros(1, 3, h, w, device=self.device)).shape[1])
        return int(dim)

    @property
    def preprocessing(self) -> Dict[str, Any]:
        """What is done to an image before the model sees it (recorded in every feature store)."""
        inp = self.config.input
        return {
            "size": [int(inp.size_test[0]), int(inp.size_test[1])],
            "interpolation": inp.interpolation,
            "pixel_mean": [float(v) for v in inp.pixel_mean],
            "pixel_std": [float(v) for v in inp.pixel_std],
            "channel_order": "RGB",
            "pixel_range": [0, 255],
        }

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (:func:`mdpr.model.weights.state_dict_fingerprint`); stores record it."""
        from mdpr.model.weights import state_dict_fingerprint

        if self.weights is None:  # a model being trained changes: never cache
            return state_dict_fingerprint(self.model.state_dict())
        if self._fingerprint is None:
            self._fingerprint = _cached_fingerprint(
                self.weights, lambda: state_dict_fingerprint(self.model.state_dict())
            )
        return self._fingerprint

    # -- in-memory images (trackers)
    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> np.ndarray:
        """Features of one image or a list of images (paths, PIL, HxWx3 uint8 RGB arrays) -> (N, D) float32.

        Decoding happens in the calling process (no worker start-up cost for a handful of crops); an
        image that cannot be read raises :class:`MdprError`. For many files use :meth:`extract_paths`.
        """
        items = _as_list(images)
        out = np.empty((len(items), self.feature_dim), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch = torch.stack([self.transform(_to_pil(item, start + i)) for i, item in enumerate(chunk)])
            out[start : start + len(chunk)] = self._embed(batch)
        return out

    # -- files
    def iter_batches(self, paths: Sequence[PathLike], progress: Optional[Progress] = None) -> Iterator[ExtractedBatch]:
        """Stream features of image files batch by batch, in input order; unreadable files are reported."""
        paths = list(paths)
        total = len(paths)
        if total == 0:
            return
        workers = self.num_workers if total > self.batch_size else 0
        loader = DataLoader(
            ImageFileDataset(paths, self.transform),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        done = 0
        for indices, batch, failed in loader:
            feats = self._embed(batch) if batch is not None else np.zeros((0, self.feature_dim), np.float32)
            done += len(indices) + len(failed)
            yield ExtractedBatch(indices.numpy(), feats, failed)
            if progress is not None:
                progress(done, total)

    def extract_paths(
        self, paths: Sequence[PathLike], progress: Optional[Progress] = None
    ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[str, str]]]:
        """``(features (M, D) float32, ok_indices (M,) int64, failed [(path, reason)])`` for image files.

        ``ok_indices[i]`` is the position in ``paths`` of ``features[i]`` (ascending); images that
        cannot be read are skipped and listed in ``failed``. ``progress(done, total)`` after each batch.
        """
        paths = list(paths)
        feats = np.empty((len(paths), self.feature_dim), dtype=np.float32)
        ok = np.empty(len(paths), dtype=np.int64)
        failed: List[Tuple[str, str]] = []
        n = 0
        for b in self.iter_batches(paths, progress):
            m = len(b.indices)
            feats[n : n + m] = b.features
            ok[n : n + m] = b.indices
            n += m
            failed.extend((os.fspath(paths[i]), reason) for i, reason in b.failed)
        return feats[:n], ok[:n], failed

    # -- the model
    def _embed(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), _eval_mode(self.model):
            x = batch.to(self.device, non_blocking=True).float()
            feats = self.model(x)
            if self.flip:
                feats = (feats + self.model(torch.flip(x, dims=[3]))) / 2
            feats = feats.float()
            if self.normalize:
                feats = torch.nn.functional.normalize(feats, dim=1)
            return feats.cpu().numpy()


_FINGERPRINT_CACHE_SIZE = 64


def _cached_fingerprint(weights: Path, compute: Callable[[], str]) -> str:
    """The weights' fingerprint, remembered per file (path, size, mtime, inode, mdpr version) in
    ``$MDPR_HOME/cache/fingerprints.json``: hashing a few hundred MB of weights is a noticeable part of a
    one-probe `mdpr query`. Any problem with the cache just means computing the fingerprint again."""
    import json

    from mdpr import __version__
    from mdpr.data.records import mdpr_home

    try:
        st = weights.stat()
        key = f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{__version__}"
        cache = mdpr_home() / "cache" / "fingerprints.json"
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        return compute()
    if isinstance(entries.get(key), str):
        return entries[key]
    value = compute()
    entries[key] = value
    entries = dict(list(entries.items())[-_FINGERPRINT_CACHE_SIZE:])
    try:
        atomic_write_text(cache, json.dumps(entries))
    except OSError:
        pass
    return value


class _eval_mode:
    """Context manager: eval mode inside, the previous mode restored after (training is not disturbed)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> None:
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        if self.was_training:
            self.model.train()


def _as_list(images: Any) -> List[Any]:
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    try:
        return list(images)
    except TypeError:
        raise MdprError(
            f"Cannot embed a {type(images).__name__}; pass file paths, PIL images or HxWx3 uint8 RGB numpy arrays."
        ) from None


def _to_pil(item: Any, position: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode != "RGB" else item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise MdprError(
                f"Image {position} is a numpy array of shape {item.shape} and dtype {item.dtype}; "
                "pass HxWx3 uint8 arrays in RGB order."
            )
        return Image.fromarray(np.ascontiguousarray(item))
    if isinstance(item, (str, os.PathLike)):
        try:
            return load_rgb(item)
        except ImageReadError as exc:
            raise MdprError(f"Image {os.fspath(item)} could not be read ({_reason(exc, os.fspath(item))}); pass a JPEG, PNG, BMP or WebP file.") from None
    raise MdprError(
        f"Image {position} is a {type(item).__name__}; pass file paths, PIL images or HxWx3 uint8 RGB numpy arrays."
    )


# ----------------------------------------------------------------------------------------------------- to a store


@dataclass
class ImageItem:
    """An image to index: its file and, when known, its identity and camera (-1 = unknown)."""

    path: Path
    pid: int = -1
    camid: int = -1


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

    @property
    def images_per_second(self) -> float:
        done = self.added + len(self.failed)
        return done / self.seconds if self.seconds > 0 else 0.0


def items_from_folder(folder: PathLike) -> List[ImageItem]:
    """Every image under ``folder`` (sorted, recursive) with pid / camid parsed from Market-style names."""
    from mdpr.data.images import IMAGE_EXTENSIONS, find_images, parse_market_name

    root = Path(folder).expanduser()
    if not root.exists():
        raise MdprError(f"Image folder {root} does not exist; pass the folder that holds the crops to index.")
    if not root.is_dir():
        raise MdprError(f"{root} is a file, not a folder; --images takes a folder of images (searched recursively).")
    items = []
    for path in find_images(root):
        parsed = parse_market_name(path)
        pid, camid = parsed if parsed is not None else (-1, -1)
        items.append(ImageItem(path.resolve(), max(pid, -1), camid))
    if not items:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise MdprError(f"No images ({exts}) found under {root}; check the folder.")
    return items


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
    import time

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


__all__ = [
    "choose_cpu_threads",
    "ExtractedBatch",
    "ExtractionSummary",
    "ImageItem",
    "extract_to_store",
    "items_from_folder",
    "FeatureExtractor",
    "ImageFileDataset",
    "collate_images",
    "default_num_workers",
    "resolve_device",
]
