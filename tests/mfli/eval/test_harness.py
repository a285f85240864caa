"""The quality harness runs every method on one split and reports every metric per method."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfli.eval.harness import ALL_METHODS, QualityConfig, content_matrix, format_table, run_quality
from mfli.eval.metrics import METRIC_KEYS


@pytest.fixture(scope="module")
def small_catalogue():
    from mfli.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(n_items=400, n_users=150, n_interactions=4000, seed=3))


@pytest.mark.slow
def test_all_methods_run_on_the_same_split(small_catalogue):
    cfg = QualityConfig(methods=ALL_METHODS, split="time", seeds=1, epochs=1, num_threads=1,
                        train_overrides={"max_steps": 12, "batch_size": 256, "progress": False})
    results = run_quality(small_catalogue, cfg, log=lambda s: None)
    assert set(results) == set(ALL_METHODS)
    for method, r in results.items():
        for k in METRIC_KEYS:
            assert k in r, (method, k)
            v = r[k]["mean"]
            assert math.isnan(v) or 0.0 <= v <= 1.0, (method, k, v)
    # exact search is the ceiling of the embeddings the MFLI index serves from
    assert results["mfli"]["recall@200"]["mean"] <= results["exact"]["recall@200"]["mean"] + 1e-9
    # the scan engine rescores exactly, in another summation order than exact search's BLAS: an item tied
    # at the 200th rank can fall either way, so it may pass exact by a user's single positive at most
    n_users = len(results["exact"]["per_user"]["recall@100"][0])
    assert results["mfli_scan"]["recall@200"]["mean"] <= results["exact"]["recall@200"]["mean"] + 1.0 / n_users
    # the scan engine serves the delta's items too: cold items are reachable as through the reference
    assert results["mfli_scan"]["cold_recall@100"]["mean"] > 0 or math.isnan(results["mfli"]["cold_recall@100"]["mean"])
    # items without training events are invisible to a rebuild-at-snapshot ANN index
    assert results["hnsw"]["cold_recall@100"]["mean"] in (0.0,) or math.isnan(results["hnsw"]["cold_recall@100"]["mean"])
    table = format_table(results)
    assert "recall@100 / exact" in table and "| mfli |" in table


def test_unknown_method_is_rejected(small_catalogue):
    with pytest.raises(ValueError, match="unknown method"):
        run_quality(small_catalogue, QualityConfig(methods=("mfli", "nope")), log=lambda s: None)


def test_content_matrix_is_deterministic_and_normalised(small_catalogue):
    a = content_matrix(small_catalogue.items.head(20), dim=64)
    b = content_matrix(small_catalogue.items.head(20), dim=64)
    assert (a == b).all()
    norms = (a * a).sum(1)
    assert ((abs(norms - 1) < 1e-5) | (norms == 0)).all()


def test_partial_results_after_every_seed(small_catalogue):
    seen: list[int] = []
    cfg = QualityConfig(methods=("pop",), split="last", seeds=2)
    final = run_quality(small_catalogue, cfg, log=lambda s: None,
                        on_seed=lambda r: seen.append(len(r["pop"]["recall@100"]["values"])))
    assert seen == [1, 2]
    assert len(final["pop"]["recall@100"]["values"]) == 2


def test_cli_writes_json_keyed_by_method(small_catalogue, tmp_path):
    import json

    from typer.testing import CliRunner

    from mfli.cli import app
    from mfli.data.parquet_format import write_dataset

    data = tmp_path / "data"
    write_dataset(small_catalogue, data)
    out = tmp_path / "q.json"
    res = CliRunner().invoke(app, ["bench", "quality", "--data", str(data), "--split", "last", "--methods", "pop",
                                   "--seeds", "2", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert list(got) == ["pop"] and set(METRIC_KEYS) <= set(got["pop"])
    assert len(got["pop"]["recall@100"]["values"]) == 2 and not (tmp_path / "q.json.tmp").exists()


def test_item_item_baselines_share_users_and_get_paired_intervals(small_catalogue):
    """ease and itemknn run through the same users/exclusions as pop; every ratio gets a bootstrap CI."""
    cfg = QualityConfig(methods=("pop", "ease", "itemknn"), split="user_time", seeds=2)
    res = run_quality(small_catalogue, cfg, log=lambda s: None)
    n_users = [len(s) for s in res["pop"]["per_user"]["recall@100"]]
    for m in ("ease", "itemknn"):
        assert [len(s) for s in res[m]["per_user"]["recall@100"]] == n_users
        # per-user values average back to the reported recall
        for seed, vals in enumerate(res[m]["per_user"]["recall@100"]):
            assert abs(np.nanmean(vals) - res[m]["recall@100"]["values"][seed]) < 1e-4
    assert set(res["ease"]["l2"]["values"]) <= {10.0, 50.0, 200.0, 1000.0, 5000.0}
    # on topic-structured data item-item models beat popularity
    assert res["ease"]["recall@100"]["mean"] > res["pop"]["recall@100"]["mean"]
    assert res["itemknn"]["recall@100"]["mean"] > res["pop"]["recall@100"]["mean"]
    best = max(("pop", "ease", "itemknn"), key=lambda m: res[m]["recall@100"]["mean"])
    ci = res["pop"]["ratios"][f"recall@100 / best baseline ({best})"]
    assert ci["lo"] <= ci["ratio"] <= ci["hi"] < 1.0
    assert res[best]["ratios"][f"recall@100 / best baseline ({best})"] == {"ratio": 1.0, "lo": 1.0, "hi": 1.0}
    table = format_table(res)
    assert f"recall@100 / best baseline ({best})" in table and "1.000 [1.000, 1.000]" in table


def test_facet_ablation_per_facet_recall_and_facet_counts(small_catalogue, monkeypatch):
    """mfli_facets serves each facet alone from mfli's own model and index; mfli_f1 / mfli_f3 train
    one-facet and three-facet models; no model is trained twice."""
    import mfli.train
    from mfli.eval.harness import format_facet_table

    trained: list[list[str]] = []
    real_train = mfli.train.train

    def counting_train(ds, train, cfg):
        trained.append([f.name for f in cfg.model.facets])
        return real_train(ds, train, cfg)

    monkeypatch.setattr(mfli.train, "train", counting_train)
    cfg = QualityConfig(methods=("mfli", "mfli_facets", "mfli_f1", "mfli_f3"), split="time", seeds=1, epochs=1,
                        num_threads=1, train_overrides={"max_steps": 12, "batch_size": 256, "progress": False})
    res = run_quality(small_catalogue, cfg, log=lambda s: None)
    assert trained == [["engagement", "semantic"], ["engagement"], ["engagement", "engagement_recent", "semantic"]]
    assert [res[m]["n_facets"]["mean"] for m in ("mfli", "mfli_facets", "mfli_f1", "mfli_f3")] == [2, 2, 1, 3]
    # the merged result of mfli_facets is mfli's: same model, same index, same retrieval
    assert res["mfli_facets"]["recall@100"]["values"] == res["mfli"]["recall@100"]["values"]
    merged = res["mfli"]["recall@100"]["mean"]
    alone = {f: res["mfli_facets"][f"facet:{f}/recall@100"]["mean"] for f in ("engagement", "semantic")}
    assert all(0.0 < v <= 1.0 for v in alone.values())
    # each facet alone ranks by its own score over its own clusters: not the merged list, not each other
    assert abs(alone["engagement"] - alone["semantic"]) > 1e-4
    assert all(abs(v - merged) > 1e-4 for v in alone.values())
    assert len(res["mfli_facets"]["per_user"]["facet:semantic/recall@100"][0]) == len(
        res["mfli"]["per_user"]["recall@100"][0])
    assert "facet:engagement/recall@100" not in res["mfli"]  # only the facet methods pay for the extra passes
    assert "facet:engagement/recall@100" not in res["mfli_f1"]  # one facet alone is the merged list
    f3 = {f: res["mfli_f3"][f"facet:{f}/recall@100"]["mean"] for f in ("engagement", "engagement_recent", "semantic")}
    assert all(0.0 < v <= 1.0 for v in f3.values()) and len({round(v, 4) for v in f3.values()}) == 3
    table = format_facet_table(res)
    assert "| mfli_facets [semantic] | semantic alone |" in table and "| mfli_f3 | F=3, merged |" in table
    assert "| mfli | F=2, merged | " in table and "1.000 [1.000, 1.000]" in table
    # methods without a facet count (baselines, exact) give no facet table
    assert format_facet_table({"exact": {k: v for k, v in res["mfli"].items() if k != "n_facets"}}) == ""


@pytest.fixture
def training_runs(monkeypatch) -> list[int]:
    """One entry per call of ``mfli.train.train`` during the test (each still trains)."""
    import mfli.train

    runs: list[int] = []
    real_train = mfli.train.train

    def counting_train(ds, train, cfg):
        runs.append(1)
        return real_train(ds, train, cfg)

    monkeypatch.setattr(mfli.train, "train", counting_train)
    return runs


def test_new_item_weight_methods_serve_mfli_model_and_index(small_catalogue, training_runs):
    """mfli_neww chooses the new items' facet weights on the validation split and serves mfli's model and
    index with them; mfli_new_sem0 drops the semantic facet from new items' scores; one model in all."""
    from mfli.eval.new_item_weights import GRID

    trained = training_runs
    cfg = QualityConfig(methods=("mfli", "mfli_neww", "mfli_new_sem0"), split="cold", seeds=1, epochs=1,
                        num_threads=1, train_overrides={"max_steps": 12, "batch_size": 256, "progress": False})
    res = run_quality(small_catalogue, cfg, log=lambda s: None)
    assert len(trained) == 1
    w = [res["mfli_neww"][f"new_w:{f}"]["mean"] for f in ("engagement", "semantic")]
    assert all(x in GRID for x in w)
    assert res["mfli_neww"]["valid_recall_neww"]["mean"] >= res["mfli_neww"]["valid_recall_equal"]["mean"]
    if w == [1.0, 1.0]:  # the old rule chosen: exactly mfli's lists
        assert res["mfli_neww"]["recall@100"]["values"] == res["mfli"]["recall@100"]["values"]
    # every test item of the cold split is new: dropping a facet's score from new items only moves them
    mfli_cold, sem0_cold = (res[m]["per_user"]["cold_recall@100"][0] for m in ("mfli", "mfli_new_sem0"))
    assert mfli_cold != sem0_cold
    assert "mfli_neww" in ALL_METHODS and "mfli_new_sem0" in ALL_METHODS


def test_blend_serves_mfli_model_and_reports_its_lists_and_chosen_weights(small_catalogue, training_runs):
    """mfli_blend fuses user mode, co-engagement, trigger and trending lists of mfli's own model (trained
    once), with the weights at the best validation point of the grid."""
    from mfli.serve.blend import COENGAGEMENT_GRID, NEW_ITEMS_GRID, TRENDING_GRID, TRIGGER_GRID

    trained = training_runs
    cfg = QualityConfig(methods=("mfli", "mfli_blend", "ease"), split="time", seeds=1, epochs=1, num_threads=1,
                        train_overrides={"max_steps": 12, "batch_size": 256, "progress": False})
    res = run_quality(small_catalogue, cfg, log=lambda s: None)
    assert len(trained) == 1
    b = res["mfli_blend"]
    wc, wt, wp = (b[f"blend_w:{name}"]["mean"] for name in ("coengagement", "trigger", "trending"))
    assert wc in COENGAGEMENT_GRID and wt in TRIGGER_GRID and wp in TRENDING_GRID
    table = {k.split(":", 1)[1]: v["mean"] for k, v in b.items() if k.startswith("valid_recall:")}
    credit = {k: table.pop(k) for k in list(table) if k.startswith("new_items:")}
    assert len(table) == len(COENGAGEMENT_GRID) * len(TRIGGER_GRID) * len(TRENDING_GRID)
    assert table[f"{wc:g}/{wt:g}/{wp:g}"] == max(table.values())
    # the new-item credit is tried after the grid, with the chosen weights: kept only above the margin
    wn = b["blend_w:new_items"]["mean"]
    assert set(credit) == {f"new_items:{w:g}" for w in NEW_ITEMS_GRID} and wn in NEW_ITEMS_GRID
    assert wn == 0.0 or credit[f"new_items:{wn:g}"] > credit["new_items:0"]
    for w in NEW_ITEMS_GRID:  # what each credit would have given on the test split, reported
        assert 0.0 <= b[f"new_items_test:{w:g}/recall@100"]["mean"] <= 1.0
    assert b["new_items_test:0/recall@100"]["mean"] == b["recall@100"]["mean"] or wn > 0
    for part in ("user", "coengagement", "trigger", "trending"):
        assert 0.0 <= b[f"part:{part}/recall@100"]["mean"] <= 1.0
    # the co-engagement list is EASE's ranking on this small catalogue (dense table, same lambda grid)
    assert b["coengagement_is_ease"]["mean"] == 1.0
    assert b["part:coengagement/recall@100"]["mean"] == pytest.approx(res["ease"]["recall@100"]["mean"], abs=1e-9)
    assert len(b["per_user"]["recall@100"][0]) == len(res["mfli"]["per_user"]["recall@100"][0])


def test_item_to_item_ann_searches_from_each_recent_item(small_catalogue):
    """hnsw_i2i runs on the users every method sees and, with new items added to its graph, can return them."""
    cfg = QualityConfig(methods=("pop", "hnsw_i2i"), split="cold", seeds=1, epochs=1, num_threads=1,
                        train_overrides={"max_steps": 12, "batch_size": 256, "progress": False})
    res = run_quality(small_catalogue, cfg, log=lambda s: None)
    assert len(res["hnsw_i2i"]["per_user"]["recall@100"][0]) == len(res["pop"]["per_user"]["recall@100"][0])
    assert res["hnsw_i2i"]["cold_recall@100"]["mean"] > 0  # every test item is new on this split


def test_the_plain_two_tower_baseline_embeds_new_items_by_its_tower_alone(small_catalogue):
    """MFLI places items without a trained id by content neighbours; the two-tower baselines do not,
    except the ``*_placed`` ones, which get the same placement (the baselines given MFLI's trick)."""
    from mfli.eval.harness import _SeedRun

    cfg = QualityConfig(split="time", seeds=1, epochs=1, num_threads=1,
                        train_overrides={"max_steps": 6, "batch_size": 256, "progress": False})
    run = _SeedRun(small_catalogue, cfg, 0)
    plain, placed, mfli = run.model("none")[0], run.model("none_placed")[0], run.model("joint")[0]
    assert plain.config.new_item_neighbours == 0 and plain.placement.mix == 0.0
    assert "placement" not in plain.history[-1]
    for m in (placed, mfli):
        assert m.config.new_item_neighbours == 20 and "placement" in m.history[-1]
    assert placed.config.model.codebook.mode == "none" and placed.codebooks.shape[0] == 0


def test_split_arguments_reach_the_split(small_catalogue):
    """``split_args`` go to the split function: a time split at a given cutoff (the daily DAG's holdout
    is its last days, not the benchmark's 80% quantile)."""
    import pandas as pd

    from mfli.eval.harness import _SeedRun

    ts = pd.to_datetime(small_catalogue.interactions["event_ts"], utc=True)
    cutoff = ts.quantile(0.5)
    run = _SeedRun(small_catalogue, QualityConfig(split="time", split_args={"cutoff": cutoff}), 0)
    assert run.split.cutoff == cutoff
    assert pd.to_datetime(run.split.train["event_ts"], utc=True).max() < cutoff
    assert _SeedRun(small_catalogue, QualityConfig(split="time"), 0).split.cutoff > cutoff
