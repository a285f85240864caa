"""Scoring the items of chosen clusters: the one place that reads base + delta clusters.

A cluster of the snapshot is a contiguous block of a facet-ordered copy of the embeddings, so its
items are scored by one small matmul per (row key, cluster) straight into a padded ``(R, W)`` score
matrix; no candidate embeddings are gathered. Delta items of the same clusters are few and scored in
one vectorised pass. A row key is a request (user mode) or a chosen cluster (trigger mode).

This is the concern a compiled engine can replace: :class:`ClusterScorer` takes the base index once
and answers :meth:`ClusterScorer.score` for any delta view of it.
"""

from __future__ import annotations

import numpy as np
import torch

from mfli.index.delta import DeltaIndex
from mfli.index.inverted import MultiFacetIndex


def expand(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ranges -> ``(idx, owner)``: ``idx`` runs over ``starts[i]..starts[i]+lens[i]-1`` for each i."""
    lens = lens.astype(np.int64)
    total = int(lens.sum())
    owner = np.repeat(np.arange(lens.size, dtype=np.int64), lens)
    first = np.cumsum(lens) - lens
    idx = np.arange(total, dtype=np.int64) - first[owner] + starts[owner]
    return idx, owner


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of ``(B, n)`` float32, best first: ``(idx (B, k'), values (B, k'))``, ``k' = min(k, n)``.

    torch.topk is several times faster than numpy's argpartition + sort on these shapes (ties: any order).
    """
    n = x.shape[1]
    k = min(k, n)
    if k <= 0 or x.shape[0] == 0:
        return np.zeros((x.shape[0], max(k, 0)), np.int64), np.zeros((x.shape[0], max(k, 0)), np.float32)
    vals, idx = torch.topk(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), k, dim=1)
    return idx.numpy(), vals.numpy()


class ClusterScorer:
    """Scores the items of (row key, facet, cluster) triples of one snapshot, with or without a delta.

    Args:
        base: the snapshot's :class:`MultiFacetIndex` (its facet-ordered embedding copies are built here,
            one ``(nnz_f, d)`` array per facet; ``(nnz_f, F * d)`` ones on first use for summed scores).
    """

    def __init__(self, base: MultiFacetIndex) -> None:
        self.base = base
        self._block = [np.ascontiguousarray(base.embeddings[csr.rows, f, :]) for f, csr in enumerate(base.facets)]
        self._block_full: list[np.ndarray | None] = [None] * base.n_facets

    def _full_block(self, f: int) -> np.ndarray:
        """``(nnz_f, F * d)`` all facets of facet f's CSR rows, built on first use (merge="sum")."""
        if self._block_full[f] is None:
            rows = self.base.facets[f].rows
            self._block_full[f] = np.ascontiguousarray(self.base.embeddings[rows].reshape(rows.size, -1))
        return self._block_full[f]

    def score(self, space: DeltaIndex, R: int, groups: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
              queries: list[np.ndarray], full: bool, top: int | None, delta_queries: np.ndarray | None = None):
        """Score the items of the given clusters straight into padded per-key rows.

        Args:
            space: the row space (``DeltaIndex`` over ``base``; an empty one for the snapshot alone).
            R: number of row keys.
            groups: per facet ``(f, key, pos, tag)``: row key in ``[0, R)``, cluster position, and a tag
                carried along to explain a column (beam path rank, chosen-cluster index ...).
            queries: per facet ``(R, d)`` query vectors (``(R, F * d)`` weighted ones when ``full``).
            full: score with all facets (``sum_f q_f . e_f``) instead of the facet's own embedding.
            top: read at most this many items per cluster (best static score first), in the snapshot
                and in the delta each.
            delta_queries: ``(R, F * d)`` query vectors for the delta's items (``full`` only: their own
                facet weights); default ``queries``.

        Returns:
            ``p_score (R, W)`` float32 (-inf padding), ``p_rows (R, W)`` combined rows (-1 padding),
            ``pairs = (key * W + first column, facet, pos, tag)`` sorted, to explain a column, and ``W``.
            Within a key's row the snapshot's items of a group come before its delta items.
        """
        if delta_queries is not None and not full:
            raise ValueError("delta_queries weigh the summed score: they need full=True")
        N = self.base.n_items
        parts = []  # (key, facet, start, length, pos, tag, is_delta)
        has_delta = space.item_ids.size > 0
        for f, key, pos, tag in groups:
            csr = self.base.facets[f]
            start = csr.offsets[pos]
            lens = csr.offsets[pos + 1] - start
            if top is not None:
                lens = np.minimum(lens, top)
            parts.append((key, np.full(key.size, f), start, lens, pos, tag, np.zeros(key.size, bool)))
            if has_delta:
                dstart, dlens = space.delta_slices(f, pos, top)
                parts.append((key, np.full(key.size, f), dstart, dlens, pos, tag, np.ones(key.size, bool)))
        key, fac, start, lens, pos, tag, is_delta = (np.concatenate(c) for c in zip(*parts))
        # column offset of each triple inside its key's row, in group order (a facet's snapshot part, then
        # its delta part)
        o = np.argsort(key, kind="stable")
        key, fac, start, lens, pos, tag, is_delta = (a[o] for a in (key, fac, start, lens, pos, tag, is_delta))
        csum = np.cumsum(lens)
        per_key = np.bincount(key, weights=lens, minlength=R).astype(np.int64)
        col = csum - lens - (np.cumsum(per_key) - per_key)[key]
        W = max(int(per_key.max()) if R else 0, 1)
        p_score = np.full((R, W), -np.inf, np.float32)
        p_rows = np.full((R, W), -1, np.int64)
        # one small matmul per triple, straight on the cluster's contiguous block into the output row
        for f in range(self.base.n_facets):
            sel = np.flatnonzero((fac == f) & ~is_delta & (lens > 0))
            if not sel.size:
                continue
            src = self._full_block(f) if full else self._block[f]
            rows_f = self.base.facets[f].rows
            qv = list(queries[f])
            for b, a, n, c in zip(key[sel].tolist(), start[sel].tolist(), lens[sel].tolist(), col[sel].tolist()):
                np.matmul(src[a : a + n], qv[b], out=p_score[b, c : c + n])
                p_rows[b, c : c + n] = rows_f[a : a + n]
        dsel = np.flatnonzero(is_delta & (lens > 0))
        if dsel.size:  # delta slices are small: score them in one vectorised pass
            idx, owner = expand(start[dsel], lens[dsel])
            pair = dsel[owner]
            drows = np.concatenate(space.delta_rows)
            base_of = np.cumsum([0] + [space.delta_rows[f].size for f in range(self.base.n_facets - 1)])
            rows = drows[base_of[fac[pair]] + idx]
            emb = space.embeddings[rows - N]
            if full:
                qmat = (queries[0] if delta_queries is None else delta_queries)[key[pair]]
            else:
                qmat = np.stack(queries)[fac[pair], key[pair]]
            vec = emb.reshape(rows.size, -1) if full else emb[np.arange(rows.size), fac[pair]]
            colx = col[pair] + (np.arange(idx.size) - (np.cumsum(lens[dsel]) - lens[dsel])[owner])
            p_score[key[pair], colx] = np.einsum("nd,nd->n", vec, qmat)
            p_rows[key[pair], colx] = rows
        k_col = key * W + col
        o = np.argsort(k_col, kind="stable")
        return p_score, p_rows, (k_col[o], fac[o], pos[o], tag[o]), W
