"""Serving benchmark at tiny sizes: the JSON holds every method's build cost and sweep points with sane
numbers, the equal-recall interpolation is right, and the CLI writes the JSON and the plot."""

from __future__ import annotations

import importlib.util
import json
import mmap

import numpy as np
import pytest

from mfli.eval.serving_bench import (
    MemoryMeter,
    ServingBenchConfig,
    format_tables,
    qps_at_recall,
    recall_at_k,
    run_serving_bench,
)

TINY = {"n_items": 3000, "n_users": 300, "n_interactions": 6000, "n_queries": 64, "b1_queries": 8, "batch_size": 32,
        "k": 20, "dim": 16, "hidden": 32, "codes": 8, "layers": 2, "train_steps": 8, "build_threads": 1,
        "mfli_sweep": ((2, None), (8, None)), "hnsw_ef": (20, 80), "ivf_nprobe": (1, 8, 76), "dr_beams": (3,),
        "dr_items": 0, "scan_sweep": ((4, 50), (10_000, 3000)), "ivfpq_sweep": ((2, 2), (76, 8)),
        "scann_sweep": ((2, 40), (30, 400))}  # fmt: skip


def test_qps_at_recall_interpolates_on_the_pareto_front():
    pts = [(0.5, 1000.0), (0.9, 100.0), (0.7, 50.0)]  # (0.7, 50) is dominated by (0.9, 100)
    assert qps_at_recall(pts, 0.4) == 1000.0  # below the curve: its fastest point
    assert qps_at_recall(pts, 0.9) == pytest.approx(100.0)
    assert qps_at_recall(pts, 0.7) == pytest.approx(np.sqrt(1000.0 * 100.0))  # log-linear midpoint
    assert qps_at_recall(pts, 0.95) is None  # never reached


def test_recall_at_k_ignores_padding():
    ref = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    got = np.array([[4, 3, 9, -1], [6, 7, 8, 5]])
    assert recall_at_k(got, ref) == pytest.approx((0.5 + 1.0) / 2)


def test_memory_meter_sees_a_transient_allocation():
    # an anonymous mapping gets fresh pages and returns them on close; a 64 MiB numpy array may instead
    # reuse heap memory earlier tests left resident (seen in the full suite), which raises no RSS at all
    with MemoryMeter() as mem:
        buf = mmap.mmap(-1, 64 * 2**20)
        chunk = b"\1" * 2**20
        for _ in range(64):  # touch every page
            buf.write(chunk)
        buf.close()
    rep = mem.report()
    assert rep["peak_rss_delta_bytes"] >= 48 * 2**20
    assert rep["retained_rss_delta_bytes"] < rep["peak_rss_delta_bytes"]


@pytest.fixture(scope="module")
def tiny_result():
    return run_serving_bench(ServingBenchConfig(**TINY), log=lambda s: None)


def test_json_has_every_method_with_sane_numbers(tiny_result):
    r = tiny_result
    json.dumps(r)  # plain JSON
    assert r["embedding_source"] == "trained_model_content_only"
    assert "co-trained" in r["codebook_source"]
    assert set(r["methods"]) == {"exact", "mfli", "mfli_scan", "hnsw", "ivf", "ivfpq_fs", "scann", "dr"}
    # ScaNN is an optional package (the bench extra): without it the row says so and how to install it
    has_scann = importlib.util.find_spec("scann") is not None
    if not has_scann:
        assert "scann==1.4.2" in r["methods"]["scann"]["skipped"] and "build" not in r["methods"]["scann"]
    for name, m in r["methods"].items():
        if name == "scann" and not has_scann:
            continue
        b = m["build"]
        assert b["seconds"]["total"] >= 0 and b["peak_rss_delta_bytes"] >= 0, name
        assert m["sweep"], name
        for p in m["sweep"]:
            assert 0.0 <= p["recall"] <= 1.0, (name, p)
            assert p["qps_b1"] > 0 and p["qps_b32"] > 0, (name, p)
            assert 0 < p["p50_ms"] <= p["p99_ms"], (name, p)
            assert p["cpu_per_wall"] > 0, (name, p)  # recorded for every point (> 1: more cores than allowed)
    assert r["methods"]["exact"]["sweep"][0]["recall"] == pytest.approx(1.0)
    for name in ("mfli", "mfli_scan", "hnsw", "ivf", "ivfpq_fs", *(("scann",) if has_scann else ())):
        assert r["methods"][name]["n_items"] == 3000
        b = r["methods"][name]["build"]
        assert b["serving_bytes"] >= b["index_bytes"] >= 3000 * 2 * 16 * 4  # holds the vectors
    # full search settings find (nearly) everything exact search finds
    assert r["methods"]["ivf"]["sweep"][-1]["recall"] > 0.99  # nprobe = nlist scans every list
    assert r["methods"]["hnsw"]["sweep"][-1]["recall"] > 0.9
    assert max(p["recall"] for p in r["methods"]["mfli"]["sweep"]) > 0.9
    # the scan engine reading every cluster with a short list of the whole catalogue is exact search
    assert r["methods"]["mfli_scan"]["sweep"][-1]["recall"] == pytest.approx(1.0)
    assert r["methods"]["mfli_scan"]["sweep"][0]["recall"] < r["methods"]["mfli_scan"]["sweep"][-1]["recall"]
    assert r["methods"]["ivfpq_fs"]["sweep"][-1]["recall"] > 0.95  # every list, 8k reordered exactly
    if has_scann:
        assert r["methods"]["scann"]["sweep"][-1]["recall"] > 0.9  # every leaf, 400 reordered exactly
    # a wider beam reads more clusters: recall does not drop
    mf = r["methods"]["mfli"]["sweep"]
    assert mf[1]["recall"] >= mf[0]["recall"]
    dr = r["methods"]["dr"]
    assert dr["n_items"] == 3000 and dr["sweep"][0]["union_mean"] > 0
    m = r["methods"]["mfli"]
    assert all(b["clusters_after"] > 0 for b in m["balance"])
    # merge="sum" serving keeps facet-ordered copies: (N, d) + (N, F * d) per facet on top of the index
    assert m["build"]["serving_bytes"] - m["build"]["index_bytes"] == 3000 * 2 * (16 + 2 * 16) * 4


def test_equal_recall_and_headline(tiny_result):
    r = tiny_result
    for key in ("qps_b1", "qps_b32"):
        er = r["equal_recall"][key]
        rows = [row for row in er["by_target"] if row.get("mfli") and row.get("hnsw")]
        assert rows and all(row["mfli_over_hnsw"] == pytest.approx(row["mfli"] / row["hnsw"]) for row in rows)
        h = r["headline"][key]
        assert h["ratio"] is None or (h["ratio"] > 0 and h["meets_target"] == (h["ratio"] >= 1.5))
    text = format_tables(r)
    assert "| mfli | beam 8, clusters all |" in text and "Equal recall" in text
    assert "| mfli_scan | clusters 4, short list 50 |" in text and "fastest baseline" in text
    for key in ("qps_b1", "qps_b32"):
        for row in r["headline_fastest"][key]:
            assert row["recall"] in (0.9, 0.95)
            if row["fastest_baseline"] is not None:
                # the fastest baseline is the fastest of the four at that recall
                er = {x["recall"]: x for x in r["equal_recall"][key]["by_target"]}[row["recall"]]
                qs = [er.get(n) for n in ("hnsw", "ivf", "ivfpq_fs", "scann") if er.get(n)]
                assert row["fastest_qps"] == pytest.approx(max(qs))
                if row.get("mfli_scan"):
                    assert row["mfli_scan_over_fastest"] == pytest.approx(row["mfli_scan"] / max(qs))


def test_cli_writes_json_and_plot(tmp_path):
    from typer.testing import CliRunner

    from mfli.cli import app

    out, png = tmp_path / "s.json", tmp_path / "s.png"
    res = CliRunner().invoke(app, [
        "bench", "serving", "--items", "2000", "--dim", "8", "--queries", "32", "--out", str(out), "--plot", str(png),
        "--embeddings", "synthetic", "--codes", "8", "--methods", "exact,mfli,hnsw,ivf", "--b1-queries", "4",
        "--batch-size", "16", "--k", "10", "--mfli-sweep", "4:2,8", "--hnsw-ef", "16", "--ivf-nprobe", "2,8",
        "--build-threads", "1",
    ])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["embedding_source"] == "synthetic_clusters" and "k-means" in r["codebook_source"]
    assert [p["clusters_per_query"] for p in r["methods"]["mfli"]["sweep"]] == [2, None]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dr" not in r["methods"]
