"""The scan engine behind the serving retriever's interface, with deltas (``ServingConfig.engine="scan"``).

:class:`EngineRetriever` answers what :class:`~mfli.serve.retriever.Retriever` answers, so
:meth:`mfli.snapshot.Snapshot.retriever` can hand either to the gates, ``mfli retrieve`` and the
service:

- **user mode** (what the quality and cold-start gates measure): :class:`~mfli.serve.engine.ScanEngine`
  routes each query to its clusters and scans the snapshot's items there (learned-code pre-rank, exact
  short list, ranked by ``sum_f w_f q_f . e_f`` like ``merge="sum"``). A delta's new items are scored
  exactly in the same routed clusters (a new item is reachable exactly when a snapshot item of its
  cluster would be), by ``sum_f w'_f q_f . e_f`` when ``RetrieverConfig.new_item_facet_weights`` gives
  w', and merged with the engine's top k; tombstoned and replaced snapshot rows are
  skipped inside the kernel. Explanations: the (facet, cluster) that reached an item and that
  cluster's routing rank (``source``; 0 = best);
- **trigger mode**, per-request facet quotas (``merge="quota"``) and an explicit ``beam`` are not what
  the gates measure: they are answered by the reference :class:`Retriever` over the same view, built
  on first use and shared by every view of the snapshot.

A delta swap (:meth:`with_index`) costs O(delta): the engine is built once per snapshot and shared.

Example::

    r = EngineRetriever(view, codebooks, facets, RetrieverConfig(merge="sum"), EngineConfig())
    res = r.retrieve_users(user_emb, k=100, exclude=histories)   # (B, F, d) -> RetrievalResult
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import numpy as np

from mfli.index.delta import DeltaIndex
from mfli.index.inverted import MultiFacetIndex, _as_numpy
from mfli.serve.engine import EngineConfig, EngineResult, ScanEngine
from mfli.serve.retriever import RetrievalResult, Retriever, RetrieverConfig
from mfli.serve.scoring import expand

__all__ = ["EngineRetriever"]


class _Shared:
    """What every view of one snapshot shares: the engine, its lock and the lazily built reference."""

    def __init__(self, engine: ScanEngine, codebooks, facet_names: list[str]) -> None:
        self.engine = engine
        self.codebooks = codebooks
        self.facet_names = facet_names
        self.lock = threading.Lock()  # the engine reuses its seen-bitsets: one call at a time
        self.reference: Retriever | None = None


class EngineRetriever:
    """User mode through a :class:`ScanEngine`, deltas included (see the module docstring).

    Args:
        index: the snapshot's :class:`MultiFacetIndex` or a :class:`DeltaIndex` view of it.
        codebooks: ``(L, F, M, d)`` the index was built with.
        facet_names: names for explanations; default the index's.
        config: :class:`RetrieverConfig`; its ``facet_weights`` weight the summed score; its other
            fields configure the reference path (trigger mode, quota views).
        engine_config: :class:`EngineConfig` (clusters read, short list, residual PQ ...).
        engine: a :class:`ScanEngine` already built over this snapshot (reused, e.g. by the snapshot cache).
    """

    def __init__(self, index: MultiFacetIndex | DeltaIndex, codebooks, facet_names: Sequence[str] | None = None,
                 config: RetrieverConfig | None = None, engine_config: EngineConfig | None = None,
                 engine: ScanEngine | None = None) -> None:
        self.config = config or RetrieverConfig(merge="sum")
        if self.config.merge != "sum":
            raise ValueError("the scan engine ranks by the summed score: it needs merge='sum' "
                             f"(got {self.config.merge!r}); use engine='reference' for quota merging")
        base = index.base if isinstance(index, DeltaIndex) else index
        wn = self.config.new_item_facet_weights
        if wn is not None and (np.shape(wn) != (base.n_facets,) or not np.isfinite(np.asarray(wn, float)).all()):
            raise ValueError(f"new_item_facet_weights must be F={base.n_facets} finite numbers, got {wn}")
        # delta items' facet weights w'_f (None: the snapshot's own, already in the weighted query)
        self._new_weights = None if wn is None else np.asarray(wn, np.float32)
        cb = _as_numpy(codebooks)
        if engine is None:
            engine = ScanEngine(base, cb, engine_config, facet_weights=self.config.facet_weights)
        elif engine.index is not base:
            raise ValueError("EngineRetriever: the engine was built over another index")
        names = list(facet_names) if facet_names is not None else list(base.facet_names)
        self._shared = _Shared(engine, cb, names)
        self.engine_config = engine.config
        self.update(index)

    @property
    def engine(self) -> ScanEngine:
        return self._shared.engine

    @property
    def facet_names(self) -> list[str]:
        return self._shared.facet_names

    # ------------------------------------------------------------------ views
    def update(self, index: MultiFacetIndex | DeltaIndex) -> None:
        """Serve a view of the same snapshot: prepares the delta's per-cluster lists (O(delta))."""
        engine = self.engine
        space = index if isinstance(index, DeltaIndex) else DeltaIndex.over(index)
        if space.base is not engine.index:
            raise ValueError("EngineRetriever: the view must be built on the engine's snapshot index")
        self._space = space
        self._removed = engine.removed_bits(space.removed) if space.removed.any() else None
        N = space.base.n_items
        # every facet's delta lists as one column space (the engine's): column c owns
        # self._doff[c]:self._doff[c + 1] of self._drows (delta-local rows, 0..n-1)
        offs, rows, total = [], [], 0
        for f in range(space.base.n_facets):
            off = space.delta_offsets[f]
            offs.append(off[:-1] + total)
            rows.append(space.delta_rows[f] - N)
            total += int(off[-1])
        offs.append(np.array([total], np.int64))
        self._doff = np.concatenate(offs).astype(np.int64)
        self._drows = np.concatenate(rows).astype(np.int64)
        # the delta's full vectors (n, F * d), scored exactly against the weighted query
        self._demb = space.embeddings.reshape(space.item_ids.size, space.base.n_facets * space.base.dim)

    def with_index(self, index: MultiFacetIndex | DeltaIndex) -> EngineRetriever:
        """A retriever over another view of the same snapshot (new deltas); this one is untouched."""
        view = copy.copy(self)
        view.update(index)
        return view

    def with_config(self, config: RetrieverConfig) -> EngineRetriever | Retriever:
        """This retriever for its own config; another config (quota views) gets the reference path."""
        if config == self.config:
            return self
        return self._reference().with_config(config)

    def _reference(self) -> Retriever:
        """The reference :class:`Retriever` over this view (built once per snapshot, on first use)."""
        sh = self._shared
        with sh.lock:
            if sh.reference is None:
                sh.reference = Retriever(self.engine.index, sh.codebooks, sh.facet_names, self.config)
            ref = sh.reference
        return ref if self._space.item_ids.size == 0 and self._space.removed_mask() is None \
            else ref.with_index(self._space)

    # ------------------------------------------------------------------ answering
    def retrieve_triggers(self, trigger_lists: Sequence[Sequence[int]], k: int, exclude=None,
                          rng: np.random.Generator | None = None) -> RetrievalResult:
        """Trigger mode: the reference path (:meth:`Retriever.retrieve_triggers`)."""
        return self._reference().retrieve_triggers(trigger_lists, k, exclude=exclude, rng=rng)

    def retrieve_users(self, query_emb, k: int, beam: int | None = None, exclude=None) -> RetrievalResult:
        """User-to-item retrieval through the engine, delta items merged.

        Args:
            query_emb: ``(B, F, d)`` user-tower query embeddings.
            k: results per request.
            beam: an explicit beam asks for beam search: answered by the reference path.
            exclude: B lists of item ids never to return.

        Returns:
            :class:`RetrievalResult` ranked by the exact ``sum_f w_f q_f . e_f``; ``source`` = routing
            rank of the cluster that reached the item.
        """
        if beam is not None:
            return self._reference().retrieve_users(query_emb, k, beam=beam, exclude=exclude)
        engine, cfg = self.engine, self.engine.config
        q = engine.weighted(query_emb)
        with self._shared.lock:
            gid, rank = engine.route(q, cfg.n_clusters, cfg.routing)
            res = engine.scan_users(q, gid, rank, k, exclude=exclude, removed_bits=self._removed)
        if self._space.item_ids.size:
            qd = q if self._new_weights is None else \
                np.asarray(_as_numpy(query_emb), np.float32) * self._new_weights[None, :, None]
            res = self._merge_delta(res, qd.reshape(q.shape[0], -1), gid, rank, k, exclude)
        return RetrievalResult(res.item_ids, res.scores, res.facet, res.cluster, res.source, res.mode,
                               self.facet_names)

    def _merge_delta(self, res: EngineResult, q: np.ndarray, gid: np.ndarray, rank: np.ndarray, k: int,
                     exclude) -> EngineResult:
        """Delta items of the routed clusters ``gid (B, w)``, scored exactly by ``q (B, F * d)`` (weighted by
        ``new_item_facet_weights`` when set, else by the snapshot's facet weights),
        merged with the engine's ``(B, k)`` results; each delta item once, from its best-ranked cluster."""
        engine, space = self.engine, self._space
        B, w = gid.shape
        n = space.item_ids.size
        g = np.maximum(gid, 0).reshape(-1)
        lens = np.where(gid.reshape(-1) >= 0, self._doff[g + 1] - self._doff[g], 0)
        idx, pair = expand(self._doff[g], lens)
        if idx.size == 0:
            return res
        row = self._drows[idx]
        req = pair // w
        # pairs run best routing rank first: the first copy of (request, row) is its explanation
        key = req * n + row
        key_u, first = np.unique(key, return_index=True)
        req, row, pair = req[first], row[first], pair[first]
        if exclude is not None:  # excluded delta items (ids resolved in the view: delta rows are >= N)
            lens_x = np.fromiter((len(e) for e in exclude), np.int64, count=B)
            if lens_x.sum():
                rows_x = space.rows_of(np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude
                                                       if len(e)])) - space.base.n_items
                req_x = np.repeat(np.arange(B, dtype=np.int64), lens_x)
                ok = rows_x >= 0
                keep = ~np.isin(key_u, req_x[ok] * n + rows_x[ok])
                req, row, pair = req[keep], row[keep], pair[keep]
        score = np.einsum("nd,nd->n", q[req], self._demb[row]).astype(np.float32)  # q carries the weights
        cnt = np.bincount(req, minlength=B)
        width = int(cnt.max()) if cnt.size else 0
        if width == 0:
            return res
        slot = np.arange(req.size) - (np.cumsum(cnt) - cnt)[req]  # req is sorted (keys were)
        col = gid.reshape(-1)[pair]
        d_ids = np.full((B, width), -1, np.int64)
        d_score = np.full((B, width), -np.inf, np.float32)
        d_fac = np.full((B, width), -1, np.int16)
        d_cl = np.full((B, width), -1, np.int64)
        d_src = np.full((B, width), -1, np.int64)
        d_ids[req, slot] = space.item_ids[row]
        d_score[req, slot] = score
        d_fac[req, slot] = engine.col_facet[col]
        d_cl[req, slot] = engine.col_cluster[col]
        d_src[req, slot] = rank.reshape(-1)[pair]
        scores = np.concatenate([res.scores, d_score], 1)
        # best first; ties keep the snapshot's item first (stable), then delta order
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]

        def take(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.take_along_axis(np.concatenate([a, b], 1), top, 1)

        item_ids = take(res.item_ids, d_ids)
        top_scores = np.take_along_axis(scores, top, 1)
        return EngineResult(item_ids=item_ids, scores=top_scores, facet=take(res.facet, d_fac),
                            cluster=take(res.cluster, d_cl), source=take(res.source, d_src),
                            mode="user", facet_names=self.facet_names, entries=res.entries,
                            rescored=res.rescored + cnt)
