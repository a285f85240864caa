"""Towers: shapes, unit facet embeddings, id-dropout semantics, history pooling."""

from __future__ import annotations

import pytest
import torch

from mfli.model.config import FeatureConfig
from mfli.model.features import FeatureSpace, ItemFeatures
from mfli.model.towers import ItemTower, UserTower


def _setup(ds, id_dropout: float = 0.0):
    torch.manual_seed(0)
    fs = FeatureSpace.fit(ds.items, ds.users, ds.interactions["item_id"].unique(),
                          ds.interactions["event_ts"].max(), FeatureConfig())  # fmt: skip
    tower = ItemTower(fs.n_ids, fs.n_categories, fs.n_tokens, fs.n_brands, fs.n_age, 16, 3, 8, id_dropout)
    return fs, tower, fs.encode_items(ds.items)


def test_item_tower_shapes_and_unit_norm(tiny_dataset):
    _, tower, feats = _setup(tiny_dataset)
    e = tower(feats)
    assert e.shape == (60, 3, 8)
    assert torch.allclose(e.norm(dim=-1), torch.ones(60, 3), atol=1e-5)


def test_id_dropout_replaces_ids_by_the_unknown_row(tiny_dataset):
    _, tower, feats = _setup(tiny_dataset, id_dropout=1.0)
    content_only = ItemFeatures(feats.item_ids, torch.zeros_like(feats.id_index), *feats.tensors()[2:])
    tower.train()
    assert torch.allclose(tower(feats), tower(content_only))  # p = 1: every id dropped
    tower.eval()
    assert not torch.allclose(tower(feats), tower(content_only))  # eval: ids used
    assert torch.allclose(tower(feats, drop_ids=True), tower(content_only))
    tower.id_dropout = 0.3
    torch.manual_seed(1)
    inp = tower.inputs(feats, drop_ids=True)
    dropped = torch.isclose(inp, tower.inputs(content_only, drop_ids=False)).all(-1)
    known = feats.id_index > 0
    share = dropped[known].float().mean().item()
    assert 0.1 < share < 0.5  # about 30% of known ids dropped


@pytest.mark.parametrize("pooling", ["mean", "attention", "transformer", "recent"])
def test_user_tower_pools_history_and_ignores_padding(tiny_dataset, pooling):
    fs, tower, feats = _setup(tiny_dataset)
    user = UserTower(fs.n_user_values, len(fs.user_columns), tower.input_dim, 16, 3, 8, history_len=5, pooling=pooling)
    user.eval()
    reps = user.project_items(tower.inputs(feats))  # (60, 16)
    hist = reps[torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 0]])]
    mask = torch.tensor([[False, False, True, True, True], [False] * 5])
    vals = torch.tensor([[2], [3]])
    q = user(vals, hist, mask)
    assert q.shape == (2, 3, 8) and torch.allclose(q.norm(dim=-1), torch.ones(2, 3), atol=1e-5)
    assert torch.isfinite(q).all()  # empty history is fine
    # padded slots do not matter: change what sits under the mask
    hist2 = hist.clone()
    hist2[0, :2] = reps[9]
    assert torch.allclose(user(vals, hist2, mask), q, atol=1e-6)
    # the history does matter
    hist3 = reps[torch.tensor([[0, 0, 7, 8, 9], [0, 0, 0, 0, 0]])]
    assert not torch.allclose(user(vals, hist3, mask)[0], q[0])
