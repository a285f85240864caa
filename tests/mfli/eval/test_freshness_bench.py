"""Freshness benchmark at tiny sizes: every stage is timed, the reloaded live retriever serves the new
items (and did not before), and the ANN figures are there."""

from __future__ import annotations

import json

import pytest

from mfli.eval.freshness_bench import FreshnessBenchConfig, format_tables, run_freshness_bench


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    cfg = FreshnessBenchConfig(new_items=150, base_items=1500, n_users=200, n_interactions=4000, dim=16, hidden=32,
                               train_steps=8, probes=32, build_threads=1,
                               work_dir=str(tmp_path_factory.mktemp("fresh")))
    return run_freshness_bench(cfg, log=lambda s: None)


def test_stages_and_totals(result):
    json.dumps(result)
    m = result["mfli"]
    assert set(m["stages_s"]) == {"encode", "assign", "write", "reload"}
    assert all(v > 0 for v in m["stages_s"].values())
    assert m["total_s"] == pytest.approx(sum(m["stages_s"].values()))
    assert m["delta_rows"] == 150 * 2  # one row per (item, facet)
    assert result["data"]["new_items"] == 150 and result["data"]["base_items"] == 1500


def test_new_items_are_served_only_after_the_delta(result):
    m = result["mfli"]
    assert m["probe_served_fraction_before_delta"] == 0.0
    assert m["probe_served_fraction"] >= 0.9  # queried by their own embedding


def test_ann_paths(result):
    h = result["ann"]["hnsw"]
    assert h["full_rebuild_s"] > 0 and h["incremental_add_s"] > 0 and h["base_build_s"] > 0
    p = result["paths_s"]
    enc = result["mfli"]["stages_s"]["encode"]
    assert p["hnsw_full_rebuild"] == pytest.approx(enc + h["full_rebuild_s"])
    assert result["speedup"]["hnsw_full_rebuild_over_mfli"] == pytest.approx(p["hnsw_full_rebuild"] / p["mfli_delta"])
    assert "HNSW full rebuild" in format_tables(result)
