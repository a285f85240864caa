"""User mode's routing: beam search over the codebook layers, then the rebalance map to clusters.

A prefix is scored by the inner product of the query with its reconstruction,
``score(k_1..k_l) = q . sum_j C[j, f, k_j]`` (``beam_score="ip"``), or by ``-||q - recon||^2``
(``"l2"``). Layer 1 scores all M codewords; each later layer expands the beam's prefixes by their
children and keeps the best ``beam``. The final paths reach their post-rebalance cluster(s) through
the facet's :class:`~mfli.index.rebalance_map.RebalanceMap` (a split path reaches all its parts, a
merged path its target). Cost per layer: one ``(B, d) x (d, M)`` matmul, a ``(B, beam, M)`` sum and a
top-k, whatever the catalogue size.
"""

from __future__ import annotations

import numpy as np

from mfli.index.inverted import MultiFacetIndex, _as_numpy
from mfli.index.lookup import lookup_sorted
from mfli.serve.scoring import expand, topk

_DENSE_LIMIT = 1 << 25  # key spaces up to this size get dense lookup tables (<= 128 MiB of int32)


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



class BeamRouter:
    """Beam search over one snapshot's codebooks and routing of paths to clusters (user mode).

    Args:
        base: the snapshot's :class:`MultiFacetIndex` (its rebalance maps and path occupancy).
        codebooks: ``(L, F, M, d)`` the index was built with.
        beam_score: "ip" (``q . reconstruction``) or "l2" (``-||q - reconstruction||^2``).
        skip_empty: never keep a prefix that holds no item.
        expand: children proposed per prefix and layer; None: all M.
    """

    def __init__(self, base: MultiFacetIndex, codebooks, beam_score: str = "ip", skip_empty: bool = True,
                 expand: int | None = None) -> None:
        self.base = base
        self.beam_score, self.skip_empty, self.expand = beam_score, skip_empty, expand
        F, M, L = base.n_facets, base.M, base.L
        cb = _as_numpy(codebooks).astype(np.float32)
        if cb.ndim != 4 or cb.shape[1] != F or cb.shape[3] != base.dim or cb.shape[2] != M or cb.shape[0] != L:
            raise ValueError(f"codebooks {cb.shape} do not match the index (L={L}, F={F}, M={M}, d={base.dim})")
        self.codebooks = np.ascontiguousarray(cb)
        self._c2 = (cb * cb).sum(-1)  # (L, F, M)
        # (d, M) per facet and layer, contiguous: a strided slice would miss the BLAS fast path
        self._cbT = [[np.ascontiguousarray(cb[layer, f].T) for layer in range(L)] for f in range(F)]
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
        cb, c2 = self.codebooks[:, f], self._c2[:, f]
        L, M = cb.shape[0], cb.shape[1]
        ip = self.beam_score == "ip"
        skip = self.skip_empty
        T = min(M, self.expand if self.expand is not None else M)
        q = np.ascontiguousarray(q, dtype=np.float32)
        B = q.shape[0]
        cbT = self._cbT[f]
        s = q @ cbT[0]  # (B, M)
        if not ip:
            s = 2 * s - c2[0][None, :] - (q * q).sum(1, keepdims=True)
        if skip:
            s = np.where(self._occupied(f, 0, np.zeros((1, 1), np.int64), np.arange(M)[None, :]), s, -np.inf)
        prefix, score = topk(s, beam)
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
                top, score = topk(cand.reshape(B, w * M), beam)
                parent, code = top // M, top % M
            else:
                if ip:
                    codes, cs = topk(q @ cbT[layer], T)  # (B, T): the best children of every prefix
                    cand = score[:, :, None] + cs[:, None, :]
                    codes3 = codes[:, None, :]
                else:
                    res = q[:, None, :] - recon
                    full = -((res * res).sum(-1)[:, :, None] - 2 * (res @ cbT[layer]) + c2[layer][None, None, :])
                    codes3, cand = topk(full.reshape(B * w, M), T)
                    codes3, cand = codes3.reshape(B, w, -1), cand.reshape(B, w, -1)
                    cand[~np.isfinite(score)] = -np.inf
                if skip:
                    np.putmask(cand, ~self._occupied(f, layer, prefix[:, :, None], codes3), -np.inf)
                top, score = topk(cand.reshape(B, w * T), beam)
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
        return occ(parent * self.base.M + code) > 0

    def clusters(self, q: np.ndarray, f: int, beam: int, clusters_per_query: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clusters to read for facet f: ``(request, cluster position, best path rank)``, sorted by request.

        The beam's final paths are routed through the facet's rebalance map to their cluster(s); with
        ``clusters_per_query`` only the best of them by the beam score against the cluster centroid."""
        paths, _ = self.beam_search(q, f, beam)
        slot = self._path_slot[f](paths)  # (B, w) index into map.path_ids, -1 unseen/invalid
        off, reach = self._reach[f]
        s0 = np.maximum(slot, 0)
        lens = np.where(slot >= 0, off[s0 + 1] - off[s0], 0)
        idx, owner = expand(off[s0].reshape(-1), lens.reshape(-1))
        w = paths.shape[1]
        req, rank, pos = owner // w, owner % w, reach[idx]
        # one entry per (request, cluster), keeping the best path rank
        C = self.base.facets[f].n_clusters
        o = np.lexsort((rank, req * C + pos))
        req, rank, pos = req[o], rank[o], pos[o]
        first = np.ones(req.size, bool)
        first[1:] = (req[1:] != req[:-1]) | (pos[1:] != pos[:-1])
        req, rank, pos = req[first], rank[first], pos[first]
        if clusters_per_query is not None and req.size:
            cent = self._centroids[f][pos]
            cs = np.einsum("nd,nd->n", cent, q[req])
            if self.beam_score == "l2":
                cs = 2 * cs - (cent * cent).sum(1)
            o = np.lexsort((rank, -cs, req))
            req, rank, pos = req[o], rank[o], pos[o]
            keep = np.arange(req.size) - np.searchsorted(req, req) < clusters_per_query
            req, rank, pos = req[keep], rank[keep], pos[keep]
        return req, pos, rank
