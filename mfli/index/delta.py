"""Delta assignment and delta snapshots (REFERENCE.md 1.6): new items join an index without a rebuild.

- :func:`assign` encodes new items with the codebooks (``rq_encode``; top-m paths when the index keeps
  m > 1), packs their paths and routes each path through the facet's
  :class:`~mfli.index.rebalance_map.RebalanceMap`: a kept path -> its cluster, a merged path -> its
  target, a split path -> the nearest child centroid (recursively), and a path the full build never
  saw -> first to the *occupied path whose reconstruction has the largest inner product with the
  item* (the path a user-mode beam search for a query equal to the item would reach first), then
  through the map like any known path (``unseen="path"``, the default); ``unseen="centroid"`` keeps
  the older rule, the cluster with the nearest centroid (where the build's merge step would have put
  a one-item cluster).

  Why not the nearest centroid: user-mode beam search only ever proposes occupied paths, ranked by
  ``q . reconstruction``, and a path the build never saw is not among them. A new item sent to the
  cluster with the nearest (squared-L2) member-mean centroid lands wherever member means are short
  (diffuse clusters), often under a path that no query close to the item reaches, so exact search
  over the same embeddings finds new items that beam search misses. Choosing the occupied path by the
  beam's own score puts the item where a query that scores it highly looks.

  *Equality with a rebuild*, precisely: for every item x on a path the build saw, ``assign(x)``
  equals the cluster that the full build + rebalance with the same codebooks and the same map gives
  an item with x's embedding.
  In particular an item already in the index is re-assigned to its own cluster(s); this holds because
  the build assigns members with the same row-wise nearest-centroid rule the map replays.

- :func:`apply_delta` returns a :class:`DeltaIndex`: the full snapshot untouched plus a small side CSR
  (cluster -> new items, keyed by the full snapshot's cluster positions) merged at query time, and a
  tombstone mask. Nothing of the full index is re-sorted or copied except the id lookup.
- :func:`delta_rows_table` / :func:`delta_from_table`: the delta as an arrow table of
  ``(item_id, facet, slot, cluster, embedding)`` rows, the immutable file a delta snapshot publishes.

Example::

    clusters = assign_paths(new_emb, codebooks, index.maps)          # (n, F, m)
    view = apply_delta(index, new_ids, new_emb, clusters, tombstones=expired_ids)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from mfli.index.inverted import MultiFacetIndex, _as_numpy, encode_paths, pack_paths
from mfli.index.lookup import lookup_sorted
from mfli.index.rebalance_map import RebalanceMap


def nearest_occupied_paths(emb: np.ndarray, codebook: np.ndarray, path_ids: np.ndarray,
                           block: int = 4096) -> np.ndarray:
    """For each row, the occupied path whose reconstruction has the largest inner product with it.

    Args:
        emb: ``(n, d)`` one facet's embeddings.
        codebook: ``(L, M, d)`` that facet's codebooks.
        path_ids: ``(P,)`` packed occupied paths (``RebalanceMap.path_ids``), P >= 1.

    Returns:
        ``(n,)`` packed path ids (ties: the lower path id).
    """
    L, M, _ = codebook.shape
    codes = (path_ids[:, None] // (M ** np.arange(L - 1, -1, -1))[None, :]) % M  # (P, L)
    recon = codebook[np.arange(L)[None, :], codes].sum(1).astype(np.float32)  # (P, d)
    out = np.empty(emb.shape[0], np.int64)
    for s in range(0, emb.shape[0], block):
        out[s:s + block] = path_ids[np.argmax(emb[s:s + block] @ recon.T, axis=1)]
    return out


def assign_paths(embeddings, codebooks, maps: Sequence[RebalanceMap], unseen: str = "path") -> np.ndarray:
    """Clusters of new items in every facet and path slot.

    Args:
        embeddings: ``(n, F, d)`` float32 facet embeddings (from content features for cold items).
        codebooks: ``(L, F, M, d)``, the ones the full build used.
        maps: the index's per-facet :class:`RebalanceMap` (``index.maps``).
        unseen: where a path the build never saw goes: ``"path"`` (default) the occupied path with
            the best ``item . reconstruction``, then routed like a known path; ``"centroid"`` the
            cluster with the nearest centroid (see the module docstring).

    Returns:
        ``(n, F, m)`` int64 cluster ids, ``m`` = the index's paths per item.
    """
    if unseen not in ("path", "centroid"):
        raise ValueError(f"unseen must be 'path' or 'centroid', got {unseen!r}")
    emb = _as_numpy(embeddings).astype(np.float32)
    if emb.ndim != 3 or emb.shape[1] != len(maps):
        raise ValueError(f"embeddings must be (n, F={len(maps)}, d), got {emb.shape}")
    m = maps[0].paths_per_item
    M = maps[0].M
    cb = _as_numpy(codebooks).astype(np.float32)
    codes = encode_paths(emb, cb, m=m)  # (n, F, m, L)
    paths = pack_paths(codes, M)  # (n, F, m)
    n, F = emb.shape[:2]
    out = np.empty((n, F, m), dtype=np.int64)
    for f, mp in enumerate(maps):
        rows = np.repeat(np.arange(n), m)
        p = paths[:, f, :].reshape(-1)
        if unseen == "path" and mp.path_ids.size:
            new = np.flatnonzero(~np.isin(p, mp.path_ids))
            if new.size:
                p = p.copy()
                p[new] = nearest_occupied_paths(emb[rows[new], f, :], cb[:, f], mp.path_ids)
        out[:, f, :] = mp.route(p, emb[rows, f, :]).reshape(n, m)
    return out


def assign(embeddings, codebooks, maps: Sequence[RebalanceMap]) -> np.ndarray:
    """``(n, F)`` cluster of each new item's best path per facet (slot 0 of :func:`assign_paths`)."""
    return assign_paths(embeddings, codebooks, maps)[:, :, 0]


class DeltaIndex:
    """A full snapshot plus a delta of new items and tombstones, merged at query time.

    Rows ``0..N-1`` are the full snapshot's rows, rows ``N..N+n-1`` the delta items.

    Attributes:
        base: the full :class:`MultiFacetIndex` (not modified).
        item_ids: ``(n,)`` delta item ids; embeddings ``(n, F, d)``; assignments ``(n, F, m)``;
            static_score ``(n,)``.
        delta_offsets: per facet ``(C_f + 1,)`` over the base's cluster positions.
        delta_rows: per facet ``(n * m,)`` combined rows (``N + j``), by cluster then static score.
        removed: ``(N,)`` bool, base rows tombstoned (or replaced by a newer version in the delta).
    """

    def __init__(
        self,
        base: MultiFacetIndex,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        assignments: np.ndarray,
        static_score: np.ndarray,
        removed: np.ndarray,
    ) -> None:
        self.base = base
        self.item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, base.n_facets, base.dim)
        self.assignments = np.ascontiguousarray(assignments, dtype=np.int64).reshape(
            -1, base.n_facets, base.paths_per_item)
        self.static_score = np.ascontiguousarray(static_score, dtype=np.float32)
        self.removed = np.ascontiguousarray(removed, dtype=bool)
        n, N, m = self.item_ids.size, base.n_items, base.paths_per_item
        if self.embeddings.shape[0] != n or self.assignments.shape[0] != n or self.static_score.shape != (n,):
            raise ValueError("delta item_ids, embeddings, assignments and static_score disagree in length")
        if self.removed.shape != (N,):
            raise ValueError(f"removed must be (N={N},), got {self.removed.shape}")
        self.delta_offsets: list[np.ndarray] = []
        self.delta_rows: list[np.ndarray] = []
        self._positions = np.empty((n, base.n_facets, m), dtype=np.int64)
        for f, csr in enumerate(base.facets):
            pos = csr.positions(self.assignments[:, f, :])  # (n, m)
            if (pos < 0).any():
                j = int(np.argwhere(pos < 0)[0][0])
                raise ValueError(f"delta item {self.item_ids[j]}: cluster {self.assignments[j, f].tolist()} "
                                 f"does not exist in facet {base.facet_names[f]!r} of the full snapshot")
            self._positions[:, f, :] = pos
            flat = pos.reshape(-1)
            rows = N + np.repeat(np.arange(n, dtype=np.int64), m)
            order = np.lexsort((rows, -np.repeat(self.static_score.astype(np.float64), m), flat))
            self.delta_rows.append(rows[order])
            self.delta_offsets.append(
                np.searchsorted(flat[order], np.arange(csr.n_clusters + 1)).astype(np.int64))
        self._removed_mask = (np.concatenate([self.removed, np.zeros(n + 1, bool)]) if self.removed.any()
                              else None)
        order = np.argsort(self.item_ids, kind="stable")
        self._sorted_ids = self.item_ids[order]
        self._sorted_rows = order.astype(np.int64) + N
        if n > 1 and (self._sorted_ids[1:] == self._sorted_ids[:-1]).any():
            raise ValueError("delta item ids must be unique")

    @classmethod
    def over(cls, base: MultiFacetIndex) -> DeltaIndex:
        """An empty delta over ``base``: the snapshot's own row space (rows ``0..N-1``), nothing removed."""
        F, d, m = base.n_facets, base.dim, base.paths_per_item
        return cls(base, np.zeros(0, np.int64), np.zeros((0, F, d), np.float32), np.zeros((0, F, m), np.int64),
                   np.zeros(0, np.float32), np.zeros(base.n_items, bool))

    # -- the combined row space: rows 0..N-1 are the base's, N..N+n-1 the delta's -------------------------
    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Item ids of combined rows ``(...)`` (all valid)."""
        N = self.base.n_items
        rows = np.asarray(rows, np.int64)
        if not self.item_ids.size:
            return self.base.item_ids[rows]
        out = np.empty(rows.shape, np.int64)
        old = rows < N
        out[old] = self.base.item_ids[rows[old]]
        out[~old] = self.item_ids[rows[~old] - N]
        return out

    def embeddings_of(self, rows: np.ndarray, facet: int) -> np.ndarray:
        """Facet embeddings ``(n, d)`` of combined rows ``(n,)``."""
        N = self.base.n_items
        if not self.item_ids.size:
            return self.base.embeddings[rows, facet, :]
        out = np.empty((rows.size, self.base.dim), np.float32)
        old = rows < N
        out[old] = self.base.embeddings[rows[old], facet, :]
        out[~old] = self.embeddings[rows[~old] - N, facet, :]
        return out

    def positions_of(self, rows: np.ndarray, facet: int) -> np.ndarray:
        """Cluster positions ``(n, m)`` of combined rows ``(n,)`` in a facet (the base's cluster positions)."""
        base_pos = self.base.row_positions()
        N = self.base.n_items
        if not self.item_ids.size:
            return base_pos[rows, facet, :]
        out = np.empty((rows.size, self.base.paths_per_item), np.int64)
        old = rows < N
        out[old] = base_pos[rows[old], facet, :]
        out[~old] = self._positions[rows[~old] - N, facet, :]
        return out

    def removed_mask(self) -> np.ndarray | None:
        """``(n_rows + 1,)`` bool: rows never to return (tombstoned or replaced base rows); the last slot
        stays False so padding (row -1) can index it. None when nothing is removed."""
        return self._removed_mask

    def delta_slices(self, facet: int, pos: np.ndarray, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(start, length)`` of the delta items of clusters ``pos`` in ``delta_rows[facet]`` (best static
        score first, at most ``top`` each)."""
        off = self.delta_offsets[facet]
        start = off[pos]
        lens = off[pos + 1] - start
        return start, (lens if top is None else np.minimum(lens, top))

    @property
    def n_rows(self) -> int:
        """Rows in the combined row space (full + delta, tombstoned included)."""
        return self.base.n_items + self.item_ids.size

    @property
    def n_items(self) -> int:
        """Live items (full minus tombstoned, plus delta)."""
        return int(self.base.n_items - self.removed.sum() + self.item_ids.size)

    def all_item_ids(self) -> np.ndarray:
        """``(n_rows,)`` item id of every combined row."""
        return np.concatenate([self.base.item_ids, self.item_ids])

    def rows_of(self, item_ids) -> np.ndarray:
        """Item ids -> combined rows; the delta version wins over the base row; ``-1`` when absent.

        Tombstoned base items still resolve (their embeddings remain usable as triggers); they are
        never returned as results.
        """
        q = np.asarray(item_ids, dtype=np.int64)
        rows = lookup_sorted(self._sorted_ids, self._sorted_rows, q)
        miss = rows < 0
        if miss.any():
            rows[miss] = self.base.rows_of(q[miss])
        return rows

    def delta_cluster_rows(self, facet: int, cluster: int) -> np.ndarray:
        """Combined rows of delta items in one cluster of a facet."""
        pos = int(self.base.facets[facet].positions(np.array([cluster]))[0])
        if pos < 0:
            raise KeyError(f"facet {self.base.facet_names[facet]!r} has no cluster {cluster}")
        off = self.delta_offsets[facet]
        return self.delta_rows[facet][off[pos]:off[pos + 1]]

    def compact(self) -> MultiFacetIndex:
        """Fold the delta into a new full index (drops tombstones; no re-encoding, no rebalancing)."""
        keep = ~self.removed
        b = self.base
        return MultiFacetIndex.from_assignments(
            np.concatenate([b.item_ids[keep], self.item_ids]),
            np.concatenate([b.embeddings[keep], self.embeddings]),
            np.concatenate([b.assignments[keep], self.assignments]),
            np.concatenate([b.static_score[keep], self.static_score]),
            b.maps, b.facet_names, b.M, b.L, b.rebalanced, b.meta,
        )


def apply_delta(
    index: MultiFacetIndex | DeltaIndex,
    new_item_ids,
    new_embeddings,
    clusters,
    tombstones=None,
    static_score=None,
) -> DeltaIndex:
    """Append new items to their clusters and remove tombstoned items, without a rebuild.

    Args:
        index: a full index, or a :class:`DeltaIndex` to extend (its delta is kept and extended).
        new_item_ids: ``(n,)`` int64. An id already present replaces the old version.
        new_embeddings: ``(n, F, d)`` float32.
        clusters: ``(n, F)`` or ``(n, F, m)`` from :func:`assign` / :func:`assign_paths`.
        tombstones: item ids to remove (full or delta items); unknown ids are ignored.
        static_score: ``(n,)`` in-cluster order of the new items (default 0).

    Returns:
        a :class:`DeltaIndex` view; the inputs are not modified.
    """
    base = index.base if isinstance(index, DeltaIndex) else index
    N, F, m = base.n_items, base.n_facets, base.paths_per_item
    ids = _as_numpy(new_item_ids).astype(np.int64).reshape(-1)
    emb = _as_numpy(new_embeddings).astype(np.float32)
    cl = _as_numpy(clusters).astype(np.int64)
    if cl.ndim == 2:
        cl = cl[:, :, None]
    n = ids.size
    if emb.shape != (n, F, base.dim):
        raise ValueError(f"new_embeddings must be (n={n}, F={F}, d={base.dim}), got {emb.shape}")
    if cl.shape != (n, F, m):
        raise ValueError(f"clusters must be (n={n}, F={F}) or (n, F, m={m}), got {cl.shape}")
    if n > 1 and np.unique(ids).size != n:
        raise ValueError("new_item_ids contains duplicates")
    score = np.zeros(n, np.float32) if static_score is None else _as_numpy(static_score).astype(np.float32)
    tomb = np.zeros(0, np.int64) if tombstones is None else np.asarray(tombstones, dtype=np.int64).reshape(-1)

    if isinstance(index, DeltaIndex):
        removed = index.removed.copy()
        old_keep = ~np.isin(index.item_ids, np.concatenate([ids, tomb]))
        prev = (index.item_ids[old_keep], index.embeddings[old_keep], index.assignments[old_keep],
                index.static_score[old_keep])
    else:
        removed = np.zeros(N, dtype=bool)
        prev = (np.zeros(0, np.int64), np.zeros((0, F, base.dim), np.float32), np.zeros((0, F, m), np.int64),
                np.zeros(0, np.float32))
    # replaced or tombstoned base items
    base_rows = base.rows_of(np.concatenate([ids, tomb]))
    removed[base_rows[base_rows >= 0]] = True
    # an id that is both added and tombstoned in the same delta is removed
    add = ~np.isin(ids, tomb)
    return DeltaIndex(
        base,
        np.concatenate([prev[0], ids[add]]),
        np.concatenate([prev[1], emb[add]]),
        np.concatenate([prev[2], cl[add]]),
        np.concatenate([prev[3], score[add]]),
        removed,
    )


DELTA_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("facet", pa.string(), nullable=False),
        pa.field("slot", pa.int32(), nullable=False),
        pa.field("cluster", pa.int64(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


def delta_rows_table(item_ids, embeddings, clusters, facet_names: Sequence[str]) -> pa.Table:
    """Delta rows for publishing: one row per (item, facet, path slot).

    Args:
        item_ids: ``(n,)``; embeddings: ``(n, F, d)``; clusters: ``(n, F)`` or ``(n, F, m)``.

    Returns:
        arrow table with :data:`DELTA_SCHEMA` (``embedding`` is the item's facet embedding).
    """
    ids = np.asarray(item_ids, dtype=np.int64)
    emb = _as_numpy(embeddings).astype(np.float32)
    cl = np.asarray(clusters, dtype=np.int64)
    if cl.ndim == 2:
        cl = cl[:, :, None]
    n, F, m = cl.shape
    d = emb.shape[2]
    if emb.shape[:2] != (n, F) or ids.shape != (n,) or len(facet_names) != F:
        raise ValueError(f"item_ids {ids.shape}, embeddings {emb.shape}, clusters {cl.shape} and "
                         f"{len(facet_names)} facet names disagree")
    i_idx, f_idx, s_idx = np.meshgrid(np.arange(n), np.arange(F), np.arange(m), indexing="ij")
    i_idx, f_idx, s_idx = i_idx.reshape(-1), f_idx.reshape(-1), s_idx.reshape(-1)
    vals = emb[i_idx, f_idx].reshape(-1)
    emb_col = pa.ListArray.from_arrays(pa.array(np.arange(0, vals.size + 1, d, dtype=np.int32)),
                                       pa.array(vals, pa.float32()))
    return pa.Table.from_arrays(
        [pa.array(ids[i_idx]), pa.array(np.asarray(facet_names, dtype=object)[f_idx], pa.string()),
         pa.array(s_idx.astype(np.int32)), pa.array(cl[i_idx, f_idx, s_idx]), emb_col],
        schema=DELTA_SCHEMA,
    )


def delta_from_table(table: pa.Table, facet_names: Sequence[str], source: str = "<delta>"):
    """Inverse of :func:`delta_rows_table`.

    Returns:
        ``item_ids (n,)``, ``embeddings (n, F, d)``, ``clusters (n, F, m)`` (items in first-seen order).

    Raises:
        mfli.data.errors.DataError: missing columns, unknown facets, or an incomplete (item, facet, slot) grid.
    """
    from mfli.data.errors import DataError

    missing = [c for c in DELTA_SCHEMA.names if c not in table.column_names]
    if missing:
        raise DataError(source, f"delta table lacks column(s) {missing}", column=missing[0])
    ids = table.column("item_id").to_numpy()
    facet = np.asarray(table.column("facet").to_pylist(), dtype=object)
    slot = table.column("slot").to_numpy().astype(np.int64)
    cl = table.column("cluster").to_numpy().astype(np.int64)
    emb_list = table.column("embedding").combine_chunks()
    fidx = {name: i for i, name in enumerate(facet_names)}
    unknown = [i for i, f in enumerate(facet) if f not in fidx]
    if unknown:
        raise DataError(source, f"unknown facet {facet[unknown[0]]!r}", line=unknown[0], column="facet")
    f_of = np.array([fidx[f] for f in facet], dtype=np.int64)
    uniq, first = np.unique(ids, return_index=True)
    item_order = uniq[np.argsort(first)]
    by_id = np.argsort(item_order)  # item_order[by_id] is sorted
    item_pos = lookup_sorted(item_order[by_id], by_id.astype(np.int64), ids)
    n, F, m = item_order.size, len(facet_names), int(slot.max()) + 1 if slot.size else 1
    lens = np.diff(emb_list.offsets.to_numpy())
    if lens.size and (lens != lens[0]).any():
        bad = int(np.flatnonzero(lens != lens[0])[0])
        raise DataError(source, "embeddings have different lengths", line=bad, column="embedding")
    d = int(lens[0]) if lens.size else 0
    vals = emb_list.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)
    embeddings = np.zeros((n, F, d), np.float32)
    clusters = np.full((n, F, m), -1, np.int64)
    seen = np.zeros((n, F, m), bool)
    seen[item_pos, f_of, slot] = True
    if not seen.all():
        i, f, s = np.argwhere(~seen)[0]
        raise DataError(source, f"item {item_order[i]} has no row for facet {facet_names[f]!r} slot {s}",
                        column="facet")
    embeddings[item_pos, f_of] = vals
    clusters[item_pos, f_of, slot] = cl
    return item_order, embeddings, clusters
