"""Full index build from a trained model: embed items, encode code paths, build, rebalance.

The build is split into a row-wise *encode* step (embeddings and code paths of any slice of the
catalogue; what item shards compute in parallel) and a *reduce* step (CSR build + split-and-merge
over all rows). Encoding is per row, so a sharded build equals a single-shard one exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, RebalanceResult, rebalance


@dataclass
class EncodedItems:
    """Embeddings and code paths of a slice of the catalogue.

    Attributes:
        item_ids: ``(n,)`` int64.
        embeddings: ``(n, F, d)`` float32, L2-normalised facet embeddings.
        codes: ``(n, F, m, L)`` int64 code paths, best first.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    codes: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"item_ids": self.item_ids, "embeddings": self.embeddings, "codes": self.codes}

    @classmethod
    def from_arrays(cls, arrays) -> "EncodedItems":
        return cls(np.asarray(arrays["item_ids"]), np.asarray(arrays["embeddings"]), np.asarray(arrays["codes"]))

    @classmethod
    def concat(cls, parts: list["EncodedItems"]) -> "EncodedItems":
        parts = [p for p in parts if len(p.item_ids)]
        if not parts:
            raise ValueError("no encoded items to concatenate")
        return cls(
            np.concatenate([p.item_ids for p in parts]),
            np.concatenate([p.embeddings for p in parts]),
            np.concatenate([p.codes for p in parts]),
        )


def auto_rebalance_config(n_items: int, seed: int = 0) -> RebalanceConfig:
    """Cluster bounds scaled to the catalogue: part size ~ sqrt(N)/2 in [16, 2000], floor = target/4,
    cap = 4 * target (ML-latest-small: 12..196; 1M items: 125..2000)."""
    target = int(min(2000, max(16, math.sqrt(max(n_items, 1)) / 2)))
    return RebalanceConfig(floor=max(2, target // 4), cap=4 * target, target=target, seed=seed)


def encode_items(model, items: pd.DataFrame, paths_per_item: int = 1, use_ids: bool = True) -> EncodedItems:
    """Embed ``items`` with ``model`` (content features; ids seen in training use their id embedding)
    and encode their top-``paths_per_item`` code paths per facet with the learned codebooks."""
    emb = model.item_embeddings(items, use_ids=use_ids).numpy().astype(np.float32)
    codes = encode_paths(emb, model.codebooks, m=paths_per_item)
    return EncodedItems(items["item_id"].to_numpy(np.int64), emb, np.asarray(codes, dtype=np.int64))


def build_from_encoded(
    encoded: EncodedItems,
    codebooks,
    facet_names: list[str],
    static_score: np.ndarray | None = None,
    config: RebalanceConfig | None = None,
) -> RebalanceResult:
    """CSR build over all encoded rows, then split-and-merge rebalancing.

    Args:
        static_score: ``(n,)`` in-cluster order (e.g. log training popularity); default 0.
        config: bounds; default :func:`auto_rebalance_config` for the catalogue size.
    """
    index = MultiFacetIndex.build(
        encoded.item_ids, encoded.embeddings, encoded.codes, codebooks,
        static_score=static_score, facet_names=facet_names,
    )
    return rebalance(index, config or auto_rebalance_config(len(encoded.item_ids)))


def popularity_score(item_ids: np.ndarray, interactions: pd.DataFrame) -> np.ndarray:
    """``(n,)`` float32 log(1 + training events) per item: the static in-cluster order."""
    counts = interactions["item_id"].value_counts()
    return np.log1p(counts.reindex(item_ids, fill_value=0).to_numpy(np.float64)).astype(np.float32)
