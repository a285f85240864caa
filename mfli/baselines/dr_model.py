"""Deep Retrieval's neural part: the history encoder, the D-layer path model p(c|x) and the softmax re-ranker.

Item indices inside these modules are *internal* (0..N-1); history tensors store index + 1 so that 0 can
mean padding. The mapping from catalogue ids lives in :mod:`mfli.baselines.deep_retrieval`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HistoryEncoder(nn.Module):
    """Encodes a user's recent items into the query vector x that every path layer and the re-ranker read.

    Args:
        n_items: catalogue size N (the embedding table has N + 1 rows, row 0 = padding).
        item_dim: item-id embedding size.
        out_dim: size of x.
        kind: ``"mean"`` (masked mean of item embeddings, then an MLP) or ``"gru"`` (the paper's choice:
            a GRU over the sequence, x = the hidden state after the last real item).

    Call args:
        hist: ``(B, L)`` int64, item index + 1, real items first then zero padding (right-padded).

    Returns:
        ``(B, out_dim)`` float32; an empty history gives the encoding of a zero input.
    """

    def __init__(self, n_items: int, item_dim: int, out_dim: int, kind: str = "mean", sparse: bool = False) -> None:
        super().__init__()
        if kind not in ("mean", "gru"):
            raise ValueError(f"encoder must be 'mean' or 'gru', got {kind!r}")
        self.kind = kind
        self.item_emb = nn.Embedding(n_items + 1, item_dim, padding_idx=0, sparse=sparse)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if kind == "gru":
            self.gru = nn.GRU(item_dim, out_dim, batch_first=True)
            self.out = nn.Linear(out_dim, out_dim)
        else:
            self.mlp = nn.Sequential(nn.Linear(item_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        n = (hist > 0).sum(1)
        e = self.item_emb(hist)  # (B, L, item_dim); padding rows are zero
        if self.kind == "mean":
            return self.mlp(e.sum(1) / n.clamp(min=1).unsqueeze(1).to(e.dtype))
        out, _ = self.gru(e)
        last = out[torch.arange(len(hist)), (n - 1).clamp(min=0)]
        return self.out(last * (n > 0).unsqueeze(1).to(last.dtype))


class PathModel(nn.Module):
    """p(c | x) = prod_d p(c_d | x, c_1..c_{d-1}): one softmax MLP over K nodes per layer.

    Layer d reads ``[x, node_emb_1(c_1), ..., node_emb_{d-1}(c_{d-1})]``; each layer has its own node
    embedding table (a node index means different things at different depths).

    Args:
        x_dim: size of the user vector x.
        n_nodes: K.
        n_layers: D.
        node_dim: size of the node embeddings fed to deeper layers.
        hidden: hidden width of each layer's MLP.
    """

    def __init__(self, x_dim: int, n_nodes: int, n_layers: int, node_dim: int, hidden: int) -> None:
        super().__init__()
        self.K, self.D = n_nodes, n_layers
        self.node_emb = nn.ModuleList([nn.Embedding(n_nodes, node_dim) for _ in range(n_layers - 1)])
        self.layers = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(x_dim + d * node_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_nodes))
                for d in range(n_layers)
            ]
        )

    def layer_logp(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``x (R, x_dim)``, ``prefix (R, d)`` nodes of layers 1..d -> ``(R, K)`` log p(c_{d+1} | x, prefix)."""
        d = prefix.shape[1]
        parts = [x] + [self.node_emb[i](prefix[:, i]) for i in range(d)]
        return F.log_softmax(self.layers[d](torch.cat(parts, dim=1)), dim=1)

    def path_logp(self, x: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        """``x (B, x_dim)``, ``paths (B, J, D)`` int64 -> ``(B, J)`` log p(path | x)."""
        B, J, D = paths.shape
        # the first layer sees only x, so evaluate it once per row instead of once per path
        total = self.layer_logp(x, paths.new_zeros((B, 0))).gather(1, paths[:, :, 0])
        if D == 1:
            return total
        xr = x.unsqueeze(1).expand(B, J, x.shape[1]).reshape(B * J, -1)
        flat = paths.reshape(B * J, D)
        for d in range(1, D):
            lp = self.layer_logp(xr, flat[:, :d])
            total = total + lp.gather(1, flat[:, d : d + 1]).view(B, J)
        return total

    @torch.no_grad()
    def beam_search(self, x: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the ``beam`` most probable prefixes per layer.

        Args:
            x: ``(Q, x_dim)`` user vectors.
            beam: B, prefixes kept per layer.

        Returns:
            paths ``(Q, b, D)`` int64 and their log-probabilities ``(Q, b)`` sorted best first, where
            b = min(B, K**D).
        """
        Q = x.shape[0]
        lp = self.layer_logp(x, x.new_zeros((Q, 0), dtype=torch.long))  # (Q, K)
        score, node = lp.topk(min(beam, self.K), dim=1)
        paths = node.unsqueeze(2)  # (Q, b, 1)
        for _ in range(1, self.D):
            b, d = paths.shape[1], paths.shape[2]
            xr = x.unsqueeze(1).expand(Q, b, x.shape[1]).reshape(Q * b, -1)
            lp = self.layer_logp(xr, paths.reshape(Q * b, d)).view(Q, b, self.K)
            total = (score.unsqueeze(2) + lp).view(Q, b * self.K)
            score, idx = total.topk(min(beam, b * self.K), dim=1)
            parent = torch.div(idx, self.K, rounding_mode="floor")
            paths = torch.cat(
                [paths.gather(1, parent.unsqueeze(2).expand(Q, parent.shape[1], d)), (idx % self.K).unsqueeze(2)],
                dim=2,
            )
        return paths, score


class Reranker(nn.Module):
    """The jointly trained softmax model that re-ranks the union of the beam's items.

    Scores are cosine similarities divided by a temperature between a projection of x and a per-item
    embedding; trained with an in-batch sampled softmax (Q_softmax of the multi-task loss).
    """

    def __init__(self, x_dim: int, n_items: int, dim: int, temperature: float, sparse: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.user_proj = nn.Linear(x_dim, dim)
        self.item_emb = nn.Embedding(n_items, dim, sparse=sparse)
        nn.init.normal_(self.item_emb.weight, std=0.1)

    def user(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, x_dim)`` -> ``(B, dim)`` unit vectors."""
        return F.normalize(self.user_proj(x), dim=1)

    def items(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Item indices ``(M,)`` (or all items) -> ``(M, dim)`` unit vectors."""
        w = self.item_emb.weight if idx is None else self.item_emb(idx)
        return F.normalize(w, dim=1)

    def in_batch_loss(self, x: torch.Tensor, target: torch.Tensor, log_q: torch.Tensor | None) -> torch.Tensor:
        """Sampled softmax with the batch's other targets as negatives.

        Args:
            x: ``(B, x_dim)``; target: ``(B,)`` internal item indices.
            log_q: ``(B,)`` log sampling probability of each target (popularity), subtracted from the
                logits so that popular items are not over-penalised as negatives; None disables it.
        """
        u, v = self.user(x), self.items(target)
        logits = u @ v.T / self.temperature
        if log_q is not None:
            logits = logits - log_q.unsqueeze(0)
        # another row with the same target is not a negative
        same = target.unsqueeze(0) == target.unsqueeze(1)
        eye = torch.eye(len(target), dtype=torch.bool, device=x.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(target), device=x.device))


class DRNet(nn.Module):
    """Encoder + path model + re-ranker, trained together on Q = Q_structure + w * Q_softmax."""

    def __init__(
        self,
        n_items: int,
        *,
        item_dim: int,
        user_dim: int,
        encoder: str,
        n_nodes: int,
        n_layers: int,
        node_dim: int,
        hidden: int,
        rerank_dim: int,
        rerank_temperature: float,
        sparse_items: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = HistoryEncoder(n_items, item_dim, user_dim, encoder, sparse=sparse_items)
        self.paths = PathModel(user_dim, n_nodes, n_layers, node_dim, hidden)
        self.reranker = Reranker(user_dim, n_items, rerank_dim, rerank_temperature, sparse=sparse_items)

    def item_parameters(self) -> list[nn.Parameter]:
        """The per-item embedding tables (``(N + 1, item_dim)`` history, ``(N, rerank_dim)`` re-ranker)."""
        return [self.encoder.item_emb.weight, self.reranker.item_emb.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (towers, path model, projections)."""
        items = {id(p) for p in self.item_parameters()}
        return [p for p in self.parameters() if id(p) not in items]

    def grow_items(self, hist_rows: torch.Tensor, rerank_rows: torch.Tensor) -> None:
        """Append rows for new items: ``hist_rows (n, item_dim)``, ``rerank_rows (n, rerank_dim)``."""
        old = self.encoder.item_emb
        new = nn.Embedding(old.num_embeddings + len(hist_rows), old.embedding_dim, padding_idx=0, sparse=old.sparse)
        new.weight.data = torch.cat([old.weight.data, hist_rows.to(old.weight.dtype)])
        self.encoder.item_emb = new
        old_r = self.reranker.item_emb
        new_r = nn.Embedding(old_r.num_embeddings + len(rerank_rows), old_r.embedding_dim, sparse=old_r.sparse)
        new_r.weight.data = torch.cat([old_r.weight.data, rerank_rows.to(old_r.weight.dtype)])
        self.reranker.item_emb = new_r
