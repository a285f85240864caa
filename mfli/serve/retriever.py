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

**Code layout.** This class composes one module per concern: :mod:`mfli.serve.trigger` (cluster
draws, round robin), :mod:`mfli.serve.routing` (beam search, paths to clusters),
:mod:`mfli.serve.scoring` (reading and scoring snapshot + delta clusters, written once),
:mod:`mfli.serve.exclusion` (seen, trigger and removed rows, applied once) and
:mod:`mfli.serve.merge` (facet merge). The row space (ids, embeddings, cluster slices of snapshot
and delta) is the :class:`~mfli.index.delta.DeltaIndex`'s.

**Speed.** Items are scored by one small matmul per (request, cluster) directly on a facet-ordered
copy of the embeddings (a cluster is a contiguous block), written straight into a padded
``(B, W)`` score matrix; no candidate embeddings are gathered. The copy costs one more ``(N, d)``
array per facet (``merge="sum"`` adds an ``(N, F * d)`` one per facet, built on first use). Serve
with one BLAS thread per process (``OMP_NUM_THREADS=1``): the matmuls are too small to share.

**Merging facets** (both modes): ``merge="quota"`` interleaves the per-facet lists by weighted round
robin over the quotas (position p of facet f gets key ``p / quota_f``, ties by facet order), drops
duplicates and keeps k; with equal quotas the facets alternate. ``merge="sum"`` (user mode only)
instead pools the facets' candidates and ranks them by ``sum_f w_f q_f . e_f``, the score exact
search uses (:mod:`mfli.serve.exact`); the delta's items (new since the snapshot, embedded from content
alone) are ranked by ``sum_f w'_f q_f . e_f`` when ``new_item_facet_weights`` gives w' (default w).

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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mfli.index.delta import DeltaIndex
from mfli.index.inverted import MultiFacetIndex, _as_numpy
from mfli.serve.exclusion import Exclusions
from mfli.serve.merge import FacetList, Merged, merge_quota
from mfli.serve.routing import BeamRouter
from mfli.serve.scoring import ClusterScorer, topk
from mfli.serve.trigger import draw_clusters, round_robin

__all__ = ["RetrievalResult", "Retriever", "RetrieverConfig"]


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
    # w'_f for the delta's items (added after the snapshot, embedded from content alone; a delta row that
    # replaces a snapshot item too) in the summed score (merge="sum"): sum_f w'_f q_f . e_f; None =
    # facet_weights, every item alike (snapshots saved before the field keep that). Snapshot items
    # without training events are not told apart: they keep w. Measured, not adopted: on the validation split (mfli.eval.new_item_weights)
    # (1, 1) ranks best; docs/benchmarks.md, "Facet weights for new items"
    new_item_facet_weights: Sequence[float] | None = None


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
        self.facet_names = list(facet_names) if facet_names is not None else list(self._base.facet_names)
        self.codebooks = None
        self._router: BeamRouter | None = None
        self._codebooks_in = codebooks
        if codebooks is not None:
            self._router = BeamRouter(self._base, codebooks, config.beam_score, config.skip_empty, config.expand)
            self.codebooks = self._router.codebooks
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
        wn = None if config.new_item_facet_weights is None else np.asarray(config.new_item_facet_weights, np.float64)
        if wn is not None and (wn.shape != (F,) or not np.isfinite(wn).all()):
            raise ValueError(f"new_item_facet_weights must be F={F} finite numbers, got {config.new_item_facet_weights}")
        router = self._router
        if router is not None and (router.beam_score, router.skip_empty, router.expand) != (
                config.beam_score, config.skip_empty, config.expand):
            router = copy.copy(router)  # shares the tables; only the search settings differ
            router.beam_score, router.skip_empty, router.expand = config.beam_score, config.skip_empty, config.expand
            self._router = router
        self.config = config
        self._quotas = q / q.sum()
        self._weights = w.astype(np.float32)
        self._new_weights = None if wn is None else wn.astype(np.float32)

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
        so swapping in a fresh delta costs O(delta)."""
        space = index if isinstance(index, DeltaIndex) else DeltaIndex.over(index)
        if space.base is not self._base:
            self._base = space.base
            self._scorer = ClusterScorer(space.base)
            codebooks = getattr(self, "_codebooks_in", None)
            if getattr(self, "_router", None) is not None and codebooks is not None:
                cfg = self.config
                self._router = BeamRouter(space.base, codebooks, cfg.beam_score, cfg.skip_empty, cfg.expand)
        self._space = space

    # ------------------------------------------------------------------ trigger mode
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
        space, base = self._space, self._base
        B = len(trigger_lists)
        rng = rng if rng is not None else self._rng
        lens = np.array([len(t) for t in trigger_lists], np.int64)
        items = (np.concatenate([np.asarray(t, np.int64).reshape(-1) for t in trigger_lists])
                 if lens.sum() else np.zeros(0, np.int64))
        req = np.repeat(np.arange(B, dtype=np.int64), lens)
        tpos = np.arange(items.size) - np.repeat(np.cumsum(lens) - lens, lens)
        rows = space.rows_of(items)
        ok = rows >= 0
        items, req, tpos, rows = items[ok], req[ok], tpos[ok], rows[ok]
        excl = Exclusions(space, B, exclude, (req, rows) if cfg.exclude_triggers else None)
        m = base.paths_per_item
        lists: list[FacetList | None] = []
        for f in range(base.n_facets):
            C = base.facets[f].n_clusters
            E = space.embeddings_of(rows, f)
            qmean = np.zeros((B, base.dim), np.float32)
            np.add.at(qmean, req, E)
            qmean /= np.maximum(np.bincount(req, minlength=B), 1)[:, None]
            # histogram over (request, cluster) of all trigger paths
            h_req, h_pos = np.repeat(req, m), space.positions_of(rows, f).reshape(-1)
            h_tpos, h_item = np.repeat(tpos, m), np.repeat(items, m)
            key = h_req * C + h_pos
            order = np.lexsort((h_tpos, key))
            gkey, gstart, gcount = np.unique(key[order], return_index=True, return_counts=True)
            glast = order[gstart + gcount - 1]  # the most recent trigger of each group
            g_req, g_pos = gkey // C, gkey % C
            weight = draw_clusters(g_req, gcount, h_tpos[glast], B, cfg.n_clusters, cfg.sampling, rng)
            sel = np.flatnonzero(weight > 0)
            s_req, s_pos, s_w, s_trig = g_req[sel], g_pos[sel], weight[sel], h_item[glast[sel]]
            if self._quotas[f] == 0:
                lists.append(None)
                continue
            S = s_req.size
            if S == 0:
                lists.append(FacetList.empty(B, k))
                continue
            # candidates: top-N per chosen cluster, snapshot + delta, one row per chosen cluster
            queries = [qmean[s_req]] * base.n_facets
            p_score, p_rows, _, _ = self._scorer.score(space, S, [(f, np.arange(S), s_pos, np.arange(S))], queries,
                                                       False, cfg.items_per_cluster)
            excl.apply(p_score, p_rows, s_req)
            lists.append(round_robin(B, k, m, space.n_rows, p_score, p_rows, s_req, s_pos, s_w, s_trig))
        return self._result(merge_quota(lists, k, self._quotas, space.n_rows), B, k, "trigger")

    # ------------------------------------------------------------------ user mode
    def beam_search(self, q: np.ndarray, f: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
        """Beam search over the codebook layers of facet f (:meth:`mfli.serve.routing.BeamRouter.beam_search`).

        Returns:
            paths ``(B, beam')`` packed path ids best first (-1 where fewer paths exist) and scores
            ``(B, beam')`` float32.
        """
        return self._need_router().beam_search(q, f, beam)

    def _need_router(self) -> BeamRouter:
        if self._router is None:
            raise ValueError("user-to-item retrieval needs the codebooks: Retriever(index, codebooks)")
        return self._router

    def _top_of(self, p_score: np.ndarray, p_rows: np.ndarray, pairs, W: int, k: int) -> tuple[FacetList, np.ndarray]:
        """The k best columns per request, explained by the (facet, cluster, path rank) that reached them."""
        B = p_score.shape[0]
        top, vals = topk(p_score, k)
        rows = np.where(np.isfinite(vals), np.take_along_axis(p_rows, top, 1), -1)
        key, fac, pos, rank = pairs
        if key.size == 0:
            none = np.full(rows.shape, -1, np.int64)
            return FacetList(rows, vals, none, none), none
        # the pair owning a column is the last one starting at or before it
        i = np.maximum(np.searchsorted(key, np.arange(B)[:, None] * W + top, side="right") - 1, 0)
        return FacetList(rows, vals, pos[i], rank[i]), fac[i]

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
        router = self._need_router()
        space, base = self._space, self._base
        Q = _as_numpy(query_emb).astype(np.float32)
        if Q.ndim != 3 or Q.shape[1:] != (base.n_facets, base.dim):
            raise ValueError(f"query_emb must be (B, F={base.n_facets}, d={base.dim}), got {Q.shape}")
        B = Q.shape[0]
        beam = cfg.beam if beam is None else beam
        excl = Exclusions(space, B, exclude)
        m, F = base.paths_per_item, base.n_facets
        if cfg.merge == "sum":
            groups = [(f, *router.clusters(Q[:, f], f, beam, cfg.clusters_per_query)) for f in range(F)]
            qw = np.ascontiguousarray((Q * self._weights[None, :, None]).reshape(B, -1))
            # delta items (no training events) may weigh the facets differently (new_item_facet_weights)
            qn = None if self._new_weights is None else (Q * self._new_weights[None, :, None]).reshape(B, -1)
            p_score, p_rows, pairs, W = self._scorer.score(space, B, groups, [qw] * F, True,
                                                           cfg.beam_items_per_cluster, delta_queries=qn)
            excl.apply(p_score, p_rows)
            # an item found in several facets/paths repeats with one score: keep enough to hold k distinct
            lst, fac = self._top_of(p_score, p_rows, pairs, W, k * F * m)
            return self._result(merge_quota([lst], k, np.ones(1), space.n_rows, facets=[fac]), B, k, "user")
        lists: list[FacetList | None] = []
        qf = [np.ascontiguousarray(Q[:, g]) for g in range(F)]
        for f in range(F):
            if self._quotas[f] == 0:
                lists.append(None)
                continue
            group = (f, *router.clusters(Q[:, f], f, beam, cfg.clusters_per_query))
            p_score, p_rows, pairs, W = self._scorer.score(space, B, [group], qf, False, cfg.beam_items_per_cluster)
            excl.apply(p_score, p_rows)
            lists.append(self._top_of(p_score, p_rows, pairs, W, k * m)[0])  # m paths: m copies at most
        return self._result(merge_quota(lists, k, self._quotas, space.n_rows), B, k, "user")

    # ------------------------------------------------------------------ results
    def _result(self, merged: Merged | None, B: int, k: int, mode: str) -> RetrievalResult:
        """Item ids and cluster ids of the merged rows."""
        out = RetrievalResult(
            item_ids=np.full((B, k), -1, np.int64), scores=np.full((B, k), -np.inf, np.float32),
            facet=np.full((B, k), -1, np.int16), cluster=np.full((B, k), -1, np.int64),
            source=np.full((B, k), -1, np.int64), mode=mode, facet_names=self.facet_names,
        )
        if merged is None:
            return out
        keep = merged.rows >= 0
        out.item_ids[keep] = self._space.ids_of(merged.rows[keep])
        out.scores[keep] = merged.score[keep]
        out.facet[keep] = merged.facet[keep]
        out.source[keep] = merged.source[keep]
        fac, cpos = merged.facet[keep], merged.cpos[keep]
        cl = np.empty(cpos.size, np.int64)
        for f in range(self._base.n_facets):
            sel = fac == f
            cl[sel] = self._base.facets[f].cluster_ids[cpos[sel]]
        out.cluster[keep] = cl
        return out
