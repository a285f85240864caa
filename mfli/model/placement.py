"""New-item placement: an item without a trained id borrows the embeddings of its content neighbours.

The item tower embeds an item whose id it never trained from content alone (the "unknown" id row plus
its categories, text tokens and brand). That embedding lands where the content path puts it, which
is often far from where the item's future users look: the id embedding carries most of what training
learned. Deep Retrieval's answer, placing a new item on its content neighbours' paths, does better
for new items on the synthetic catalogue (docs/benchmarks.md). Here the same idea is applied to the
embeddings themselves, before indexing:

- content vectors: an item's category, text-token and brand ids in the model's own vocabularies
  (:class:`~mfli.model.features.FeatureSpace`; padding and out-of-vocabulary ids dropped), IDF
  weighted over the trained items, L2-normalised;
- neighbours: the ``neighbours`` trained items with the highest cosine, their embeddings (ids
  included) averaged with the cosine as weight, per facet, re-normalised;
- placed embedding: ``normalise(mix * neighbour mean + (1 - mix) * tower embedding)`` per facet; an
  item sharing no content id with any trained item keeps its tower embedding.

``mix`` is chosen after training on the validation hold-out (:func:`choose_mix`): the validation
positives' items are treated as if they were new (each one's own row left out of its neighbours) and
the mix whose placed embeddings give the best recall@K of those items wins; ``mix = 0`` (the tower
alone) competes on equal terms, so a catalogue whose content path already places items well keeps it.
:class:`~mfli.model.trained.TrainedModel` applies the chosen placement wherever it embeds an item
without a trained id (full build, delta pipeline, quality benchmark).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from mfli.model.features import OOV, ItemFeatures

__all__ = ["MIX_GRID", "ContentNeighbours", "PlacementConfig", "choose_mix", "content_matrix"]

#: mixes :func:`choose_mix` compares on validation (0: the tower's content-only embedding)
MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
_BLOCK_ENTRIES = 1 << 24  # (new rows x trained items) similarities held at once (64 MB of float32)


@dataclass(frozen=True)
class PlacementConfig:
    """How items without a trained id are embedded (``mix`` 0: the item tower alone)."""

    neighbours: int = 20
    mix: float = 0.0

    def __post_init__(self) -> None:
        if self.neighbours < 1 or not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"placement needs neighbours >= 1 and 0 <= mix <= 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def content_matrix(feats: ItemFeatures, n_categories: int, n_tokens: int, n_brands: int) -> sp.csr_matrix:
    """``(N, V)`` binary float32 content ids of N items: categories, then text tokens, then brand, in one
    column space of ``V = n_categories + n_tokens + n_brands`` (padding and OOV ids dropped)."""
    cats = feats.categories.cpu().numpy()
    toks = feats.tokens.cpu().numpy()
    brand = feats.brand.cpu().numpy()[:, None]
    cols = np.concatenate([cats, toks + n_categories, brand + n_categories + n_tokens], axis=1)
    valid = np.concatenate([cats > OOV, toks > OOV, brand > OOV], axis=1)
    rows = np.broadcast_to(np.arange(len(cats))[:, None], cols.shape)
    m = sp.csr_matrix((np.ones(int(valid.sum()), np.float32), (rows[valid], cols[valid])),
                      shape=(len(cats), n_categories + n_tokens + n_brands))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class ContentNeighbours:
    """The trained items' IDF-weighted content vectors and their embeddings.

    Args:
        content: ``(N, V)`` binary content ids of the trained items (:func:`content_matrix`).
        embeddings: ``(N, F, d)`` float32 their facet embeddings (ids included).
    """

    def __init__(self, content: sp.csr_matrix, embeddings: np.ndarray) -> None:
        if content.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{content.shape[0]} content rows for {embeddings.shape[0]} embeddings")
        n = max(content.shape[0], 1)
        df = np.asarray(content.sum(0)).ravel()
        self.idf = np.where(df > 0, np.log((n + 1) / (df + 1)), 0.0).astype(np.float32)  # (V,)
        self._trained_t = self.weigh(content).T.tocsr()  # (V, N)
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)

    def weigh(self, content: sp.csr_matrix) -> sp.csr_matrix:
        """IDF-weighted, L2-normalised rows of ``content (n, V)``."""
        w = content.multiply(self.idf[None, :]).tocsr()
        norm = np.sqrt(np.asarray(w.multiply(w).sum(1)).ravel())
        return sp.diags(1.0 / np.maximum(norm, 1e-12)).dot(w).tocsr()

    def neighbour_mean(self, content: sp.csr_matrix, k: int, exclude: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine-weighted mean embedding of each row's ``k`` nearest trained items.

        Args:
            content: ``(n, V)`` binary content ids.  exclude: ``(n,)`` a trained row each row must not
                take as a neighbour (itself, when a trained item plays a new one), -1 none.

        Returns:
            ``(n, F, d)`` unit-per-facet means (zeros where no trained item shares a content id) and
            ``(n,)`` bool, true where a mean exists.
        """
        q = self.weigh(content)
        n, N = q.shape[0], self._trained_t.shape[1]
        F, d = self.embeddings.shape[1:]
        out = np.zeros((n, F, d), np.float32)
        has = np.zeros(n, bool)
        if n == 0 or N == 0:
            return out, has
        k = min(k, N)
        block = max(1, _BLOCK_ENTRIES // N)
        for a in range(0, n, block):
            b = min(n, a + block)
            s = q[a:b].dot(self._trained_t).toarray()  # (b - a, N)
            if exclude is not None:
                own = exclude[a:b]
                sel = np.flatnonzero(own >= 0)
                s[sel, own[sel]] = 0.0
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < N else np.tile(np.arange(N), (b - a, 1))
            w = np.take_along_axis(s, top, 1).clip(min=0.0)  # (b - a, k)
            mean = np.einsum("bk,bkfd->bfd", w, self.embeddings[top])
            norm = np.linalg.norm(mean, axis=-1, keepdims=True)
            ok = (w.sum(1) > 0) & (norm.min(axis=(1, 2)) > 0)
            out[a:b][ok] = mean[ok] / norm[ok]
            has[a:b] = ok
        return out, has

    def place(self, content: sp.csr_matrix, tower: np.ndarray, cfg: PlacementConfig,
              exclude: np.ndarray | None = None) -> np.ndarray:
        """``tower (n, F, d)`` content-only embeddings -> placed ``(n, F, d)`` unit-per-facet embeddings."""
        if cfg.mix <= 0.0 or len(tower) == 0:
            return np.asarray(tower, np.float32)
        mean, has = self.neighbour_mean(content, cfg.neighbours, exclude)
        return mix_embeddings(tower, mean, has, cfg.mix)


def mix_embeddings(tower: np.ndarray, mean: np.ndarray, has: np.ndarray, mix: float) -> np.ndarray:
    """``normalise(mix * mean + (1 - mix) * tower)`` per facet where ``has``; the tower elsewhere."""
    out = np.array(tower, np.float32, copy=True)
    if mix <= 0.0 or not has.any():
        return out
    v = mix * mean[has] + (1.0 - mix) * out[has]
    out[has] = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return out


@torch.no_grad()
def choose_mix(queries: torch.Tensor, catalogue_emb: torch.Tensor, tower_emb: torch.Tensor,
               pseudo_rows: np.ndarray, neighbours: ContentNeighbours, pseudo_content: sp.csr_matrix,
               trained_pos: np.ndarray, seen: list[np.ndarray], positives: list[np.ndarray],
               k_neighbours: int = 20, k: int = 100, grid: tuple[float, ...] = MIX_GRID
               ) -> tuple[PlacementConfig, dict[str, float]]:
    """The mix whose placed embeddings of validation items played as new give the best recall@k.

    Args:
        queries: ``(U, F, d)`` validation users' queries.  catalogue_emb: ``(N, F, d)`` every catalogue
            row's embedding (ids included).  tower_emb: ``(P, F, d)`` content-only embeddings of the
            ``pseudo_rows (P,)`` catalogue rows played as new.
        neighbours: over the trained items; pseudo_content ``(P, V)`` the played items' content ids;
            trained_pos ``(P,)`` each played item's row among the trained items (left out of its own
            neighbours).
        seen: U arrays of catalogue rows excluded per user (their histories); positives: U arrays of
            held-out catalogue rows (only those in ``pseudo_rows`` count).

    Returns:
        the chosen :class:`PlacementConfig` (ties: the smaller mix) and ``{mix: recall}``.
    """
    pseudo = np.asarray(pseudo_rows, np.int64)
    pos = [np.intersect1d(p, pseudo) for p in positives]
    users = [u for u, p in enumerate(pos) if len(p)]
    table: dict[str, float] = {}
    if not users or len(pseudo) == 0:
        return PlacementConfig(k_neighbours, 0.0), table
    mean, has = neighbours.neighbour_mean(pseudo_content, k_neighbours, trained_pos)
    tower = tower_emb.cpu().numpy()
    q = queries[users].flatten(1)
    best = (-1.0, 0.0)
    items = catalogue_emb.clone()  # one copy: each mix overwrites the played rows
    rows = torch.as_tensor(pseudo)
    for mix in grid:
        items[rows] = torch.as_tensor(mix_embeddings(tower, mean, has, mix), dtype=items.dtype)
        flat = items.flatten(1)
        kk = min(k, flat.shape[0])
        recalls = []
        for s in range(0, len(users), 512):
            scores = q[s : s + 512] @ flat.T
            for j, u in enumerate(users[s : s + 512]):
                ex = seen[u][seen[u] >= 0]
                scores[j, torch.as_tensor(ex, dtype=torch.long)] = float("-inf")
            top = scores.topk(kk, dim=1).indices.numpy()
            recalls += [np.isin(pos[u], t).mean() for u, t in zip(users[s : s + 512], top)]
        r = float(np.mean(recalls))
        table[f"{mix:g}"] = r
        if r > best[0] + 1e-12:
            best = (r, mix)
    return PlacementConfig(k_neighbours, best[1]), table
