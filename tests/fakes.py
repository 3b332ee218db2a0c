"""Builders of small fake dataset trees with the real naming conventions, for any test.

    from fakes import build_market, tiny_jpeg
    root = build_market(tmp_path)                  # tmp_path/Market-1501-v15.09.15/...

Every builder writes real (tiny) JPEG/PNG files, so the trees also work for decoding, training and
extraction tests. The ``torchreid_*_stats`` helpers re-derive the statistics the way torchreid's
parsers do (glob, regex, sets), independently of mdpr's parsers, for comparison.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

STAT_KEYS = ("train_ids", "train_images", "query_ids", "query_images", "gallery_ids", "gallery_images", "cameras")


@lru_cache(maxsize=64)
def tiny_jpeg(color: Tuple[int, int, int] = (128, 64, 32), size: Tuple[int, int] = (8, 16)) -> bytes:
    """Bytes of a small valid JPEG (``size`` = width, height)."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image(path: Path, color: Tuple[int, int, int] = (128, 64, 32), size: Tuple[int, int] = (8, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_jpeg(color, size))
    return path


def _color(pid: int) -> Tuple[int, int, int]:
    return ((pid * 53) % 256, (pid * 97) % 256, (pid * 151) % 256)


# ------------------------------------------------------------------------------------ Market / Duke


def market_names(
    pids: Iterable[int], cams: Sequence[int], per_cam: int = 2, start_frame: int = 100, duke: bool = False
) -> List[str]:
    """Market-style (``0002_c1s1_000451_03.jpg``) or Duke-style (``0005_c2_f0046985.jpg``) names."""
    names = []
    frame = start_frame
    for pid in pids:
        for cam in cams:
            for k in range(per_cam):
                frame += 7
                prefix = f"{pid:04d}" if pid >= 0 else "-1"
                names.append(f"{prefix}_c{cam}_f{frame:07d}.jpg" if duke else f"{prefix}_c{cam}s1_{frame:06d}_{k:02d}.jpg")
    return names


def build_market(
    base: Path,
    folder: str = "Market-1501-v15.09.15",
    train_pids: Sequence[int] = (2, 7, 10, 11, 23),
    test_pids: Sequence[int] = (1, 3, 4, 12),
    cams: Sequence[int] = (1, 2, 3, 4, 5, 6),
    duke: bool = False,
    junk: int = 3,
    distractors: int = 4,
    extra_files: bool = True,
) -> Path:
    """A Market-1501 (or, with ``duke=True``, DukeMTMC-reID) tree; returns the dataset folder.

    Train ids use cameras ``cams[:3]`` + the last one; query has one image per test id and camera 1..2;
    the gallery has 2 per id and camera, plus junk (pid -1, also one in train) and distractors (pid 0).
    ``extra_files`` adds what real downloads contain and parsers must ignore (Thumbs.db, a .txt).
    """
    root = base / folder
    train = market_names(train_pids, list(cams[:3]) + [cams[-1]], per_cam=2, duke=duke)
    query = market_names(test_pids, cams[:2], per_cam=1, start_frame=5000, duke=duke)
    gallery = market_names(test_pids, cams, per_cam=2, start_frame=9000, duke=duke)
    if not duke:
        train += market_names([-1], cams[:1], per_cam=1, start_frame=200)
        gallery += market_names([-1], cams[:junk], per_cam=1, start_frame=300)
        gallery += market_names([0], cams[:distractors], per_cam=1, start_frame=400)
    for sub, names in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        for name in names:
            pid = int(name.split("_")[0])
            write_image(root / sub / name, _color(pid))
        if extra_files:
            (root / sub / "Thumbs.db").write_bytes(b"\x00" * 16)
    if extra_files:
        (root / "readme.txt").write_text("fake dataset\n")
    return root


def build_market_distractors(root: Path, count: int = 5) -> None:
    """The Market-1501 500k distractor folder ``images/`` (pid 0 and -1 names, cameras 1..6)."""
    for k in range(count):
        pid = 0 if k % 4 else -1
        prefix = "0000" if pid == 0 else "-1"
        write_image(root / "images" / f"{prefix}_c{k % 6 + 1}s2_{70000 + k:06d}_01.jpg", (9, 9, 9))


def torchreid_market_stats(root: Path, distractors: bool = False, drop_junk: bool = True) -> Dict[str, int]:
    """Statistics as torchreid's Market1501/DukeMTMCreID ``process_dir`` + ``parse_data`` compute them."""
    pattern = re.compile(r"([-\d]+)_c(\d)")

    def process(folder: Path) -> List[Tuple[int, int]]:
        out = []
        for path in folder.glob("*.jpg"):
            pid, cam = map(int, pattern.search(path.name).groups())
            if drop_junk and pid == -1:
                continue
            out.append((pid, cam - 1))
        return out

    train = process(root / "bounding_box_train")
    query = process(root / "query")
    gallery = process(root / "bounding_box_test")
    if distractors:
        gallery += process(root / "images")
    return _stats(train, query, gallery)


def _stats(train, query, gallery) -> Dict[str, int]:
    return {
        "train_ids": len({p for p, _ in train}),
        "train_images": len(train),
        "query_ids": len({p for p, _ in query}),
        "query_images": len(query),
        "gallery_ids": len({p for p, _ in gallery}),
        "gallery_images": len(gallery),
        "cameras": len({c for _, c in train + query + gallery}),
    }


# --------------------------------------------------------------------------------------------- MSMT17


def build_msmt17(
    base: Path,
    version: int = 1,
    train_pids: Sequence[int] = (0, 1, 2, 3, 4),
    val_per_id: int = 1,
    test_pids: Sequence[int] = (0, 1, 2),
    cams: Sequence[int] = (1, 2, 7, 15),
) -> Path:
    """``MSMT17_V1`` (train/, test/) or ``MSMT17_V2`` (mask_train_v2/, mask_test_v2/) with list files."""
    root = base / f"MSMT17_V{version}"
    train_dir, test_dir = ("train", "test") if version == 1 else ("mask_train_v2", "mask_test_v2")
    lists: Dict[str, List[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    for pid in train_pids:
        for i, cam in enumerate(cams[:3]):
            for k in range(2):
                rel = f"{pid:04d}/{pid:04d}_{i * 2 + k:03d}_{cam:02d}_0303morning_{100 + k:04d}_{k}.jpg"
                write_image(root / train_dir / rel, _color(pid))
                lists["val" if k < val_per_id and i == 0 else "train"].append(f"{rel} {pid}")
    for pid in test_pids:
        for i, cam in enumerate(cams):
            rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0113noon_{200 + i:04d}_0.jpg"
            write_image(root / test_dir / rel, _color(pid + 100))
            lists["query" if i == 0 else "gallery"].append(f"{rel} {pid}")
    for key, lines in lists.items():
        (root / f"list_{key}.txt").write_text("\n".join(lines) + "\n")
    return root


def torchreid_msmt17_stats(root: Path, with_val: bool = False) -> Dict[str, int]:
    """torchreid's MSMT17 ``process_dir`` (pid from the list, camera = 3rd ``_`` field - 1)."""

    def process(list_name: str) -> List[Tuple[int, int]]:
        out = []
        for line in (root / list_name).read_text().splitlines():
            if not line.strip():
                continue
            img_path, pid = line.split(" ")
            out.append((int(pid), int(img_path.split("_")[2]) - 1))
        return out

    train = process("list_train.txt") + (process("list_val.txt") if with_val else [])
    return _stats(train, process("list_query.txt"), process("list_gallery.txt"))


# -------------------------------------------------------------------------------------------- CUHK03


def build_cuhk03_mat(
    path: Path,
    persons_per_pair: Sequence[int] = (6, 4, 3, 2, 2),
    empty: Iterable[Tuple[str, int, int, int]] = (("labeled", 0, 1, 9), ("detected", 1, 0, 2), ("labeled", 2, 2, 7)),
    testsets: Sequence[Sequence[Tuple[int, int]]] = (((1, 2), (1, 5), (2, 1), (4, 2)), ((1, 1), (3, 3))),
) -> Path:
    """A fake ``cuhk-03.mat`` with the real HDF5 structure (MATLAB v7.3, cells of object references).

    ``labeled``/``detected``: (1, 5) references to per-pair cells; each cell array is stored as
    (10, persons) references (MATLAB's column-major order, so ``.T`` gives persons x 10); each image is
    stored as (3, W, H) uint8; an empty cell is a (2,) uint64 zero array, as MATLAB writes it.
    ``empty`` lists (variant, pair, person, image) cells to leave empty (0-based). ``testsets``: the
    classic splits as [camera pair, person] (1-based), stored as (2, n) doubles.
    """
    import h5py

    empties = set(empty)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        refs_group = f.create_group("#refs#")
        counter = [0]

        def store(data: np.ndarray) -> object:
            counter[0] += 1
            return refs_group.create_dataset(f"r{counter[0]}", data=data).ref

        for variant in ("labeled", "detected"):
            pair_refs = []
            for pair, n_persons in enumerate(persons_per_pair):
                cells = np.empty((10, n_persons), dtype=h5py.ref_dtype)
                for person in range(n_persons):
                    for index in range(10):
                        if (variant, pair, person, index) in empties:
                            cells[index, person] = store(np.zeros(2, dtype=np.uint64))
                        else:
                            h, w = 12 + index, 6 + pair
                            pixels = np.full((h, w, 3), (pair * 40 + person * 9 + index) % 256, dtype=np.uint8)
                            cells[index, person] = store(np.ascontiguousarray(pixels.T))
                pair_refs.append(store(cells))
            f.create_dataset(variant, data=np.array([pair_refs], dtype=h5py.ref_dtype))
        split_refs = [store(np.array(split, dtype=np.float64).T) for split in testsets]
        f.create_dataset("testsets", data=np.array([split_refs], dtype=h5py.ref_dtype))
    return path


def cuhk03_images(
    persons_per_pair: Sequence[int] = (6, 4, 3, 2, 2),
    empty: Iterable[Tuple[str, int, int, int]] = (("labeled", 0, 1, 9), ("detected", 1, 0, 2), ("labeled", 2, 2, 7)),
    variant: str = "labeled",
) -> List[Tuple[str, int]]:
    """``(torchreid image name, global label 1..N)`` of every non-empty cell, in file order."""
    empties = set(empty)
    out = []
    label = 0
    for pair, n_persons in enumerate(persons_per_pair):
        for person in range(n_persons):
            label += 1
            for index in range(10):
                if (variant, pair, person, index) not in empties:
                    view = 1 if index < 5 else 2
                    out.append((f"{pair + 1}_{person + 1:03d}_{view}_{index + 1:02d}.png", label))
    return out


def build_cuhk03_config(path: Path, images: List[Tuple[str, int]], test_labels: Iterable[int], **kw) -> Dict:
    """A new-protocol config (MATLAB v5): test identities get one query per view, the rest is gallery."""
    test = set(test_labels)
    train_idx, query_idx, gallery_idx = [], [], []
    seen_views = set()
    for i, (name, label) in enumerate(images, start=1):
        view = name.split("_")[2]
        if label not in test:
            train_idx.append(i)
        elif (label, view) not in seen_views:
            seen_views.add((label, view))
            query_idx.append(i)
        else:
            gallery_idx.append(i)
    filelist = np.empty((len(images), 1), dtype=object)
    for i, (name, _) in enumerate(images):
        filelist[i, 0] = name
    variables = {
        "filelist": filelist,
        "labels": np.array([[label] for _, label in images], dtype=np.float64),
        "camId": np.array([[int(n.split("_")[2])] for n, _ in images], dtype=np.float64),
        "train_idx": np.array(train_idx, dtype=np.float64).reshape(-1, 1),
        "query_idx": np.array(query_idx, dtype=np.float64).reshape(-1, 1),
        "gallery_idx": np.array(gallery_idx, dtype=np.float64).reshape(-1, 1),
    }
    write_mat_v5(path, variables, **kw)
    return variables


def torchreid_cuhk03_new_stats(variables: Dict) -> Dict[str, int]:
    """torchreid's ``_extract_new_split`` statistics (camera = view field - 1)."""
    names = [str(x) for x in variables["filelist"].ravel()]
    labels = variables["labels"].ravel().astype(int)

    def part(key: str) -> List[Tuple[int, int]]:
        idx = variables[key].ravel().astype(int) - 1
        return [(int(labels[i]), int(names[i].split("_")[2]) - 1) for i in idx]

    return _stats(part("train_idx"), part("query_idx"), part("gallery_idx"))


# ------------------------------------------------------------------------------------- MATLAB v5 writer


def write_mat_v5(path: Path, variables: Dict[str, object], compress: bool = True, big_endian: bool = False) -> None:
    """Write numeric arrays, strings and cell arrays of those as a level-5 MAT-file, MATLAB-style:
    doubles holding small non-negative integers are stored as uint16 data (as MATLAB does), chars as
    UTF-16 code units, variable names of up to 4 bytes in the small-element format."""
    e = ">" if big_endian else "<"

    def pad(b: bytes) -> bytes:
        return b + b"\x00" * (-len(b) % 8)

    def small(mtype: int, data: bytes) -> bytes:
        # small data element: one 32-bit word = (nbytes << 16) | type, then 4 data bytes
        return struct.pack(e + "I", (len(data) << 16) | mtype) + data.ljust(4, b"\x00")

    def matrix(name: str, value: object) -> bytes:
        name_b = name.encode("latin-1")
        name_el = small(1, name_b) if 0 < len(name_b) <= 4 else struct.pack(e + "II", 1, len(name_b)) + pad(name_b)
        if isinstance(value, str):
            value = np.array([[ord(c) for c in value]], dtype=np.uint16)
            mx_class, data_type, payload = 4, 4, value.astype(e + "u2").tobytes(order="F")
        elif isinstance(value, np.ndarray) and value.dtype == object:
            body = b"".join(matrix("", v) for v in value.ravel(order="F"))
            dims = np.array(value.shape, dtype=e + "i4").tobytes()
            flags = struct.pack(e + "II", 1, 0)
            sub = struct.pack(e + "II", 6, 8) + flags + struct.pack(e + "II", 5, len(dims)) + pad(dims) + name_el + body
            return struct.pack(e + "II", 14, len(sub)) + sub
        else:
            value = np.asarray(value)
            if value.dtype == np.float64:
                mx_class = 6
                if value.size and np.all(value == np.round(value)) and value.min() >= 0 and value.max() < 65536:
                    data_type, payload = 4, value.astype(e + "u2").tobytes(order="F")
                else:
                    data_type, payload = 9, value.astype(e + "f8").tobytes(order="F")
            elif value.dtype == np.int32:
                mx_class, data_type, payload = 12, 5, value.astype(e + "i4").tobytes(order="F")
            elif value.dtype == np.uint8:
                mx_class, data_type, payload = 9, 2, value.tobytes(order="F")
            else:
                raise TypeError(f"write_mat_v5: unsupported dtype {value.dtype}")
        dims = np.array(value.shape if value.ndim >= 2 else (1, value.size), dtype=e + "i4").tobytes()
        sub = (
            struct.pack(e + "II", 6, 8)
            + struct.pack(e + "II", mx_class, 0)
            + struct.pack(e + "II", 5, len(dims))
            + pad(dims)
            + name_el
            + struct.pack(e + "II", data_type, len(payload))
            + pad(payload)
        )
        return struct.pack(e + "II", 14, len(sub)) + sub

    header = b"MATLAB 5.0 MAT-file, written by mdpr tests".ljust(116, b" ") + b"\x00" * 8
    header += struct.pack(e + "H", 0x0100) + (b"MI" if big_endian else b"IM")
    body = b""
    for name, value in variables.items():
        el = matrix(name, value)
        if compress:
            z = zlib.compress(el)
            el = struct.pack(e + "II", 15, len(z)) + z
        body += el
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body)


# ---------------------------------------------------------------------------------------- SynergyReID


def build_synergyreid(
    base: Path,
    folder: str = "synergyreid_data",
    train_pids: Sequence[int] = (3, 5, 8, 13),
    test_pids: Sequence[int] = (1, 2, 21),
    challenge_query: int = 3,
    challenge_gallery: int = 7,
) -> Path:
    """``reid_training/``, ``reid_test/{query,gallery}``, ``reid_challenge/{query,gallery}`` (.jpeg)."""
    root = base / folder
    for pid in train_pids:
        for seq in range(2):
            for frame in range(3):
                write_image(root / "reid_training" / f"{pid}_{seq}_{frame}.jpeg", _color(pid))
    for pid in test_pids:
        write_image(root / "reid_test" / "query" / f"{pid}_9_0.jpeg", _color(pid))
        for frame in range(1, 5):
            write_image(root / "reid_test" / "gallery" / f"{pid}_9_{frame}.jpeg", _color(pid))
    for n in range(challenge_query):
        write_image(root / "reid_challenge" / "query" / f"{n}.jpeg")
    for n in range(challenge_gallery):
        write_image(root / "reid_challenge" / "gallery" / f"{n}.jpeg")
    (root / "reid_training" / "notes.txt").write_text("ignored\n")
    return root


def fastreid_synergy_stats(root: Path, challenge: bool = False) -> Dict[str, int]:
    """The MDPR code's SynergyReID ``process_dir`` (camera 1 for gallery, else 0)."""

    def process(sub: str, labelled: bool, camid: int) -> List[Tuple[int, int]]:
        out = []
        for path in (root / sub).glob("*.jpeg"):
            pattern = r"([-\d]+)_(\d)" if labelled else r"([-\d]+)"
            out.append((int(re.search(pattern, path.name).group(1)), camid))
        return out

    test = "reid_challenge" if challenge else "reid_test"
    return _stats(
        process("reid_training", True, 0), process(f"{test}/query", not challenge, 0), process(f"{test}/gallery", not challenge, 1)
    )


# ---------------------------------------------------------------------------------------------- folder


def build_folder_dataset(base: Path, with_cameras: bool = True, names: Optional[Dict[str, List[str]]] = None) -> Path:
    """``{train,query,gallery}/<identity>/<image>``; camera ``c<N>`` in the names when ``with_cameras``."""
    names = names or {"train": ["5", "17", "40"], "query": ["100", "101"], "gallery": ["100", "101", "0"]}
    root = base / "custom"
    for split, idents in names.items():
        for ident in idents:
            for k in range(3):
                cam = (k % 2) + 1 if split != "query" else 1
                cam = cam if split != "gallery" else 2 + (k % 2)
                fname = f"img{k}_c{cam}.png" if with_cameras else f"img{k}.png"
                path = root / split / ident / fname
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 16), (10, 20, 30)).save(path)
    return root
