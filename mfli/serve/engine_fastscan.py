"""4-bit fast-scan pre-ranking of the scan engine's entries (faiss SIMD look-ups over MFLI's own clusters).

The engine (:mod:`mfli.serve.engine`) keeps MFLI's post-rebalance clusters as the columns of one
inverted file. :class:`FastScanLists` stores a copy of every entry as a 4-bit product-quantised code
of its residual to the column's centroid, in faiss's fast-scan block layout (32 codes interleaved so
one SIMD shuffle scores 32 entries against a 16-entry table). A query's approximate score of an entry
in column ``c`` is ``q . centroid_c + q . PQ4(e - centroid_c)``: the column (the learned partition)
contributes its routing score and the codes the rest. The engine rescores the best ``R`` exactly.

Why faiss and not the engine's own kernel: scoring an entry from 8-bit codes costs one scattered
look-up per sub-code (~117 ns per entry at 36 sub-codes, 1M items); 4-bit codes held in SIMD
registers score 32 entries per shuffle and beat a float scan. faiss 1.15's fast-scan index cannot
take pre-assigned lists directly (its ``add_core`` writes codes unpacked), so the lists are filled
in a plain :class:`faiss.IndexIVFPQ` (4-bit, pre-assigned with ``add_core``) and converted, which
packs them into blocks.

Memory: ``E * (n_sub / 2 + 8)`` bytes (codes + int64 entry ids), ``E`` = entries (items x facets),
plus the ``(C, D)`` centroids.
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: faiss fast-scan implementation: 13 (query blocks, reservoir of candidates) for every batch size. At 1M
#: items (64 lists, R = 300) it matched the automatic choice (0) at batch 256 and beat it slightly at
#: batch 1 (183-222 vs 196-230 us); 11 was faster at batch 1 (113-193 us) but broke score ties at the
#: short list's edge differently, so 6% of queries got other top-100s at batch 1 than at batch 256
_IMPLEM = 13


def subquantizers(n_sub: int | None, D: int, dims: int = 1) -> int:
    """The 4-bit sub-quantisers of ``EngineConfig.fastscan_subquantizers = n_sub`` over ``D`` dimensions.

    None means one per ``dims`` dimensions (``EngineConfig.fastscan_dims``), or one per dimension where
    ``D`` is not a multiple of ``dims``. With nearest-centroid codes one per dimension beat one per two:
    at 1M items (D = 128) a short list of 200 then held recall@100 0.937 with 48 clusters, against 0.818
    (0.916 with 400), for 1.09-1.21x the queries/s at equal recall (docs/benchmarks_serving.md, "Column
    tree"). Score-aware codes (``fastscan_eta``) close most of that gap for one per two, at half the bytes.
    """
    if n_sub is not None:
        return int(n_sub)
    return D // dims if dims >= 1 and D % dims == 0 else D


class FastScanLists:
    """Fast-scan inverted lists over fixed columns (see the module docstring).

    Args:
        emb: ``(N, D)`` float32 item vectors.
        entry_rows: ``(E,)`` item row of each entry; column ``c`` owns entries ``offsets[c]:offsets[c + 1]``.
        offsets: ``(C + 1,)`` int64.
        centroids: ``(C, D)`` float32 per-column centroids (the residual is taken to these).
        n_sub: 4-bit sub-quantisers; must divide D (None: ``D``, one per dimension).
        train_size: residuals sampled to fit the quantiser.  seed: its sample and k-means seed.
        quantiser: ``(n_sub, 16, D / n_sub)`` float32 sub-quantiser centroids fitted before (e.g. read from
            a snapshot, :mod:`mfli.serve.quantiser_store`): used instead of fitting; ``train_size`` and
            ``seed`` are then unused.
        eta: > 1 chooses the codes for the score-aware loss (:func:`anisotropic_codes`); 1 keeps the
            nearest-centroid codes.

    Attributes:
        quantiser: ``(n_sub, 16, D / n_sub)`` float32, the sub-quantiser centroids the codes use.
    """

    def __init__(self, emb: np.ndarray, entry_rows: np.ndarray, offsets: np.ndarray, centroids: np.ndarray,
                 n_sub: int | None = None, train_size: int = 65_536, seed: int = 0,
                 quantiser: np.ndarray | None = None, eta: float = 1.0) -> None:
        import faiss

        D = emb.shape[1]
        C = offsets.size - 1
        E = entry_rows.size
        n_sub = subquantizers(n_sub, D)
        if n_sub < 1 or D % n_sub:
            raise ValueError(f"fast-scan sub-quantisers must divide D={D}, got {n_sub}")
        if centroids.shape != (C, D):
            raise ValueError(f"centroids must be (C={C}, D={D}), got {centroids.shape}")
        if E < 16:
            raise ValueError(f"fast-scan needs at least 16 entries to fit 4-bit codes, got {E}")
        if not eta >= 1.0:
            raise ValueError(f"fast-scan eta must be >= 1, got {eta}")
        self.D, self.C, self.E, self.n_sub = D, C, E, n_sub
        self._quantizer = faiss.IndexFlatIP(D)
        self._quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        ivf = faiss.IndexIVFPQ(self._quantizer, D, C, n_sub, 4, faiss.METRIC_INNER_PRODUCT)
        ivf.by_residual = True
        if quantiser is None:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(E, min(E, train_size), replace=False))
            col = np.repeat(np.arange(C, dtype=np.int64), np.diff(offsets))
            residual = np.ascontiguousarray(emb[entry_rows[sample]] - centroids[col[sample]], dtype=np.float32)
            ivf.pq.cp.seed = seed
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # k-means sums in a fixed order: the same codes for every thread count
            try:
                ivf.pq.train(residual)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            if quantiser.shape != (n_sub, 16, D // n_sub) or quantiser.dtype != np.float32:
                raise ValueError(f"fast-scan quantiser is {quantiser.dtype} {quantiser.shape}, expected float32 "
                                 f"({n_sub}, 16, {D // n_sub})")
            faiss.copy_array_to_vector(np.ascontiguousarray(quantiser).ravel(), ivf.pq.centroids)
            ivf.pq.sync_transposed_centroids()
        ivf.is_trained = True
        # the codes are computed here, not by faiss's add_core: with one dimension per sub-quantiser its
        # encoder took 24 s for 2M entries at 1M items (one small distance call per sub-quantiser), this
        # kernel 2.2 s (7.7 s one sub-quantiser at a time; same codes); each column's codes then go into
        # its inverted list as they are
        pq_cent = faiss.vector_to_array(ivf.pq.centroids).reshape(n_sub, 16, D // n_sub)
        self.quantiser = pq_cent
        layout = (emb, np.ascontiguousarray(entry_rows), np.ascontiguousarray(offsets, np.int64),
                  np.ascontiguousarray(centroids, dtype=np.float32), np.ascontiguousarray(pq_cent))
        codes = pq4_codes(*layout)
        if eta != 1.0:
            anisotropic_codes(*layout, codes, float(eta))
        ids = np.arange(E, dtype=np.int64)
        for c in np.flatnonzero(np.diff(offsets)):
            lo, hi = int(offsets[c]), int(offsets[c + 1])
            block, block_ids = codes[lo:hi], ids[lo:hi]  # named: swig_ptr does not keep its argument alive
            ivf.invlists.add_entries(int(c), hi - lo, faiss.swig_ptr(block_ids), faiss.swig_ptr(block))
        ivf.ntotal = E
        self._index = faiss.IndexIVFPQFastScan(ivf)  # packs the lists into fast-scan blocks
        self._index.implem = _IMPLEM
        self._nprobe = -1  # last nprobe set: a faiss attribute write costs ~5 us through its wrappers
        del ivf

    def search(self, q: np.ndarray, gid: np.ndarray, coarse: np.ndarray, R: int, threads: int = 1) -> np.ndarray:
        """``(Qn, R)`` int64 entries with the best approximate scores, best first (``-1`` padding).

        Args:
            q: ``(Qn, D)`` float32 query vectors.
            gid: ``(Qn, w)`` int64 columns to scan per query (``-1`` skips a slot).
            coarse: ``(Qn, w)`` float32 ``q . centroid`` of those columns.
        """
        import faiss

        Qn, w = gid.shape
        if Qn == 0 or w == 0:
            return np.full((Qn, R), -1, np.int64)
        if w != self._nprobe:
            self._index.nprobe = self._nprobe = w
        faiss.omp_set_num_threads(max(1, int(threads)))
        # the C entry point of faiss's search_preassigned wrapper, without its per-call checks (it reads
        # nprobe through SWIG again); the arrays are named so they outlive the call (swig_ptr holds none)
        x = np.ascontiguousarray(q, dtype=np.float32)
        keys = np.ascontiguousarray(gid, dtype=np.int64)
        bias = np.ascontiguousarray(coarse, dtype=np.float32)
        if x.shape != (Qn, self.D) or bias.shape != keys.shape:
            raise ValueError(f"fast-scan search: q {x.shape}, gid {keys.shape}, coarse {bias.shape} disagree")
        dist = np.empty((Qn, R), np.float32)
        ids = np.empty((Qn, R), np.int64)
        self._index.search_preassigned_c(Qn, faiss.swig_ptr(x), R, faiss.swig_ptr(keys), faiss.swig_ptr(bias),
                                         faiss.swig_ptr(dist), faiss.swig_ptr(ids), False)
        return ids

    def nbytes(self) -> int:
        """Bytes of codes, entry ids and centroids."""
        return int(self.E * (self.n_sub // 2 + 8) + self.C * self.D * 4)


@nb.njit(nogil=True, cache=True)
def pq4_codes(emb: np.ndarray, entry_rows: np.ndarray, offsets: np.ndarray, centroids: np.ndarray,
              pq: np.ndarray) -> np.ndarray:
    """4-bit product-quantiser codes of every entry's residual to its column's centroid.

    Args:
        emb: ``(N, D)`` float32 item vectors; entry_rows ``(E,)`` and offsets ``(C + 1,)`` as
            :class:`FastScanLists`; centroids ``(C, D)`` float32.
        pq: ``(M, 16, D // M)`` float32 sub-quantiser centroids.

    Returns:
        ``(E, ceil(M / 2))`` uint8, faiss's layout for 4-bit codes: sub-quantiser ``m`` in bits
        ``4 m .. 4 m + 3`` (low nibble first), each the nearest centroid (ties: the lower index).
    """
    C = offsets.size - 1
    M, K, ds = pq.shape
    # sub-quantisers side by side: the loops over m are contiguous and branch-free, so LLVM runs them
    # 8 wide (2.2 s instead of 7.7 s one sub-quantiser's 16 distances after another at 1M; same codes)
    pqT = np.empty((K, ds, M), np.float32)  # codeword k's coordinate j of every sub-quantiser
    for m in range(M):
        for k in range(K):
            for j in range(ds):
                pqT[k, j, m] = pq[m, k, j]
    out = np.zeros((entry_rows.size, (M + 1) // 2), np.uint8)
    resT = np.empty((ds, M), np.float32)
    dist = np.empty(M, np.float32)
    best_d = np.empty(M, np.float32)
    best = np.empty(M, np.uint8)
    for c in range(C):
        for e in range(offsets[c], offsets[c + 1]):
            r = entry_rows[e]
            for m in range(M):
                for j in range(ds):
                    resT[j, m] = emb[r, m * ds + j] - centroids[c, m * ds + j]
            for m in range(M):
                best_d[m] = np.inf
                best[m] = 0
            for k in range(K):
                for m in range(M):
                    dist[m] = np.float32(0.0)
                for j in range(ds):  # summed in j order, as faiss's encoder
                    for m in range(M):
                        x = resT[j, m] - pqT[k, j, m]
                        dist[m] += x * x
                for m in range(M):
                    better = dist[m] < best_d[m]  # strict: ties keep the lower index
                    best_d[m] = dist[m] if better else best_d[m]
                    best[m] = np.uint8(k) if better else best[m]
            for m in range(0, M - 1, 2):
                out[e, m >> 1] = best[m] | (best[m + 1] << 4)
            if M & 1:
                out[e, M >> 1] = best[M - 1]
    return out


@nb.njit(nogil=True, cache=True, parallel=True)
def anisotropic_codes(emb: np.ndarray, entry_rows: np.ndarray, offsets: np.ndarray, centroids: np.ndarray,
                      pq: np.ndarray, codes: np.ndarray, eta: float, passes: int = 2) -> int:
    """Re-choose every entry's 4-bit codes for the score-aware loss of ScaNN (Guo et al., 2020), in place.

    The pre-ranker only needs ``q . e`` right for the items that score high, and for those ``q`` points
    along ``e``: an error parallel to ``e`` moves their scores, an orthogonal one mostly does not. So
    each entry's codes minimise ``|err|^2 + (eta - 1) (err . e / |e|)^2`` (``err`` = its residual minus the
    reconstruction) instead of ``|err|^2``, by coordinate descent from the nearest-centroid codes
    (``pq4_codes``): ``passes`` sweeps over the sub-quantisers, each keeping a sub-code only if it lowers
    the loss (ties keep the current one; :class:`FastScanLists` skips the pass when ``eta = 1``).

    Args:
        emb, entry_rows, offsets, centroids, pq: as :func:`pq4_codes`.
        codes: ``(E, ceil(M / 2))`` uint8, the codes :func:`pq4_codes` returned; rewritten.
        eta: weight of the squared error along the item's direction, relative to the rest (>= 1).

    Returns:
        The number of sub-codes changed.
    """
    C = offsets.size - 1
    M, K, ds = pq.shape
    D = M * ds
    pqT = np.empty((M, ds, K), np.float32)  # codeword k contiguous: the loops over k run 8 wide
    for m in range(M):
        for k in range(K):
            for j in range(ds):
                pqT[m, j, k] = pq[m, k, j]
    w = np.float32(eta - 1.0)
    changed = np.zeros(C, np.int64)
    for c in nb.prange(C):  # entries are independent: the same codes for any thread count
        res = np.empty(D, np.float32)
        xh = np.empty(D, np.float32)
        b = np.empty(M, np.int64)
        # per entry, every sub-code's squared error and error along the item's direction: they do not
        # change between sweeps, only the rest of the projection does
        nn = np.empty((M, K), np.float32)
        pp = np.empty((M, K), np.float32)
        loss = np.empty(K, np.float32)
        for e in range(offsets[c], offsets[c + 1]):
            r = entry_rows[e]
            norm = 0.0
            for j in range(D):
                res[j] = emb[r, j] - centroids[c, j]
                norm += np.float64(emb[r, j]) * emb[r, j]
            norm = np.sqrt(norm)
            if norm == 0.0:
                continue  # no direction to favour: the nearest-centroid codes stand
            for j in range(D):
                xh[j] = np.float32(emb[r, j] / norm)
            for m in range(M):
                for k in range(K):
                    nn[m, k] = 0.0
                    pp[m, k] = 0.0
                for j in range(ds):
                    rj = res[m * ds + j]
                    xj = xh[m * ds + j]
                    for k in range(K):
                        x = rj - pqT[m, j, k]
                        nn[m, k] += x * x
                        pp[m, k] += x * xj
            s = 0.0  # err . xh of the current codes
            for m in range(M):
                byte = codes[e, m >> 1]
                b[m] = (byte & 15) if (m & 1) == 0 else (byte >> 4)
                s += pp[m, b[m]]
            for _ in range(passes):
                moved = 0
                for m in range(M):
                    rest = np.float32(s - pp[m, b[m]])
                    low = np.float32(np.inf)
                    for k in range(K):  # branch-free, so it runs 8 wide
                        t = rest + pp[m, k]
                        loss[k] = nn[m, k] + w * t * t
                        low = min(low, loss[k])
                    best_k = b[m]
                    if low < loss[best_k]:  # strict: ties keep the current code
                        best_k = 0
                        while loss[best_k] != low:
                            best_k += 1
                    if best_k != b[m]:
                        b[m] = best_k
                        moved += 1
                        s = rest + pp[m, best_k]
                changed[c] += moved
                if moved == 0:
                    break
            for m in range(0, M - 1, 2):
                codes[e, m >> 1] = np.uint8(b[m] | (b[m + 1] << 4))
            if M & 1:
                codes[e, M >> 1] = np.uint8(b[M - 1])
    return changed.sum()
