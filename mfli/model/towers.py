"""Item and user towers: F L2-normalised facet embeddings from a shared trunk and one head per facet.

The item tower reads an item's id embedding (with id-dropout) and its content (category paths,
title/text tokens, brand, age bucket). Items never seen in training always use the "unknown" id
row, so a brand-new item is embedded from content alone and lands where similar trained items are.
The user tower pools the item-input representations of the user's recent history (shared tables,
so history items that are cold still contribute their content) and adds user feature values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfli.model.features import ItemFeatures


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())


class FacetHeads(nn.Module):
    """One linear head per facet on a shared trunk output, L2-normalised.

    Args:
        hidden: trunk width h.  n_facets: F.  dim: d.
    Call: ``(B, h) -> (B, F, d)`` unit vectors.
    """

    def __init__(self, hidden: int, n_facets: int, dim: int) -> None:
        super().__init__()
        self.n_facets, self.dim = n_facets, dim
        self.proj = nn.Linear(hidden, n_facets * dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.proj(h).view(h.shape[0], self.n_facets, self.dim)
        return F.normalize(out, dim=-1)


class ItemTower(nn.Module):
    """Item features -> ``(N, F, d)`` facet embeddings.

    Args:
        n_ids, n_categories, n_tokens, n_brands, n_age: vocabulary sizes (see ``FeatureSpace``).
        hidden: embedding and trunk width h.  n_facets: F.  dim: d.
        id_dropout: train-time probability that an item's id embedding is replaced by the
            "unknown" row 0, so the content path alone must place the item (cold start).

    Example:
        >>> tower = ItemTower(10, 5, 7, 3, 9, hidden=16, n_facets=2, dim=8, id_dropout=0.2)
        >>> e = tower(features)            # (N, 2, 8), rows L2-normalised
    """

    def __init__(
        self,
        n_ids: int,
        n_categories: int,
        n_tokens: int,
        n_brands: int,
        n_age: int,
        hidden: int,
        n_facets: int,
        dim: int,
        id_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.id_dropout = id_dropout
        self.id_emb = nn.Embedding(n_ids, hidden)  # row 0 = "unknown id", learned like any other
        self.cat_bag = nn.EmbeddingBag(n_categories, hidden, mode="mean", padding_idx=0)
        self.tok_bag = nn.EmbeddingBag(n_tokens, hidden, mode="mean", padding_idx=0)
        self.brand_emb = nn.Embedding(n_brands, hidden, padding_idx=0)
        self.age_emb = nn.Embedding(n_age, hidden)
        for emb in (self.id_emb, self.cat_bag, self.tok_bag, self.brand_emb, self.age_emb):
            nn.init.normal_(emb.weight, std=0.1)
        with torch.no_grad():
            self.brand_emb.weight[0].zero_()
        # features are summed, not concatenated: the sum is also what the user tower pools, and a
        # 5x narrower trunk input is most of the step time on CPU
        self.input_dim = hidden
        self.trunk = _mlp(self.input_dim, hidden)
        self.heads = FacetHeads(hidden, n_facets, dim)

    def inputs(self, feats: ItemFeatures, drop_ids: bool | None = None) -> torch.Tensor:
        """Summed feature embeddings ``(N, h)`` (also what the user tower pools).

        ``drop_ids`` defaults to ``self.training``; when true each id is replaced by the unknown
        row with probability ``id_dropout``.
        """
        idx = feats.id_index
        if (self.training if drop_ids is None else drop_ids) and self.id_dropout > 0:
            keep = torch.rand(idx.shape, device=idx.device) >= self.id_dropout
            idx = idx * keep
        return (
            self.id_emb(idx)
            + self.cat_bag(feats.categories)
            + self.tok_bag(feats.tokens)
            + self.brand_emb(feats.brand)
            + self.age_emb(feats.age)
        )

    def forward(self, feats: ItemFeatures, drop_ids: bool | None = None) -> torch.Tensor:
        """``feats`` of N items -> ``(N, F, d)`` unit facet embeddings."""
        return self.heads(self.trunk(self.inputs(feats, drop_ids)))


class UserTower(nn.Module):
    """User features + recent history -> ``(B, F, d)`` facet query embeddings.

    Args:
        n_user_values: user feature vocabulary size (0 or 2 when the data has no user features).
        n_user_columns: K feature columns per user (0: history only).
        item_input_dim: width of ``ItemTower.inputs`` (pooled history representation).
        hidden, n_facets, dim: as in :class:`ItemTower`.
        history_len: H, the most recent items pooled.
        pooling: ``"mean"`` (masked mean), ``"attention"`` (learned query + recency positions) or
            ``"transformer"`` (one pre-norm self-attention layer over the ordered history with
            recency positions, then attention pooling; the most recent item's output is
            concatenated, so order and recency shape the query, not only a bag of items) or
            ``"recent"`` (``"attention"`` plus the most recent item's representation concatenated:
            the last item, the strongest next-item signal, is not averaged away; no extra cost).

    Call args:
        user_values: ``(B, K)`` int64 feature-token ids (0 = missing).
        history: ``(B, H, h)`` projected history items (:meth:`project_items`), right-aligned
            (last = most recent).
        mask: ``(B, H)`` bool, true where a history slot holds an item.
    """

    def __init__(
        self,
        n_user_values: int,
        n_user_columns: int,
        item_input_dim: int,
        hidden: int,
        n_facets: int,
        dim: int,
        history_len: int,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "attention", "transformer", "recent"):
            raise ValueError(f"pooling must be 'mean', 'attention', 'transformer' or 'recent', got {pooling!r}")
        self.use_last = pooling in ("transformer", "recent")
        self.pooling = pooling
        self.has_features = n_user_columns > 0
        self.value_bag = (
            nn.EmbeddingBag(max(n_user_values, 2), hidden, mode="mean", padding_idx=0) if self.has_features else None
        )
        self.hist_proj = nn.Linear(item_input_dim, hidden)
        if pooling in ("attention", "transformer", "recent"):
            self.pos_emb = nn.Embedding(history_len, hidden)
            nn.init.normal_(self.pos_emb.weight, std=0.02)
            self.att_query = nn.Parameter(torch.zeros(hidden))
        self.encoder = None
        if pooling == "transformer":
            # two heads, a 2h feed-forward, no dropout: small enough for CPU steps of B x H = 1024 x 50
            self.encoder = nn.TransformerEncoderLayer(hidden, nhead=2, dim_feedforward=2 * hidden, dropout=0.0,
                                                      activation="gelu", batch_first=True, norm_first=True)
        d_in = hidden * ((2 if self.has_features else 1) + (1 if self.use_last else 0))
        self.trunk = _mlp(d_in, hidden)
        self.heads = FacetHeads(hidden, n_facets, dim)

    def project_items(self, reps: torch.Tensor) -> torch.Tensor:
        """Item-input representations ``(U, item_input_dim) -> (U, h)``; applied to the distinct
        history items before they are gathered into ``(B, H, h)`` (much cheaper than after)."""
        return self.hist_proj(reps)

    def forward(self, user_values: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """See class docstring; returns ``(B, F, d)`` unit vectors."""
        h = history  # (B, H, h)
        H = h.shape[1]
        # right-aligned: leading columns empty in every row carry nothing; drop them (short histories)
        first = int(mask.any(0).to(torch.int8).argmax()) if bool(mask.any()) else H - 1
        h, mask = h[:, first:], mask[:, first:]
        H_used = h.shape[1]
        pos = torch.arange(H_used - 1, -1, -1, device=h.device)  # 0 = most recent (right-aligned)
        extra = []
        if self.encoder is not None:
            has = mask.any(1)  # (B,)
            # an empty history attends to its (masked-in) last slot instead of to nothing (NaN)
            attn_mask = mask.clone()
            attn_mask[:, -1] |= ~has
            h = self.encoder(h + self.pos_emb(pos), src_key_padding_mask=~attn_mask)
            h = h * has[:, None, None].to(h.dtype)  # empty history -> zeros, like the other poolings
        if self.use_last:  # right-aligned: the last slot is the most recent item (zeros when empty)
            extra.append(h[:, -1] * mask[:, -1:].to(h.dtype))
        if self.pooling == "mean":
            m = mask.to(h.dtype)
            w = m / m.sum(1, keepdim=True).clamp_min(1.0)
        else:
            # (h + pos) . q without materialising the keys: two matrix-vector products
            logits = (torch.einsum("bhd,d->bh", h, self.att_query) + self.pos_emb(pos) @ self.att_query)
            logits = (logits / h.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
            w = torch.softmax(logits, dim=1).nan_to_num(0.0)  # empty history -> all-zero weights
        pooled = torch.bmm(w.unsqueeze(1), h).squeeze(1)  # (B, h)
        parts = [pooled, *extra]
        if self.value_bag is not None:
            parts.append(self.value_bag(user_values))
        return self.heads(self.trunk(torch.cat(parts, dim=-1)))
