"""MultiFacetIndex: CSR layout, lookups, top-m paths, save/load with checksums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfli.index.inverted import (
    IndexIntegrityError,
    MultiFacetIndex,
    encode_paths,
    lookup_sorted,
    pack_paths,
)
from mfli.model.quantizer import pack_codes, rq_encode


@pytest.fixture(scope="module")
def data(synth):
    emb = synth.clustered(600, 2, 8, seed=1)
    cb = synth.kmeans_codebooks(emb, 2, 6)
    ids = np.arange(600, dtype=np.int64) * 7 + 3
    pop = np.random.default_rng(2).random(600).astype(np.float32)
    return ids, emb, cb, pop


def test_encode_paths_m1_is_rq_encode(data):
    _, emb, cb, _ = data
    codes = encode_paths(emb, cb, chunk=128)
    ref, _ = rq_encode(torch.from_numpy(emb), torch.from_numpy(cb))
    assert codes.shape == (600, 2, 1, 2)
    np.testing.assert_array_equal(codes[:, :, 0, :], ref.numpy())
    np.testing.assert_array_equal(pack_paths(codes[:, :, 0], 6), pack_codes(ref, 6).numpy())


def test_top_m_paths_are_distinct_and_ordered(data):
    _, emb, cb, _ = data
    codes = encode_paths(emb[:50], cb, m=3)
    paths = pack_paths(codes, 6)  # (50, F, 3)
    for f in range(2):
        assert all(len(set(p)) == 3 for p in paths[:, f].tolist())
        recon = sum(cb[layer, f][codes[:, f, :, layer]] for layer in range(2))  # (50, 3, d)
        err = ((emb[:50, f, None, :] - recon) ** 2).sum(-1)
        assert (np.diff(err, axis=1) >= -1e-6).all()
        # slot 0 is at least as close as the greedy path
        greedy = encode_paths(emb[:50], cb)[:, f, 0]
        g_recon = sum(cb[layer, f][greedy[:, layer]] for layer in range(2))
        assert (err[:, 0] <= ((emb[:50, f] - g_recon) ** 2).sum(-1) + 1e-6).all()


def test_csr_groups_items_by_path_sorted_by_static_score(data):
    ids, emb, cb, pop = data
    codes = encode_paths(emb, cb)
    index = MultiFacetIndex.build(ids, emb, codes, cb, static_score=pop, facet_names=["eng", "sem"])
    paths = pack_paths(codes[:, :, 0], 6)
    assert index.facet_names == ["eng", "sem"] and not index.rebalanced
    for f in range(2):
        csr = index.facets[f]
        np.testing.assert_array_equal(csr.cluster_ids, np.unique(paths[:, f]))
        assert csr.offsets[-1] == 600 and np.array_equal(np.sort(csr.rows), np.arange(600))
        for i, c in enumerate(csr.cluster_ids):
            rows = csr.rows[csr.offsets[i]:csr.offsets[i + 1]]
            assert set(rows.tolist()) == set(np.flatnonzero(paths[:, f] == c).tolist())
            assert (np.diff(pop[rows]) <= 0).all()  # best static score first
        # "top-N of a cluster" is a slice
        c = int(csr.cluster_ids[np.argmax(csr.sizes())])
        top3 = index.cluster_items(f, c, top=3)
        members = np.flatnonzero(paths[:, f] == c)
        np.testing.assert_array_equal(top3, ids[members[np.argsort(-pop[members])][:3]])
    np.testing.assert_array_equal(index.clusters, paths)


def test_rows_of_and_lookup(data):
    ids, emb, cb, _ = data
    index = MultiFacetIndex.build(ids[::-1].copy(), emb, encode_paths(emb, cb), cb)
    np.testing.assert_array_equal(index.rows_of(ids[::-1][[5, 0, 599]]), [5, 0, 599])
    assert index.rows_of(np.array([4, -1, 10**12])).tolist() == [-1, -1, -1]
    keys = np.array([2, 5, 9])
    assert lookup_sorted(keys, np.array([20, 50, 90]), np.array([5, 6, 9, 1, 100])).tolist() == [50, -1, 90, -1, -1]
    with pytest.raises(KeyError):
        index.cluster_rows(0, 10**9)


def test_top_m_index_has_each_item_once_per_slot(data):
    ids, emb, cb, _ = data
    codes = encode_paths(emb, cb, m=2)
    index = MultiFacetIndex.build(ids, emb, codes, cb)
    assert index.paths_per_item == 2
    for f in range(2):
        csr = index.facets[f]
        assert csr.rows.size == 1200
        assert (np.bincount(csr.rows, minlength=600) == 2).all()


def test_bad_input_is_rejected(data):
    ids, emb, cb, _ = data
    codes = encode_paths(emb, cb)
    with pytest.raises(ValueError, match="appears more than once"):
        MultiFacetIndex.build(np.zeros(600, np.int64), emb, codes, cb)
    with pytest.raises(ValueError, match="shapes disagree"):
        MultiFacetIndex.build(ids, emb[:, :1], codes, cb)
    with pytest.raises(ValueError, match="codes must lie"):
        MultiFacetIndex.build(ids, emb, codes + 6, cb)


def test_save_load_round_trip(tmp_path, data):
    from mfli.index.split_merge import RebalanceConfig, rebalance

    ids, emb, cb, pop = data
    index = rebalance(MultiFacetIndex.build(ids, emb, encode_paths(emb, cb), cb, static_score=pop,
                                           meta={"snapshot": "s1"}), RebalanceConfig(floor=10, cap=40)).index
    manifest = index.save(tmp_path / "idx")
    assert manifest.name == "index.json"
    back = MultiFacetIndex.load(tmp_path / "idx")
    for name in ("item_ids", "embeddings", "assignments", "static_score"):
        np.testing.assert_array_equal(getattr(back, name), getattr(index, name))
    for a, b in zip(index.facets, back.facets):
        np.testing.assert_array_equal(a.cluster_ids, b.cluster_ids)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.rows, b.rows)
    for a, b in zip(index.maps, back.maps):
        for name, arr in a.to_arrays("").items():
            np.testing.assert_array_equal(arr, b.to_arrays("")[name])
    assert back.rebalanced and back.meta["snapshot"] == "s1" and (back.M, back.L) == (6, 2)
    # the loaded map routes exactly like the original
    p = pack_paths(encode_paths(emb[:50], cb)[:, 0, 0], 6)
    np.testing.assert_array_equal(back.maps[0].route(p, emb[:50, 0]), index.maps[0].route(p, emb[:50, 0]))


def test_load_detects_corruption(tmp_path, data):
    ids, emb, cb, _ = data
    index = MultiFacetIndex.build(ids, emb, encode_paths(emb, cb), cb)
    index.save(tmp_path / "idx")
    npz = tmp_path / "idx" / "index.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(IndexIntegrityError, match="sha256 mismatch"):
        MultiFacetIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").unlink()
    with pytest.raises(IndexIntegrityError, match="manifest not found"):
        MultiFacetIndex.load(tmp_path / "idx")
