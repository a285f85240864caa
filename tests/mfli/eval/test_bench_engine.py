"""Engine benchmark: the per-trigger merge against a direct computation; a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.eval.bench_engine import EngineBenchConfig, format_tables, merge_per_trigger, run_engine_bench


def test_merge_per_trigger_matches_direct_ranking():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    T, k = 3, 10
    trig = np.stack([rng.choice(300, T, replace=False) for _ in range(5)])
    sims = x[trig.reshape(-1)] @ x.T  # (5 * T, 300)
    ids = np.argsort(-sims, 1)[:, : k + T]
    scores = np.take_along_axis(sims, ids, 1)
    got = merge_per_trigger(ids, scores, T, k, trig)
    for b in range(5):
        best = sims[b * T : (b + 1) * T].max(0)
        best[trig[b]] = -np.inf
        np.testing.assert_array_equal(got[b], np.argsort(-best)[:k])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_run_produces_every_table():
    cfg = EngineBenchConfig(n_items=4000, dim=8, n_queries=64, b1_queries=4, batch_size=32, k=10,
                            embeddings="synthetic", methods=("mfli", "mfli_fs", "ivf"), codes=16, pq_subquantizers=4,
                            mfli_sweep=((4, 50), (16, 100)), mfli_fs_sweep=((4, 50), (16, 100)), ivf_nprobe=(2, 32), trigger_counts=(1, 3),
                            trigger_requests=16, trigger_batch=8, trigger_b1=4,
                            mfli_trigger_sweep=((0, 50), (4, 100)), ann_trigger_ivf=(2, 8), threads=(1, 2),
                            targets=(0.5, 0.7), mfli_trigger_lists=(2, 64), trigger_lists_int32=True)
    res = run_engine_bench(cfg, log=lambda s: None)
    for name in ("mfli", "mfli_fs"):  # both pre-rankers over the same index
        mf = res["methods"][name]["sweep"]
        assert mf[-1]["recall"] > mf[0]["recall"] > 0.2  # more clusters and a longer short list: higher recall
    assert res["methods"]["mfli_fs"]["params"]["prerank"] == "fastscan"
    rows = res["equal_recall"]["user"]["qps_b32_t1"]
    assert [r["recall"] for r in rows] == [0.5, 0.7]
    for r in rows:  # every MFLI variant against every baseline
        for m in ("mfli", "mfli_fs"):
            assert r[f"{m}_over_ivf"] == pytest.approx(r[m] / r["ivf"])
    ivf = res["methods"]["ivf"]["sweep"]
    assert ivf[-1]["recall"] > max(0.85, ivf[0]["recall"])
    assert all(p["by_T"]["3"]["recall"] > 0 for p in res["trigger"]["mfli"])
    # CPU seconds per wall second of every timed point (above the thread count: a library took more cores)
    assert all(p["cpu_per_wall_t1"] > 0 and p["cpu_per_wall_t2"] > 0 for p in ivf)
    assert all(v["cpu_per_wall"] > 0 for p in res["trigger"]["mfli"] for v in p["by_T"].values())
    # neighbour lists: probing every column makes them exact, so trigger mode matches exact search
    lists = res["trigger"]["mfli_lists"]
    assert [p["probe"] for p in lists] == [2, 64] and lists[0]["list_compact"] and lists[0]["list_scores"]
    # the same lists rescored exactly (no stored scores: 1 byte per entry and 8 per item less), and as int32
    # rows (twice the code bytes, rescored exactly): the same answers but where stored bytes round
    exact = res["trigger"]["mfli_lists_exact"]
    assert [p["probe"] for p in exact] == [2, 64] and not exact[0]["list_scores"]
    assert lists[0]["list_bytes"] - exact[0]["list_bytes"] == 4000 * (10 + 8)
    rows32 = res["trigger"]["mfli_lists_int32"]
    assert [p["probe"] for p in rows32] == [2, 64] and not rows32[0]["list_compact"]
    assert rows32[0]["list_bytes"] - 4000 * 10 * 4 == exact[0]["list_bytes"] - 4000 * 10 * 2
    for a, b, c in zip(lists, exact, rows32):
        assert {T: v["recall"] for T, v in b["by_T"].items()} == {T: v["recall"] for T, v in c["by_T"].items()}
        for T, v in a["by_T"].items():
            assert v["recall"] == pytest.approx(b["by_T"][T]["recall"], abs=0.02)
    assert lists[1]["by_T"]["1"]["recall"] == pytest.approx(1.0)
    assert lists[1]["by_T"]["3"]["recall"] >= lists[0]["by_T"]["3"]["recall"]
    text = format_tables(res)
    assert "Trigger mode" in text and "mfli/ivf" in text and "mfli_fs/ivf" in text and "mfli_lists/ivf" in text
    assert "mfli_lists_int32/ivf" in text and "mfli_lists_exact/ivf" in text
