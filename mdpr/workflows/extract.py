"""``mdpr extract``: embed image files into a feature store (resumable, appendable)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from mdpr.errors import MdprError
from mdpr.inference import FeatureExtractor, ImageItem, Progress

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
