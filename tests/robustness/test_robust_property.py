"""Property: random ``--set key=value`` pairs and random option values given to train, extract, query and evaluate
end in success or one sentence, never a traceback (no work starts: inputs are missing, or training is stubbed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robustkit import cli
from trainkit import TINY, make_dataset

import mdpr.workflows.train
from mdpr.config import config_keys

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

values = st.one_of(
    st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "[]", "[0,0]", "[96]", "[64,32]", "{a: 1}", "''", "nan", "-1", "1e400",
                     "Adam", "cosine", "[1, [2]]", "!!python/object:os.system", "\x00", "é"]),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(config_keys()), st.text(max_size=15))


def _settled(result) -> None:
    """Success, or a refusal in one sentence; never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


@pytest.fixture
def stubbed_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_dataset(tmp_path / "data")
    monkeypatch.setattr(mdpr.workflows.train, "_train_planned", lambda *args: None)  # plan and validate only
    return tmp_path / "run"


@SETTINGS
@given(pairs=st.lists(st.tuples(keys, values), max_size=3))
def test_train_set_pairs(stubbed_training: Path, pairs) -> None:
    sets = [a for k, v in pairs for a in ("--set", f"{k}={v}")]
    tiny = [a for item in TINY for a in ("--set", item)]
    _settled(cli("train", "--dataset", "tiny", "--recipe", "demo-cpu", "--init", "none", "--output",
                 stubbed_training, *tiny, *sets))


numbers = st.one_of(st.integers(-10**25, 10**25).map(str), st.floats().map(str), st.text(max_size=6))


@SETTINGS
@given(epochs=numbers, period=numbers, procs=numbers)
def test_train_numeric_options(stubbed_training: Path, epochs, period, procs) -> None:
    _settled(cli("train", "--dataset", "tiny", "--init", "none", "--output", stubbed_training, "--epochs", epochs,
                 "--eval-period", period, "--procs", procs))


@SETTINGS
@given(batch=numbers, threads=numbers, workers=numbers, every=numbers)
def test_extract_options(tmp_path: Path, batch, threads, workers, every) -> None:
    _settled(cli("extract", "--images", tmp_path / "missing", "--weights", tmp_path / "w.pt", "--output",
                 tmp_path / "s.h5", "--batch-size", batch, "--threads", threads, "--workers", workers,
                 "--checkpoint-every", every))


@SETTINGS
@given(top_k=numbers, pool=numbers, metric=st.text(max_size=10))
def test_query_options(tmp_path: Path, top_k, pool, metric) -> None:
    _settled(cli("query", tmp_path / "p.jpg", "--gallery", tmp_path / "g.h5", "--top-k", top_k, "--rerank-pool", pool,
                 "--metric", metric))


@SETTINGS
@given(k1=numbers, k2=numbers, lam=numbers, max_rank=numbers)
def test_evaluate_options(tmp_path: Path, k1, k2, lam, max_rank) -> None:
    _settled(cli("evaluate", "--dataset", "nosuch", "--weights", tmp_path / "w.pt", "--k1", k1, "--k2", k2,
                 "--lambda", lam, "--max-rank", max_rank))
