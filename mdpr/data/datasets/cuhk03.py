"""CUHK03, labeled or detected boxes, new (767/700) or classic protocol, as torchreid prepares it.

Layout of the dataset folder (torchreid's ``cuhk03/``)::

    cuhk03_release/cuhk-03.mat                  # MATLAB v7.3 (HDF5), read with h5py
    cuhk03_new_protocol_config_labeled.mat      # MATLAB v5, the new-protocol split (Zhong et al. 2017)
    cuhk03_new_protocol_config_detected.mat
    images_labeled/1_001_1_01.png ...           # optional: images already extracted (e.g. by torchreid)
    images_detected/...

Images are named ``<camera pair>_<person:03d>_<view>_<image:02d>.png`` (all 1-based) and, as in torchreid,
the camera id is the view (0 or 1), so CUHK03 reports 2 cameras. Missing images are extracted from
``cuhk-03.mat`` into ``images_<variant>/`` next to it (existing files are never overwritten).

- ``new`` protocol: train/query/gallery from ``train_idx``/``query_idx``/``gallery_idx`` (1-based) into
  ``filelist`` with identities ``labels``; train pids relabelled ascending, query/gallery keep ``labels``.
- ``classic`` protocol: split 0 of the 20 ``testsets`` in ``cuhk-03.mat`` (100 test identities, given as
  ``[camera pair, person]``); as torchreid, query and gallery are the same test images. Identities are
  numbered 1..1467 in file order (camera pair, then person), which torchreid relabels from 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mdpr.data.datasets.base import (
    DatasetSpec,
    ParsedDataset,
    PrepareOptions,
    Progress,
    find_dataset_folder,
    relabel_train,
    require_nonempty,
    test_records,
)
from mdpr.data.datasets.matv5 import MatFileError, load_mat_v5
from mdpr.errors import MdprError
from mdpr.fileio import atomic_batch

VARIANTS = ("labeled", "detected")
PROTOCOLS = ("new", "classic")
RAW_MAT_LOCATIONS = ("cuhk03_release/cuhk-03.mat", "cuhk-03.mat")


def config_name(variant: str) -> str:
    return f"cuhk03_new_protocol_config_{variant}.mat"


def raw_mat(folder: Path) -> Optional[Path]:
    for rel in RAW_MAT_LOCATIONS:
        if (folder / rel).is_file():
            return folder / rel
    return None


def image_name(campair: int, person: int, image_index: int) -> str:
    """torchreid's name for image ``image_index`` (0..9) of ``person`` (0-based) in ``campair`` (0-based)."""
    view = 1 if image_index < 5 else 2
    return f"{campair + 1}_{person + 1:03d}_{view}_{image_index + 1:02d}.png"


def camid_of(name: str) -> int:
    return int(name.split("_")[2]) - 1


class RawMat:
    """The images of ``cuhk-03.mat`` (HDF5: cells of object references, MATLAB's column-major order)."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise MdprError(f"{path} is not a readable MATLAB v7.3 file ({exc}); download cuhk03_release again.") from None

    def close(self) -> None:
        self.file.close()

    def _refs(self, key: str) -> np.ndarray:
        if key not in self.file:
            raise MdprError(f"{self.path} has no '{key}' variable; it is not CUHK03's cuhk-03.mat.")
        return np.asarray(self.file[key][()]).ravel()

    def persons(self, variant: str) -> List[Tuple[int, int, List[Tuple[str, object]]]]:
        """``(camera pair, person, [(image name, reference)])`` per person (1-based pair and person)."""
        out = []
        for campair, pair_ref in enumerate(self._refs(variant)):
            cells = np.asarray(self.file[pair_ref][()]).T  # (persons, 10)
            for person in range(cells.shape[0]):
                images = []
                for index, ref in enumerate(cells[person]):
                    shape = self.file[ref].shape
                    if len(shape) < 3 or 0 in shape:  # empty cell: not every person has 10 images
                        continue
                    images.append((image_name(campair, person, index), ref))
                out.append((campair + 1, person + 1, images))
        return out

    def testsets(self) -> List[np.ndarray]:
        """The 20 classic test splits, each an (n, 2) int array of ``[camera pair, person]``."""
        return [np.asarray(self.file[ref][()]).T.astype(int) for ref in self._refs("testsets")]

    def save_image(self, ref: object, path: Path) -> None:
        """Write one image as PNG to ``path`` (a temporary file of :func:`mdpr.fileio.atomic_batch`)."""
        from PIL import Image

        pixels = np.ascontiguousarray(np.asarray(self.file[ref][()]).T)  # (H, W, 3)
        Image.fromarray(pixels.astype(np.uint8)).save(path, format="PNG")


def extract_images(
    raw: RawMat, persons: List[Tuple[int, int, List[Tuple[str, object]]]], out_dir: Path, progress: Progress
) -> int:
    """Write the images of ``persons`` missing from ``out_dir`` as PNG; the number written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MdprError(f"Cannot create {out_dir} to extract CUHK03 images ({exc.strerror}).") from None
    todo = [(name, ref) for _, _, images in persons for name, ref in images if not (out_dir / name).exists()]
    with atomic_batch() as batch:
        for i, (name, ref) in enumerate(todo):
            raw.save_image(ref, batch.path(out_dir / name))
            batch.commit_if_full()
            if progress:
                progress(i + 1, len(todo), f"extracting {out_dir.name}")
    return len(todo)


def _read_config(path: Path) -> Dict[str, np.ndarray]:
    try:
        cfg = load_mat_v5(path)
    except (MatFileError, OSError) as exc:
        raise MdprError(f"{path} cannot be read as a MATLAB v5 file ({exc}); download it again.") from None
    missing = [k for k in ("filelist", "labels", "train_idx", "query_idx", "gallery_idx") if k not in cfg]
    if missing:
        raise MdprError(f"{path} lacks {', '.join(missing)}; it is not a CUHK03 new-protocol config file.")
    return cfg


def _new_protocol(folder: Path, variant: str, image_dir: str) -> Tuple[List, List, List]:
    cfg = _read_config(folder / config_name(variant))
    names = [str(x) for x in np.asarray(cfg["filelist"], dtype=object).ravel()]
    labels = np.asarray(cfg["labels"]).ravel().astype(int)

    def items(key: str) -> List[Tuple[str, int, int]]:
        idx = np.asarray(cfg[key]).ravel().astype(int) - 1
        if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
            raise MdprError(f"{folder / config_name(variant)} has {key} entries outside its filelist.")
        return [(f"{image_dir}/{names[i]}", int(labels[i]), camid_of(names[i])) for i in idx]

    return items("train_idx"), items("query_idx"), items("gallery_idx")


def _classic_protocol(
    persons: List[Tuple[int, int, List[Tuple[str, object]]]], testset: np.ndarray, image_dir: str
) -> Tuple[List[Tuple[str, int, int]], List[Tuple[str, int, int]]]:
    test_pairs = {(int(a), int(b)) for a, b in testset}
    train: List[Tuple[str, int, int]] = []
    test: List[Tuple[str, int, int]] = []
    for label, (campair, person, images) in enumerate(persons, start=1):
        target = test if (campair, person) in test_pairs else train
        target += [(f"{image_dir}/{name}", label, camid_of(name)) for name, _ in images]
    return train, test


def _locate(root: Path, variant: str, protocol: str) -> Path:
    def matches(folder: Path) -> bool:
        if protocol == "classic":
            return raw_mat(folder) is not None
        return (folder / config_name(variant)).is_file() and (
            raw_mat(folder) is not None or (folder / f"images_{variant}").is_dir()
        )

    if protocol == "classic":
        expected = "cuhk03_release/cuhk-03.mat (the classic splits are in it)"
    else:
        expected = f"{config_name(variant)} plus cuhk03_release/cuhk-03.mat or images_{variant}/"
    return find_dataset_folder(root, matches, f"CUHK03 ({variant}, {protocol} protocol)", expected, ("cuhk03",))


def parse_cuhk03(root: Path, opts: PrepareOptions, progress: Progress = None) -> ParsedDataset:
    variant = (opts.variant or "labeled").lower()
    protocol = (opts.protocol or "new").lower()
    if variant not in VARIANTS:
        raise MdprError(f"Unknown CUHK03 variant '{opts.variant}'; use --variant labeled or --variant detected.")
    if protocol not in PROTOCOLS:
        raise MdprError(f"Unknown CUHK03 protocol '{opts.protocol}'; use --protocol new or --protocol classic.")
    folder = _locate(root, variant, protocol)
    image_dir = f"images_{variant}"
    notes: List[str] = []
    mat_path = raw_mat(folder)
    raw = RawMat(mat_path) if mat_path else None
    try:
        persons = None
        if protocol == "new":
            train, query, gallery = _new_protocol(folder, variant, image_dir)
        else:
            assert raw is not None
            persons = raw.persons(variant)
            train, test = _classic_protocol(persons, raw.testsets()[0], image_dir)
            query, gallery = test, list(test)
        needed = {p for p, _, _ in train + query + gallery}
        missing = sorted(p for p in needed if not (folder / p).is_file())
        if missing and raw is not None:
            persons = persons if persons is not None else raw.persons(variant)
            written = extract_images(raw, persons, folder / image_dir, progress)
            notes.append(f"extracted {written} images from {raw.path.name} into {folder / image_dir}")
            missing = sorted(p for p in needed if not (folder / p).is_file())
        if missing:
            source = f"{raw.path.name} has no such image" if raw else "cuhk03_release/cuhk-03.mat is not there to extract it"
            raise MdprError(
                f"{len(missing)} CUHK03 image(s) of the split are missing, e.g. {folder / missing[0]} ({source})."
            )
    finally:
        if raw is not None:
            raw.close()
    parsed = ParsedDataset(
        root=folder,
        train=relabel_train(train),
        query=test_records(query, "query"),
        gallery=test_records(gallery, "gallery"),
        options={"variant": variant, "protocol": protocol},
        notes=notes,
    )
    source = str(folder / config_name(variant)) if protocol == "new" else f"{mat_path} (testsets)"
    require_nonempty(parsed, {s: source for s in ("train", "query", "gallery")}, "the split lists no image")
    return parsed


CUHK03 = DatasetSpec(
    name="cuhk03",
    title="CUHK03",
    parse=parse_cuhk03,
    aliases=("cuhk",),
    archives=("cuhk03_release", "cuhk03"),
    options=("variant", "protocol"),
    layout="cuhk03_release/cuhk-03.mat and/or images_{labeled,detected}/, cuhk03_new_protocol_config_{labeled,detected}.mat",
)
