"""Feature space: vocabularies, OOV handling, hierarchical categories, age buckets, JSON round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mfli.model.config import FeatureConfig
from mfli.model.features import OOV, FeatureSpace, category_tokens, leaf_categories, tokenize


def _fs(ds, **cfg) -> FeatureSpace:
    train_ids = ds.interactions["item_id"].unique()
    return FeatureSpace.fit(ds.items, ds.users, train_ids, ds.interactions["event_ts"].max(), FeatureConfig(**cfg))


def test_tokenize_and_category_prefixes():
    assert tokenize("Toy Story (1995) | Pixar, fun") == ["toy", "story", "1995", "pixar", "fun"]
    assert tokenize(None) == []
    assert category_tokens(["A>B>C", "A>D", "A>B"]) == ["A", "A>B", "A>B>C", "A>D"]
    assert leaf_categories(["A", "A>B", "A>B>C", "D", "A > E"]) == ["A>B>C", "D", "A>E"]


def test_fit_and_encode_tiny(tiny_dataset):
    fs = _fs(tiny_dataset)
    assert "topic0" in fs.categories and "topic0>sub1" in fs.categories
    assert "word1a" in fs.tokens and "about" in fs.tokens
    assert fs.user_columns == ["segment"] and set(fs.user_values) == {"segment=s0", "segment=s1"}
    feats = fs.encode_items(tiny_dataset.items)
    assert feats.categories.shape == (60, 16) and feats.tokens.shape == (60, 32)
    # item 4: categories topic1, topic1>sub0 -> 2 ids, rest padding
    assert (feats.categories[4] > 1).sum() == 2 and (feats.categories[4] == 0).sum() == 14
    assert feats.brand[0] == 0 and feats.brand[1] > 1  # item 0 has no brand
    known = set(tiny_dataset.interactions["item_id"])
    for i in range(60):
        assert (feats.id_index[i] > 0) == (i in known)


def test_unknown_values_map_to_oov_and_new_items_encode_from_content(tiny_dataset):
    fs = _fs(tiny_dataset)
    new = pd.DataFrame({
        "item_id": [1000], "created_at": [fs.reference_time - pd.Timedelta(days=3)],
        "categories": [["topic2>sub0", "brandnewcat"]], "title": ["zzzunseen word2a"], "text": [""],
        "brand": ["brand_never_seen"],
    })  # fmt: skip
    f = fs.encode_items(new)
    assert f.id_index.item() == 0  # never trained: content only
    cats = f.categories[0][f.categories[0] > 0].tolist()
    assert OOV in cats and len(cats) == 3  # topic2, topic2>sub0 known; brandnewcat OOV
    toks = f.tokens[0][f.tokens[0] > 0].tolist()
    assert toks[0] == OOV and toks[1] > 1
    assert f.brand.item() == OOV
    assert f.age.item() == 1  # 3 days: bucket (1, 7]
    u = fs.encode_users(pd.DataFrame({"user_id": [5, 6], "segment": ["s1", "s9"]}))
    assert u.values[0, 0] > 1 and u.values[1, 0] == OOV


def test_vocab_cap_and_min_count(tiny_dataset):
    fs = _fs(tiny_dataset, text_vocab_size=3)
    assert len(fs.tokens) == 3
    fs2 = _fs(tiny_dataset, text_min_count=1000)
    assert fs2.tokens == []


def test_json_round_trip_gives_identical_encodings(tiny_dataset, tmp_path):
    fs = _fs(tiny_dataset)
    fs.save(tmp_path / "fs.json")
    fs2 = FeatureSpace.load(tmp_path / "fs.json")
    a, b = fs.encode_items(tiny_dataset.items), fs2.encode_items(tiny_dataset.items)
    for x, y in zip(a.tensors(), b.tensors()):
        assert torch.equal(x, y)
    assert torch.equal(fs.encode_users(tiny_dataset.users).values, fs2.encode_users(tiny_dataset.users).values)
    assert np.array_equal(fs.known_item_ids, fs2.known_item_ids)
