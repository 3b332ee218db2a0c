"""faiss indexes beside a store: exact distances, measured and tuned recall, freshness, metric, shards, appends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from indexkit import SMALL_IVFPQ, clustered, make_store

from mdpr.errors import MdprError
from mdpr.search import ExactIndex, index_dir_for, open_index, read_index_meta, search
from mdpr.search.faiss_index import FaissIndex, build_index, choose_kind, default_params, shard_ranges, update_index
from mdpr.search.index import freshness
from mdpr.store import FeatureStore, StoreMeta, StoreWriter

pytest.importorskip("faiss")

KINDS = [("flat", {}), ("hnsw", {"hnsw_m": 16}), ("ivfpq", SMALL_IVFPQ)]


def _probes(n: int = 6, dim: int = 32) -> np.ndarray:
    """New crops of the store's identities: its rows' cluster structure, other noise."""
    rng = np.random.default_rng(99)
    return clustered(2000, dim)[rng.choice(2000, n, replace=False)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize(("kind", "params"), KINDS)
def test_index_distances_are_exact_and_recall_is_measured(tmp_path: Path, kind: str, params: dict) -> None:
    path = make_store(tmp_path / "g.h5")
    with FeatureStore.open(path) as store:
        meta = build_index(store, kind, queries=100, **params)
        assert meta is not None and meta.kind == kind and meta.rows == 2000
        assert set(meta.recall) >= {"at_1", "at_10", "at_100", "queries", "settings"}
        assert meta.recall["queries"] == 100 and 0.9 <= meta.recall["at_10"] <= 1.0
        on_disk = json.loads((index_dir_for(path) / "index.json").read_text())
        assert on_disk["recall"] == meta.recall and on_disk["metric"] == "cosine" and on_disk["normalized"] is True
        index, note = open_index(store, "auto")
        assert isinstance(index, FaissIndex) and "index built" in note and "recall@10" in note
        got = index.search(_probes(), top_k=10)
        want = search(store, _probes(), top_k=10)
        for r in range(len(got)):
            common = np.intersect1d(got.indices[r], want.indices[r])
            assert common.size >= 8
            for row in common:  # the same row gets exactly the same distance whichever way it was found
                assert got.distances[r][got.indices[r] == row][0] == want.distances[r][want.indices[r] == row][0]
            assert np.all(np.diff(got.distances[r]) >= 0)
        # re-ranking of the shortlist stays available
        reranked = index.search(_probes(), top_k=5, rerank=True, rerank_pool=40)
        assert reranked.indices.shape == (6, 5)


def test_recall_target_tunes_nprobe_and_impossible_settings_say_the_best(tmp_path: Path) -> None:
    path = make_store(tmp_path / "g.h5", n=3000, dim=32)
    with FeatureStore.open(path) as store:
        loose = build_index(store, "ivfpq", recall=0.5, queries=100, **SMALL_IVFPQ)
        tight = build_index(store, "ivfpq", recall=0.99, queries=100, **SMALL_IVFPQ)
        assert loose is not None and tight is not None
        assert loose.search["nprobe"] <= tight.search["nprobe"] <= 16
        assert tight.recall["at_10"] >= 0.99 and tight.recall["target"] == 0.99
        with pytest.raises(MdprError, match=r"nprobe 17 must be between 1 and the index's 16 lists; the most is 16"):
            open_index(store, "auto", nprobe=17)
        with pytest.raises(MdprError, match="nprobe applies to IVF-PQ"):
            build_index(store, "hnsw", hnsw_m=8, queries=50)
            open_index(store, "auto", nprobe=4)
        before = (index_dir_for(path) / "index.json").read_text()
        # one 2-bit sub-quantizer cannot separate 50 identities: recall 1.0 is out of reach
        with pytest.raises(MdprError, match=r"The recall target 1 is not reachable .* best measured recall@10 is 0\.\d+ .*ask for at most"):
            build_index(store, "ivfpq", recall=1.0, nlist=4, m=1, nbits=2, queries=50)
        assert (index_dir_for(path) / "index.json").read_text() == before  # nothing replaced
        assert sorted(p.name for p in index_dir_for(path).glob("*.faiss")) == [
            s["file"] for s in read_index_meta(path).shards]
        with pytest.raises(MdprError, match="m 5 .* must divide the feature size 32"):
            build_index(store, "ivfpq", nlist=4, m=5)
        with pytest.raises(MdprError, match="nlist 5000 must be between 1 and the store's 3000 rows"):
            build_index(store, "ivfpq", nlist=5000)


def test_stale_index_is_refused_with_the_rebuild_command(tmp_path: Path) -> None:
    path = make_store(tmp_path / "g.h5")
    with FeatureStore.open(path) as store:
        build_index(store, "flat", queries=50)
    make_store(path, seed=5)  # re-extracted: same row count, other rows
    with FeatureStore.open(path) as store:
        with pytest.raises(MdprError, match=r"built for another version of the store .*rebuild it with "
                                            r"`mdpr index build --gallery .*g\.h5 --kind flat`"):
            open_index(store, str(index_dir_for(path)))
        index, note = open_index(store, "auto")  # auto never uses it silently: exact search, and says why
        assert isinstance(index, ExactIndex) and "Exact search, not the index" in note and "rebuild" in note


def test_index_of_another_metric_or_normalisation_is_refused(tmp_path: Path) -> None:
    path = make_store(tmp_path / "g.h5", normalized=False)
    with FeatureStore.open(path) as store:
        build_index(store, "flat", queries=50)
        with pytest.raises(MdprError, match=r"built for cosine distances, not euclidean; .*--metric euclidean"):
            open_index(store, str(index_dir_for(path)), metric="euclidean")
        index, note = open_index(store, "auto", metric="euclidean")
        assert isinstance(index, ExactIndex) and "cosine" in note
        meta = read_index_meta(store)
    # the same rows, now stored normalised: the index no longer describes them
    feats = clustered(2000, 32)
    make_store(path, normalized=True, features=feats)
    meta_json = json.loads((index_dir_for(path) / "index.json").read_text())
    with FeatureStore.open(path) as store:
        state, sentence = freshness(store, meta)
        assert state == "stale" and "normalisation" in sentence and meta_json["normalized"] is False
        with pytest.raises(MdprError, match="normalisation"):
            open_index(store, str(index_dir_for(path)))


def test_euclidean_index_gives_exact_euclidean_distances(tmp_path: Path) -> None:
    path = make_store(tmp_path / "g.h5", normalized=False, dtype="float32")
    with FeatureStore.open(path) as store:
        build_index(store, "hnsw", metric="euclidean", hnsw_m=16, queries=50)
        index, _ = open_index(store, "auto", metric="euclidean")
        got, want = index.search(_probes(), top_k=10), search(store, _probes(), top_k=10, metric="euclidean")
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.distances, want.distances)


@pytest.mark.parametrize(("kind", "params"), KINDS)
def test_append_updates_the_index_incrementally(tmp_path: Path, kind: str, params: dict) -> None:
    path = make_store(tmp_path / "g.h5", n=1500)
    extra = clustered(400, 32, seed=3)
    with FeatureStore.open(path) as store:
        first = build_index(store, kind, queries=50, shards=2, **params)
    meta = StoreMeta(dim=32, dtype="float16", fingerprint="f" * 16, normalized=True)
    with StoreWriter(path, meta) as writer:
        writer.add(extra, [f"new{i}.jpg" for i in range(400)])
    with FeatureStore.open(path) as store:
        assert freshness(store, first)[0] == "appended"
        index, note = open_index(store, "auto")
        assert isinstance(index, ExactIndex) and "mdpr index update" in note
        updated = update_index(store)
        assert updated.rows == 1900 and updated.shards[-1]["stop"] == 1900 and updated.params == first.params
        assert [s["start"] for s in updated.shards] == [s["start"] for s in first.shards]
        index, note = open_index(store, "auto")
        assert isinstance(index, FaissIndex)
        got = index.search(extra[:5], top_k=3)
        assert got.indices[:, 0].tolist() == list(range(1500, 1505))  # the new rows are found
        assert update_index(store).built == updated.built  # fresh: nothing to do
    make_store(path, n=1900, seed=8)  # rewritten, not appended: refused
    with FeatureStore.open(path) as store, pytest.raises(MdprError, match="rebuild it with"):
        update_index(store)


def test_shards_serve_together_and_one_by_one(tmp_path: Path) -> None:
    import faiss

    path = make_store(tmp_path / "g.h5", n=2000)
    probes = _probes()
    with FeatureStore.open(path) as store:
        single = build_index(store, "ivfpq", queries=50, **SMALL_IVFPQ)
        one, _ = open_index(store, "auto", nprobe=4)
        want = one.search(probes, top_k=10)
        cand_one = one.candidates(probes, 50)
        sharded = build_index(store, "ivfpq", queries=50, shards=3, **SMALL_IVFPQ)
        assert single is not None and sharded is not None
        assert [(s["start"], s["stop"]) for s in sharded.shards] == shard_ranges(2000, 3) == [
            (0, 667), (667, 1333), (1333, 2000)]
        files = sorted(p.name for p in index_dir_for(path).glob("*.faiss"))
        assert files == sorted(s["file"] for s in sharded.shards)  # the single-shard build's file is gone
        three, note = open_index(store, "auto", nprobe=4)
        assert "3 shards" in note
        got = three.search(probes, top_k=10)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.distances, want.distances)
        # a separate process (or host) can serve one shard: its ids + the shard's start are store rows
        rows = []
        for s in sharded.shards:
            shard = faiss.read_index(str(index_dir_for(path) / s["file"]))
            shard.nprobe = 4
            assert shard.ntotal == s["stop"] - s["start"]
            unit = probes / np.linalg.norm(probes, axis=1, keepdims=True)
            dist, ids = shard.search(unit, 50)
            rows.append((dist, np.where(ids >= 0, ids + s["start"], -1)))
        dist = np.concatenate([d for d, _ in rows], axis=1)
        ids = np.concatenate([i for _, i in rows], axis=1)
        merged = np.take_along_axis(ids, np.argsort(dist, axis=1, kind="stable"), 1)[:, :50]
        for r in range(len(probes)):
            assert set(merged[r].tolist()) == set(cand_one[r].tolist())


def test_choose_kind_from_size_and_dimension() -> None:
    kind, reason = choose_kind(50_000, 512)
    assert kind == "exact" and "no index is needed" in reason
    kind, reason = choose_kind(1_000_000, 512, memory_bytes=64 << 30)
    assert kind == "ivfpq" and "1024 lists" in reason and "kind hnsw" in reason
    kind, reason = choose_kind(5_000_000, 512, memory_bytes=24 << 30)
    assert kind == "ivfpq" and "2048 lists" in reason and "32-byte codes" in reason and "25.77 GB" in reason


def test_cpu_codes_are_fast_scan_and_gpu_codes_are_8_bit(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    assert default_params("ivfpq", 1_000_000, 512) == {"nlist": 1024, "m": 64, "nbits": 4}
    assert default_params("ivfpq", 1_000_000, 512, gpu=True)["nbits"] == 8
    path = make_store(tmp_path / "g.h5")
    with FeatureStore.open(path) as store:
        fast = build_index(store, "ivfpq", nlist=16, m=8, queries=50)
        assert fast is not None and fast.params["nbits"] == 4
        index = FaissIndex.load(store, index_dir_for(path), fast)
        assert isinstance(faiss.downcast_index(index.faiss_index), faiss.IndexIVFPQFastScan)
        plain = build_index(store, "ivfpq", nlist=16, m=8, nbits=6, queries=50)
        assert plain is not None
        index = FaissIndex.load(store, index_dir_for(path), plain)
        assert type(faiss.downcast_index(index.faiss_index)) is faiss.IndexIVFPQ


def test_auto_below_the_threshold_writes_nothing(tmp_path: Path) -> None:
    path = make_store(tmp_path / "g.h5")
    with FeatureStore.open(path) as store:
        assert build_index(store, "auto") is None
        assert not index_dir_for(path).exists()
        index, note = open_index(store, "auto")
        assert isinstance(index, ExactIndex) and "no index" in note
        with pytest.raises(MdprError, match="nprobe tunes an IVF-PQ or HNSW index"):
            open_index(store, "exact", nprobe=3)


def test_faiss_missing_is_one_sentence_with_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_store(tmp_path / "g.h5")
    with FeatureStore.open(path) as store:
        build_index(store, "flat", queries=20)
        monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
        with pytest.raises(MdprError, match=r'needs the faiss library, which is not installed; install it with '
                                            r'pip install "mdpr\[faiss\]"'):
            build_index(store, "hnsw")
        with pytest.raises(MdprError, match=r"mdpr\[faiss\]"):
            open_index(store, "auto")
        index, _ = open_index(store, "exact")  # exact search never needs faiss
        assert index.search(_probes(1), top_k=3).indices.shape == (1, 3)


def test_gpu_without_a_gpu_is_one_sentence(tmp_path: Path) -> None:
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("this machine has a faiss GPU")
    path = make_store(tmp_path / "g.h5")
    with FeatureStore.open(path) as store, pytest.raises(MdprError, match="needs faiss with GPU support"):
        build_index(store, "ivfpq", gpu=True, **SMALL_IVFPQ)
