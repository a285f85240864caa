"""Retrieval without ANN search (REFERENCE.md 1.5), vectorised over a batch of requests.

Two modes over one :class:`~mfli.index.inverted.MultiFacetIndex` (or a
:class:`~mfli.index.delta.DeltaIndex` view: full snapshot + delta + tombstones):

**Trigger mode** (the paper's item-to-item serving), per request and facet f:

1. the clusters of the request's trigger items in facet f (all path slots) form a histogram;
2. K clusters are drawn from it: ``sampling="multinomial"`` makes K draws with replacement,
   proportional to the counts, by inverse CDF on ``u = rng.random((B, K))`` (one call per facet, in
   facet order); ``sampling="topk"`` takes the K most frequent clusters (ties: the cluster holding the
   more recent trigger, then the lower cluster id). A cluster's *weight* is its number of draws
   (multinomial) or its count (top-K);
3. the top-N items of each chosen cluster by static score are read, from the full snapshot and,
   separately, the top-N of the delta;
4. items are re-ranked inside their cluster by the dot product with the mean trigger embedding of
   facet f; seen items, tombstoned items and (by default) the triggers themselves are dropped first;
5. clusters are interleaved by weighted round robin: the item at rank r (0-based) of a cluster of
   weight w gets key ``r / w`` (ties: higher similarity, then lower cluster position), so every chosen
   cluster contributes its best item first and heavier clusters contribute more often. The per-facet
   list is de-duplicated and cut to k.

**User-to-item mode**, per facet f with query ``q = query[:, f]``:

1. beam search over the codebook layers. A prefix is scored by the inner product of the query with
   its reconstruction, ``score(k_1..k_l) = q . sum_j C[j, f, k_j]`` (``beam_score="ip"``: the quantity
   the training's sampled softmax on quantised embeddings optimises), or by ``-||q - recon||^2``
   (``"l2"``). Layer 1 scores all M codewords; each later layer expands the beam's prefixes by their
   children (all M by default, see :meth:`Retriever.beam_search`) and keeps the best ``beam``. With
   ``skip_empty`` prefixes holding no item are never kept. Cost per layer: one ``(B, d) x (d, M)``
   matmul (ip; ``(B * beam, d) x (d, M)`` for l2), a ``(B, beam, M)`` sum and a top-k, whatever the
   catalogue size;
2. the final paths are routed through the facet's rebalance map to their post-rebalance cluster(s)
   (a split path reaches all its parts, a merged path its target); if ``clusters_per_query`` is set,
   only the best of them by the same score against the cluster centroid are read;
3. all items of those clusters (full + delta) are scored by ``q . e_f``; seen and tombstoned items are
   dropped; the best k per facet are kept.

**Speed.** Items are scored by one small matmul per (request, cluster) directly on a facet-ordered
copy of the embeddings (a cluster is a contiguous block), written straight into a padded
``(B, W)`` score matrix; no candidate embeddings are gathered. The copy costs one more ``(N, d)``
array per facet (``merge="sum"`` adds an ``(N, F * d)`` one per facet, built on first use). Serve
with one BLAS thread per process (``OMP_NUM_THREADS=1``): the matmuls are too small to share.

**Merging facets** (both modes): ``merge="quota"`` interleaves the per-facet lists by weighted round
robin over the quotas (position p of facet f gets key ``p / quota_f``, ties by facet order), drops
duplicates and keeps k; with equal quotas the facets alternate. ``merge="sum"`` (user mode only)
instead pools the facets' candidates and ranks them by ``sum_f w_f q_f . e_f``, the score exact
search uses (:mod:`mfli.serve.exact`).

Every result carries an explanation: facet, cluster and the trigger item (trigger mode) or the rank
of the beam path that reached the cluster (user mode).

Example::

    r = Retriever(index, codebooks, config=RetrieverConfig(n_clusters=8, beam=32))
    res = r.retrieve_triggers([[12, 40, 7], [3]], k=100, exclude=[[12, 40, 7], [3]])
    res = r.retrieve_users(user_emb, k=100, exclude=histories)      # user_emb (B, F, d)
    res.item_ids, res.scores, res.explanations()[0][:3]
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mfli.index.delta import DeltaIndex
from mfli.index.inverted import MultiFacetIndex, _as_numpy
from mfli.index.lookup import lookup_sorted

_DENSE_LIMIT = 1 << 25  # key spaces up to this size get dense lookup tables (<= 128 MiB of int32)


@dataclass
class RetrieverConfig:
    """Serving settings (both modes)."""

    # trigger mode
    n_clusters: int = 8  # K: clusters drawn per facet and request
    items_per_cluster: int | None = 200  # N: top-N items (by static score) read per drawn cluster; None = all
    sampling: str = "multinomial"  # "multinomial" (the paper's index selection) or "topk" (deterministic)
    seed: int = 0  # seeds the retriever's np.random.Generator for multinomial draws
    exclude_triggers: bool = True  # never return a request's own trigger items
    # user-to-item mode
    beam: int = 32  # prefixes kept per layer
    beam_score: str = "ip"  # "ip": q . reconstruction; "l2": -||q - reconstruction||^2
    skip_empty: bool = True  # never keep a prefix that holds no item
    expand: int | None = None  # children proposed per prefix and layer; default all M (see beam_search)
    clusters_per_query: int | None = None  # read only the best clusters reached by the beam; None = all
    beam_items_per_cluster: int | None = None  # cap on items read per cluster (by static score); None = all
    # merging facets
    quotas: Sequence[float] | None = None  # share of the k slots per facet; default equal
    merge: str = "quota"  # "quota" (per-facet lists interleaved) or "sum" (user mode: pooled, summed score)
    facet_weights: Sequence[float] | None = None  # w_f for merge="sum"; default 1


@dataclass
class RetrievalResult:
    """Results for a batch of B requests, k slots each (padding: id -1, score -inf).

    Attributes:
        item_ids: ``(B, k)`` int64.
        scores: ``(B, k)`` float32: similarity to the mean trigger embedding (trigger mode) or ``q_f . e_f``
            (user mode, quota merge) or ``sum_f w_f q_f . e_f`` (merge="sum").
        facet: ``(B, k)`` int16 facet index the result came from.
        cluster: ``(B, k)`` int64 cluster id in that facet.
        source: ``(B, k)`` int64 trigger item id (trigger mode) or beam path rank, 0 = best (user mode).
        mode: "trigger" or "user".
        facet_names: names for :meth:`explanations`.
    """

    item_ids: np.ndarray
    scores: np.ndarray
    facet: np.ndarray
    cluster: np.ndarray
    source: np.ndarray
    mode: str
    facet_names: list[str]

    def explanations(self) -> list[list[dict]]:
        """Per request, per result: ``{"item_id", "facet", "cluster", "trigger" | "path_rank"}``."""
        key = "trigger" if self.mode == "trigger" else "path_rank"
        out = []
        for b in range(self.item_ids.shape[0]):
            row = []
            for j in np.flatnonzero(self.item_ids[b] >= 0):
                row.append({"item_id": int(self.item_ids[b, j]), "facet": self.facet_names[self.facet[b, j]],
                            "cluster": int(self.cluster[b, j]), key: int(self.source[b, j])})
            out.append(row)
        return out


class _Table:
    """Integer-keyed lookup: a dense array when the key space is small, binary search otherwise."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, space: int, missing: int = -1) -> None:
        self.missing = missing
        if space <= _DENSE_LIMIT:
            small = values.size == 0 or (values.min() >= -(2**31) and values.max() < 2**31)
            self.dense = np.full(space, missing, dtype=np.int32 if small else np.int64)
            self.dense[keys] = values
            self.keys = self.values = None
        else:
            self.dense = None
            self.keys, self.values = keys, values

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            out = self.dense[np.maximum(q, 0)]
            return np.where(q >= 0, out, self.missing)
        return lookup_sorted(self.keys, self.values, q, self.missing)


def _expand(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ranges -> ``(idx, owner)``: ``idx`` runs over ``starts[i]..starts[i]+lens[i]-1`` for each i."""
    lens = lens.astype(np.int64)
    total = int(lens.sum())
    owner = np.repeat(np.arange(lens.size, dtype=np.int64), lens)
    first = np.cumsum(lens) - lens
    idx = np.arange(total, dtype=np.int64) - first[owner] + starts[owner]
    return idx, owner


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of ``(B, n)`` float32, best first: ``(idx (B, k'), values (B, k'))``, ``k' = min(k, n)``.

    torch.topk is several times faster than numpy's argpartition + sort on these shapes (ties: any order).
    """
    n = x.shape[1]
    k = min(k, n)
    if k <= 0 or x.shape[0] == 0:
        return np.zeros((x.shape[0], max(k, 0)), np.int64), np.zeros((x.shape[0], max(k, 0)), np.float32)
    vals, idx = torch.topk(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), k, dim=1)
    return idx.numpy(), vals.numpy()


def _run_positions(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Position of each element inside its group, for ``group`` made of runs each sorted ascending.

    Returns ``pos (n,)`` and ``counts (n_groups,)``; later runs continue after earlier ones.
    """
    breaks = np.concatenate([[0], np.flatnonzero(np.diff(group) < 0) + 1, [group.size]]).tolist()
    pos = np.empty(group.size, np.int64)
    filled = np.zeros(n_groups, np.int64)
    for s, e in itertools.pairwise(breaks):
        run = group[s:e]
        cnt = np.bincount(run, minlength=n_groups)
        pos[s:e] = np.arange(e - s) - (np.cumsum(cnt) - cnt)[run] + filled[run]
        filled += cnt
    return pos, filled


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first occurrence of each key, in array order."""
    if keys.size == 0:
        return np.zeros(0, bool)
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    first = np.ones(keys.size, bool)
    first[1:] = ks[1:] != ks[:-1]
    out = np.empty(keys.size, bool)
    out[order] = first
    return out


@dataclass
class _FacetList:
    """Ordered per-facet results ``(B, k)``: combined rows (-1 pad), score, cluster position, source."""

    rows: np.ndarray
    score: np.ndarray
    cpos: np.ndarray
    source: np.ndarray


class Retriever:
    """Serving over a multifaceted index (see the module docstring for both modes).

    Args:
        index: a :class:`MultiFacetIndex` or a :class:`DeltaIndex` view.
        codebooks: ``(L, F, M, d)`` the index was built with (user mode needs them).
        facet_names: names for explanations; default the index's.
        config: :class:`RetrieverConfig`.
    """

    def __init__(self, index: MultiFacetIndex | DeltaIndex, codebooks=None,
                 facet_names: Sequence[str] | None = None, config: RetrieverConfig | None = None) -> None:
        config = config or RetrieverConfig()
        self._rng = np.random.default_rng(config.seed)
        self._base: MultiFacetIndex | None = None
        self.update(index)
        F = self._base.n_facets
        self.facet_names = list(facet_names) if facet_names is not None else list(self._base.facet_names)
        self.codebooks = None
        if codebooks is not None:
            cb = _as_numpy(codebooks).astype(np.float32)
            if cb.ndim != 4 or cb.shape[1] != F or cb.shape[3] != self._base.dim or cb.shape[2] != self._base.M \
                    or cb.shape[0] != self._base.L:
                raise ValueError(f"codebooks {cb.shape} do not match the index (L={self._base.L}, F={F}, "
                                 f"M={self._base.M}, d={self._base.dim})")
            self.codebooks = np.ascontiguousarray(cb)
            self._c2 = (cb * cb).sum(-1)  # (L, F, M)
            # (d, M) per facet and layer, contiguous: a strided slice would miss the BLAS fast path
            self._cbT = [[np.ascontiguousarray(cb[layer, f].T) for layer in range(cb.shape[0])]
                         for f in range(F)]
        self._configure(config)

    def _configure(self, config: RetrieverConfig) -> None:
        """Validate ``config`` and derive the normalised quotas ``(F,)`` and facet weights ``(F,)``."""
        if config.sampling not in ("multinomial", "topk"):
            raise ValueError(f"sampling must be 'multinomial' or 'topk', got {config.sampling!r}")
        if config.beam_score not in ("ip", "l2"):
            raise ValueError(f"beam_score must be 'ip' or 'l2', got {config.beam_score!r}")
        if config.merge not in ("quota", "sum"):
            raise ValueError(f"merge must be 'quota' or 'sum', got {config.merge!r}")
        F = self._base.n_facets
        q = np.ones(F) if config.quotas is None else np.asarray(config.quotas, dtype=np.float64)
        if q.shape != (F,) or (q < 0).any() or q.sum() <= 0:
            raise ValueError(f"quotas must be F={F} non-negative numbers, not all zero; got {config.quotas}")
        w = np.ones(F) if config.facet_weights is None else np.asarray(config.facet_weights, np.float64)
        if w.shape != (F,):
            raise ValueError(f"facet_weights must have F={F} entries")
        self.config = config
        self._quotas = q / q.sum()
        self._weights = w.astype(np.float32)

    def with_config(self, config: RetrieverConfig) -> Retriever:
        """A retriever with other settings over the same prepared index (shares every structure; cheap).

        The trigger-mode generator is shared too: draws keep one stream across views."""
        view = copy.copy(self)
        view._configure(config)
        return view

    def with_index(self, index: MultiFacetIndex | DeltaIndex) -> Retriever:
        """A retriever over another view of the same snapshot (e.g. with new deltas); this one is untouched.

        Costs O(delta) when ``index`` shares this retriever's base (see :meth:`update`)."""
        view = copy.copy(self)
        view.update(index)
        return view

    # ------------------------------------------------------------------ index state
    def update(self, index: MultiFacetIndex | DeltaIndex) -> None:
        """Serve a new view. Structures derived from the full snapshot are kept when its base is unchanged,
        so swapping in a fresh delta costs O(delta) plus one ``(N,)`` bool tombstone mask."""
        base = index.base if isinstance(index, DeltaIndex) else index
        if base is not self._base:
            self._prepare_base(base)
        self._delta = index if isinstance(index, DeltaIndex) else None
        if self._delta is None:
            self._n_rows = base.n_items
            self._removed = None
        else:
            d = self._delta
            self._n_rows = d.n_rows
            # one slot past the last row stays False so padding (-1) can index it
            self._removed = np.concatenate([d.removed, np.zeros(d.item_ids.size + 1, bool)])

    def _ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Item ids of combined rows (all valid)."""
        N = self._base.n_items
        if self._delta is None:
            return self._base.item_ids[rows]
        out = np.empty(rows.shape, np.int64)
        old = rows < N
        out[old] = self._base.item_ids[rows[old]]
        out[~old] = self._delta.item_ids[rows[~old] - N]
        return out

    def _positions_of(self, rows: np.ndarray, f: int) -> np.ndarray:
        """``(n, m)`` cluster positions of combined rows in facet f."""
        N = self._base.n_items
        if self._delta is None:
            return self._base_pos[rows, f, :]
        out = np.empty((rows.size, self._base.paths_per_item), np.int64)
        old = rows < N
        out[old] = self._base_pos[rows[old], f, :]
        out[~old] = self._delta._positions[rows[~old] - N, f, :]
        return out

    def _prepare_base(self, base: MultiFacetIndex) -> None:
        self._base = base
        F, M, L = base.n_facets, base.M, base.L
        self._block = [np.ascontiguousarray(base.embeddings[csr.rows, f, :]) for f, csr in enumerate(base.facets)]
        self._block_full: list[np.ndarray | None] = [None] * F
        self._base_pos = np.stack([base.facets[f].positions(base.assignments[:, f, :]) for f in range(F)], axis=1)
        self._occ: list[list] = []
        self._pen: list[list] = []
        self._path_slot: list[_Table] = []
        self._reach: list[tuple[np.ndarray, np.ndarray]] = []
        self._centroids: list[np.ndarray] = []
        for f, (csr, mp) in enumerate(zip(base.facets, base.maps)):
            if not np.array_equal(mp.cluster_ids, csr.cluster_ids):
                raise ValueError(f"facet {f}: rebalance map and CSR disagree on the cluster list")
            # occupancy of prefixes per layer: a (M**l, M) bitmap (parent, code) when small enough
            occ: list = []
            for layer in range(L):
                pref = np.unique(mp.path_ids // (M ** (L - 1 - layer)))
                if M ** (layer + 1) <= _DENSE_LIMIT:
                    bitmap = np.zeros((M**layer, M), bool)
                    bitmap[pref // M, pref % M] = True
                    occ.append(bitmap)
                else:
                    occ.append(_Table(pref, np.ones(pref.size, np.int64), M ** (layer + 1), missing=0))
            self._occ.append(occ)
            self._pen.append([None] * L)
            self._path_slot.append(_Table(mp.path_ids, np.arange(mp.path_ids.size, dtype=np.int64), M**L))
            off, cl = mp.reachable()
            self._reach.append((off, csr.positions(cl)))
            self._centroids.append(np.ascontiguousarray(mp.cluster_centroids, dtype=np.float32))

    # ------------------------------------------------------------------ shared helpers
    def _rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        return (self._delta or self._base).rows_of(item_ids)

    def _emb(self, rows: np.ndarray, f: int) -> np.ndarray:
        """Facet-f embeddings of combined rows ``(n,)`` -> ``(n, d)``."""
        N = self._base.n_items
        if self._delta is None:
            return self._base.embeddings[rows, f, :]
        out = np.empty((rows.size, self._base.dim), np.float32)
        old = rows < N
        out[old] = self._base.embeddings[rows[old], f, :]
        out[~old] = self._delta.embeddings[rows[~old] - N, f, :]
        return out

    def _full_block(self, f: int) -> np.ndarray:
        """``(nnz_f, F * d)`` all facets of facet f's CSR rows, built on first use (merge="sum")."""
        if self._block_full[f] is None:
            base = self._base
            rows = base.facets[f].rows
            self._block_full[f] = np.ascontiguousarray(base.embeddings[rows].reshape(rows.size, -1))
        return self._block_full[f]

    def _read_scored(self, f: int, pos: np.ndarray, qidx: np.ndarray, Q: np.ndarray,
                     top: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read clusters ``pos (S,)`` of facet f (full snapshot, then delta) and score their items.

        Args:
            pos: cluster positions; qidx: ``(S,)`` row of ``Q (B, d)`` scoring each cluster's items.
            top: read at most this many items per cluster (best static score first), in each snapshot.

        Returns:
            combined rows ``(n,)``, scores ``(n,)`` float32 and owner ``(n,)`` in [0, S); the full
            snapshot's candidates come first, grouped by owner.
        """
        csr = self._base.facets[f]
        start = csr.offsets[pos]
        lens = csr.offsets[pos + 1] - start
        if top is not None:
            lens = np.minimum(lens, top)
        idx, owner = _expand(start, lens)
        rows = csr.rows[idx]
        # one small matmul per (request, cluster) straight on the cluster's contiguous block: no gather
        src = self._block[f]
        scores = np.empty(idx.size, np.float32)
        qv = list(Q)
        o = 0
        for a, n, q in zip(start.tolist(), lens.tolist(), qidx.tolist()):
            if n:
                np.matmul(src[a : a + n], qv[q], out=scores[o : o + n])
                o += n
        if self._delta is not None:
            d = self._delta
            off = d.delta_offsets[f]
            dstart = off[pos]
            dlens = off[pos + 1] - dstart
            if top is not None:
                dlens = np.minimum(dlens, top)
            if dlens.sum():
                didx, downer = _expand(dstart, dlens)
                drows = d.delta_rows[f][didx]
                demb = d.embeddings[drows - self._base.n_items, f, :]
                dscores = np.einsum("nd,nd->n", demb, Q[qidx[downer]]).astype(np.float32)
                rows = np.concatenate([rows, drows])
                scores = np.concatenate([scores, dscores])
                owner = np.concatenate([owner, downer])
        return rows, scores, owner

    def _exclusion_keys(self, B: int, exclude, extra: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Sorted keys ``req * (n_rows + 1) + row`` of (request, row) pairs never to return."""
        stride = self._n_rows + 1
        parts = []
        if exclude is not None:
            if len(exclude) != B:
                raise ValueError(f"exclude must hold one list per request ({B}), got {len(exclude)}")
            lens = np.array([len(e) for e in exclude], np.int64)
            if lens.sum():
                ids = np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude])
                req = np.repeat(np.arange(B, dtype=np.int64), lens)
                rows = self._rows_of(ids)
                parts.append(req[rows >= 0] * stride + rows[rows >= 0])
        if extra is not None:
            parts.append(extra[0] * stride + extra[1])
        if not parts:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(parts))

    def _bad(self, req: np.ndarray, rows: np.ndarray, excl: np.ndarray) -> np.ndarray:
        """Mask of candidates to drop: excluded for their request, or tombstoned."""
        bad = np.zeros(rows.size, bool) if self._removed is None else self._removed[rows]
        if excl.size:
            keys = req * (self._n_rows + 1) + rows
            pos = np.minimum(np.searchsorted(excl, keys), excl.size - 1)
            bad |= excl[pos] == keys
        return bad

    def _exclude_rows(self, B: int, exclude) -> list[np.ndarray] | None:
        if exclude is None:
            return None
        if len(exclude) != B:
            raise ValueError(f"exclude must hold one list per request ({B}), got {len(exclude)}")
        lens = np.array([len(e) for e in exclude], np.int64)
        if not lens.sum():
            return None
        rows = self._rows_of(np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude]))
        parts = np.split(rows, np.cumsum(lens)[:-1])
        return [p[p >= 0] for p in parts]

    # ------------------------------------------------------------------ trigger mode
    def _select(self, g_req: np.ndarray, g_count: np.ndarray, g_last: np.ndarray, B: int,
                rng: np.random.Generator) -> np.ndarray:
        """Weight of each histogram group (0 = not chosen). Groups are sorted by (request, cluster)."""
        K = self.config.n_clusters
        G = g_req.size
        weight = np.zeros(G, np.int64)
        req_start = np.searchsorted(g_req, np.arange(B))
        if self.config.sampling == "topk":
            if G == 0:
                return weight
            order = np.lexsort((np.arange(G), -g_last, -g_count, g_req))
            rank = np.arange(G) - req_start[g_req[order]]
            chosen = order[rank < K]
            weight[chosen] = g_count[chosen]
            return weight
        u = rng.random((B, K))  # drawn for every request, so the stream does not depend on the data
        if G == 0:
            return weight
        n_g = np.bincount(g_req, minlength=B)
        local = np.arange(G) - req_start[g_req]
        csum = np.cumsum(g_count)
        before = np.concatenate([[0], csum])[req_start][g_req]  # count total before this request's groups
        total = np.bincount(g_req, weights=g_count, minlength=B).astype(np.int64)
        cdf = np.full((B, int(n_g.max())), np.inf)
        cdf[g_req, local] = (csum - before) / total[g_req]
        idx = (cdf[:, None, :] <= u[:, :, None]).sum(-1)  # inverse CDF: (B, K) group within request
        has = n_g > 0
        drawn = (req_start[:, None] + idx)[has].reshape(-1)
        weight += np.bincount(drawn, minlength=G)
        return weight

    def retrieve_triggers(self, trigger_lists: Sequence[Sequence[int]], k: int, exclude=None,
                          rng: np.random.Generator | None = None) -> RetrievalResult:
        """Item-to-item retrieval from trigger items (the paper's serving).

        Args:
            trigger_lists: B lists of trigger item ids, oldest first (most recent last). Ids not in the
                index are ignored.
            k: results per request.
            exclude: B lists of item ids never to return (e.g. the user's seen items).
            rng: generator for the multinomial draws; default the retriever's own (seeded by config.seed).

        Returns:
            :class:`RetrievalResult` with ``source`` = the trigger item that led to each result (the most
            recent trigger in that cluster).
        """
        cfg = self.config
        B = len(trigger_lists)
        rng = rng if rng is not None else self._rng
        lens = np.array([len(t) for t in trigger_lists], np.int64)
        items = (np.concatenate([np.asarray(t, np.int64).reshape(-1) for t in trigger_lists])
                 if lens.sum() else np.zeros(0, np.int64))
        req = np.repeat(np.arange(B, dtype=np.int64), lens)
        tpos = np.arange(items.size) - np.repeat(np.cumsum(lens) - lens, lens)
        rows = self._rows_of(items)
        ok = rows >= 0
        items, req, tpos, rows = items[ok], req[ok], tpos[ok], rows[ok]
        excl = self._exclusion_keys(B, exclude, (req, rows) if cfg.exclude_triggers else None)
        m = self._base.paths_per_item
        lists = []
        for f in range(self._base.n_facets):
            C = self._base.facets[f].n_clusters
            E = self._emb(rows, f)
            qmean = np.zeros((B, self._base.dim), np.float32)
            np.add.at(qmean, req, E)
            qmean /= np.maximum(np.bincount(req, minlength=B), 1)[:, None]
            # histogram over (request, cluster) of all trigger paths
            h_req, h_pos = np.repeat(req, m), self._positions_of(rows, f).reshape(-1)
            h_tpos, h_item = np.repeat(tpos, m), np.repeat(items, m)
            key = h_req * C + h_pos
            order = np.lexsort((h_tpos, key))
            gkey, gstart, gcount = np.unique(key[order], return_index=True, return_counts=True)
            glast = order[gstart + gcount - 1]  # the most recent trigger of each group
            g_req, g_pos = gkey // C, gkey % C
            weight = self._select(g_req, gcount, h_tpos[glast], B, rng)
            sel = np.flatnonzero(weight > 0)
            s_req, s_pos, s_w, s_trig = g_req[sel], g_pos[sel], weight[sel], h_item[glast[sel]]
            if self._quotas[f] == 0:
                lists.append(None)
                continue
            # candidates: top-N per chosen cluster, full + delta
            c_rows, score, owner = self._read_scored(f, s_pos, s_req, qmean, cfg.items_per_cluster)
            keep = ~self._bad(s_req[owner], c_rows, excl)
            c_rows, owner, score = c_rows[keep], owner[keep], score[keep]
            lists.append(self._round_robin(B, k, c_rows, score, owner, s_req, s_pos, s_w, s_trig))
        return self._merge_quota(lists, k, "trigger")

    def _round_robin(self, B: int, k: int, rows: np.ndarray, score: np.ndarray, owner: np.ndarray,
                     s_req: np.ndarray, s_pos: np.ndarray, s_w: np.ndarray, s_trig: np.ndarray) -> _FacetList:
        """Rank candidates inside their cluster, interleave a request's clusters by ``rank / weight``.

        Args:
            rows, score, owner: flat candidates; ``owner`` indexes the chosen clusters and comes in runs
                sorted by owner (full snapshot, then delta).
            s_req, s_pos, s_w, s_trig: per chosen cluster (sorted by request): request, cluster
                position, weight, explaining trigger.

        Returns:
            the facet's ordered list, ``(B, k)`` per field.
        """
        S = s_req.size
        if S == 0 or rows.size == 0:
            none = np.full((B, k), -1, np.int64)
            return _FacetList(none, np.full((B, k), -np.inf, np.float32), none, none)
        # 1. one padded row per chosen cluster; torch.topk ranks it
        pos, counts = _run_positions(owner, S)
        Wo = int(counts.max())
        p_score = np.full((S, Wo), -np.inf, np.float32)
        p_score[owner, pos] = score
        p_rows = np.full((S, Wo), -1, np.int64)
        p_rows[owner, pos] = rows
        # an item kept through another cluster (top-m paths) frees a slot: m * k per cluster suffice
        kk = min(k * self._base.paths_per_item, Wo)
        top, vals = _topk(p_score, kk)  # column j of the result is rank j inside the cluster
        rows_c = np.take_along_axis(p_rows, top, 1)
        # 2. place each request's clusters side by side and sort every row by (rank / weight, -score, cluster)
        local = np.arange(S) - np.searchsorted(s_req, s_req)
        Kc = int(local.max()) + 1
        shape = (B, Kc * kk)
        cols = (local[:, None] * kk + np.arange(kk)[None, :]).reshape(-1)
        reqs = np.repeat(s_req, kk)
        rr = np.full(shape, np.inf)
        rr[reqs, cols] = (np.arange(kk)[None, :] / s_w[:, None]).reshape(-1)
        sc = np.full(shape, -np.inf, np.float32)
        sc[reqs, cols] = vals.reshape(-1)
        rr[~np.isfinite(sc)] = np.inf  # a cluster with fewer than kk live items leaves holes
        src = np.full(shape, -1, np.int64)
        src[reqs, cols] = np.repeat(np.arange(S), kk)
        rw = np.full(shape, -1, np.int64)
        rw[reqs, cols] = rows_c.reshape(-1)
        cp = np.full(shape, np.iinfo(np.int64).max)
        cp[reqs, cols] = np.repeat(s_pos, kk)
        order = np.lexsort((cp, -sc, rr), axis=1)
        sc, src, rw = (np.take_along_axis(a, order, 1) for a in (sc, src, rw))
        valid = np.isfinite(sc)
        # 3. an item reached through two of its paths keeps its first place
        bidx = np.broadcast_to(np.arange(B)[:, None], shape)
        key = (bidx * (self._n_rows + 1) + np.where(valid, rw, self._n_rows)).reshape(-1)
        valid &= _first_occurrence(key).reshape(shape)
        slot = np.cumsum(valid, axis=1) - 1
        keep = valid & (slot < k)
        bb, jj = np.nonzero(keep)
        out_rows = np.full((B, k), -1, np.int64)
        out_score = np.full((B, k), -np.inf, np.float32)
        out_pos = np.full((B, k), -1, np.int64)
        out_trig = np.full((B, k), -1, np.int64)
        ss = slot[keep]
        s_of = src[bb, jj]
        out_rows[bb, ss] = rw[bb, jj]
        out_score[bb, ss] = sc[bb, jj]
        out_pos[bb, ss] = s_pos[s_of]
        out_trig[bb, ss] = s_trig[s_of]
        return _FacetList(out_rows, out_score, out_pos, out_trig)

    # ------------------------------------------------------------------ user mode
    def beam_search(self, q: np.ndarray, f: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
        """Beam search over the codebook layers of facet f.

        Rule: layer 1 keeps the ``beam`` best codes (holding items, with ``skip_empty``); at each later
        layer every kept prefix proposes its ``expand`` best children by child score (default: all M),
        children holding no item are dropped, and the ``beam`` best children survive. With all M
        children this is the plain beam search over the occupied paths; a smaller ``expand`` trades
        fidelity for memory (useful when ``M**L`` is too large for the dense occupancy tables). For
        ``beam_score="ip"`` the child ranking is the same for every prefix (``q . C[l, k]``), and the
        full expansion is one broadcast sum ``(B, beam, M)`` plus a gathered empty-path penalty.

        Args:
            q: ``(B, d)`` query embeddings of facet f.
            beam: prefixes kept per layer.

        Returns:
            paths ``(B, beam')`` packed path ids best first (-1 where fewer paths exist) and scores
            ``(B, beam')`` float32 (``q . reconstruction`` or ``-||q - reconstruction||^2``).
        """
        if self.codebooks is None:
            raise ValueError("user-to-item retrieval needs the codebooks: Retriever(index, codebooks)")
        cb, c2 = self.codebooks[:, f], self._c2[:, f]
        L, M = cb.shape[0], cb.shape[1]
        ip = self.config.beam_score == "ip"
        skip = self.config.skip_empty
        T = min(M, self.config.expand if self.config.expand is not None else M)
        q = np.ascontiguousarray(q, dtype=np.float32)
        B = q.shape[0]
        cbT = self._cbT[f]
        s = q @ cbT[0]  # (B, M)
        if not ip:
            s = 2 * s - c2[0][None, :] - (q * q).sum(1, keepdims=True)
        if skip:
            s = np.where(self._occupied(f, 0, np.zeros((1, 1), np.int64), np.arange(M)[None, :]), s, -np.inf)
        prefix, score = _topk(s, beam)
        recon = cb[0][prefix] if not ip else None  # (B, w, d)
        for layer in range(1, L):
            w = prefix.shape[1]
            if T >= M:  # every child: one broadcast sum, the empty-children penalty is a row gather
                if ip:
                    cand = score[:, :, None] + (q @ cbT[layer])[:, None, :]  # a -inf prefix stays -inf
                else:
                    res = q[:, None, :] - recon
                    cand = -((res * res).sum(-1)[:, :, None] - 2 * (res @ cbT[layer]) + c2[layer][None, None, :])
                    cand += np.where(np.isfinite(score), 0.0, -np.inf).astype(np.float32)[:, :, None]
                if skip:
                    cand += self._penalty(f, layer)[prefix]
                top, score = _topk(cand.reshape(B, w * M), beam)
                parent, code = top // M, top % M
            else:
                if ip:
                    codes, cs = _topk(q @ cbT[layer], T)  # (B, T): the best children of every prefix
                    cand = score[:, :, None] + cs[:, None, :]
                    codes3 = codes[:, None, :]
                else:
                    res = q[:, None, :] - recon
                    full = -((res * res).sum(-1)[:, :, None] - 2 * (res @ cbT[layer]) + c2[layer][None, None, :])
                    codes3, cand = _topk(full.reshape(B * w, M), T)
                    codes3, cand = codes3.reshape(B, w, -1), cand.reshape(B, w, -1)
                    cand[~np.isfinite(score)] = -np.inf
                if skip:
                    np.putmask(cand, ~self._occupied(f, layer, prefix[:, :, None], codes3), -np.inf)
                top, score = _topk(cand.reshape(B, w * T), beam)
                parent = top // T
                if ip:  # every prefix proposed the same codes
                    code = np.take_along_axis(codes, top % T, 1)
                else:
                    code = np.take_along_axis(codes3.reshape(B, w * T), top, 1)
            prefix = np.take_along_axis(prefix, parent, 1) * M + code
            if not ip:
                recon = np.take_along_axis(recon, parent[:, :, None], 1) + cb[layer][code]
        prefix = np.where(np.isfinite(score), prefix, -1)
        return prefix, score.astype(np.float32)

    def _penalty(self, f: int, layer: int) -> np.ndarray:
        """``(M**layer, M)`` float32: 0 where prefix ``parent * M + code`` holds items, -inf elsewhere."""
        pen = self._pen[f][layer]
        if pen is None:
            occ = self._occ[f][layer]
            if not isinstance(occ, np.ndarray):
                raise ValueError("full expansion needs M**L <= 2**25 paths; set RetrieverConfig.expand")
            pen = np.where(occ, 0.0, -np.inf).astype(np.float32)
            self._pen[f][layer] = pen
        return pen

    def _occupied(self, f: int, layer: int, parent: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Whether prefix ``parent * M + code`` at ``layer`` holds any item (broadcasting shapes)."""
        occ = self._occ[f][layer]
        if isinstance(occ, np.ndarray):
            return occ[parent, code]
        return occ(parent * self._base.M + code) > 0

    def _beam_clusters(self, q: np.ndarray, f: int, beam: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clusters to read for facet f: ``(request, cluster position, best path rank)``, sorted by request."""
        cfg = self.config
        paths, _ = self.beam_search(q, f, beam)
        slot = self._path_slot[f](paths)  # (B, w) index into map.path_ids, -1 unseen/invalid
        off, reach = self._reach[f]
        s0 = np.maximum(slot, 0)
        lens = np.where(slot >= 0, off[s0 + 1] - off[s0], 0)
        idx, owner = _expand(off[s0].reshape(-1), lens.reshape(-1))
        w = paths.shape[1]
        req, rank, pos = owner // w, owner % w, reach[idx]
        # one entry per (request, cluster), keeping the best path rank
        C = self._base.facets[f].n_clusters
        o = np.lexsort((rank, req * C + pos))
        req, rank, pos = req[o], rank[o], pos[o]
        first = np.ones(req.size, bool)
        first[1:] = (req[1:] != req[:-1]) | (pos[1:] != pos[:-1])
        req, rank, pos = req[first], rank[first], pos[first]
        if cfg.clusters_per_query is not None and req.size:
            cent = self._centroids[f][pos]
            cs = np.einsum("nd,nd->n", cent, q[req])
            if cfg.beam_score == "l2":
                cs = 2 * cs - (cent * cent).sum(1)
            o = np.lexsort((rank, -cs, req))
            req, rank, pos = req[o], rank[o], pos[o]
            keep = np.arange(req.size) - np.searchsorted(req, req) < cfg.clusters_per_query
            req, rank, pos = req[keep], rank[keep], pos[keep]
        return req, pos, rank

    def _score_clusters(self, B: int, groups: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
                        Qv: list[np.ndarray], full: bool, top: int | None):
        """Score the items of (request, cluster) pairs straight into padded per-request rows.

        Args:
            groups: per facet ``(f, req, pos, rank)`` from :meth:`_beam_clusters`.
            Qv: per facet ``(B, d)`` query vectors (``(B, F * d)`` weighted, when ``full``).

        Returns:
            ``p_score (B, W)`` float32 (-inf padding), ``p_rows (B, W)`` combined rows (-1 padding) and the
            pairs ``(key = req * W + column offset, facet, pos, rank)`` sorted by key, to explain a column.
        """
        N = self._base.n_items
        parts = []  # (req, facet, start, length, pos, rank, is_delta)
        for f, req, pos, rank in groups:
            csr = self._base.facets[f]
            start = csr.offsets[pos]
            lens = csr.offsets[pos + 1] - start
            if top is not None:
                lens = np.minimum(lens, top)
            parts.append((req, np.full(req.size, f), start, lens, pos, rank, np.zeros(req.size, bool)))
            if self._delta is not None:
                doff = self._delta.delta_offsets[f]
                dstart = doff[pos]
                dlens = doff[pos + 1] - dstart
                if top is not None:
                    dlens = np.minimum(dlens, top)
                parts.append((req, np.full(req.size, f), dstart, dlens, pos, rank, np.ones(req.size, bool)))
        req, fac, start, lens, pos, rank, is_delta = (np.concatenate(c) for c in zip(*parts))
        # column offset of each pair inside its request's row
        o = np.argsort(req, kind="stable")
        req, fac, start, lens, pos, rank, is_delta = (a[o] for a in (req, fac, start, lens, pos, rank, is_delta))
        csum = np.cumsum(lens)
        per_req = np.bincount(req, weights=lens, minlength=B).astype(np.int64)
        col = csum - lens - (np.cumsum(per_req) - per_req)[req]
        W = max(int(per_req.max()) if B else 0, 1)
        p_score = np.full((B, W), -np.inf, np.float32)
        p_rows = np.full((B, W), -1, np.int64)
        # one small matmul per pair, straight on the cluster's contiguous block into the output row
        for f in range(self._base.n_facets):
            sel = np.flatnonzero((fac == f) & ~is_delta & (lens > 0))
            if not sel.size:
                continue
            src = self._full_block(f) if full else self._block[f]
            rows_f = self._base.facets[f].rows
            qv = list(Qv[f])
            for b, a, n, c in zip(req[sel].tolist(), start[sel].tolist(), lens[sel].tolist(), col[sel].tolist()):
                np.matmul(src[a : a + n], qv[b], out=p_score[b, c : c + n])
                p_rows[b, c : c + n] = rows_f[a : a + n]
        dsel = np.flatnonzero(is_delta & (lens > 0))
        if dsel.size:  # delta slices are small: score them in one vectorised pass
            d = self._delta
            idx, owner = _expand(start[dsel], lens[dsel])
            pair = dsel[owner]
            drows = np.concatenate([d.delta_rows[f] for f in range(self._base.n_facets)])
            base_of = np.cumsum([0] + [d.delta_rows[f].size for f in range(self._base.n_facets - 1)])
            rows = drows[base_of[fac[pair]] + idx]
            emb = d.embeddings[rows - N]
            qmat = np.stack(Qv)[fac[pair], req[pair]] if not full else Qv[0][req[pair]]
            vec = emb.reshape(rows.size, -1) if full else emb[np.arange(rows.size), fac[pair]]
            colx = col[pair] + (np.arange(idx.size) - (np.cumsum(lens[dsel]) - lens[dsel])[owner])
            p_score[req[pair], colx] = np.einsum("nd,nd->n", vec, qmat)
            p_rows[req[pair], colx] = rows
        key = req * W + col
        o = np.argsort(key, kind="stable")
        return p_score, p_rows, (key[o], fac[o], pos[o], rank[o]), W

    def _top_of(self, p_score: np.ndarray, p_rows: np.ndarray, pairs, W: int, k: int,
                exclude_rows: list[np.ndarray] | None) -> _FacetList:
        """Drop tombstoned and excluded columns, keep the k best per request, explain them."""
        B = p_score.shape[0]
        if self._removed is not None:
            p_score[self._removed[p_rows]] = -np.inf  # row -1 reads the trailing False
        if exclude_rows is not None:
            mark = np.zeros(self._n_rows + 1, bool)
            for b, ex in enumerate(exclude_rows):
                if ex.size:
                    mark[ex] = True
                    p_score[b, mark[p_rows[b]]] = -np.inf
                    mark[ex] = False
        top, vals = _topk(p_score, k)
        rows = np.where(np.isfinite(vals), np.take_along_axis(p_rows, top, 1), -1)
        key, fac, pos, rank = pairs
        if key.size == 0:
            none = np.full(rows.shape, -1, np.int64)
            return _FacetList(rows, vals, none, none), none
        # the pair owning a column is the last one starting at or before it
        i = np.maximum(np.searchsorted(key, np.arange(B)[:, None] * W + top, side="right") - 1, 0)
        return _FacetList(rows, vals, pos[i], rank[i]), fac[i]

    def retrieve_users(self, query_emb, k: int, beam: int | None = None, exclude=None) -> RetrievalResult:
        """User-to-item retrieval by beam search over the codebooks.

        Args:
            query_emb: ``(B, F, d)`` user-tower query embeddings.
            k: results per request.
            beam: beam width (default ``config.beam``).
            exclude: B lists of item ids never to return (the user's seen items).

        Returns:
            :class:`RetrievalResult`, ``source`` = rank of the beam path that reached the cluster.
        """
        cfg = self.config
        Q = _as_numpy(query_emb).astype(np.float32)
        base = self._base
        if Q.ndim != 3 or Q.shape[1:] != (base.n_facets, base.dim):
            raise ValueError(f"query_emb must be (B, F={base.n_facets}, d={base.dim}), got {Q.shape}")
        B = Q.shape[0]
        beam = cfg.beam if beam is None else beam
        ex_rows = self._exclude_rows(B, exclude)
        m = base.paths_per_item
        F = base.n_facets
        if cfg.merge == "sum":
            groups = [(f, *self._beam_clusters(Q[:, f], f, beam)) for f in range(F)]
            qw = np.ascontiguousarray((Q * self._weights[None, :, None]).reshape(B, -1))
            p_score, p_rows, pairs, W = self._score_clusters(B, groups, [qw] * F, True,
                                                             cfg.beam_items_per_cluster)
            # an item found in several facets/paths repeats with one score: keep enough to hold k distinct
            lst, fac = self._top_of(p_score, p_rows, pairs, W, k * F * m, ex_rows)
            return self._merge_quota([lst], k, "user", facets=[fac], quotas=np.ones(1))
        lists = []
        qf = [np.ascontiguousarray(Q[:, g]) for g in range(F)]
        for f in range(F):
            if self._quotas[f] == 0:
                lists.append(None)
                continue
            group = (f, *self._beam_clusters(Q[:, f], f, beam))
            p_score, p_rows, pairs, W = self._score_clusters(B, [group], qf, False, cfg.beam_items_per_cluster)
            lists.append(self._top_of(p_score, p_rows, pairs, W, k * m, ex_rows)[0])  # m paths: m copies at most
        return self._merge_quota(lists, k, "user")

    # ------------------------------------------------------------------ merging
    def _merge_quota(self, lists: list[_FacetList | None], k: int, mode: str,
                     facets: list[np.ndarray] | None = None, quotas: np.ndarray | None = None) -> RetrievalResult:
        """Interleave per-facet ordered lists by weighted round robin, de-duplicate, keep k.

        Position p of list i gets key ``p / quota_i`` (ties: lower list index first); the order of the
        merged columns is therefore the same for every request.
        """
        quotas = self._quotas if quotas is None else quotas
        live = [i for i, lst in enumerate(lists) if lst is not None and quotas[i] > 0]
        if not live:
            B = next((lst.rows.shape[0] for lst in lists if lst is not None), 0)
            return self._empty(B, k, mode)
        B = lists[live[0]].rows.shape[0]
        W = max(lists[i].rows.shape[1] for i in live)

        def stack(attr: str, fill) -> np.ndarray:  # (n_lists, B, W)
            mats = []
            for i in live:
                a = getattr(lists[i], attr)
                if a.shape[1] < W:
                    a = np.concatenate([a, np.full((B, W - a.shape[1]), fill, a.dtype)], 1)
                mats.append(a)
            return np.stack(mats)

        n_i = np.array([lists[i].rows.shape[1] for i in live])
        li = np.repeat(np.arange(len(live)), W)
        pi = np.tile(np.arange(W), len(live))
        ok = pi < n_i[li]
        li, pi = li[ok], pi[ok]
        order = np.lexsort((li, pi / quotas[np.array(live)][li]))
        li, pi = li[order], pi[order]
        rows = stack("rows", -1)[li, :, pi].T  # (B, n_cols)
        score = stack("score", -np.inf)[li, :, pi].T
        cpos = stack("cpos", -1)[li, :, pi].T
        source = stack("source", -1)[li, :, pi].T
        if facets is None:
            fac = np.broadcast_to(np.array(live)[li][None, :], rows.shape)
        else:
            fmat = np.stack([facets[j] if facets[j].shape[1] == W else np.concatenate(
                [facets[j], np.full((B, W - facets[j].shape[1]), -1, facets[j].dtype)], 1) for j in live])
            fac = fmat[li, :, pi].T
        valid = rows >= 0
        bidx = np.broadcast_to(np.arange(B)[:, None], rows.shape)
        keyflat = (bidx * (self._n_rows + 1) + np.where(valid, rows, self._n_rows)).reshape(-1)
        valid &= _first_occurrence(keyflat).reshape(rows.shape)
        slot = np.cumsum(valid, axis=1) - 1
        keep = valid & (slot < k)
        bb, jj = np.nonzero(keep)
        ss = slot[keep]
        out = self._empty(B, k, mode)
        out.item_ids[bb, ss] = self._ids_of(rows[bb, jj])
        out.scores[bb, ss] = score[bb, jj]
        out.facet[bb, ss] = fac[bb, jj]
        out.cluster[bb, ss] = self._cluster_ids_of(fac[bb, jj], cpos[bb, jj])
        out.source[bb, ss] = source[bb, jj]
        return out

    def _cluster_ids_of(self, fac: np.ndarray, cpos: np.ndarray) -> np.ndarray:
        out = np.empty(cpos.size, np.int64)
        for f in range(self._base.n_facets):
            sel = fac == f
            out[sel] = self._base.facets[f].cluster_ids[cpos[sel]]
        return out

    def _empty(self, B: int, k: int, mode: str) -> RetrievalResult:
        return RetrievalResult(
            item_ids=np.full((B, k), -1, np.int64), scores=np.full((B, k), -np.inf, np.float32),
            facet=np.full((B, k), -1, np.int16), cluster=np.full((B, k), -1, np.int64),
            source=np.full((B, k), -1, np.int64), mode=mode, facet_names=self.facet_names,
        )
