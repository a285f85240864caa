"""Training loop and TrainedModel: API and shapes, learning on the tiny dataset, determinism,
save/load, cold-start by content, codebook modes and the ``mfli train`` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mfli.data.errors import DataError
from mfli.model.quantizer import rq_encode
from mfli.model.trained import TrainedModel
from mfli.train import TrainConfig, train

SMALL = {"batch_size": 32, "epochs": 6, "progress": False,
         "model": {"hidden": 32, "dim": 16, "id_dropout": 0.5, "codebook": {"codes": 4}}}  # fmt: skip


def _cfg(**over) -> TrainConfig:
    data = json.loads(json.dumps(SMALL))
    for k, v in over.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return TrainConfig.from_dict(data)


def _histories(ds) -> list[list[int]]:
    inter = ds.interactions.sort_values(["user_id", "event_ts"])
    return [g["item_id"].tolist() for _, g in inter.groupby("user_id")]


def test_train_api_shapes_and_learning(tiny_dataset):
    ds = tiny_dataset
    m = train(ds, ds.interactions, _cfg())
    F_, d = 2, 16
    assert m.facets == ["engagement", "semantic"]
    E = m.item_embeddings(ds.items)
    assert E.shape == (60, F_, d) and E.dtype == torch.float32
    assert torch.allclose(E.norm(dim=-1), torch.ones(60, F_), atol=1e-5)
    assert torch.allclose(m.item_embeddings(ds.items[["item_id"]]), E, atol=1e-6)  # catalogue lookup
    assert m.codebooks.shape == (2, F_, 4, d)
    codes = m.item_codes(ds.items)
    assert codes.shape == (60, F_, 2)
    assert torch.equal(codes, rq_encode(E, m.codebooks)[0])
    hist = _histories(ds)
    Q = m.user_embeddings(np.arange(40), hist)
    assert Q.shape == (40, F_, d)
    # users of the tiny set like topic u % 3: their top-10 unseen items should be on that topic
    S = Q.flatten(1) @ E.flatten(1).T
    for u in range(40):
        S[u, hist[u]] = -float("inf")
    top = S.topk(10).indices.numpy()
    share = np.mean([np.mean(top[u] % 3 == u % 3) for u in range(40)])
    assert share > 0.8, share
    epochs = [h for h in m.history if isinstance(h["epoch"], int)]
    assert len(epochs) >= 3 and all("valid_recall@100" in h and "loss" in h for h in epochs)
    final = m.history[-1]
    assert final["epoch"] == "final" and set(final["codebook"]) == {"engagement", "semantic"}
    assert final["codebook"]["engagement"][0]["util"] > 0.5


def test_same_seed_same_weights(tiny_dataset):
    ds = tiny_dataset
    cfg = _cfg(epochs=4)
    a = train(ds, ds.interactions, cfg).model.state_dict()
    b = train(ds, ds.interactions, cfg).model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert int(a["rq.active"]) == 2  # the codebook (k-means init included) was part of the run
    c = train(ds, ds.interactions, _cfg(epochs=4, seed=1)).model.state_dict()
    assert not torch.equal(a["item_tower.id_emb.weight"], c["item_tower.id_emb.weight"])


def test_save_load_round_trip_and_checksums(tiny_dataset, tmp_path):
    ds = tiny_dataset
    m = train(ds, ds.interactions, _cfg(epochs=3))
    m.save(tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").iterdir()} == {
        "model.safetensors", "config.json", "feature_space.json", "history.json", "manifest.json"}
    m2 = TrainedModel.load(tmp_path / "model")
    assert m2.facets == m.facets and m2.config == m.config
    assert torch.equal(m2.item_embeddings(ds.items), m.item_embeddings(ds.items))
    assert torch.equal(m2.codebooks, m.codebooks)
    assert torch.equal(m2.item_codes(ds.items), m.item_codes(ds.items))
    hist = _histories(ds)
    assert torch.equal(m2.user_embeddings(np.arange(40), hist), m.user_embeddings(np.arange(40), hist))
    assert m2.history == json.loads(json.dumps(m.history))
    with open(tmp_path / "model" / "feature_space.json", "a") as f:
        f.write(" ")
    with pytest.raises(DataError, match="checksum"):
        TrainedModel.load(tmp_path / "model")


def test_content_only_embedding_stays_close_to_the_full_one(tiny_dataset):
    ds = tiny_dataset
    m = train(ds, ds.interactions, _cfg())
    full = m.item_embeddings(ds.items)
    content = m.item_embeddings(ds.items, use_ids=False)
    cos = torch.einsum("nfd,mfd->nm", content, full) / full.shape[1]  # (60, 60) mean over facets
    own = cos.diag()
    others = (cos.sum(1) - own) / (cos.shape[1] - 1)
    assert (own > others).float().mean() > 0.9
    assert own.mean() > others.mean() + 0.3
    # a brand-new item (never trained, unknown id) lands next to the items of its topic
    new = pd.DataFrame({"item_id": [999], "created_at": [pd.Timestamp("2024-02-01", tz="UTC")],
                        "categories": [["topic1", "topic1>sub0"]], "title": ["item 999 about topic1"],
                        "text": ["word1a word1b word1c"], "brand": ["brand1"]})  # fmt: skip
    e = m.item_embeddings(new)[0]
    sim = torch.einsum("fd,nfd->n", e, full)
    assert (np.arange(60)[sim.topk(10).indices.numpy()] % 3 == 1).mean() >= 0.9


@pytest.mark.parametrize("mode,layers", [("kmeans_after", 2), ("none", 0)])
def test_codebook_modes(tiny_dataset, mode, layers):
    ds = tiny_dataset
    m = train(ds, ds.interactions, _cfg(epochs=3, model={"codebook": {"codes": 4, "mode": mode}}))
    assert m.codebooks.shape == (layers, 2, 4, 16)
    assert m.item_codes(ds.items).shape == (60, 2, layers)
    assert all(h.get("qmf", 0.0) == 0.0 for h in m.history)  # no L_QMF outside the joint mode


def test_bad_input_is_reported(tiny_dataset):
    ds = tiny_dataset
    with pytest.raises(DataError, match="weight"):
        train(ds, ds.interactions.drop(columns=["weight"]), _cfg())
    bad = ds.interactions.copy()
    bad.loc[3, "item_id"] = 12345
    with pytest.raises(DataError, match="12345"):
        train(ds, bad, _cfg(valid_frac=0.0))
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"batch": 3})


def test_cli_train(tiny_dataset, tmp_path):
    pf = pytest.importorskip("mfli.data.parquet_format")
    from typer.testing import CliRunner

    from mfli.cli import app

    data = tmp_path / "tiny"
    pf.write_dataset(tiny_dataset, data)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"batch_size": 32, "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}))
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--split", "last", "--epochs", "3",
                                   "--seed", "1", "--config", str(cfg), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["epochs"] == 3 and report["codebooks"] == [2, 2, 4, 8] and report["split"]["kind"] == "last"
    m = TrainedModel.load(out)
    assert m.config.seed == 1 and m.item_embeddings(tiny_dataset.items).shape == (60, 2, 8)
    cfg.write_text(json.dumps({"bach_size": 3}))
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 2 and "bach_size" in res.output


@pytest.mark.parametrize("pooling", ["recent", "transformer"])
def test_uniform_negatives_and_ordered_history_poolings_learn(tiny_dataset, pooling):
    ds = tiny_dataset
    m = train(ds, ds.interactions, _cfg(uniform_negatives=16, model={"pooling": pooling}))
    E = m.item_embeddings(ds.items)
    hist = _histories(ds)
    S = m.user_embeddings(np.arange(40), hist).flatten(1) @ E.flatten(1).T
    for u in range(40):
        S[u, hist[u]] = -float("inf")
    top = S.topk(10).indices.numpy()
    assert np.mean([np.mean(top[u] % 3 == u % 3) for u in range(40)]) > 0.8


def test_early_stopping_stops_and_keeps_the_best_epoch(tiny_dataset, monkeypatch):
    import mfli.train as tr

    # validation recall rises for two settled epochs, then only falls: patience 2 stops 2 epochs later
    scores = iter([0.1, 0.2, 0.3, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(tr._Trainer, "valid_recall", lambda self: next(scores))
    m = train(tiny_dataset, tiny_dataset.interactions,
              _cfg(epochs=12, patience=2, model={"codebook": {"codes": 4, "start_step": 0, "layer_interval": 1}}))
    epochs = [h for h in m.history if isinstance(h["epoch"], int)]
    assert len(epochs) == 6  # best at epoch 4, two worse epochs, stop
    assert [h["epoch"] for h in epochs if h.get("best")][-1] == 4
    assert m.history[-1]["best_valid_recall"] == 0.5


def test_new_item_placement_is_chosen_saved_and_applied_to_items_without_a_trained_id(tiny_dataset, tmp_path):
    from mfli.model.placement import PlacementConfig

    ds = tiny_dataset
    m = train(ds, ds.interactions, _cfg(epochs=3, new_item_neighbours=5))
    final = m.history[-1]
    assert final["placement"]["neighbours"] == 5 and set(final["placement"]["valid_recall"]) == {
        "0", "0.25", "0.5", "0.75", "1"}
    assert m.placement == PlacementConfig(5, final["placement"]["mix"])
    new = pd.DataFrame({"item_id": [999], "created_at": [pd.Timestamp("2024-02-01", tz="UTC")],
                        "categories": [["topic1", "topic1>sub0"]], "title": ["item 999 about topic1"],
                        "text": ["word1a word1b word1c"], "brand": ["brand1"]})  # fmt: skip
    both = pd.concat([ds.items.head(3), new], ignore_index=True)
    tower = m.item_embeddings(both, use_ids=False)
    m.placement = PlacementConfig(5, 1.0)
    placed = m.item_embeddings(both)
    m.placement = PlacementConfig(5, 0.0)
    plain = m.item_embeddings(both)
    torch.testing.assert_close(plain[3], tower[3])  # mix 0: the tower's content-only embedding
    torch.testing.assert_close(placed[:3], plain[:3])  # trained ids are never moved
    nb = m.content_neighbours()
    mean, has = nb.neighbour_mean(m._content(m.encode_items(new)), 5)
    assert has.all()
    torch.testing.assert_close(placed[3], torch.from_numpy(mean[0]))
    # saved with the model; a model saved before placement existed loads with the tower alone
    m.placement = PlacementConfig(5, 0.75)
    m.save(tmp_path / "model")
    m2 = TrainedModel.load(tmp_path / "model")
    assert m2.placement == PlacementConfig(5, 0.75)
    torch.testing.assert_close(m2.item_embeddings(both), m.item_embeddings(both))
    from mfli.checksums import sha256_file

    d = tmp_path / "model"
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("placement")
    (d / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"]["config.json"] = sha256_file(d / "config.json")
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert TrainedModel.load(d).placement == PlacementConfig(20, 0.0)
    off = train(ds, ds.interactions, _cfg(epochs=2, new_item_neighbours=0))
    assert off.placement.mix == 0.0 and "placement" not in off.history[-1]
