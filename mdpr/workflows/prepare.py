"""``mdpr prepare DATASET ROOT``: convert a downloaded dataset (or generate the demo) and register it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from mdpr.data.datasets.base import PrepareOptions
from mdpr.data.prepare import PrepareResult, prepare_dataset
from mdpr.data.records import registry_dir
from mdpr.errors import MdprError
from mdpr.fileio import check_output_folder

#: ``progress(done, total, stage)``
Progress = Callable[[int, int, str], None]

#: The demo generator's defaults (the other ``demo_*`` settings are refused for real datasets when changed).
DEMO_DEFAULTS = {"ids": 100, "images_per_id": 16, "cameras": 4, "size": "128x64", "seed": 0}


@dataclass
class PrepareRequest:
    """What to prepare; the ``demo`` fields apply to ``dataset="demo"`` only."""

    dataset: str
    root: Path
    name: Optional[str] = None
    options: PrepareOptions = field(default_factory=PrepareOptions)
    verify: bool = False
    workers: Optional[int] = None
    ids: int = 100
    images_per_id: int = 16
    cameras: int = 4
    size: str = "128x64"
    seed: int = 0


@dataclass
class PrepareOutcome:
    """The registered manifest and what happened on the way (notes in the order they happened)."""

    result: PrepareResult
    notes: List[str]

    @property
    def unreadable(self) -> List[Tuple[Path, str]]:
        return list(self.result.unreadable)


def prepare(request: PrepareRequest, progress: Optional[Progress] = None) -> PrepareOutcome:
    """Convert (or generate, for the demo) and register a dataset."""
    from mdpr.data.datasets import DEMO, canonical_name

    key = canonical_name(request.dataset)
    changed = [flag for flag, default in DEMO_DEFAULTS.items() if getattr(request, flag) != default]
    if key != DEMO and changed:
        used = ", ".join(changed)
        raise MdprError(f"{used} appl{'ies' if len(changed) == 1 else 'y'} to `mdpr prepare demo` only.", keys=changed)
    check_output_folder(registry_dir(), "the dataset registry (MDPR_HOME/datasets)")
    if key == DEMO:
        check_output_folder(request.root, "the demo's image folder")
    notes: List[str] = []
    label = None
    if key == DEMO:
        from mdpr.data.synthetic import generate_demo, parse_size

        summary = generate_demo(
            request.root, num_ids=request.ids, images_per_id=request.images_per_id, cameras=request.cameras,
            size=parse_size(request.size), seed=request.seed,
            progress=(lambda d, t: progress(d, t, "generating demo images")) if progress else None,
        )
        notes.append(f"generated the demo in {summary.root}" if summary.generated else f"reused the demo in {summary.root}")
        label = DEMO
    result = prepare_dataset(
        "market1501" if key == DEMO else request.dataset,  # the name as typed: it may choose a variant
        request.root,
        name=request.name or key,
        options=request.options,
        verify=request.verify,
        workers=request.workers,
        progress=progress,
        label=label,
    )
    return PrepareOutcome(result, notes + list(result.notes))
