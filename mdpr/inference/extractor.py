"""Embedding images with a trained model: the one extraction loop used by `mdpr extract`, `mdpr query`,
evaluation and training's periodic evaluation.

Preprocessing travels with the weights: the checkpoint's ``input`` config gives the test transform
(:func:`mdpr.data.transforms.build_test_transform`: resize to ``input.size_test`` with its interpolation,
RGB, pixel values 0..255); the model subtracts the mean and divides by the std itself.

Files are decoded and resized in DataLoader worker processes while the model runs on the previous
batch; an image that cannot be read is skipped and reported, never fatal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from mdpr.config import Config
from mdpr.data.transforms import build_test_transform
from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_text
from mdpr.inference.inputs import ImageFileDataset, ImageInput, PathLike, as_image_list, collate_images, to_pil
from mdpr.runtime import default_num_workers, l2_normalize, resolve_device, unwrap_model

Progress = Callable[[int, int], None]


@dataclass
class ExtractedBatch:
    indices: np.ndarray  #: (M,) positions in the input list of the images in ``features``
    features: np.ndarray  #: (M, D) float32
    failed: List[Tuple[int, str]]  #: (position, reason) of images that could not be read


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
        batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
        flip: Optional[bool] = None,
        normalize: bool = False,
        backend: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> None:
        """``batch_size`` None: the checkpoint's ``dataloader.test_batch_size``; ``flip`` None: its
        ``train.eval_flip`` (so a model is embedded as its training run evaluated it).

        ``backend``: ``torch`` (default for checkpoints), ``onnxruntime`` or ``openvino``. ``weights`` may also be a
        file written by ``mdpr export`` (``.onnx``, ``*_openvino_model``), run with its own preprocessing metadata;
        a checkpoint with a non-torch backend is exported once into ``$MDPR_HOME/cache/exports``. ``threads``: CPU
        threads of those runtimes (None: one per core, one on a busy machine).
        """
        from mdpr.inference.backends import check_backend, is_exported_file, open_file_backend

        path = Path(weights).expanduser()
        if not path.exists():
            raise MdprError(f"Weights file {path} does not exist; pass a checkpoint written by `mdpr train`, an "
                            "official MDPR .pth, or a model written by `mdpr export`.")
        exported = is_exported_file(path)
        if path.suffix.lower() in (".torchscript", ".ts"):
            raise MdprError(f"{path} is a TorchScript export, which runs with torch.jit.load; FeatureExtractor runs "
                            "checkpoints (backend torch) and ONNX / OpenVINO exports.")
        if backend is None:
            backend = "torch" if not exported else ("openvino" if path.is_dir() or path.suffix == ".xml" else "onnxruntime")
        check_backend(backend)
        self.weights: Optional[Path] = path
        self._fingerprint: Optional[str] = None
        self._file: Any = None
        if exported:
            if backend == "torch":
                raise MdprError(f"{path} is an exported model; run it with backend onnxruntime or openvino "
                                "(backend torch runs checkpoints).")
            self._file = open_file_backend(path, backend, threads)
            config = _config_of_export(self._file.metadata, path)
            self._fingerprint = self._file.metadata.fingerprint
            self._setup(None, config, _cpu_only(device, backend), batch_size, num_workers, flip, normalize)
            return
        if not path.is_file():
            raise MdprError(f"Weights file {path} is not a file; pass a checkpoint or a model written by `mdpr export`.")
        from mdpr.model import load_model

        model, config = load_model(path, map_location="cpu")
        if backend == "torch":
            self._setup(model, config, resolve_device(device), batch_size, num_workers, flip, normalize)
            return
        self._setup(model, config, _cpu_only(device, backend), batch_size, num_workers, flip, normalize)
        self._file = open_file_backend(path, backend, threads, model=model.eval(), config=config,
                                       fingerprint=self.fingerprint)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        config: Config,
        device: Union[str, torch.device, None] = None,
        batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
        flip: Optional[bool] = None,
        normalize: bool = False,
    ) -> FeatureExtractor:
        """Wrap a model already in memory (e.g. during training). ``device=None`` keeps the model where it is.

        The model is switched to eval mode only while extracting, then put back in its previous mode.
        """
        self = cls.__new__(cls)
        self.weights = None
        self._file = None
        inner = unwrap_model(model)
        if device is None:
            param = next(inner.parameters(), None)
            dev = param.device if param is not None else torch.device("cpu")
        else:
            dev = resolve_device(device)
        self._setup(inner, config, dev, batch_size, num_workers, flip, normalize)
        self._fingerprint = None
        return self

    def _setup(self, model: Optional[torch.nn.Module], config: Config, device: torch.device, batch_size: Optional[int],
               num_workers: Optional[int], flip: Optional[bool], normalize: bool) -> None:
        if batch_size is None:
            batch_size = config.dataloader.test_batch_size
        if flip is None:
            flip = config.train.eval_flip
        if int(batch_size) < 1:
            raise MdprError(f"Batch size must be at least 1, not {batch_size}.")
        if num_workers is not None and int(num_workers) < 0:
            raise MdprError(f"Number of workers must be 0 or more, not {num_workers}.")
        self.model = model.to(device) if model is not None else None
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        self.num_workers = default_num_workers(device.type) if num_workers is None else int(num_workers)
        self.flip = bool(flip)
        self.normalize = bool(normalize)
        self.transform = build_test_transform(config.input)

    # -- description
    @property
    def feature_dim(self) -> int:
        if self._file is not None:
            return int(self._file.metadata.feature_dim)
        dim = getattr(self.model, "feature_dim", None)
        if dim is None:
            with torch.inference_mode(), _eval_mode(self.model):
                h, w = self.config.input.size_test
                dim = int(self._forward(torch.zeros(1, 3, h, w, device=self.device)).shape[1])
        return int(dim)

    @property
    def backend(self) -> str:
        """``torch``, ``onnxruntime`` or ``openvino`` (stores record it)."""
        return "torch" if self._file is None else str(self._file.name)

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8`` (stores record it; see :func:`mdpr.inference.backends.check_precision_match`)."""
        return "fp32" if self._file is None else str(self._file.precision)

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
        """Hash of the weights (:func:`mdpr.model.saving.state_dict_fingerprint`); stores record it."""
        from mdpr.model.saving import state_dict_fingerprint

        if self._fingerprint is not None:
            return self._fingerprint
        model = self.model
        assert model is not None  # only exported files come without a model, and they carry their fingerprint
        if self.weights is None:  # a model being trained changes: never cache
            return state_dict_fingerprint(model.state_dict())
        self._fingerprint = _cached_fingerprint(self.weights, lambda: state_dict_fingerprint(model.state_dict()))
        return self._fingerprint

    # -- in-memory images (trackers)
    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> np.ndarray:
        """Features of one image or a list of images (paths, PIL, HxWx3 uint8 RGB arrays) -> (N, D) float32.

        Decoding happens in the calling process (no worker start-up cost for a handful of crops); an
        image that cannot be read raises :class:`MdprError`. For many files use :meth:`extract_paths`.
        """
        items = as_image_list(images)
        out = np.empty((len(items), self.feature_dim), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch = torch.stack([self.transform(to_pil(item, start + i)) for i, item in enumerate(chunk)])
            out[start : start + len(chunk)] = self._embed(batch)
        return out

    def embed_boxes(self, frame: np.ndarray, boxes_xyxy: Any, bgr: bool = True,
                    return_valid: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Appearance features of person boxes in a full video frame, for trackers.

        ``frame``: HxWx3 uint8, BGR as OpenCV decodes it (``bgr=False`` for RGB). ``boxes_xyxy``: (N, 4) pixel
        corners x1, y1, x2, y2 (extra columns such as score and class are ignored). Boxes are rounded and
        clipped to the frame, cropped, and preprocessed like every mdpr input (the checkpoint's resize, RGB).
        Returns L2-normalised float32 (N, D) in box order. A box that is empty after clipping (outside the
        frame, zero or negative size, not finite) gets a zero row, which matches nothing (cosine 0);
        ``return_valid=True`` also returns the (N,) bool mask of boxes that were embedded.
        """
        image = _check_frame(frame)
        boxes = _check_boxes(boxes_xyxy)
        height, width = image.shape[:2]
        crops, valid = [], np.zeros(len(boxes), dtype=bool)
        for i, box in enumerate(boxes):
            if not np.isfinite(box).all():
                continue
            x1, y1, x2, y2 = (int(v) for v in np.round(box))
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
            if x2 > x1 and y2 > y1:
                crop = image[y1:y2, x1:x2]
                crops.append(np.ascontiguousarray(crop[:, :, ::-1] if bgr else crop))
                valid[i] = True
        out = np.zeros((len(boxes), self.feature_dim), dtype=np.float32)
        if crops:
            out[valid] = l2_normalize(self(crops))
        return (out, valid) if return_valid else out

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
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._file is not None:
            out: torch.Tensor = self._file(x)
            return out
        assert self.model is not None
        return self.model(x)

    def _embed(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), _eval_mode(self.model):
            x = batch.to(self.device, non_blocking=True).float()
            feats = self._forward(x)
            if self.flip:
                feats = (feats + self._forward(torch.flip(x, dims=[3]))) / 2
            feats = feats.float()
            if self.normalize:
                feats = torch.nn.functional.normalize(feats, dim=1)
            return feats.cpu().numpy()


_FINGERPRINT_CACHE_SIZE = 64


def _cached_fingerprint(weights: Path, compute: Callable[[], str]) -> str:
    """The weights' fingerprint, remembered per file (path, size, mtime, inode, mdpr version) in
    ``$MDPR_HOME/cache/fingerprints.json``: hashing a few hundred MB of weights is a noticeable part of a
    one-probe `mdpr query`. Any problem with the cache just means computing the fingerprint again."""
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


def _check_frame(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise MdprError(f"frame is a {type(frame).__name__}; pass an HxWx3 uint8 numpy image (BGR as OpenCV reads it, "
                        "or RGB with bgr=False).")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise MdprError(f"frame has shape {tuple(frame.shape)} and dtype {frame.dtype}; pass an HxWx3 uint8 image "
                        "(BGR as OpenCV reads it, or RGB with bgr=False).")
    return frame


def _check_boxes(boxes: Any) -> np.ndarray:
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise MdprError("boxes_xyxy is not numeric; pass an (N, 4) array of x1, y1, x2, y2 pixel corners.") from None
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise MdprError(f"boxes_xyxy has shape {arr.shape}; pass an (N, 4) array of x1, y1, x2, y2 pixel corners.")
    return arr[:, :4]


def _config_of_export(metadata: Any, path: Path) -> Config:
    try:
        return Config.from_dict(metadata.model_config)
    except MdprError as exc:
        raise MdprError(f"{path} records a model config this mdpr cannot read ({exc}); export it again with this "
                        "mdpr version.") from None


def _cpu_only(device: Union[str, torch.device], backend: str) -> torch.device:
    """Exported files run on the CPU here (the CPU execution providers)."""
    if str(device) not in ("auto", "cpu"):
        raise MdprError(f"Backend {backend} runs on the CPU; use device cpu (or auto), or backend torch for {device}.")
    return torch.device("cpu")


class _eval_mode:
    """Context manager: eval mode inside, the previous mode restored after (training is not disturbed)."""

    def __init__(self, model: Optional[torch.nn.Module]) -> None:
        self.model = model
        self.was_training = model is not None and model.training

    def __enter__(self) -> None:
        if self.was_training and self.model is not None:
            self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        if self.was_training and self.model is not None:
            self.model.train()
