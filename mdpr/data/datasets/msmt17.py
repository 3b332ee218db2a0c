"""MSMT17: images listed in ``list_{train,val,query,gallery}.txt`` (lines ``<relative path> <pid>``).

V1 (``MSMT17_V1/{train,test}/``) and V2 (``MSMT17_V2/{mask_train_v2,mask_test_v2}/``) differ only in
the image folder names. As torchreid and fast-reid: train on ``list_train.txt`` (``--with-val`` adds
``list_val.txt``, the peers' ``combineall``), pids come from the list files (not the file names), the
camera is the third ``_``-field of the file name, 1-based, made 0-based. As fast-reid (and the MDPR
code), query/gallery pids are offset by the number of train identities so that test identity 0 is not
mistaken for a distractor and never collides with a train pid; ``orig_pid`` keeps the listed pid.
The statistics are the same either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

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
from mdpr.errors import MdprError

#: version -> (train image folder, test image folder)
VERSIONS: Dict[str, Tuple[str, str]] = {
    "V1": ("train", "test"),
    "V2": ("mask_train_v2", "mask_test_v2"),
}
LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")


def _version(folder: Path) -> str:
    """"V1" / "V2" when ``folder`` holds that version's image folders and list files, else ""."""
    if not all((folder / name).is_file() for name in LISTS):
        return ""
    for version, (train_dir, test_dir) in VERSIONS.items():
        if (folder / train_dir).is_dir() and (folder / test_dir).is_dir():
            return version
    return ""


def read_list(folder: Path, list_name: str, image_dir: str) -> List[Tuple[str, int, int]]:
    """``(relative path, pid, camid)`` for each line of a list file; listed images must exist."""
    path = folder / list_name
    items: List[Tuple[str, int, int]] = []
    missing: List[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rel, pid = parts[0], int(parts[1])
            camid = int(Path(rel).name.split("_")[2]) - 1
        except (IndexError, ValueError):
            raise MdprError(
                f"Line {lineno} of {path} is not '<path> <pid>' with a name like 0000_000_01_0303morning_0015_0.jpg: "
                f"{line.strip()!r}."
            ) from None
        rel_path = f"{image_dir}/{rel.replace(chr(92), '/')}"
        if not (folder / rel_path).is_file():
            missing.append(rel_path)
        items.append((rel_path, pid, camid))
    if missing:
        raise MdprError(
            f"{len(missing)} image(s) listed in {path} are missing under {folder} (first: {missing[0]}); "
            "re-extract the dataset."
        )
    return items


def parse_msmt17(root: Path, opts: PrepareOptions, progress: Progress = None) -> ParsedDataset:
    folder = find_dataset_folder(
        root,
        lambda p: bool(_version(p)),
        "MSMT17",
        "list_train.txt, list_query.txt, list_gallery.txt and the folders train/ + test/ (V1) "
        "or mask_train_v2/ + mask_test_v2/ (V2)",
        ("MSMT17_V2", "MSMT17_V1", "MSMT17"),
    )
    version = _version(folder)
    train_dir, test_dir = VERSIONS[version]
    train = read_list(folder, "list_train.txt", train_dir)
    if opts.with_val:
        if not (folder / "list_val.txt").is_file():
            raise MdprError(f"--with-val needs {folder / 'list_val.txt'}, which does not exist.")
        train += read_list(folder, "list_val.txt", train_dir)
    query = read_list(folder, "list_query.txt", test_dir)
    gallery = read_list(folder, "list_gallery.txt", test_dir)
    offset = len({pid for _, pid, _ in train})
    parsed = ParsedDataset(
        root=folder,
        train=relabel_train(train),
        query=test_records(query, "query", offset),
        gallery=test_records(gallery, "gallery", offset),
        options={"version": version, **({"with_val": True} if opts.with_val else {})},
        notes=[f"MSMT17 {version}; query/gallery pids offset by {offset} (the number of train identities)"],
    )
    lists = {"train": "list_train.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}
    require_nonempty(parsed, {s: str(folder / n) for s, n in lists.items()}, "the list file has no entries")
    return parsed


MSMT17 = DatasetSpec(
    name="msmt17",
    title="MSMT17",
    parse=parse_msmt17,
    aliases=("msmt",),
    archives=("MSMT17_V1", "MSMT17_V2", "MSMT17"),
    options=("with_val",),
    layout="MSMT17_V1/{train,test}/ or MSMT17_V2/{mask_train_v2,mask_test_v2}/ with list_{train,val,query,gallery}.txt",
)
