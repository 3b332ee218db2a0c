"""``mdpr prepare``'s library side: find the dataset under ROOT (or extract it), parse, verify, register."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from mdpr.data.archive import extract_archive, extracted_folder, extraction_started, find_archives, is_archive
from mdpr.data.datasets import DEMO, canonical_name, get_spec, resolve_name
from mdpr.data.datasets.base import ParsedDataset, PrepareOptions, relabel_train
from mdpr.data.records import Manifest, Record, build_manifest, check_name, register
from mdpr.errors import MdprError

#: ``progress(done, total, stage)``; stage is e.g. "extracting X.zip", "verifying images"
Progress = Optional[Callable[[int, int, str], None]]

_FLAGS = {
    "with_distractors": "--with-distractors",
    "with_val": "--with-val",
    "variant": "--variant",
    "protocol": "--protocol",
    "challenge": "--challenge",
}


@dataclass
class PrepareResult:
    manifest: Manifest
    manifest_path: Path  #: where it was registered
    notes: List[str] = field(default_factory=list)
    unreadable: List[Tuple[Path, str]] = field(default_factory=list)  #: dropped by ``verify``


def resolve_root(root: Union[str, Path], progress: Progress = None) -> Tuple[Path, List[str]]:
    """The folder to parse: ROOT itself, or the folder a ROOT archive was safely extracted to (once)."""
    path = Path(root).expanduser()
    if not path.exists():
        raise MdprError(f"ROOT {path} does not exist; pass the folder that contains the dataset or its archive.")
    if path.is_dir():
        return path, []
    if path.suffix.lower() == ".csv":  # the folder dataset's CSV form
        return path, []
    if not is_archive(path):
        raise MdprError(
            f"ROOT {path} is a file but not a .zip or .tar archive; pass the dataset folder or the downloaded archive."
        )
    return _extract(path, progress)


def _extract(archive: Path, progress: Progress) -> Tuple[Path, List[str]]:
    if extracted_folder(archive) is not None:
        return extract_archive(archive), [f"reused {extracted_folder(archive)} (extracted from {archive.name} earlier)"]
    folder = extract_archive(archive, progress)
    return folder, [f"extracted {archive.name} into {folder}"]


def _parse_root(key: str, root: Path, options: PrepareOptions, progress: Progress) -> Tuple[ParsedDataset, List[str]]:
    """Parse ROOT; when it holds the dataset's official download, extract that first (once).

    A tree the user extracted by hand beside the archive is used as it is; a half-finished extraction
    (interrupted earlier) is completed before parsing, so a partial tree is never registered.
    """
    spec = get_spec(key)
    archives = find_archives(root, spec.archives) if root.is_dir() else []
    if len(archives) > 1:
        listed = ", ".join(p.name for p in archives)
        raise MdprError(f"{root} holds more than one {spec.title} archive ({listed}); pass the one you mean as ROOT.")
    if not archives or extracted_folder(archives[0]) is not None:
        return spec.parse(root, options, progress), []
    if not extraction_started(archives[0]):
        try:
            return spec.parse(root, options, progress), []
        except MdprError:
            pass  # not extracted yet: extract, then parse again
    _, notes = _extract(archives[0], progress)
    return spec.parse(root, options, progress), notes


def check_options(dataset: str, options: PrepareOptions) -> None:
    """An option that does not apply to ``dataset`` is an error (rather than silently ignored)."""
    spec = get_spec(dataset)
    for key in options.given():
        if key not in spec.options or dataset == DEMO:
            owners = [name for name in ("market1501", "msmt17", "cuhk03", "synergyreid") if key in get_spec(name).options]
            raise MdprError(f"{_FLAGS[key]} applies to {' and '.join(owners)} only, not to {dataset}.")


def prepare_dataset(
    dataset: str,
    root: Union[str, Path],
    name: Optional[str] = None,
    options: Optional[PrepareOptions] = None,
    verify: bool = False,
    workers: Optional[int] = None,
    progress: Progress = None,
    label: Optional[str] = None,
) -> PrepareResult:
    """Parse ``root`` as ``dataset``, optionally drop undecodable images, and register the manifest.

    ``name`` is the registration name (default: the canonical dataset name); ``label`` overrides the
    ``dataset`` field of the manifest (the demo is parsed as Market-1501 but labelled ``demo``).
    """
    key = canonical_name(dataset)
    options, version = _apply_implied(dataset, options or PrepareOptions())
    check_options(key, options)
    reg_name = check_name(name or key)
    folder, notes = resolve_root(root, progress)
    parsed, extracted = _parse_root(key, folder, options, progress)
    notes += extracted
    if version and parsed.options.get("version") != version:
        raise MdprError(
            f"'{dataset}' asks for MSMT17 {version} but {parsed.root} holds MSMT17 {parsed.options.get('version')}; "
            f"pass the MSMT17_{version} folder as ROOT, or prepare it as msmt17."
        )
    notes += parsed.notes
    train, query, gallery = parsed.train, parsed.query, parsed.gallery
    unreadable: List[Tuple[Path, str]] = []
    if verify:
        from mdpr.data.verify import verify_images

        records = train + query + gallery
        unique = sorted({r.path for r in records})
        bad = verify_images(
            [parsed.root / p for p in unique],
            workers=workers,
            progress=(lambda d, t: progress(d, t, "verifying images")) if progress else None,
        )
        unreadable = bad
        if bad:
            bad_rel = {p.relative_to(parsed.root).as_posix() for p, _ in bad}
            train, query, gallery = (_drop(rs, bad_rel) for rs in (train, query, gallery))
            notes.append(f"left {len(bad)} unreadable image{'s' if len(bad) != 1 else ''} out of the manifest")
            for split, recs in (("train", train), ("query", query), ("gallery", gallery)):
                if not recs:
                    raise MdprError(f"The {split} split is empty: none of its images under {parsed.root} can be decoded.")
    manifest = build_manifest(
        reg_name, label or key, parsed.root, train, query, gallery, options={**parsed.options}
    )
    if unreadable and manifest.train:
        # keep the train labels contiguous after dropping images
        manifest.train = relabel_train([(r.path, r.orig_pid, r.camid) for r in manifest.train])
    path = register(manifest)
    return PrepareResult(manifest=manifest, manifest_path=path, notes=notes, unreadable=unreadable)


def _apply_implied(dataset: str, options: PrepareOptions) -> Tuple[PrepareOptions, Optional[str]]:
    """The options a variant name fixes (``cuhk03-detected`` -> ``--variant detected``), and its MSMT17 version."""
    meaning = resolve_name(dataset)
    implied = meaning.implied_options() if meaning else {}
    changes: Dict[str, Any] = {}
    for key in ("variant", "protocol"):
        if key not in implied:
            continue
        given = getattr(options, key)
        if given is not None and given.lower() != implied[key]:
            raise MdprError(
                f"'{dataset}' means {_FLAGS[key]} {implied[key]}, which contradicts {_FLAGS[key]} {given}; "
                f"drop one of them."
            )
        changes[key] = implied[key]
    return (replace(options, **changes) if changes else options), implied.get("version")


def _drop(records: List[Record], bad: set) -> List[Record]:
    return [r for r in records if r.path not in bad]
