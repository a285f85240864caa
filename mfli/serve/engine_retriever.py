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
- **trigger mode** with the engine's neighbour lists (``EngineConfig.neighbours > 0``): each trigger's
  list, rescored exactly and merged (:meth:`ScanEngine.search_triggers`), plus a delta's new items in
  the triggers' clusters; a new item as trigger routes its vector like a user query;
- trigger mode without lists, per-request facet quotas (``merge="quota"``) and an explicit ``beam``
  are not what the gates measure: they are answered by the reference :class:`Retriever` over the same
  view, built on first use and shared by every view of the snapshot.

A delta swap (:meth:`with_index`) costs O(delta): the engine is built once per snapshot and shared.

Example::

    r = EngineRetriever(view, codebooks, facets, RetrieverConfig(merge="sum"), EngineConfig())
    res = r.retrieve_users(user_emb, k=100, exclude=histories)   # (B, F, d) -> RetrievalResult
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Sequence

import numpy as np

from mfli.index.delta import DeltaIndex
from mfli.index.inverted import MultiFacetIndex, _as_numpy
from mfli.serve.engine import EngineConfig, EngineResult, ScanEngine
from mfli.serve.retriever import RetrievalResult, Retriever, RetrieverConfig

__all__ = ["DELTA_EXACT_ITEMS", "DELTA_PROBE", "EngineRetriever"]

#: trigger mode from lists: a delta's new items are looked for in each of a trigger's own clusters and
#: its nearest (this many columns per own cluster, itself included; at most the lists' own probe). The
#: lists hold no new item. Cold recall@100 of trigger lists over the 10 latest items (seed 0): on
#: amazon-scientific / cold (every test item new) 0.246 with the own clusters alone, 0.295 with 4,
#: 0.314 with 9, 0.322 with 16, 0.330 with 64; on ml-latest-small / user_time 0.060 (4), 0.069 (16),
#: 0.071 with every probed column, while warm recall moved from 0.2561 to 0.2546 (16). 16 keeps most of
#: the gain at about 2.4x the delta scan of 4 (cheap where deltas are small against the snapshot)
DELTA_PROBE = 16
#: ...unless the delta holds at most this many items: then every one is scored against every trigger (one
#: matrix product, (triggers, delta) scores), which is exact and cheap while the delta is small (10 triggers
#: x 4,096 items x 128 dims is ~5M multiply-adds, ~0.2 ms). On amazon-scientific / cold, seed 0 (434 new
#: items) the trigger lists' recall@100 went from 0.3218 (16 columns) to 0.3312, equal to exhaustive
#: item-to-item search over the same embeddings; 64 columns gave 0.3296
DELTA_EXACT_ITEMS = 4096
DELTA_REQUESTS = 64  # requests per delta pass (_delta_triggers_chunked)
_ROW_FIELDS = ("item_ids", "scores", "facet", "cluster", "source", "entries", "rescored")


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
        # trigger mode scores a delta of at most this many items whole (views made by with_index keep it)
        self.delta_exact_items = DELTA_EXACT_ITEMS
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
        # each delta row's column in the first facet (what an exhaustive trigger pass reports as its cluster)
        c0 = space.delta_offsets[0].size - 1
        self._dcol0 = np.zeros(space.item_ids.size, np.int64)
        self._dcol0[self._drows[: self._doff[c0]]] = np.repeat(np.arange(c0, dtype=np.int64), np.diff(self._doff[: c0 + 1]))

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
        """Trigger mode: from the engine's neighbour lists when it has them (``EngineConfig.neighbours``)
        and ``k`` is at most their length, else the reference path (:meth:`Retriever.retrieve_triggers`,
        the paper's cluster histogram).

        With lists, results are ranked by ``max_t e_t . e_i`` (full vectors) over the triggers; a delta
        (:meth:`_delta_triggers`) adds its new items (all of them scored when it holds at most
        :data:`DELTA_EXACT_ITEMS`, else those in the triggers' own clusters and their nearest), and a
        trigger that is itself a new item reaches snapshot items through a routed scan.
        """
        engine = self.engine
        # a list holds `neighbours` items: a larger k (up to ServingConfig.max_k) takes the reference path
        if not engine.has_lists or k > engine.list_length:
            return self._reference().retrieve_triggers(trigger_lists, k, exclude=exclude, rng=rng)
        space = self._space
        B = len(trigger_lists)
        lists = [np.asarray(t, np.int64).reshape(-1) for t in trigger_lists]
        excl = [np.asarray(e, np.int64).reshape(-1) for e in exclude] if exclude is not None \
            else [np.zeros(0, np.int64)] * B
        if len(excl) != B:
            raise ValueError(f"exclude must hold one list per request ({B}), got {len(excl)}")
        if self.config.exclude_triggers:
            excl = [np.concatenate([e, t]) for e, t in zip(excl, lists)]
        N = engine.N
        if space.item_ids.size == 0:
            with self._shared.lock:
                res = engine.search_triggers(lists, k, exclude=excl, exclude_triggers=False, lists=True,
                                             removed_bits=self._removed)
        else:  # snapshot triggers (live rows) take the lists; new-item triggers the delta path
            rows = [space.rows_of(t) for t in lists]
            with self._shared.lock:
                res = engine.search_triggers([t[(r >= 0) & (r < N)] for t, r in zip(lists, rows)], k, exclude=excl,
                                             exclude_triggers=False, lists=True, removed_bits=self._removed)
                res = self._delta_triggers_chunked(res, lists, rows, excl, k)
        return RetrievalResult(res.item_ids, res.scores, res.facet, res.cluster, res.source, "trigger",
                               self.facet_names)

    def _delta_triggers_chunked(self, res: EngineResult, lists: list[np.ndarray], rows: list[np.ndarray],
                                excl: list[np.ndarray], k: int) -> EngineResult:
        """:meth:`_delta_triggers` over at most :data:`DELTA_REQUESTS` requests at a time: its column lists
        and candidates grow with requests x triggers, and a large batch (a daily evaluation's thousands of
        users over a large delta) must not hold them all at once."""
        B = len(lists)
        if B <= DELTA_REQUESTS:
            return self._delta_triggers(res, lists, rows, excl, k)
        outs = []
        for a in range(0, B, DELTA_REQUESTS):
            b = min(B, a + DELTA_REQUESTS)
            sub = dataclasses.replace(res, **{f: getattr(res, f)[a:b] for f in _ROW_FIELDS})
            outs.append(self._delta_triggers(sub, lists[a:b], rows[a:b], excl[a:b], k))
        return dataclasses.replace(outs[0], **{f: np.concatenate([getattr(o, f) for o in outs]) for f in _ROW_FIELDS})

    def _delta_triggers(self, res: EngineResult, lists: list[np.ndarray], rows: list[np.ndarray],
                        excl: list[np.ndarray], k: int) -> EngineResult:
        """Add a delta to list answers ``res (B, k)``: per trigger ``t`` (vector ``e_t``), the delta items
        of its own clusters and their ``DELTA_PROBE - 1`` nearest (a new trigger: the clusters its vector
        routes to; a delta of at most :data:`DELTA_EXACT_ITEMS`: every delta item) scored ``e_t . e_i``, and for a new trigger the snapshot items a routed scan finds;
        each item once at its best score."""
        engine, space = self.engine, self._space
        N, B = engine.N, len(lists)
        req = np.concatenate([np.full(r.size, b, np.int64) for b, r in enumerate(rows)]) if B else np.zeros(0, np.int64)
        t_rows = np.concatenate(rows) if B else np.zeros(0, np.int64)
        t_ids = np.concatenate(lists) if B else np.zeros(0, np.int64)
        ok = t_rows >= 0
        req, t_rows, t_ids = req[ok], t_rows[ok], t_ids[ok]
        old = t_rows < N
        vec = np.empty((t_rows.size, engine.D), np.float32)
        vec[old] = engine._emb[t_rows[old]]
        vec[~old] = self._demb[t_rows[~old] - N]
        cfg = engine.config
        # columns each trigger points at: its own and their nearest (snapshot item) or its routed ones (new item)
        parts = [(res.item_ids, res.scores, res.facet, res.cluster, res.source,
                  np.repeat(np.arange(B, dtype=np.int64), res.item_ids.shape[1]).reshape(res.item_ids.shape))]
        new = np.flatnonzero(~old)
        near = engine.col_neighbours[:, :DELTA_PROBE]
        n_own = engine._own.shape[1] * near.shape[1]
        width = max(n_own, cfg.n_clusters)
        gid = np.full((t_rows.size, width), -1, np.int64)
        gid[old, :n_own] = near[engine._own[t_rows[old]]].reshape(-1, n_own)
        if new.size:
            qn = vec[new].reshape(new.size, engine.F, engine.d)
            g, rank = engine.route(qn, cfg.n_clusters, "joint")
            gid[new, : g.shape[1]] = g
            scan = engine.scan_users(qn, g, rank, k, exclude=[excl[b] for b in req[new]],
                                     removed_bits=self._removed)
            parts.append((scan.item_ids, scan.scores, scan.facet, scan.cluster,
                          np.where(scan.item_ids >= 0, t_ids[new][:, None], -1),
                          np.repeat(req[new], k).reshape(-1, k)))
        # delta items of those columns, scored exactly against the trigger: the k best per request
        if 0 < space.item_ids.size <= self.delta_exact_items:  # small delta: every item against every trigger
            o_req, drow, score, col, trig = self._delta_exact(vec, req, B, excl, k)
            parts.append((space.item_ids[drow], score, engine.col_facet[col], engine.col_cluster[col], t_ids[trig],
                          o_req))
        elif self._drows.size:
            from mfli.serve import engine_kernels as K

            req_ptr = np.searchsorted(req, np.arange(B + 1))  # req is grouped by request
            req_x, ex_rows = self._excluded_delta_rows(excl, B)
            ex_ptr = np.zeros(B + 1, np.int64)
            ex_ptr[1:] = np.cumsum(np.bincount(req_x, minlength=B))
            o_req, drow, score, col, trig = K.delta_trigger_best(req_ptr, vec, gid, self._doff, self._drows,
                                                                 self._demb, space.item_ids, ex_ptr, ex_rows, k)
            parts.append((space.item_ids[drow], score, engine.col_facet[col], engine.col_cluster[col], t_ids[trig],
                          o_req))
        return self._merge_parts(parts, excl, B, k, res)

    def _delta_exact(self, vec: np.ndarray, req: np.ndarray, B: int, excl: list[np.ndarray], k: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every delta item scored ``e_t . e_i`` against every trigger ``vec (T, D)`` of its request
        (``req (T,)``, grouped), at its best trigger; excluded items dropped. Returns flat ``(request, delta row,
        score, column, trigger)``, at most ``k`` per request (column: the row's first-facet column)."""
        req_x, ex_rows = self._excluded_delta_rows(excl, B)
        ptr = np.searchsorted(req, np.arange(B + 1))
        ex_ptr = np.searchsorted(req_x, np.arange(B + 1))
        n = self._demb.shape[0]
        out: list[tuple[np.ndarray, ...]] = []
        for b in range(B):
            a, e = int(ptr[b]), int(ptr[b + 1])
            if a == e:
                continue
            s = vec[a:e] @ self._demb.T  # (T_b, n)
            t = s.argmax(0)
            best = s[t, np.arange(n)]
            best[ex_rows[ex_ptr[b]:ex_ptr[b + 1]]] = -np.inf
            top = np.flatnonzero(np.isfinite(best))
            if top.size > k:
                top = top[np.argpartition(-best[top], k - 1)[:k]]
            out.append((np.full(top.size, b, np.int64), top, best[top], self._dcol0[top], t[top] + a))
        if not out:
            z = np.zeros(0, np.int64)
            return z, z, np.zeros(0, np.float32), z, z
        return tuple(np.concatenate(c) for c in zip(*out))  # type: ignore[return-value]

    def _merge_parts(self, parts, excl: list[np.ndarray], B: int, k: int, res: EngineResult) -> EngineResult:
        """Per request the best k distinct items of candidate ``parts`` (ids, scores, facet, cluster, source,
        request), excluded ids dropped; ties: lower item id. Each part is flat or ``(n, w)``
        (one compiled selection, :func:`mfli.serve.blend_kernels.best_distinct`)."""
        from mfli.serve.blend_kernels import best_distinct

        ids, sc, fa, cl, so, rq = (np.concatenate([np.asarray(p[j]).reshape(-1) for p in parts]) for j in range(6))
        ex_ptr = np.zeros(B + 1, np.int64)
        np.cumsum(np.fromiter((len(e) for e in excl), np.int64, count=B), out=ex_ptr[1:])
        ex_ids = np.concatenate(excl).astype(np.int64, copy=False) if B and ex_ptr[-1] else np.zeros(0, np.int64)
        pick = best_distinct(ids.astype(np.int64, copy=False), np.ascontiguousarray(sc, np.float32),
                             rq.astype(np.int64, copy=False), B, ex_ptr, ex_ids, k)
        hit = pick >= 0
        at = pick[hit]
        out = [np.full((B, k), v, dt) for v, dt in ((-1, np.int64), (-np.inf, np.float32), (-1, np.int16),
                                                     (-1, np.int64), (-1, np.int64))]
        for a, v in zip(out, (ids, sc, fa, cl, so)):
            a[hit] = v[at]
        return EngineResult(item_ids=out[0], scores=out[1], facet=out[2], cluster=out[3], source=out[4],
                            mode="trigger", facet_names=self.facet_names, entries=res.entries,
                            rescored=res.rescored)

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

    def _excluded_delta_rows(self, exclude, B: int) -> tuple[np.ndarray, np.ndarray]:
        """``(request, delta-local row)`` of the excluded ids that are delta items, grouped by request
        (ids resolved in the view: delta rows are >= N)."""
        lens = np.fromiter((len(e) for e in exclude), np.int64, count=B)
        if not lens.sum():
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = self._space.rows_of(np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude
                                                   if len(e)])) - self._space.base.n_items
        req = np.repeat(np.arange(B, dtype=np.int64), lens)
        ok = rows >= 0
        return req[ok], rows[ok].astype(np.int64)

    def _merge_delta(self, res: EngineResult, q: np.ndarray, gid: np.ndarray, rank: np.ndarray, k: int,
                     exclude) -> EngineResult:
        """Delta items of the routed clusters ``gid (B, w)``, scored exactly by ``q (B, F * d)`` (weighted by
        ``new_item_facet_weights`` when set, else by the snapshot's facet weights),
        merged with the engine's ``(B, k)`` results; each delta item once, from its best-ranked cluster
        (one compiled pass: :func:`~mfli.serve.engine_kernels.delta_user_merge`)."""
        from mfli.serve import engine_kernels as K

        engine, space = self.engine, self._space
        B = gid.shape[0]
        if exclude is not None:
            req_x, ex_rows = self._excluded_delta_rows(exclude, B)
        else:
            req_x, ex_rows = np.zeros(0, np.int64), np.zeros(0, np.int64)
        ex_ptr = np.zeros(B + 1, np.int64)
        ex_ptr[1:] = np.cumsum(np.bincount(req_x, minlength=B))
        ids, scores, facet, cluster, source, cnt = K.delta_user_merge(
            np.ascontiguousarray(q, np.float32), np.ascontiguousarray(gid, np.int64),
            np.ascontiguousarray(rank, np.int64), self._doff, self._drows, self._demb, ex_ptr, ex_rows,
            res.item_ids, res.scores, res.facet, res.cluster, res.source, space.item_ids, engine.col_facet,
            engine.col_cluster)
        return EngineResult(item_ids=ids, scores=scores, facet=facet, cluster=cluster, source=source,
                            mode="user", facet_names=self.facet_names, entries=res.entries,
                            rescored=res.rescored + cnt)
