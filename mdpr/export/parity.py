"""The parity check every export runs: the exported file against PyTorch on several batch sizes.

Peers' users report exported ReID models whose embeddings go wrong once the batch size differs from the
one used while tracing (a batch dimension frozen into a reshape). So every export feeds the same random
images (integer pixels, as decoded crops have) to PyTorch in mdpr's 0..255 convention and to the file in
its own input convention, for every batch size, and compares the features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from mdpr.export.conventions import from_raw255
from mdpr.export.runtime import Runner

#: fp32 limits: max |file - torch| / max |torch| (observed ~1e-6) and the smallest row cosine
PARITY_RTOL = 1e-4
PARITY_MIN_COSINE = 0.99999
#: an INT8 file is judged by its accuracy on a labelled dataset; its parity check only catches a broken graph
INT8_MIN_COSINE = 0.9


@dataclass
class BatchParity:
    batch: int
    max_abs_diff: float
    max_rel_diff: float  #: max_abs_diff / max |torch|
    min_cosine: float


@dataclass
class ParityReport:
    """Per-batch differences of one exported file against PyTorch."""

    backend: str
    input_convention: str
    precision: str
    batches: List[BatchParity] = field(default_factory=list)

    @property
    def min_cosine(self) -> float:
        return min((b.min_cosine for b in self.batches), default=1.0)

    @property
    def max_abs_diff(self) -> float:
        return max((b.max_abs_diff for b in self.batches), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((b.max_rel_diff for b in self.batches), default=0.0)

    @property
    def passed(self) -> bool:
        if self.precision == "int8":
            return self.min_cosine >= INT8_MIN_COSINE
        return self.max_rel_diff <= PARITY_RTOL and self.min_cosine >= PARITY_MIN_COSINE

    @property
    def limits(self) -> str:
        if self.precision == "int8":
            return f"min cosine >= {INT8_MIN_COSINE:g}"
        return f"relative difference <= {PARITY_RTOL:g} and min cosine >= {PARITY_MIN_COSINE:g}"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "backend": self.backend, "input_convention": self.input_convention, "precision": self.precision,
            "passed": self.passed, "min_cosine": self.min_cosine, "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "batches": [vars(b) for b in self.batches],
        }


def random_pixels(batch: int, size: Tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(batch, 3, H, W) float32 images with integer values 0..255."""
    return torch.randint(0, 256, (batch, 3, int(size[0]), int(size[1])), generator=generator).float()


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = np.einsum("ij,ij->i", a64, b64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-30)


def check_parity(model: torch.nn.Module, runner: Runner, batch_sizes: Sequence[int] = (1, 7, 32),
                 seed: int = 0) -> ParityReport:
    """Compare ``runner`` with the eval-mode ``model`` (0..255 input) on random images of each batch size."""
    meta = runner.metadata
    report = ParityReport(runner.backend, meta.input_convention, meta.precision)
    gen = torch.Generator().manual_seed(seed)
    for n in batch_sizes:
        pixels = random_pixels(int(n), meta.input_size, gen)
        with torch.inference_mode():
            ref = model(pixels).float().numpy()
        got = runner.run(from_raw255(pixels.numpy(), meta.input_convention))
        if got.shape != ref.shape:
            from mdpr.errors import MdprError

            raise MdprError(
                f"The exported model {runner.path} returned shape {got.shape} for batch size {n}, expected {ref.shape}; "
                "do not use it, and report the problem."
            )
        diff = float(np.abs(got - ref).max())
        report.batches.append(BatchParity(
            batch=int(n), max_abs_diff=diff, max_rel_diff=diff / max(float(np.abs(ref).max()), 1e-12),
            min_cosine=float(row_cosines(got, ref).min()),
        ))
    return report
