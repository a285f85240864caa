"""New-item placement from content neighbours: content vectors, neighbour means, the mix, its choice."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mfli.model.features import ItemFeatures
from mfli.model.placement import (
    ContentNeighbours,
    PlacementConfig,
    choose_mix,
    content_matrix,
    mix_embeddings,
)


def _feats(categories: list[list[int]], tokens: list[list[int]], brand: list[int]) -> ItemFeatures:
    n = len(brand)
    pad = lambda rows: torch.tensor([r + [0] * (4 - len(r)) for r in rows], dtype=torch.long)
    return ItemFeatures(torch.arange(n), torch.zeros(n, dtype=torch.long), pad(categories), pad(tokens),
                        torch.tensor(brand), torch.zeros(n, dtype=torch.long))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_content_matrix_drops_padding_and_oov_and_offsets_each_vocabulary():
    f = _feats([[2, 3, 0], [1, 2]], [[5, 1], [5, 5, 6]], [0, 4])  # 1 = OOV, 0 = pad
    m = content_matrix(f, n_categories=10, n_tokens=10, n_brands=10).toarray()
    assert m.shape == (2, 30)
    assert np.flatnonzero(m[0]).tolist() == [2, 3, 15]  # categories 2, 3; token 5 at 10 + 5; no brand
    assert np.flatnonzero(m[1]).tolist() == [2, 15, 16, 24]  # duplicate token once; brand 4 at 20 + 4
    assert set(np.unique(m)) <= {0.0, 1.0}


def _world(seed: int = 0):
    """Two content groups (category 2 or 3) of trained items, each around its own embedding direction."""
    rng = np.random.default_rng(seed)
    centre = _unit(rng.normal(size=(2, 2, 8)))  # (group, F, d)
    group = np.arange(40) % 2
    emb = _unit(centre[group] + 0.1 * rng.normal(size=(40, 2, 8)))
    trained = content_matrix(_feats([[2 + g] for g in group], [[5]] * 40, [0] * 40), 10, 10, 10)
    return ContentNeighbours(trained, emb), centre, emb, group


def test_neighbour_mean_follows_the_content_group_and_leaves_out_the_excluded_row():
    nb, centre, emb, _ = _world()
    new = content_matrix(_feats([[3], [2], [7]], [[5], [5], [9]], [0, 0, 0]), 10, 10, 10)
    mean, has = nb.neighbour_mean(new, k=10)
    assert has.tolist() == [True, True, False]  # the third shares no content id with a trained item
    np.testing.assert_allclose(np.linalg.norm(mean[:2], axis=-1), 1.0, atol=1e-5)
    assert (np.einsum("fd,fd->", mean[0], centre[1]) / 2) > 0.95
    assert (np.einsum("fd,fd->", mean[1], centre[0]) / 2) > 0.95
    assert not mean[2].any()
    # k = 1 with the item's own row left out: the neighbour is another item, never itself
    own = nb.neighbour_mean(content_matrix(_feats([[2]], [[5]], [0]), 10, 10, 10), 1, np.array([0]))[0][0]
    assert not np.allclose(own, emb[0])


def test_place_mixes_per_facet_and_keeps_the_tower_without_neighbours():
    nb, _, _, _ = _world()
    new = content_matrix(_feats([[3], [7]], [[5], [9]], [0, 0]), 10, 10, 10)
    tower = _unit(np.random.default_rng(3).normal(size=(2, 2, 8)))
    np.testing.assert_array_equal(nb.place(new, tower, PlacementConfig(10, 0.0)), tower)
    full = nb.place(new, tower, PlacementConfig(10, 1.0))
    mean, _ = nb.neighbour_mean(new, 10)
    np.testing.assert_allclose(full[0], mean[0], atol=1e-6)
    np.testing.assert_array_equal(full[1], tower[1])  # no neighbour: the tower's embedding
    half = nb.place(new, tower, PlacementConfig(10, 0.5))
    np.testing.assert_allclose(half[0], _unit(0.5 * mean[0] + 0.5 * tower[0]), atol=1e-6)
    np.testing.assert_allclose(mix_embeddings(tower, mean, np.array([False, False]), 0.7), tower)
    with pytest.raises(ValueError):
        PlacementConfig(0, 0.5)
    with pytest.raises(ValueError):
        PlacementConfig(5, 1.5)


@pytest.mark.parametrize("tower_is_right", [False, True])
def test_choose_mix_picks_whichever_places_the_played_items_where_their_users_look(tower_is_right):
    """Users of group g look along group g's direction; items 0-7 are played as new. When their
    content-only embeddings point the wrong way the neighbours win (mix > 0); when the tower already
    places them and the content is misleading (each played item's content names the other group), the
    mix stays at 0."""
    nb, centre, emb, group = _world()
    pseudo = np.arange(8)
    rng = np.random.default_rng(1)
    if tower_is_right:
        tower = emb[pseudo]
        content = content_matrix(_feats([[3 - g] for g in group[pseudo]], [[5]] * 8, [0] * 8), 10, 10, 10)
    else:
        tower = _unit(rng.normal(size=(8, 2, 8)))
        content = content_matrix(_feats([[2 + g] for g in group[pseudo]], [[5]] * 8, [0] * 8), 10, 10, 10)
    users = np.arange(20) % 2
    q = torch.as_tensor(_unit(centre[users] + 0.05 * rng.normal(size=(20, 2, 8))))
    positives = [pseudo[group[pseudo] == g] for g in users]
    seen = [np.array([-1]) for _ in users]
    cfg, table = choose_mix(q, torch.as_tensor(emb), torch.as_tensor(tower), pseudo, nb, content, pseudo,
                            seen, positives, k_neighbours=5, k=4)
    assert set(table) == {"0", "0.25", "0.5", "0.75", "1"}
    assert (cfg.mix == 0.0) == tower_is_right, table
    assert cfg.neighbours == 5
    if not tower_is_right:
        assert table[f"{cfg.mix:g}"] > table["0"]


def test_choose_mix_without_played_positives_keeps_the_tower():
    nb, _, emb, _ = _world()
    cfg, table = choose_mix(torch.zeros(2, 2, 8), torch.as_tensor(emb), torch.zeros(0, 2, 8), np.zeros(0, np.int64),
                            nb, sp.csr_matrix((0, 30), dtype=np.float32), np.zeros(0, np.int64),
                            [np.array([-1])] * 2, [np.array([3]), np.array([4])])
    assert cfg.mix == 0.0 and table == {}
