"""Scan engine: compiled, learned-code scoring over MFLI's post-rebalance clusters.

One :class:`ScanEngine` serves a :class:`~mfli.index.inverted.MultiFacetIndex` in both modes. Layout
(built once from the index and its codebooks):

- every facet's clusters become *columns* ``0..C-1`` of one inverted file (facet f owns
  ``facet_start[f]:facet_start[f + 1]``); column c owns the contiguous entries
  ``offsets[c]:offsets[c + 1]`` (an item sits in F clusters, so it has F entries);
- an entry holds the item row (int32) and its *code row* (``S`` bytes): the item's learned code path
  in every facet (``F * L`` codes of the model's residual codebooks) followed by ``pq`` codes of a
  product quantiser fitted on the residual the learned codes leave (``e - sum_l C[l, f, k_l]``,
  concatenated over facets, 8 bits per sub-vector);
- the exact vectors are the index's own ``(N, F * d)`` embeddings (a view, not a copy), read only
  to rescore short lists.

**Scoring.** For a query ``q (F, d)`` (user mode: weighted by ``facet_weights``) a table ``lut (S, W)``
holds ``q_f . C[l, f, k]`` for every codeword (the numbers the beam search computes) and
``q_s . P[s, j]`` for every residual sub-codeword, so an item's approximate score
``q . (reconstruction + PQ(residual))`` is a sum of ``S`` look-ups. A compiled kernel
(:mod:`mfli.serve.engine_kernels`) scans the chosen clusters' code rows, keeps the ``shortlist`` best
by the codes with each item at most once across facets (a seen-bitset; excluded items are set
first), rescores those exactly on the float vectors and returns the best ``k``. No Python loop runs
per request or per cluster.

**Fast-scan pre-ranker** (``prerank="fastscan"``): the same columns, entries and routing, but the
short list is chosen by :class:`~mfli.serve.engine_fastscan.FastScanLists`: every entry as a 4-bit
product-quantised code of its residual to the column's centroid (one sub-quantiser per 2 dimensions),
scored 32 entries per SIMD shuffle by faiss. An entry's approximate score is ``q . centroid + q .
PQ4(residual)``; the short list holds ``shortlist`` distinct items (an item's copies in other facets'
columns and excluded items do not take slots) and is rescored exactly by
:func:`~mfli.serve.engine_kernels.rescore_candidates`. An item is explained by the column of its best
pre-ranked copy. The learned code paths stay stored (``F * L`` bytes per entry) for diagnostics.

**Routing** (user mode): a cluster's routing score is the query against the mean of its members'
full (all-facet) vectors (stored as int8 rows with a per-row scale for routing: a quarter of the
bytes a query reads), so clusters of different facets compare on one scale. ``routing="joint"``
reads the ``n_clusters`` best clusters over all facets (one budget); ``"per_facet"`` reads the
``n_clusters`` best of each facet. From 1,024 columns on, joint routing goes through a two-level
tree of the columns (:mod:`mfli.serve.route_tree`, ``route_groups``): the same clusters, found
without scoring every column's centroid.

**Trigger mode** (item to item), two paths:

- *neighbour lists* (``neighbours > 0``, :mod:`mfli.serve.neighbours`): at build, every item's
  ``neighbours`` best items are found by exact scoring in its own clusters and their
  ``neighbour_probe - 1`` nearest, and each entry keeps its score in one byte (``list_scores``); a
  request merges its triggers' lists best first by those scores (no routing, no scan, no vector
  read), or rescores them exactly without stored scores. Memory: ``2 * N * neighbours`` bytes of
  uint16 codes (``4 * N * neighbours`` when lists fall back to int32 rows) plus ``N * (neighbours + 8)``
  of scores; speed against per-trigger ANN search: docs/benchmarks_serving.md, "Trigger mode";
- *cluster scan* (no lists): each trigger item's own clusters (its cluster in every facet, no
  routing) plus optionally its ``extra_clusters`` nearest clusters by centroid are scanned with the
  trigger's tables into a short list of ``shortlist`` per trigger; each short-listed copy is rescored
  exactly against the trigger that reached it and an item keeps its best copy.

Every result is explained by the (facet, cluster) that first reached it and the routing rank of that
cluster (user mode) or the trigger item (trigger mode).

Not thread-safe: one engine serves one call at a time (its seen-bitsets are reused across calls).
The engine holds a full snapshot; ``removed`` rows (a delta's tombstones) are skipped by the kernel,
and :class:`mfli.serve.engine_retriever.EngineRetriever` scores a delta's new items in the routed
clusters and merges them.

Example::

    engine = ScanEngine(index, codebooks, EngineConfig(n_clusters=32, shortlist=300))
    res = engine.search(user_emb, k=100, exclude=histories)          # user_emb (B, F, d)
    res = engine.search_triggers([[12, 40, 7], [3]], k=100)
    res.item_ids, res.scores, res.explanations()[0][:3]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mfli.index.inverted import MultiFacetIndex, _as_numpy, encode_paths
from mfli.serve.retriever import RetrievalResult
from mfli.serve.route_tree import RouteTree

log = logging.getLogger(__name__)

PRERANKS = ("codes", "fastscan")
_SMALL_BATCH = 16  # routing scores of at most this many queries are computed without BLAS


def _numba_threads(n: int) -> None:
    """Set numba's thread count only when it differs (a set costs ~3 us, a get ~2 us: both count at batch 1)."""
    import numba

    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


@dataclass
class EngineConfig:
    """Build and query settings of :class:`ScanEngine` (query settings can be overridden per call)."""

    n_clusters: int = 32  # clusters read per query: over all facets ("joint") or per facet ("per_facet")
    routing: str = "joint"  # "joint": one budget over all facets' clusters; "per_facet": n_clusters each
    shortlist: int = 300  # R: best approximate (code) scores rescored exactly; >= k
    # residual product-quantiser sub-vectors (8 bits each); None: one per 4 dims of F * d. In a 200k-item
    # trial (F * d = 128) 16 sub-vectors of 8 dims needed a short list of 800 for the recall 32 reached
    # with 300; 0 = learned codes only
    pq_subquantizers: int | None = None
    pq_train_size: int = 65_536  # residuals sampled to fit the product quantiser
    extra_clusters: int = 0  # trigger mode: nearest clusters by centroid scanned per trigger, beyond its own
    # trigger mode from per-item neighbour lists (mfli.serve.neighbours): K best items per item, found at
    # build time in the item's clusters and their neighbour_probe - 1 nearest (0: no lists, triggers scan);
    # None: enough columns for about LIST_CANDIDATES * neighbours candidates per column (at least 8)
    neighbours: int = 0
    neighbour_probe: int | None = None
    compact_lists: bool = True  # lists as uint16 neighbourhood codes where they fit (mfli.serve.neighbours)
    # every list entry's build-time score in one byte (N * (neighbours + 8) bytes): a request reads them
    # instead of rescoring T * neighbours scattered vectors; False rescores exactly (less memory)
    list_scores: bool = True
    # pre-ranker of the short list: "codes" (learned code path + 8-bit residual PQ, numba scan) or
    # "fastscan" (4-bit residual-to-centroid PQ in faiss fast-scan blocks, mfli.serve.engine_fastscan)
    prerank: str = "codes"
    fastscan_subquantizers: int | None = None  # 4-bit sub-quantisers of F * d (None: one per fastscan_dims)
    fastscan_dims: int = 1  # dimensions per sub-quantiser when fastscan_subquantizers is None
    # fast-scan codes chosen for the score-aware loss: the error along each item's direction weighs
    # fastscan_eta times the rest (mfli.serve.engine_fastscan.anisotropic_codes); 1: nearest-centroid codes
    fastscan_eta: float = 1.0
    # joint routing through a two-level tree of the columns (mfli.serve.route_tree; same clusters, fewer
    # scored): groups of columns (None: about sqrt(columns) from 1,024 columns on, else none; 0: none)
    route_groups: int | None = None
    threads: int = 1  # compiled-kernel threads (requests split into this many chunks)
    seed: int = 0  # product-quantiser sample and k-means seed

    def validated(self) -> EngineConfig:
        if self.prerank not in PRERANKS:
            raise ValueError(f"prerank must be one of {list(PRERANKS)}, got {self.prerank!r}")
        if self.fastscan_subquantizers is not None and self.fastscan_subquantizers < 1:
            raise ValueError("fastscan_subquantizers must be >= 1")
        if self.fastscan_dims < 1:
            raise ValueError(f"fastscan_dims must be >= 1, got {self.fastscan_dims}")
        if not self.fastscan_eta >= 1.0:
            raise ValueError(f"fastscan_eta must be >= 1, got {self.fastscan_eta}")
        if self.routing not in ("joint", "per_facet"):
            raise ValueError(f"routing must be 'joint' or 'per_facet', got {self.routing!r}")
        if self.n_clusters < 1 or self.shortlist < 1 or self.threads < 1:
            raise ValueError("n_clusters, shortlist and threads must be >= 1")
        if (self.pq_subquantizers is not None and self.pq_subquantizers < 0) or self.extra_clusters < 0:
            raise ValueError("pq_subquantizers and extra_clusters must be >= 0")
        if self.neighbours < 0 or (self.neighbour_probe is not None and self.neighbour_probe < 1):
            raise ValueError("neighbours must be >= 0 and neighbour_probe >= 1 (or None)")
        if self.route_groups is not None and self.route_groups < 0:
            raise ValueError("route_groups must be >= 0 (or None)")
        return self


@dataclass
class EngineResult(RetrievalResult):
    """Results for B requests, k slots each (padding: id -1, score -inf); same fields as the Retriever's.

    Attributes:
        item_ids: ``(B, k)`` int64.
        scores: ``(B, k)`` float32 exact ``sum_f w_f q_f . e_f`` (user) or best trigger similarity (trigger).
        facet: ``(B, k)`` int16 facet of the cluster that first reached the item.
        cluster: ``(B, k)`` int64 that cluster's id in its facet.
        source: ``(B, k)`` int64 routing rank of the cluster, 0 = best (user) or the trigger item id (trigger).
        entries: ``(B,)`` int64 code rows scanned (an item in several chosen clusters counts once per cluster).
        rescored: ``(B,)`` int64 distinct items rescored exactly (the short list).
        mode: "user" or "trigger".  facet_names: for :meth:`explanations`.
    """

    entries: np.ndarray
    rescored: np.ndarray


def _entry(kernel, args: tuple):
    """``kernel``'s compiled entry point for exactly the types of ``args`` (or ``kernel`` itself when numba
    has none to give). Through its dispatcher a numba kernel types every argument on every call: ~1 us
    for the list kernel's 24 (a tuple of 10 arrays among them), ~7% of a one-trigger request at batch 1
    (docs/benchmarks_serving.md, "Trigger mode: one request at a time"). The entry point does not check
    types, so its caller must pass arguments of these types every time."""
    try:
        return kernel.overloads[tuple(kernel.typeof_pyval(a) for a in args)].entry_point
    except (AttributeError, KeyError, TypeError):
        return kernel


def _trigger_outputs(B: int, k: int) -> tuple[np.ndarray, ...]:
    """Uninitialised outputs of the list kernels (``neighbours.trigger_lists``), which write them whole."""
    return (np.empty((B, k), np.int64), np.empty((B, k), np.float32), np.empty((B, k), np.int16),
            np.empty((B, k), np.int64), np.empty((B, k), np.int64), np.empty(B, np.int64), np.empty(B, np.int64))


class ScanEngine:
    """Compiled scan over an index's clusters with learned-code pre-ranking (see the module docstring).

    Args:
        index: a (rebalanced) :class:`MultiFacetIndex`; its embeddings are used in place.
        codebooks: ``(L, F, M, d)`` the index was built with.
        config: :class:`EngineConfig`.
        codes: ``(N, F, L)`` or ``(N, F, 1, L)`` items' learned code paths if already computed (the
            build's ``encode_paths``); default: encoded here.
        facet_weights: ``(F,)`` w_f of the user-mode score ``sum_f w_f q_f . e_f``; default 1.
        lists: neighbour lists read back from a file (:class:`~mfli.serve.list_store.StoredLists`), served
            instead of building them when they were built over this index with this config's list
            settings (:meth:`list_key`); otherwise ignored (logged) and the lists are built.
        quantiser: the fast-scan pre-ranker's residual quantiser read back from a file
            (:class:`~mfli.serve.quantiser_store.StoredQuantiser`), used instead of fitting one when it
            was fitted for this index and config (:meth:`quantiser_key`); otherwise ignored (logged).

    Attributes:
        quantiser_source: "fitted", the file the fast-scan quantiser was read from, or None (no fast-scan).
    """

    def __init__(self, index: MultiFacetIndex, codebooks, config: EngineConfig | None = None,
                 codes=None, facet_weights: Sequence[float] | None = None, lists=None, quantiser=None) -> None:
        import faiss

        from mfli.serve import engine_kernels as K

        if not isinstance(index, MultiFacetIndex):
            raise TypeError(f"ScanEngine serves a MultiFacetIndex snapshot, got {type(index).__name__}")
        self.config = (config or EngineConfig()).validated()
        self.index = index
        self._K = K
        N, F, d = index.embeddings.shape
        cb = np.ascontiguousarray(_as_numpy(codebooks), dtype=np.float32)
        if cb.ndim != 4 or cb.shape[1:] != (F, index.M, d) or cb.shape[0] != index.L:
            raise ValueError(f"codebooks {cb.shape} do not match the index (L={index.L}, F={F}, M={index.M}, d={d})")
        L, _, M, _ = cb.shape
        self.N, self.F, self.d, self.L, self.M, self.D = N, F, d, L, M, F * d
        self.facet_names = list(index.facet_names)
        w = np.ones(F, np.float32) if facet_weights is None else np.asarray(facet_weights, np.float32)
        if w.shape != (F,):
            raise ValueError(f"facet_weights must have F={F} entries")
        self._w = w
        self._unit_w = bool((w == 1).all())
        self._emb = index.embeddings.reshape(N, F * d)  # a view: the one copy of the vectors
        self._cb = cb
        # (F, d, L * M): facet f's tables for all layers in one matmul
        self._cbT = np.ascontiguousarray(cb.transpose(1, 3, 0, 2).reshape(F, d, L * M))

        # fast-scan fits 16 4-bit centroids per sub-vector: a catalogue with fewer entries keeps the codes
        fastscan = self.config.prerank == "fastscan" and sum(c.rows.size for c in index.facets) >= 16
        # learned code paths, then the residual they leave; the fast-scan path does not read them, so
        # they are kept (F * L bytes per entry, for code_scores / reconstruct) only when given
        self._has_codes = codes is not None or not fastscan
        if codes is None:
            codes = encode_paths(index.embeddings, cb)[:, :, 0, :] if not fastscan else np.zeros((N, F, L), np.int64)
        codes = _as_numpy(codes).astype(np.int64)
        if codes.ndim == 4:
            codes = codes[:, :, 0, :]
        if codes.shape != (N, F, L):
            raise ValueError(f"codes must be (N={N}, F={F}, L={L}), got {codes.shape}")
        n_pq = self.config.pq_subquantizers
        if n_pq is None:  # one sub-vector per ~4 dims, the largest count <= F * d / 4 that divides F * d
            n_pq = max(1, (F * d) // 4)
            while (F * d) % n_pq:
                n_pq -= 1
        if n_pq and (F * d) % n_pq:
            raise ValueError(f"pq_subquantizers={n_pq} must divide F * d = {F * d}")
        if min(N, self.config.pq_train_size) < 256:  # 8-bit sub-quantisers need 256 training points:
            n_pq = 0  # a catalogue this small is pre-ranked by its learned codes alone
        if fastscan:  # the fast-scan lists pre-rank
            n_pq = 0
        self._n_pq = n_pq
        wide = M > 256
        cdt = np.uint16 if wide else np.uint8
        S = F * L + n_pq
        item_codes = np.empty((N, S), cdt)
        item_codes[:, : F * L] = codes.reshape(N, F * L)
        self._pq = None
        if n_pq:
            rng = np.random.default_rng(self.config.seed)
            sample = np.sort(rng.choice(N, min(N, self.config.pq_train_size), replace=False))
            pq = faiss.ProductQuantizer(F * d, n_pq, 8)
            pq.cp.seed = self.config.seed
            pq.cp.niter = 20
            # one OpenMP thread: k-means sums reduce in a fixed order, so a gate and a service with
            # other thread counts fit the same quantiser (same machine type assumed)
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                pq.train(self._residual(sample, codes[sample]))
            finally:
                faiss.omp_set_num_threads(threads)
            for s in range(0, N, 65_536):
                rows = np.arange(s, min(N, s + 65_536))
                item_codes[rows, F * L :] = pq.compute_codes(self._residual(rows, codes[rows]))
            self._pq = pq
            # (n_pq, dsub, 256): sub-vector s of the query times every sub-codeword, one batched matmul
            cent = faiss.vector_to_array(pq.centroids).reshape(n_pq, 256, (F * d) // n_pq)
            self._pqT = np.ascontiguousarray(cent.transpose(0, 2, 1))
        self._S, self._W = S, max(M, 256 if n_pq else M)

        # the inverted file: every facet's clusters as columns, entries contiguous per column
        starts, offs, rows_l, fac_l, cid_l = [0], [np.zeros(1, np.int64)], [], [], []
        for f, csr in enumerate(index.facets):
            offs.append(csr.offsets[1:] + offs[-1][-1])
            rows_l.append(csr.rows)
            fac_l.append(np.full(csr.n_clusters, f, np.int16))
            cid_l.append(csr.cluster_ids)
            starts.append(starts[-1] + csr.n_clusters)
        self.facet_start = np.asarray(starts, np.int64)
        self.offsets = np.concatenate(offs).astype(np.int64)
        self.entry_rows = np.concatenate(rows_l).astype(np.int32)
        self.entry_codes = np.ascontiguousarray(item_codes[self.entry_rows])
        del item_codes
        self.col_facet = np.concatenate(fac_l)
        self.col_cluster = np.concatenate(cid_l).astype(np.int64)
        # routing: mean full vector of every column's members (C, D), transposed for one GEMM
        cent = K.segment_means(self._emb, self.entry_rows, self.offsets)
        self._cent = cent
        self._col_len = np.diff(self.offsets)
        # routing reads int8 centroids at small batches (a quarter of the bytes; no measurable recall cost,
        # see quantize_rows) and BLAS over the same values dequantised at large ones
        self._cent8, self._cent_scale = K.quantize_rows(cent)
        self._min_facet_clusters = int(np.diff(self.facet_start).min())
        self._centT = np.ascontiguousarray((self._cent8.astype(np.float32) * self._cent_scale[:, None]).T)
        C = cent.shape[0]
        groups = RouteTree.auto_groups(C) if self.config.route_groups is None else min(self.config.route_groups, C)
        self._tree = RouteTree.build(cent, self._cent8, self._cent_scale, groups, self.config.seed) if groups else None
        # each item's own clusters (trigger mode): (N, F * m) columns
        m = index.paths_per_item
        own = np.empty((N, F, m), np.int64)
        for f, csr in enumerate(index.facets):
            own[:, f, :] = csr.positions(index.assignments[:, f, :]) + self.facet_start[f]
        self._own = own.reshape(N, F * m).astype(np.int32)
        self._layout: str | None = None
        self._fs = None
        self.quantiser_source: str | None = None
        if fastscan:
            from mfli.serve.engine_fastscan import FastScanLists, subquantizers

            self.entry_col = np.repeat(np.arange(self.offsets.size - 1, dtype=np.int32), np.diff(self.offsets))
            stored = self._stored_quantiser(quantiser)
            self._fs = FastScanLists(self._emb, self.entry_rows, self.offsets, cent,
                                     subquantizers(self.config.fastscan_subquantizers, self.D, self.config.fastscan_dims),
                                     self.config.pq_train_size,
                                     self.config.seed, quantiser=None if stored is None else stored.centroids,
                                     eta=self.config.fastscan_eta)
            self.quantiser_source = "fitted" if stored is None else stored.source
        self._bits = np.zeros((self.config.threads, N // 8 + 1), np.uint8)
        self._none_removed = np.zeros(N // 8 + 1, np.uint8)
        self._no_exclusions = (np.zeros(2, np.int64), np.zeros(0, np.int64))  # batch 1, nothing excluded
        self._ptr_one = np.array((0, 1), np.int64)  # batch 1, one trigger (read only by the kernels)
        self._list_consts = None  # the list kernels' constant leading arguments (_bind_lists)
        self._list_entry = None  # its compiled entry point for one request (_one_request)
        self._lists = None  # mfli.serve.neighbours.NeighbourLists
        self._list_key: dict | None = None  # mfli.serve.list_store.list_key of the lists served
        self.lists_source = None  # "built", or the file the lists were read from
        if self.config.neighbours and (lists is None or not self._take_stored(lists)):
            self.build_lists(self.config.neighbours, self.config.neighbour_probe)
        self._first_entry: np.ndarray | None = None

    @property
    def has_lists(self) -> bool:
        """Whether trigger mode can answer from neighbour lists (:meth:`build_lists`)."""
        return self._lists is not None

    @property
    def list_length(self) -> int:
        """Items per neighbour list (0 without lists)."""
        return 0 if self._lists is None else self._lists.length

    @property
    def list_nbytes(self) -> int:
        """Bytes of the neighbour lists (0 without lists)."""
        return 0 if self._lists is None else self._lists.nbytes

    def neighbour_rows(self, rows=None) -> np.ndarray:
        """``(n, K)`` int32 neighbour lists (rows, best first, -1 padding) of item ``rows`` (default: all)."""
        if self._lists is None:
            raise ValueError("this engine has no neighbour lists (EngineConfig.neighbours = 0)")
        rows = np.arange(self.N, dtype=np.int64) if rows is None else np.asarray(rows, np.int64).reshape(-1)
        return self._NB.decode_rows(self._list_args, self._own, rows)

    def list_key(self, neighbours: int | None = None, probe: int | None = None) -> dict:
        """What lists of ``neighbours`` items over ``probe`` columns (defaults: this config's; probe None:
        automatic) depend on (:func:`mfli.serve.list_store.list_key`): stored lists are served only
        under an equal key."""
        from mfli.serve.list_store import list_key
        from mfli.serve.neighbours import auto_probe

        neighbours = self.config.neighbours if neighbours is None else neighbours
        if probe is None:
            probe = self.config.neighbour_probe if self.config.neighbour_probe is not None else \
                auto_probe(self._col_len, neighbours)
        return list_key(neighbours, probe, self.config.compact_lists, self._layout_digest(), self.config.list_scores)

    def _layout_digest(self) -> str:
        """:func:`mfli.serve.list_store.layout_digest` of this engine (computed once)."""
        from mfli.serve.list_store import layout_digest

        if self._layout is None:
            self._layout = layout_digest(self.offsets, self.entry_rows, self._own, self._emb)
        return self._layout

    def quantiser_key(self) -> dict:
        """What this engine's fast-scan quantiser is fitted for (:func:`mfli.serve.quantiser_store.quantiser_key`)."""
        from mfli.serve.engine_fastscan import subquantizers
        from mfli.serve.quantiser_store import quantiser_key

        return quantiser_key(subquantizers(self.config.fastscan_subquantizers, self.D, self.config.fastscan_dims),
                             self.config.pq_train_size,
                             self.config.seed, self._layout_digest())

    def save_quantiser(self, path) -> None:
        """Write the fast-scan quantiser and its :meth:`quantiser_key` (:mod:`mfli.serve.quantiser_store`)."""
        from mfli.serve.quantiser_store import save_quantiser

        if self._fs is None:
            raise ValueError("this engine has no fast-scan quantiser to save (EngineConfig.prerank is not 'fastscan')")
        save_quantiser(path, self._fs.quantiser, self.quantiser_key())

    def _stored_quantiser(self, stored):
        """``stored`` if it was fitted for this engine (:meth:`quantiser_key`), else None (logged)."""
        if stored is None:
            return None
        want = self.quantiser_key()
        if stored.matches(want):
            return stored
        diff = sorted(k for k in want if stored.key.get(k) != want[k])
        log.info("stored fast-scan quantiser %s not used (%s differ); fitting one", stored.source, ", ".join(diff))
        return None

    def save_lists(self, path) -> None:
        """Write the served neighbour lists and their :meth:`list_key` (:func:`mfli.serve.list_store.save_lists`)."""
        from mfli.serve.list_store import save_lists

        if self._lists is None or self._list_key is None:
            raise ValueError("this engine has no neighbour lists to save (EngineConfig.neighbours = 0, or lists "
                             "set by hand)")
        save_lists(path, self._lists, self._list_key)

    def _take_stored(self, stored) -> bool:
        """Serve ``stored`` lists if they were built for this engine (key and every entry checked)."""
        from mfli.serve import neighbours as NB

        want = self.list_key()
        if not stored.matches(want):
            diff = sorted(k for k in want if stored.key.get(k) != want[k])
            log.info("stored neighbour lists %s not used (%s differ); building them", stored.source, ", ".join(diff))
            return False
        lists = stored.lists
        self._check_fits(lists, f"{stored.source}: ", want["neighbour_probe"])
        if lists.col_nbr.size and (lists.col_nbr.min() < 0 or lists.col_nbr.max() >= self.offsets.size - 1):
            raise ValueError(f"{stored.source}: array 'col_nbr' names columns outside this engine")
        bad = NB.first_invalid(lists.kernel_args(self.entry_rows, self.offsets), self._own, self.N)
        if bad >= 0:
            K = lists.codes.shape[1]
            raise ValueError(f"{stored.source}: array 'codes' row {bad // K}, entry {bad % K} does not decode to "
                             f"an item of this engine")
        self._NB = NB
        self.col_neighbours = lists.col_nbr
        self.list_probe = int(want["neighbour_probe"])
        self._serve(lists, want, stored.source)
        return True

    def build_lists(self, neighbours: int, probe: int | None = None) -> None:
        """(Re)build the trigger-mode neighbour lists: every item's ``neighbours`` best items found in its
        clusters and their ``probe - 1`` nearest (:func:`mfli.serve.neighbours.build_neighbour_lists`);
        ``probe`` None: :func:`mfli.serve.neighbours.auto_probe`. The probe used is ``self.list_probe``."""
        from mfli.serve import neighbours as NB
        from mfli.serve.neighbours import auto_probe, build_neighbour_lists, column_neighbours, encode_lists

        self._NB = NB  # the serving kernels, kept like ``self._K`` (an import per request costs at batch 1)
        if probe is None:
            probe = auto_probe(self._col_len, neighbours)
        if neighbours < 1 or probe < 1:
            raise ValueError("neighbours and probe must be >= 1")
        self._lists = self._list_args = self._list_consts = None  # the old lists are dropped before the new ones
        # are built (peak memory)
        # (C, probe) every column's nearest columns, itself first (also where a delta's new items are looked for)
        self.col_neighbours = column_neighbours(self._cent, probe)
        rows, scores = build_neighbour_lists(self._emb, self.entry_rows, self.offsets, self._cent, neighbours, probe,
                                             self.col_neighbours, with_scores=True)
        self.list_probe = probe
        self._serve(encode_lists(rows, self._own, self.col_neighbours, self.entry_rows, self.offsets,
                                 compact=self.config.compact_lists,
                                 scores=scores if self.config.list_scores else None),
                    self.list_key(neighbours, probe), "built")

    def set_lists(self, lists) -> None:
        """Serve trigger mode from ``lists`` (a :class:`~mfli.serve.neighbours.NeighbourLists` encoded over
        this engine's columns and ``col_neighbours``, e.g. the same lists stored the other way). Lists set
        by hand have no :meth:`list_key` and are not saved."""
        self._check_fits(lists)
        self._serve(lists, None, "set")

    def _check_fits(self, lists, where: str = "", probe: int | None = None) -> None:
        """ValueError (prefixed by ``where``) unless ``lists`` cover this engine's items and columns (and
        probe ``probe`` columns each, when given)."""
        C = self.offsets.size - 1
        if lists.has_scores and (lists.score_q.shape != lists.codes.shape or lists.score_lo.shape != (self.N,)
                                 or lists.score_step.shape != (self.N,)):
            raise ValueError(f"{where}stored list scores {lists.score_q.shape} / {lists.score_lo.shape} / "
                             f"{lists.score_step.shape} do not match lists {lists.codes.shape}")
        if lists.codes.shape[0] != self.N or lists.col_nbr.shape[0] != C or \
                (probe is not None and lists.col_nbr.shape[1] != probe):
            raise ValueError(f"{where}lists of {lists.codes.shape[0]} items over {lists.col_nbr.shape} columns do not "
                             f"match this engine ({self.N} items, {C} columns"
                             + (f", probe {probe})" if probe is not None else ")"))

    def _serve(self, lists, key: dict | None, source: str) -> None:
        self._lists = lists
        self._list_key = key
        self.lists_source = source
        self._list_args = lists.kernel_args(self.entry_rows, self.offsets)
        self._slots = np.full((self.config.threads, self.N), -1, np.int32)  # trigger_lists' scratch
        self._bind_lists()

    # ------------------------------------------------------------------ helpers
    def _residual(self, rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """``(n, F * d)`` float32 embeddings of ``rows`` minus their learned reconstruction."""
        x = self.index.embeddings[rows].copy()
        for f in range(self.F):
            for layer in range(self.L):
                x[:, f] -= self._cb[layer, f][codes[:, f, layer]]
        return x.reshape(len(rows), self.D)

    def _luts(self, q: np.ndarray) -> np.ndarray:
        """``(B, S, W)`` float32 tables of weighted queries ``q (B, F, d)``."""
        B = q.shape[0]
        F, L, M = self.F, self.L, self.M
        lut = np.empty((B, self._S, self._W), np.float32)
        if M < self._W:  # padding columns are never indexed; zero them anyway so tables are well defined
            lut[:, : F * L, M:] = 0
        for f in range(F):
            lut[:, f * L : (f + 1) * L, :M] = (q[:, f] @ self._cbT[f]).reshape(B, L, M)
        if self._n_pq:
            qs = q.reshape(B, self._n_pq, -1).transpose(1, 0, 2)  # (n_pq, B, dsub)
            lut[:, F * L :, :256] = np.matmul(qs, self._pqT).transpose(1, 0, 2)
        return lut

    def _luts_or_none(self, q: np.ndarray) -> np.ndarray | None:
        """:meth:`_luts`, or None when the fast-scan lists pre-rank (they build their own tables)."""
        return None if self._fs is not None else self._luts(q)

    def _chunks(self, B: int) -> int:
        return max(1, min(self.config.threads, B))

    def _exclusions(self, B: int, exclude, extra: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``(B + 1,)`` pointers and int64 rows never to return per request (ids unknown to the index dropped).

        ``extra``: more rows as ``(ptr (B + 1,), rows)`` (the triggers themselves).
        """
        if exclude is None and extra is None:
            return np.zeros(B + 1, np.int64), np.zeros(0, np.int64)
        lens = np.zeros(B, np.int64)
        rows = np.zeros(0, np.int64)
        if exclude is not None:
            if len(exclude) != B:
                raise ValueError(f"exclude must hold one list per request ({B}), got {len(exclude)}")
            rows, lens = self._rows_ragged(exclude)
        if extra is not None:
            eptr, erows = extra
            req = np.concatenate([np.repeat(np.arange(B), lens), np.repeat(np.arange(B), np.diff(eptr))])
            o = np.argsort(req, kind="stable")
            rows = np.concatenate([rows, erows])[o]
            lens = lens + np.diff(eptr)
        return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), rows.astype(np.int64)

    def _rows_ragged(self, lists) -> tuple[np.ndarray, np.ndarray]:
        """B lists of item ids -> ``(rows, lens (B,))`` with ids unknown to the index dropped."""
        B = len(lists)
        lens = np.fromiter((len(x) for x in lists), np.int64, count=B)
        if not lens.sum():
            return np.zeros(0, np.int64), np.zeros(B, np.int64)
        ids = np.concatenate([np.asarray(x, np.int64).reshape(-1) for x in lists if len(x)])
        rows = self.index.rows_of(ids)
        ok = rows >= 0
        req = np.repeat(np.arange(B), lens)
        return rows[ok], np.bincount(req[ok], minlength=B).astype(np.int64)

    def removed_bits(self, removed: np.ndarray | None) -> np.ndarray:
        """``(N // 8 + 1,)`` uint8 bitset of a ``(N,)`` bool mask of rows never to return (None: none)."""
        if removed is None:
            return self._none_removed
        removed = np.asarray(removed, bool)
        if removed.shape != (self.N,):
            raise ValueError(f"removed must be a (N={self.N},) bool mask, got {removed.shape}")
        out = np.zeros(self.N // 8 + 1, np.uint8)
        packed = np.packbits(removed, bitorder="little")  # bit r & 7 of byte r >> 3 is row r
        out[: packed.size] = packed
        return out

    def _run(self, luts, req_q_ptr, qfull, pair_ptr, pair_q, pair_gid, ex_ptr, ex_rows, shortlist: int, k: int,
             dedup_scan: bool = True, removed: np.ndarray | None = None):
        B = req_q_ptr.size - 1
        T = self._chunks(B)
        _numba_threads(T)
        rm = self._none_removed if removed is None else removed
        if self._fs is not None:
            return self._run_fastscan(req_q_ptr, qfull, pair_ptr, pair_q, pair_gid, ex_ptr, ex_rows, shortlist,
                                      k, dedup_scan, rm, T)
        return self._K.scan_rescore(luts, req_q_ptr, qfull, pair_ptr, pair_q, pair_gid, self.offsets,
                                    self.entry_rows, self.entry_codes, self._emb, ex_ptr, ex_rows, rm,
                                    self._bits[:T], max(shortlist, k), k, dedup_scan)

    def _run_fastscan(self, req_q_ptr, qfull, pair_ptr, pair_q, pair_gid, ex_ptr, ex_rows, shortlist: int,
                      k: int, dedup_scan: bool, removed: np.ndarray, T: int):
        """:meth:`_run` with the fast-scan pre-ranker: same pairs in, same tuple out.

        Every query vector's pairs are ``w`` consecutive slots (user mode: one vector per request;
        trigger mode: one per trigger), so they reshape to faiss's ``(Qn, w)`` probe lists.
        """
        Qn = qfull.shape[0]
        w = pair_gid.size // max(Qn, 1)
        gid = pair_gid.reshape(Qn, w)
        coarse = self._K.column_dots(qfull, self._cent, gid)
        # an excluded item may fill a slot: widen the short list by the request's largest exclusion
        n_ex = int(np.diff(ex_ptr).max()) if ex_ptr.size > 1 and ex_ptr[-1] else 0
        R = max(shortlist, k) + n_ex
        cand = self._fs.search(qfull, gid, coarse, R, threads=T)
        rows, scores, pair, rescored = self._K.rescore_candidates(
            cand, req_q_ptr, qfull, pair_ptr, pair_q, pair_gid, self.entry_rows, self.entry_col, self._emb,
            ex_ptr, ex_rows, removed, self._bits[:T], k, max(shortlist, k), dedup_scan)
        return rows, scores, pair, self._K.pair_entries(pair_ptr, pair_gid, self._col_len), rescored

    def _result(self, out, pair_gid, source_of_pair, mode: str) -> EngineResult:
        rows, scores, pair, entries, rescored = out
        ids, facet, cluster, source = self._K.explain_rows(
            rows, pair, pair_gid, self.index.item_ids, self.col_facet, self.col_cluster,
            np.ascontiguousarray(source_of_pair, dtype=np.int64))
        return EngineResult(item_ids=ids, scores=scores, facet=facet, cluster=cluster, source=source,
                            entries=entries, rescored=rescored, mode=mode, facet_names=self.facet_names)

    def route(self, q: np.ndarray, n: int, routing: str) -> tuple[np.ndarray, np.ndarray]:
        """Cluster columns to read for weighted queries ``q (B, F, d)``: ``(gid (B, w), rank (B, w))``, best first."""
        B = q.shape[0]
        qf = np.ascontiguousarray(q.reshape(B, self.D))
        joint = routing == "joint"
        n = max(1, min(n, self._cent8.shape[0]) if joint else min(n, self._min_facet_clusters))
        if joint and self._tree is not None:  # flat routing's clusters, most columns unscored
            T = self._chunks(B)
            if T == 1:
                return self._K.route_tree(qf, *self._tree.arrays, n)[:2]
            _numba_threads(T)
            return self._K.route_tree_chunks(qf, *self._tree.arrays, n, T)[:2]
        if B <= _SMALL_BATCH:  # on this thread, scored and selected in one pass (see route_small)
            return self._K.route_small(qf, self._cent8, self._cent_scale, self.facet_start, n, joint)
        _numba_threads(self._chunks(B))
        gid, _, rank = self._K.select_clusters(qf @ self._centT, self.facet_start, n, joint, self._chunks(B))
        return gid, rank

    # ------------------------------------------------------------------ serving
    def weighted(self, queries) -> np.ndarray:
        """``(B, F, d)`` float32 queries times the facet weights (what :meth:`route` and :meth:`scan_users` take)."""
        q = np.ascontiguousarray(_as_numpy(queries), dtype=np.float32)
        if q.ndim != 3 or q.shape[1:] != (self.F, self.d):
            raise ValueError(f"queries must be (B, F={self.F}, d={self.d}), got {q.shape}")
        # unit weights (the default) leave the queries as they are: a copy per call costs at batch 1
        return q if self._unit_w else q * self._w[None, :, None]

    def search(self, queries, k: int, n_clusters: int | None = None, shortlist: int | None = None,
               exclude=None, routing: str | None = None, removed: np.ndarray | None = None) -> EngineResult:
        """User-to-item retrieval.

        Args:
            queries: ``(B, F, d)`` user-tower query embeddings.
            k: results per request.
            n_clusters, shortlist, routing: override the config for this call.
            exclude: B lists of item ids never to return (seen items).
            removed: ``(N,)`` bool rows no request may return (a delta's tombstones), or None.

        Returns:
            :class:`EngineResult` ranked by the exact ``sum_f w_f q_f . e_f``; ``source`` = routing rank.
        """
        cfg = self.config
        routing = routing or cfg.routing
        if routing not in ("joint", "per_facet"):
            raise ValueError(f"routing must be 'joint' or 'per_facet', got {routing!r}")
        q = self.weighted(queries)
        gid, rank = self.route(q, n_clusters or cfg.n_clusters, routing)
        return self.scan_users(q, gid, rank, k, shortlist, exclude, self.removed_bits(removed))

    def scan_users(self, q: np.ndarray, gid: np.ndarray, rank: np.ndarray, k: int, shortlist: int | None = None,
                   exclude=None, removed_bits: np.ndarray | None = None) -> EngineResult:
        """Scan routed clusters for weighted queries ``q (B, F, d)`` (:meth:`weighted`).

        Args:
            gid, rank: ``(B, w)`` cluster columns and their routing ranks (:meth:`route`; -1 padding).
            removed_bits: :meth:`removed_bits` of the rows no request returns, or None.
        """
        B = q.shape[0]
        w = gid.shape[1]
        pair_ptr = np.arange(B + 1, dtype=np.int64) * w
        pair_q = np.repeat(np.arange(B, dtype=np.int64), w)
        pair_gid = np.ascontiguousarray(gid, dtype=np.int64).reshape(-1)
        ex_ptr, ex_rows = self._exclusions(B, exclude)
        out = self._run(self._luts_or_none(q), np.arange(B + 1, dtype=np.int64), np.ascontiguousarray(q.reshape(B, -1)),
                        pair_ptr, pair_q, pair_gid, ex_ptr, ex_rows, shortlist or self.config.shortlist, k,
                        removed=removed_bits)
        return self._result(out, pair_gid, np.asarray(rank, np.int64).reshape(-1), "user")

    def search_triggers(self, triggers: Sequence[Sequence[int]], k: int, extra_clusters: int | None = None,
                        shortlist: int | None = None, exclude=None, exclude_triggers: bool = True,
                        lists: bool | None = None, removed: np.ndarray | None = None,
                        removed_bits: np.ndarray | None = None) -> EngineResult:
        """Item-to-item retrieval from B requests' trigger items.

        Args:
            triggers: B lists of trigger item ids (ids unknown to the index are ignored).
            k: results per request.
            extra_clusters: nearest clusters by centroid scanned per trigger beyond its own (config default).
            exclude: B lists of item ids never to return; ``exclude_triggers`` also drops the triggers.
            lists: answer from the neighbour lists (``config.neighbours``; default: when built) instead
                of scanning the triggers' clusters; a trigger then reaches at most ``neighbours`` items.
            removed: ``(N,)`` bool rows no request may return, or None; ``removed_bits``: the same as
                :meth:`removed_bits` (prepared once per delta).

        Returns:
            :class:`EngineResult` ranked by ``max_t sum_f e_t,f . e_i,f`` over the triggers whose scanned
            clusters (or lists) hold the item; ``source`` = the trigger item id. ``shortlist`` is per trigger.
        """
        cfg = self.config
        B = len(triggers)
        if removed_bits is None:
            removed_bits = self.removed_bits(removed)
        if lists is None:
            lists = self._lists is not None
        if lists:
            if self._lists is None:
                raise ValueError("this engine has no neighbour lists (EngineConfig.neighbours = 0)")
            return self._search_lists(triggers, k, exclude, exclude_triggers, removed_bits)
        rows_all, counts = self._rows_ragged(triggers)
        req_q_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        Qn = rows_all.size
        qv = self._emb[rows_all].reshape(Qn, self.F, self.d)
        own = self._own[rows_all].astype(np.int64)  # (Qn, F * m)
        extra = cfg.extra_clusters if extra_clusters is None else extra_clusters
        if extra and Qn:
            gid, _ = self.route(qv, extra, "joint")
            own = np.concatenate([own, gid], 1)
        w = own.shape[1]
        pair_ptr = req_q_ptr * w
        pair_q = np.repeat(np.arange(Qn, dtype=np.int64), w)
        pair_gid = own.reshape(-1)
        ex_ptr, ex_rows = self._exclusions(B, exclude, (req_q_ptr, rows_all) if exclude_triggers else None)
        luts = self._luts_or_none(qv) if Qn else np.zeros((0, self._S, self._W), np.float32)
        # an item's best trigger may reach it after another one: keep copies until the exact rescoring.
        # The short list is per trigger: near-duplicate items on the manifold have tiny score gaps, so
        # one shared list of R would shrink each trigger's share as T grows. The codes kernel keeps one
        # list per request (R * the most triggers); the fast-scan path already keeps one per trigger
        R = shortlist or cfg.shortlist
        if self._fs is None:
            R *= max(1, int(counts.max()) if B else 1)
        out = self._run(luts, req_q_ptr, self._emb[rows_all], pair_ptr, pair_q, pair_gid,
                        ex_ptr, ex_rows, R, k, dedup_scan=False, removed=removed_bits)
        source = self.index.item_ids[rows_all][pair_q] if Qn else np.zeros(0, np.int64)
        return self._result(out, pair_gid, source, "trigger")

    def _search_lists(self, triggers: Sequence[Sequence[int]], k: int, exclude, exclude_triggers: bool,
                      removed_bits: np.ndarray) -> EngineResult:
        """:meth:`search_triggers` from the neighbour lists: a look-up and a merge of stored scores (or exact
        dot products), explained in the kernel."""
        B = len(triggers)
        if B == 1:
            return self._one_request(triggers[0], k, exclude, exclude_triggers, removed_bits)
        ptr = np.zeros(B + 1, np.int64)
        np.cumsum(np.fromiter((len(t) for t in triggers), np.int64, count=B), out=ptr[1:])
        ids = (np.concatenate([np.asarray(t, np.int64).reshape(-1) for t in triggers]) if ptr[-1]
               else np.zeros(0, np.int64))
        ex_ptr, ex_rows = self._exclusions(B, exclude)
        T = self._chunks(B)
        if T > 1:
            _numba_threads(T)
            if self._slots.shape[0] < T:  # threads raised after the lists were built
                self._slots = np.full((T, self.N), -1, np.int32)
            kernel, bits, slots = self._NB.trigger_lists, self._bits[:T], self._slots[:T]
        else:
            kernel, bits, slots = self._NB.trigger_lists_serial, self._bits, self._slots
        out = _trigger_outputs(B, k)
        kernel(*self._list_consts, bits, slots, ptr, ids, ex_ptr, ex_rows, exclude_triggers, removed_bits, k, *out)
        return self._trigger_result(out)

    def _one_request(self, trig, k: int, exclude, exclude_triggers: bool, removed_bits: np.ndarray) -> EngineResult:
        """One request from the lists, on this thread: what a caller answering requests one at a time asks
        for. At batch 1 every numpy call, attribute and argument costs (~0.3 us each against a ~15 us
        request), so the kernel's constant arguments are bound once (:meth:`_bind_lists`), the one-trigger
        pointer is shared (the kernel only reads it), and a request with nothing excluded beyond the
        engine's own empty ``removed_bits`` calls the kernel through its compiled entry point
        (:func:`_entry`), whose argument types are then always the ones it was bound to."""
        ids = np.array(trig, np.int64).reshape(-1)  # a new C-contiguous array: always the same type
        out = _trigger_outputs(1, k)
        ptr = self._ptr_one if ids.size == 1 else np.array((0, ids.size), np.int64)
        plain = exclude is None and removed_bits is self._none_removed
        ex_ptr, ex_rows = self._no_exclusions if exclude is None else self._exclusions(1, exclude)
        args = (*self._list_consts, self._bits, self._slots, ptr, ids, ex_ptr, ex_rows, bool(exclude_triggers),
                removed_bits, int(k), *out)
        if plain and self._list_entry is not None:
            self._list_entry(*args)
        else:
            kernel = self._NB.trigger_lists_serial
            kernel(*args)
            if plain:
                self._list_entry = _entry(kernel, args)
        return self._trigger_result(out)

    def _trigger_result(self, out: tuple) -> EngineResult:
        ids, scores, facet, cluster, source, scored, entries = out
        return EngineResult(item_ids=ids, scores=scores, facet=facet, cluster=cluster, source=source,
                            entries=entries, rescored=scored, mode="trigger", facet_names=self.facet_names)

    def _bind_lists(self) -> None:
        """The list kernels' leading arguments, which stay the same between requests."""
        index = self.index
        self._list_entry = None  # bound again on the next one-request call (the lists' types may differ)
        self._list_consts = (index._sorted_ids, index._sorted_rows, self._list_args, self._emb, self._own,
                             index.item_ids, self.col_facet, self.col_cluster)

    # ------------------------------------------------------------------ diagnostics
    def code_scores(self, query, rows) -> np.ndarray:
        """``(n,)`` approximate scores of item ``rows`` for one query ``(F, d)`` (weighted) from their codes."""
        if not self._has_codes:
            raise ValueError("this fast-scan engine was built without the learned code paths (pass codes=)")
        q = np.asarray(query, np.float32).reshape(1, self.F, self.d) * self._w[None, :, None]
        if self._first_entry is None:
            first = np.full(self.N, -1, np.int64)
            first[self.entry_rows[::-1]] = np.arange(self.entry_rows.size - 1, -1, -1)
            self._first_entry = first
        e = self._first_entry[np.asarray(rows, np.int64)]
        return self._K.approx_scores(self._luts(q)[0], self.entry_codes[e])

    def reconstruct(self, rows) -> np.ndarray:
        """``(n, F * d)`` float32: learned-code reconstruction plus the decoded residual of item ``rows``."""
        if self._first_entry is None:
            self.code_scores(np.zeros((self.F, self.d), np.float32), [])
        codes = self.entry_codes[self._first_entry[np.asarray(rows, np.int64)]]
        n = codes.shape[0]
        F, L = self.F, self.L
        out = np.zeros((n, F, self.d), np.float32)
        for f in range(F):
            for layer in range(L):
                out[:, f] += self._cb[layer, f][codes[:, f * L + layer].astype(np.int64)]
        out = out.reshape(n, self.D)
        if self._n_pq:
            out += self._pq.decode(np.ascontiguousarray(codes[:, F * L :].astype(np.uint8)))
        return out

    def nbytes(self) -> dict[str, int]:
        """Bytes the engine holds: its own arrays, and the index embeddings it reads in place."""
        own = (self.offsets.nbytes + self.entry_rows.nbytes + self.entry_codes.nbytes + self.col_facet.nbytes
               + self.col_cluster.nbytes + self._centT.nbytes + self._cent8.nbytes + self._own.nbytes + self._bits.nbytes
               + self._cbT.nbytes + self.facet_start.nbytes)
        if self._n_pq:
            own += self._pqT.nbytes * 2  # faiss keeps the centroids too
        if self._fs is not None:
            own += self._fs.nbytes() + self._cent.nbytes + self.entry_col.nbytes
        if self._lists is not None:
            own += self._lists.nbytes + self._slots.nbytes
        if self._tree is not None:
            own += self._tree.nbytes
        return {"engine": int(own), "embeddings": int(self._emb.nbytes), "total": int(own + self._emb.nbytes)}
