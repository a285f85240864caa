"""Both gates' decisions, passing and failing: the quality gate's floors and regression checks, and the
cold-start gate on new items assigned to a tiny snapshot (self-retrieval rate, overflowing clusters)."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.eval.gates import cold_start_gate, evaluate_gate
from mfli.index.build import build_from_encoded, encode_items
from mfli.index.delta import assign_paths
from mfli.snapshot import Snapshot
from mfli.train import TrainConfig, train

TINY = {"batch_size": 32, "epochs": 2, "progress": False, "num_threads": 1, "valid_frac": 0.0,
        "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}  # fmt: skip
_CACHE: dict[str, Snapshot] = {}


def test_quality_gate_passes_and_fails_with_numbers():
    metrics = {"recall@100": 0.30, "cold_recall@100": None, "codebook_utilisation": 0.5, "max_cluster_share": 0.1}
    thresholds = {"min_recall_at_100": 0.2, "min_cold_recall_at_100": 0.1, "min_codebook_utilisation": 0.05,
                  "max_cluster_share": 0.2, "max_regression": 0.1}
    checks = evaluate_gate(metrics, {"snapshot_id": "old", "metrics": {"recall@100": 0.32}}, thresholds)
    assert all(c.passed for c in checks) and len(checks) == 5  # cold recall: not measurable, not failed
    # a floor, a ceiling and a regression against the live snapshot all fail, each with its numbers
    bad = {**metrics, "recall@100": 0.15, "max_cluster_share": 0.4}
    failed = [c for c in evaluate_gate(bad, {"snapshot_id": "old", "metrics": {"recall@100": 0.32}}, thresholds)
              if not c.passed]
    assert [c.name for c in failed] == ["recall@100 >= min_recall_at_100", "max_cluster_share <= max_cluster_share",
                                        "recall@100 vs live old (-10% max)"]
    assert "0.1500 (threshold 0.2000) -> FAILED" in str(failed[0])
    assert failed[2].threshold == pytest.approx(0.288)
    # thresholds left out are not checked
    assert evaluate_gate(bad, None, {}) == []


@pytest.fixture()
def live(tiny_dataset) -> Snapshot:
    if "snap" not in _CACHE:
        ds = tiny_dataset
        model = train(ds, ds.interactions, TrainConfig.from_dict(TINY))
        index = build_from_encoded(encode_items(model, ds.items), model.codebooks, model.facets).index
        _CACHE["snap"] = Snapshot(model, index)
    return _CACHE["snap"]


def _new_items(live: Snapshot, items, n: int = 6):
    new = items.iloc[:n].copy()
    new["item_id"] = np.arange(1000, 1000 + n)
    emb = live.model.item_embeddings(new).numpy()
    return new["item_id"].to_numpy(np.int64), emb, assign_paths(emb, live.model.codebooks, live.index.maps)


def test_cold_start_gate_passes_new_items_that_retrieve_themselves(live, tiny_dataset):
    ids, emb, clusters = _new_items(live, tiny_dataset.items)
    report = cold_start_gate(live, ids, emb, clusters, min_self_retrieval_rate=0.5)
    assert report.passed and report.items == 6 and report.self_retrieval_rate >= 0.5
    assert report.as_dict()["failures"] == []


def test_cold_start_gate_fails_on_rate_and_overflow(live, tiny_dataset):
    ids, emb, clusters = _new_items(live, tiny_dataset.items)
    report = cold_start_gate(live, ids, emb, clusters, min_self_retrieval_rate=1.01, max_cluster_overflow=1e-3)
    assert not report.passed
    assert any("would hold more than" in f for f in report.failures)
    assert report.failures[-1].startswith(f"self-retrieval rate {report.self_retrieval_rate:.3f} < 1.010")


def test_cold_start_gate_scores_the_new_items_through_the_scan_engine(live, tiny_dataset):
    """engine="scan": the gate's self-queries go through the engine, new (delta) items merged in."""
    from mfli.serve.config import ServingConfig
    from mfli.serve.engine import EngineConfig
    from mfli.serve.engine_retriever import EngineRetriever

    scan = Snapshot(live.model, live.index, {}, ServingConfig(engine="scan", scan=EngineConfig(n_clusters=8)))
    assert isinstance(scan.retriever(), EngineRetriever)
    ids, emb, clusters = _new_items(live, tiny_dataset.items)
    report = cold_start_gate(scan, ids, emb, clusters, min_self_retrieval_rate=0.5)
    assert report.passed and report.items == 6 and report.self_retrieval_rate >= 0.5
