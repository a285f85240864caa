"""`mfli index build|stats` and `mfli retrieve` on a tiny dataset folder, end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mfli.cli import app

pf = pytest.importorskip("mfli.data.parquet_format")


@pytest.fixture()
def trained(tiny_dataset, tmp_path):
    data = tmp_path / "tiny"
    pf.write_dataset(tiny_dataset, data)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"batch_size": 32, "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}))
    model = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(model), "--split", "last", "--epochs", "2",
                                   "--config", str(cfg), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return data, model, tmp_path / "index"


def _last_json(res) -> dict:
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_index_build_and_stats(trained):
    data, model, index = trained
    res = CliRunner().invoke(app, ["index", "build", str(data), "--model", str(model), "--out", str(index),
                                   "--split", "last", "--floor", "2", "--cap", "8"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = _last_json(res)
    assert report["n_items"] == 60 and report["facets"] == ["engagement", "semantic"]
    for after in report["balance_after"]:  # split-and-merge met the bounds given on the command line
        assert 2 <= after["min_size"] and after["max_size"] <= 8
    assert (index / "index.json").exists() and (index / "index.npz").exists()
    res = CliRunner().invoke(app, ["index", "stats", str(index)])
    assert res.exit_code == 0, res.output
    stats = _last_json(res)
    assert stats["n_items"] == 60 and stats["rebalanced"] and len(stats["balance"]) == 2

    res = CliRunner().invoke(app, ["index", "build", str(data), "--model", str(model), "--out", str(index),
                                   "--floor", "5", "--cap", "8"])  # fmt: skip
    assert res.exit_code == 2 and "floor" in res.output


def test_retrieve_user_and_trigger_modes(trained, tiny_dataset):
    from mfli.data.split import make_split
    from mfli.index.inverted import MultiFacetIndex
    from mfli.model.trained import TrainedModel
    from mfli.serve.retriever import Retriever, RetrieverConfig

    data, model, index = trained
    assert CliRunner().invoke(app, ["index", "build", str(data), "--model", str(model), "--out", str(index),
                                    "--split", "last"]).exit_code == 0  # fmt: skip
    res = CliRunner().invoke(app, ["retrieve", str(data), "--model", str(model), "--index", str(index),
                                   "--user", "3", "--user", "7", "--k", "5", "--split", "last",
                                   "--engine", "reference"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [line["user_id"] for line in lines] == [3, 7]

    # the same request through the library gives the same items, and the user's history is excluded
    train = make_split(tiny_dataset, "last", seed=0).train.sort_values(["user_id", "event_ts"], kind="stable")
    hist = [train.loc[train.user_id == u, "item_id"].to_numpy(np.int64) for u in (3, 7)]
    m = TrainedModel.load(model)
    r = Retriever(MultiFacetIndex.load(index), m.codebooks, m.facets, RetrieverConfig(beam=32, merge="sum"))
    want = r.retrieve_users(m.user_embeddings(np.array([3, 7]), hist).numpy(), 5, exclude=hist)
    for b, line in enumerate(lines):
        got = [e["item_id"] for e in line["results"]]
        assert got == [i for i in want.item_ids[b].tolist() if i >= 0]
        assert not set(got) & set(hist[b].tolist())
        assert all({"facet", "cluster", "path_rank", "score", "title"} <= set(e) for e in line["results"])

    # --engine scan: the scan engine, as a snapshot stored with engine="scan" serves it
    from mfli.serve.config import ServingConfig
    from mfli.snapshot import Snapshot

    res = CliRunner().invoke(app, ["retrieve", str(data), "--model", str(model), "--index", str(index),
                                   "--user", "3", "--user", "7", "--k", "5", "--split", "last",
                                   "--engine", "scan"])  # fmt: skip
    assert res.exit_code == 0, res.output
    scan = Snapshot(m, MultiFacetIndex.load(index), serving=ServingConfig(engine="scan")).retriever()
    want = scan.retrieve_users(m.user_embeddings(np.array([3, 7]), hist).numpy(), 5, exclude=hist)
    for b, line in enumerate(json.loads(x) for x in res.stdout.strip().splitlines()):
        assert [e["item_id"] for e in line["results"]] == [i for i in want.item_ids[b].tolist() if i >= 0]

    res = CliRunner().invoke(app, ["retrieve", str(data), "--model", str(model), "--index", str(index),
                                   "--triggers", "0,3,6", "--k", "4", "--clusters", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    line = _last_json(res)
    assert line["mode"] == "trigger" and line["triggers"] == [0, 3, 6]
    assert {e["trigger"] for e in line["results"]} <= {0, 3, 6}
    assert not {e["item_id"] for e in line["results"]} & {0, 3, 6}


def test_retrieve_bad_input(trained):
    data, model, index = trained
    assert CliRunner().invoke(app, ["index", "build", str(data), "--model", str(model), "--out", str(index)]).exit_code == 0
    base = ["retrieve", str(data), "--model", str(model), "--index", str(index)]
    res = CliRunner().invoke(app, [*base, "--user", "99999"])
    assert res.exit_code == 2 and "99999" in res.output
    res = CliRunner().invoke(app, [*base, "--triggers", "1,x"])
    assert res.exit_code == 2 and "--triggers" in res.output
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "--user" in res.output
    res = CliRunner().invoke(app, [*base, "--user", "3", "--engine", "faiss"])
    assert res.exit_code == 2 and "engine must be one of" in res.output
    npz = index / "index.npz"
    npz.write_bytes(npz.read_bytes()[:-10])  # truncated file: refused by its checksum
    res = CliRunner().invoke(app, [*base, "--user", "3"])
    assert res.exit_code == 2 and "sha256" in res.output
