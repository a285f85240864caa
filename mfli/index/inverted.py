"""Multifaceted inverted index (REFERENCE.md 1.3): per facet, cluster id -> items as CSR arrays.

An item sits in F clusters (one per facet; ``m`` per facet when top-m paths are kept). The index keeps

- ``item_ids (N,)`` int64 and ``embeddings (N, F, d)`` float32 (for re-ranking inside a cluster),
- ``assignments (N, F, m)`` int64: the cluster of each item per facet and path slot,
- per facet a :class:`FacetCSR`: sorted cluster ids ``(C_f,)``, ``offsets (C_f + 1,)`` and item rows
  sorted by cluster and, inside a cluster, by a static score (descending), so "the top-N items of a
  cluster" is the slice ``rows[offsets[i]:offsets[i] + N]``,
- per facet a :class:`~mfli.index.rebalance_map.RebalanceMap`: how an original code path reaches its
  cluster(s). A fresh build has the identity map (cluster id = packed path id); after
  :func:`~mfli.index.split_merge.rebalance` cluster ids are dense ``0..C_f-1``.

Saved as one ``index.npz`` (plain arrays, loaded with ``allow_pickle=False``) beside an
``index.json`` manifest holding the sha256 of the npz; loading checks it.

Example::

    codes = encode_paths(emb, codebooks)                     # (N, F, 1, L)
    index = MultiFacetIndex.build(item_ids, emb, codes, codebooks, static_score=popularity)
    index.save("out/index"); index = MultiFacetIndex.load("out/index")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mfli.checksums import sha256_file as _sha256
from mfli.index.lookup import lookup_sorted
from mfli.index.rebalance_map import RebalanceMap

__all__ = ["FacetCSR", "IndexIntegrityError", "MultiFacetIndex", "encode_paths", "lookup_sorted", "pack_paths"]

#: Format marker written to the manifest; bump when the npz layout changes.
INDEX_FORMAT = "mfli-index/1"
NPZ_NAME = "index.npz"
MANIFEST_NAME = "index.json"


class IndexIntegrityError(ValueError):
    """An index file is missing, corrupted (sha256 mismatch) or inconsistent with its manifest."""


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def encode_paths(embeddings, codebooks, m: int = 1, chunk: int = 65536) -> np.ndarray:
    """Code paths of items: greedy residual quantisation (m = 1) or the m best paths (m > 1).

    With ``m == 1`` this is exactly :func:`mfli.model.quantizer.rq_encode`. With ``m > 1`` a beam of
    width ``m`` over the layers keeps the m prefixes with the smallest residual norm and returns the
    m final paths sorted by reconstruction error (slot 0 is the best path found; it can differ from the
    greedy one because a beam may find a closer path).

    Args:
        embeddings: ``(N, F, d)`` float.
        codebooks: ``(L, F, M, d)``.
        m: paths per item and facet.
        chunk: rows encoded at a time (bounds the ``(chunk, F, M)`` distance buffer).

    Returns:
        codes ``(N, F, m, L)`` int64.
    """
    import torch

    from mfli.model.quantizer import rq_encode

    emb = _as_numpy(embeddings).astype(np.float32, copy=False)
    cb = _as_numpy(codebooks).astype(np.float32, copy=False)
    if emb.ndim != 3 or cb.ndim != 4 or emb.shape[1] != cb.shape[1] or emb.shape[2] != cb.shape[3]:
        raise ValueError(f"embeddings (N, F, d) {emb.shape} do not match codebooks (L, F, M, d) {cb.shape}")
    N, F, _ = emb.shape
    L, _, M, _ = cb.shape
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    out = np.empty((N, F, m, L), dtype=np.int64)
    if m == 1:
        cbt = torch.from_numpy(cb)
        for s in range(0, N, chunk):
            codes, _ = rq_encode(torch.from_numpy(emb[s : s + chunk]), cbt)
            out[s : s + chunk, :, 0, :] = codes.numpy()
        return out
    if m > M**L:
        raise ValueError(f"m={m} exceeds the number of code paths M**L={M**L}")
    c2 = (cb * cb).sum(-1)  # (L, F, M)
    step = max(256, chunk // (2 * m))  # the distance buffer is (step, F, m, M)
    f_idx = np.arange(F)[None, :, None]
    for s in range(0, N, step):
        x = emb[s : s + step]  # (n, F, d)
        n = x.shape[0]
        res = x[:, :, None, :].copy()  # (n, F, w, d), w = current beam width
        codes = np.zeros((n, F, 1, 0), dtype=np.int64)
        for layer in range(L):
            w = res.shape[2]
            # ||r - c||^2 for every prefix x code: (n, F, w, M)
            d2 = (
                (res * res).sum(-1)[..., None]
                - 2 * np.einsum("nfwd,fmd->nfwm", res, cb[layer])
                + c2[layer][None, :, None, :]
            )
            flat = d2.reshape(n, F, w * M)
            keep = min(m, w * M)
            if keep < w * M:
                top = np.argpartition(flat, keep - 1, axis=-1)[..., :keep]
            else:
                top = np.broadcast_to(np.arange(w * M), flat.shape).copy()
            order = np.argsort(np.take_along_axis(flat, top, -1), axis=-1, kind="stable")
            top = np.take_along_axis(top, order, -1)  # best (smallest error) first
            parent, code = top // M, top % M
            codes = np.concatenate([np.take_along_axis(codes, parent[..., None], 2), code[..., None]], axis=-1)
            res = np.take_along_axis(res, parent[..., None], 2) - cb[layer][f_idx, code]
        out[s : s + n] = codes[:, :, :m, :]
    return out


def pack_paths(codes: np.ndarray, M: int) -> np.ndarray:
    """Codes ``(..., L)`` -> packed path ids ``(...)``: ``sum_l k_l * M**(L-1-l)`` (as ``pack_codes``)."""
    codes = np.asarray(codes, dtype=np.int64)
    L = codes.shape[-1]
    weights = np.array([M ** (L - 1 - i) for i in range(L)], dtype=np.int64)
    return (codes * weights).sum(-1)


@dataclass
class FacetCSR:
    """Cluster -> items for one facet.

    Attributes:
        cluster_ids: ``(C,)`` int64, sorted ascending.
        offsets: ``(C + 1,)`` int64; cluster ``cluster_ids[i]`` owns ``rows[offsets[i]:offsets[i+1]]``.
        rows: ``(nnz,)`` int64 item rows, by cluster then by static score (descending), then row.
    """

    cluster_ids: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_ids.size)

    def sizes(self) -> np.ndarray:
        """``(C,)`` items per cluster."""
        return np.diff(self.offsets)

    def positions(self, clusters: np.ndarray) -> np.ndarray:
        """Cluster ids ``(...)`` -> positions in ``cluster_ids`` (``-1`` for unknown ids)."""
        return lookup_sorted(self.cluster_ids, np.arange(self.n_clusters, dtype=np.int64), clusters)

    @staticmethod
    def from_assignments(
        assign: np.ndarray, static_score: np.ndarray, cluster_ids: np.ndarray | None = None
    ) -> FacetCSR:
        """Build from ``assign (N, m)`` cluster ids and ``static_score (N,)``.

        ``cluster_ids`` fixes the cluster list (clusters may then be empty); default: those present.
        """
        N, m = assign.shape
        flat = assign.reshape(-1)
        rows = np.repeat(np.arange(N, dtype=np.int64), m)
        order = np.lexsort((rows, -np.repeat(static_score.astype(np.float64), m), flat))
        flat_sorted = flat[order]
        if cluster_ids is None:
            cluster_ids = np.unique(flat_sorted)
        cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        if flat.size and (lookup_sorted(cluster_ids, cluster_ids, flat) < 0).any():
            bad = flat[lookup_sorted(cluster_ids, cluster_ids, flat) < 0][0]
            raise ValueError(f"cluster id {bad} is not in the facet's cluster list")
        offsets = np.searchsorted(flat_sorted, np.append(cluster_ids, np.iinfo(np.int64).max)).astype(np.int64)
        offsets[-1] = flat.size
        return FacetCSR(cluster_ids, offsets, rows[order])


class MultiFacetIndex:
    """Multifaceted inverted index (see the module docstring for the layout).

    Args:
        item_ids: ``(N,)`` int64, unique.
        embeddings: ``(N, F, d)`` float32 facet embeddings.
        assignments: ``(N, F, m)`` int64 cluster ids.
        static_score: ``(N,)`` float32, orders items inside a cluster (higher first).
        facets: one :class:`FacetCSR` per facet, consistent with ``assignments``.
        maps: one :class:`~mfli.index.rebalance_map.RebalanceMap` per facet.
        facet_names: ``F`` names.
        M, L: codebook size and depth the paths were packed with.
        rebalanced: whether split-and-merge has run (cluster ids are then dense, not path ids).
        meta: free-form JSON-able provenance (snapshot id, config ...).
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        assignments: np.ndarray,
        static_score: np.ndarray,
        facets: list[FacetCSR],
        maps: list[RebalanceMap],
        facet_names: Sequence[str],
        M: int,
        L: int,
        rebalanced: bool = False,
        meta: dict | None = None,
    ) -> None:
        self.item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.assignments = np.ascontiguousarray(assignments, dtype=np.int64)
        self.static_score = np.ascontiguousarray(static_score, dtype=np.float32)
        self.facets = facets
        self.maps = maps
        self.facet_names = list(facet_names)
        self.M = int(M)
        self.L = int(L)
        self.rebalanced = bool(rebalanced)
        self.meta = dict(meta or {})
        N = self.item_ids.shape[0]
        if self.embeddings.ndim != 3 or self.embeddings.shape[0] != N:
            raise ValueError(f"embeddings must be (N={N}, F, d), got {self.embeddings.shape}")
        F = self.embeddings.shape[1]
        if self.assignments.ndim != 3 or self.assignments.shape[:2] != (N, F):
            raise ValueError(f"assignments must be (N={N}, F={F}, m), got {self.assignments.shape}")
        if self.static_score.shape != (N,):
            raise ValueError(f"static_score must be (N={N},), got {self.static_score.shape}")
        if len(self.facets) != F or len(self.maps) != F or len(self.facet_names) != F:
            raise ValueError(f"need F={F} facet CSRs, maps and names; got {len(self.facets)}, "
                             f"{len(self.maps)}, {len(self.facet_names)}")
        order = np.argsort(self.item_ids, kind="stable")
        sorted_ids = self.item_ids[order]
        if N > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
            dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0]
            raise ValueError(f"item id {dup} appears more than once")
        self._sorted_ids = sorted_ids
        self._sorted_rows = order.astype(np.int64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        item_ids,
        embeddings,
        codes,
        codebooks,
        static_score=None,
        facet_names: Sequence[str] | None = None,
        meta: dict | None = None,
    ) -> MultiFacetIndex:
        """Full build from code paths (no rebalancing: cluster id = packed path id).

        Args:
            item_ids: ``(N,)`` int64.
            embeddings: ``(N, F, d)`` float32.
            codes: ``(N, F, L)`` (one path per facet) or ``(N, F, m, L)`` (top-m paths, best first),
                e.g. from :func:`encode_paths` or ``rq_encode``.
            codebooks: ``(L, F, M, d)`` (only its shape is used: M and L for packing).
            static_score: ``(N,)`` in-cluster order (e.g. popularity); default zeros (keeps row order).
            facet_names: default ``facet0, facet1, ...``.
        """
        item_ids = _as_numpy(item_ids).astype(np.int64)
        emb = _as_numpy(embeddings).astype(np.float32)
        codes = _as_numpy(codes).astype(np.int64)
        cb_shape = tuple(np.shape(codebooks)) if not hasattr(codebooks, "shape") else tuple(codebooks.shape)
        L, Fc, M, dc = cb_shape
        if codes.ndim == 3:
            codes = codes[:, :, None, :]
        N, F, m, Lc = codes.shape
        if Lc != L or F != Fc or emb.shape != (N, F, dc):
            raise ValueError(f"shapes disagree: codes {codes.shape}, embeddings {emb.shape}, codebooks {cb_shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= M):
            raise ValueError(f"codes must lie in [0, {M}), got [{codes.min()}, {codes.max()}]")
        score = np.zeros(N, np.float32) if static_score is None else _as_numpy(static_score).astype(np.float32)
        names = list(facet_names) if facet_names is not None else [f"facet{f}" for f in range(F)]
        paths = pack_paths(codes, M)  # (N, F, m)
        facets, maps = [], []
        for f in range(F):
            csr = FacetCSR.from_assignments(paths[:, f, :], score)
            maps.append(RebalanceMap.identity(csr.cluster_ids, csr.offsets, csr.rows, emb[:, f, :], M, L, m))
            facets.append(csr)
        return cls(item_ids, emb, paths, score, facets, maps, names, M, L, rebalanced=False, meta=meta)

    @classmethod
    def from_assignments(
        cls,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        assignments: np.ndarray,
        static_score: np.ndarray,
        maps: list[RebalanceMap],
        facet_names: Sequence[str],
        M: int,
        L: int,
        rebalanced: bool,
        meta: dict | None = None,
    ) -> MultiFacetIndex:
        """Index from explicit cluster assignments ``(N, F, m)``; the CSR cluster lists come from ``maps``."""
        facets = [
            FacetCSR.from_assignments(assignments[:, f, :], static_score, maps[f].cluster_ids)
            for f in range(assignments.shape[1])
        ]
        return cls(item_ids, embeddings, assignments, static_score, facets, maps, facet_names, M, L,
                   rebalanced, meta)

    # ------------------------------------------------------------------ access
    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def n_facets(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    @property
    def paths_per_item(self) -> int:
        return int(self.assignments.shape[2])

    @property
    def clusters(self) -> np.ndarray:
        """``(N, F)`` cluster of each item's best path per facet."""
        return self.assignments[:, :, 0]

    def rows_of(self, item_ids) -> np.ndarray:
        """Item ids ``(...)`` -> rows ``(...)`` (``-1`` for ids not in the index). O(log N)."""
        return lookup_sorted(self._sorted_ids, self._sorted_rows, np.asarray(item_ids, dtype=np.int64))

    def row_positions(self) -> np.ndarray:
        """``(N, F, m)`` int64 cluster position of every row's paths, per facet (computed once, then cached:
        serving reads it on every request and deltas share it)."""
        cached = getattr(self, "_row_pos", None)
        if cached is None:
            cached = np.stack([csr.positions(self.assignments[:, f, :]) for f, csr in enumerate(self.facets)], axis=1)
            self._row_pos = cached
        return cached

    def cluster_rows(self, facet: int, cluster: int, top: int | None = None) -> np.ndarray:
        """Rows of one cluster, best static score first (``top`` of them if given)."""
        csr = self.facets[facet]
        pos = int(csr.positions(np.array([cluster]))[0])
        if pos < 0:
            raise KeyError(f"facet {self.facet_names[facet]!r} has no cluster {cluster}")
        start, end = int(csr.offsets[pos]), int(csr.offsets[pos + 1])
        if top is not None:
            end = min(end, start + top)
        return csr.rows[start:end]

    def cluster_items(self, facet: int, cluster: int, top: int | None = None) -> np.ndarray:
        """Item ids of one cluster, best static score first."""
        return self.item_ids[self.cluster_rows(facet, cluster, top)]

    def cluster_sizes(self, facet: int) -> tuple[np.ndarray, np.ndarray]:
        """``(cluster_ids (C,), sizes (C,))`` of one facet."""
        return self.facets[facet].cluster_ids, self.facets[facet].sizes()

    def nbytes(self) -> int:
        """Memory held by the index arrays (embeddings included)."""
        total = self.item_ids.nbytes + self.embeddings.nbytes + self.assignments.nbytes + self.static_score.nbytes
        for csr, mp in zip(self.facets, self.maps):
            total += csr.cluster_ids.nbytes + csr.offsets.nbytes + csr.rows.nbytes
            total += sum(a.nbytes for a in mp.to_arrays("").values())
        return int(total)

    # ------------------------------------------------------------------ persistence
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "item_ids": self.item_ids,
            "embeddings": self.embeddings,
            "assignments": self.assignments,
            "static_score": self.static_score,
        }
        for f, (csr, mp) in enumerate(zip(self.facets, self.maps)):
            arrays[f"csr{f}.cluster_ids"] = csr.cluster_ids
            arrays[f"csr{f}.offsets"] = csr.offsets
            arrays[f"csr{f}.rows"] = csr.rows
            arrays.update(mp.to_arrays(f"map{f}."))
        return arrays

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/index.npz`` and ``<directory>/index.json`` (manifest with sha256).

        Returns the manifest path.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        npz = directory / NPZ_NAME
        # write under a temporary name first so a crash never leaves a half file behind the manifest
        tmp = directory / (NPZ_NAME + ".tmp.npz")
        np.savez(tmp, **self._arrays())
        tmp.replace(npz)
        manifest = {
            "format": INDEX_FORMAT,
            "file": NPZ_NAME,
            "sha256": _sha256(npz),
            "bytes": npz.stat().st_size,
            "n_items": self.n_items,
            "n_facets": self.n_facets,
            "dim": self.dim,
            "M": self.M,
            "L": self.L,
            "paths_per_item": self.paths_per_item,
            "facet_names": self.facet_names,
            "rebalanced": self.rebalanced,
            "clusters_per_facet": [csr.n_clusters for csr in self.facets],
            "meta": self.meta,
        }
        path = directory / MANIFEST_NAME
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> MultiFacetIndex:
        """Load an index written by :meth:`save`, verifying the sha256 recorded in the manifest.

        Raises:
            IndexIntegrityError: missing files, checksum mismatch, or arrays disagreeing with the manifest.
        """
        directory = Path(directory)
        mpath = directory / MANIFEST_NAME
        if not mpath.exists():
            raise IndexIntegrityError(f"{mpath}: index manifest not found")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise IndexIntegrityError(f"{mpath}: manifest is not valid JSON ({exc})") from exc
        if manifest.get("format") != INDEX_FORMAT:
            raise IndexIntegrityError(f"{mpath}: format {manifest.get('format')!r}, expected {INDEX_FORMAT!r}")
        npz = directory / manifest["file"]
        if not npz.exists():
            raise IndexIntegrityError(f"{npz}: index data file not found (named by {mpath})")
        digest = _sha256(npz)
        if digest != manifest["sha256"]:
            raise IndexIntegrityError(
                f"{npz}: sha256 mismatch (manifest {manifest['sha256'][:16]}..., file {digest[:16]}...); "
                "the file is corrupted or does not belong to this manifest"
            )
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        F, M, L, m = manifest["n_facets"], manifest["M"], manifest["L"], manifest["paths_per_item"]
        try:
            facets = [
                FacetCSR(arrays[f"csr{f}.cluster_ids"], arrays[f"csr{f}.offsets"], arrays[f"csr{f}.rows"])
                for f in range(F)
            ]
            maps = [RebalanceMap.from_arrays(arrays, f"map{f}.", M, L, m) for f in range(F)]
            index = cls(arrays["item_ids"], arrays["embeddings"], arrays["assignments"], arrays["static_score"],
                        facets, maps, manifest["facet_names"], M, L, manifest["rebalanced"], manifest.get("meta"))
        except (KeyError, ValueError) as exc:
            raise IndexIntegrityError(f"{npz}: inconsistent index arrays ({exc})") from exc
        if index.n_items != manifest["n_items"] or index.dim != manifest["dim"]:
            raise IndexIntegrityError(f"{npz}: arrays hold {index.n_items} items of dim {index.dim}, "
                                      f"manifest says {manifest['n_items']} of dim {manifest['dim']}")
        return index

