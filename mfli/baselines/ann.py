"""Two-tower + ANN baselines: exact inner-product search, FAISS HNSW and FAISS IVF behind one interface.

Multi-facet embeddings are searched as one vector: items ``(N, F, d)`` and queries ``(B, F, d)`` are
flattened to ``(N, F*d)`` / ``(B, F*d)`` (:func:`concat_facets`) so that the inner product is the sum
over facets of q_f . e_f.

Usage::

    index = AnnIndex(AnnConfig(kind="hnsw", ef_search=128)).build(concat_facets(item_emb), item_ids)
    ids, scores = index.search(concat_facets(user_emb), k=100, exclude=[set(h) for h in histories])
    index.add(new_vectors, new_ids)        # "incremental": visible now; "rebuild_at_snapshot": after rebuild()
    index.rebuild()
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from mfli.checksums import sha256_file as _sha256
from mfli.data.errors import DataError

KINDS = ("exact", "hnsw", "ivf")
MODES = ("incremental", "rebuild_at_snapshot")
FORMAT = "mfli-ann-index"
VERSION = 1


@dataclass
class AnnConfig:
    """Which index, how new items reach it, and its search settings."""

    kind: str = "hnsw"  # "exact" (IndexFlatIP), "hnsw" (IndexHNSWFlat) or "ivf" (IndexIVFFlat), all inner product
    mode: str = "incremental"  # "incremental": add() is searchable at once; "rebuild_at_snapshot": after rebuild()
    hnsw_m: int = 32  # HNSW links per node (the usual production value)
    ef_construction: int = 40  # HNSW build-time beam (faiss default)
    ef_search: int = 64  # HNSW search-time beam; sweep it for recall vs speed
    nlist: int | None = None  # IVF lists; None = round(4 * sqrt(N)), capped at N / 39 so k-means has data
    nprobe: int = 16  # IVF lists visited per query; sweep it
    overfetch: int = 0  # candidates fetched beyond k + the largest exclusion set
    num_threads: int = 1  # faiss.omp_set_num_threads (the machine is shared; raise for benchmarks)


def concat_facets(x: np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """``(N, F, d)`` -> ``(N, F*d)`` float32 C-contiguous.

    ``weights (F,)`` scale each facet; pass them on the query side only, so that the inner product is
    sum_f w_f q_f . e_f.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected (N, F, d) facet embeddings, got shape {x.shape}")
    if weights is not None:
        x = x * np.asarray(weights, dtype=np.float32)[None, :, None]
    return np.ascontiguousarray(x.reshape(len(x), -1))


def ivf_nlist(n: int) -> int:
    """The IVF list count for n vectors: round(4 sqrt(n)) capped at n // 39 (faiss wants 39 points per list)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))



class AnnIndex:
    """Inner-product search over item vectors with seen-item exclusion and two new-item modes.

    Attributes:
        cfg: the :class:`AnnConfig`.
        ids: ``(n,)`` int64 ids of the searchable items, in faiss label order.
        pending_ids: ids added in ``rebuild_at_snapshot`` mode and not yet searchable.
    """

    def __init__(self, cfg: AnnConfig | None = None) -> None:
        self.cfg = cfg or AnnConfig()
        if self.cfg.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.cfg.kind!r}")
        if self.cfg.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.cfg.mode!r}")
        faiss.omp_set_num_threads(self.cfg.num_threads)
        self._index: faiss.Index | None = None
        self.ids = np.zeros(0, dtype=np.int64)
        self.dim = 0
        self.nlist = 0
        self._pending_vecs: list[np.ndarray] = []
        self._pending_ids: list[np.ndarray] = []

    # ------------------------------------------------------------------ building
    @staticmethod
    def _check(vectors: np.ndarray, ids: Sequence[int] | np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        i = np.asarray(ids, dtype=np.int64)
        if v.ndim != 2:
            raise ValueError(f"vectors must be (N, D), got shape {v.shape}")
        if len(i) != len(v):
            raise ValueError(f"{len(v)} vectors but {len(i)} ids")
        if dim is not None and v.shape[1] != dim:
            raise ValueError(f"vectors have dimension {v.shape[1]}, the index has {dim}")
        if not np.isfinite(v).all():
            raise ValueError(f"vectors contain NaN/inf at row {int(np.flatnonzero(~np.isfinite(v).all(1))[0])}")
        if len(np.unique(i)) != len(i):
            raise ValueError("duplicate ids")
        return v, i

    def _new_index(self, v: np.ndarray) -> faiss.Index:
        cfg, D = self.cfg, v.shape[1]
        if cfg.kind == "exact":
            return faiss.IndexFlatIP(D)
        if cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(D, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            index.hnsw.efSearch = cfg.ef_search
            return index
        self.nlist = cfg.nlist or ivf_nlist(len(v))
        quantizer = faiss.IndexFlatIP(D)
        index = faiss.IndexIVFFlat(quantizer, D, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.train(v)
        index.nprobe = cfg.nprobe
        # keep the quantizer alive as long as the index (faiss does not own it from Python)
        self._quantizer = quantizer
        return index

    def build(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray) -> AnnIndex:
        """(Re)build from scratch over ``vectors (N, D)`` float32 with catalogue ``ids (N,)``."""
        faiss.omp_set_num_threads(self.cfg.num_threads)
        v, i = self._check(vectors, ids, None)
        if len(v) == 0:
            raise ValueError("cannot build an index over zero vectors")
        self.dim = v.shape[1]
        self._index = self._new_index(v)
        self._index.add(v)
        self.ids = i.copy()
        self._pending_vecs, self._pending_ids = [], []
        return self

    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray) -> None:
        """New items: searchable now (``incremental``) or after :meth:`rebuild` (``rebuild_at_snapshot``).

        Incremental IVF adds go to the existing lists without retraining the centroids; HNSW links the
        new nodes into the graph. Ids already present are rejected (faiss has no cheap delete in HNSW).
        """
        if self._index is None:
            raise RuntimeError("build the index first")
        v, i = self._check(vectors, ids, self.dim)
        known = np.concatenate([self.ids, *self._pending_ids])
        dup = np.isin(i, known)
        if dup.any():
            raise ValueError(f"id {int(i[dup][0])} is already in the index")
        if self.cfg.mode == "incremental":
            faiss.omp_set_num_threads(self.cfg.num_threads)
            self._index.add(v)
            self.ids = np.concatenate([self.ids, i])
        else:
            self._pending_vecs.append(v)
            self._pending_ids.append(i)

    def _all_vectors(self) -> np.ndarray:
        if self.cfg.kind == "ivf":
            self._index.make_direct_map(True)
        return self._index.reconstruct_n(0, self._index.ntotal)

    def rebuild(self) -> AnnIndex:
        """The snapshot rebuild: a fresh index over every item, pending ones included (IVF retrains)."""
        if self._index is None:
            raise RuntimeError("build the index first")
        v = np.concatenate([self._all_vectors(), *self._pending_vecs])
        i = np.concatenate([self.ids, *self._pending_ids])
        return self.build(v, i)

    @property
    def pending_ids(self) -> np.ndarray:
        return np.concatenate([np.zeros(0, dtype=np.int64), *self._pending_ids])

    @property
    def ntotal(self) -> int:
        """Searchable items."""
        return len(self.ids)

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change HNSW efSearch / IVF nprobe for a sweep (ignored by index kinds without them)."""
        if ef_search is not None:
            self.cfg.ef_search = ef_search
            if self.cfg.kind == "hnsw" and self._index is not None:
                self._index.hnsw.efSearch = ef_search
        if nprobe is not None:
            self.cfg.nprobe = nprobe
            if self.cfg.kind == "ivf" and self._index is not None:
                self._index.nprobe = nprobe

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Iterable[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product.

        Args:
            queries: ``(B, D)`` float32.
            k: results per query.
            exclude: None or B iterables of catalogue ids to drop (seen items); the index is asked
                for k + the largest exclusion set (+ ``overfetch``) and the excluded ids filtered out.

        Returns:
            ids ``(B, k)`` int64 and scores ``(B, k)`` float32, best first; -1 / -inf padding where
            fewer than k items are found (tiny index, or HNSW/IVF returning fewer hits).
        """
        if self._index is None:
            raise RuntimeError("build the index first")
        q, _ = self._check(queries, np.arange(len(np.atleast_2d(queries))), self.dim)
        Bq = len(q)
        ex_sets = None
        extra = 0
        if exclude is not None:
            if len(exclude) != Bq:
                raise ValueError(f"exclude has {len(exclude)} entries for {Bq} queries")
            ex_sets = [np.fromiter(set(e), dtype=np.int64) for e in exclude]
            extra = max((len(e) for e in ex_sets), default=0)
        kk = min(k + extra + self.cfg.overfetch, self.ntotal)
        faiss.omp_set_num_threads(self.cfg.num_threads)
        if self.cfg.kind == "hnsw":
            # HNSW returns at most efSearch hits, so the over-fetched k needs a beam at least as wide
            self._index.hnsw.efSearch = max(self.cfg.ef_search, kk)
        scores, pos = self._index.search(q, kk)
        found = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)
        scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
        out_ids = np.full((Bq, k), -1, dtype=np.int64)
        out_sc = np.full((Bq, k), -np.inf, dtype=np.float32)
        if ex_sets is None and kk >= k:
            return found[:, :k].copy(), scores[:, :k].copy()
        for r in range(Bq):
            keep = found[r] >= 0
            if ex_sets is not None and len(ex_sets[r]):
                keep &= ~np.isin(found[r], ex_sets[r])
            got = found[r][keep][:k]
            out_ids[r, : len(got)] = got
            out_sc[r, : len(got)] = scores[r][keep][:k]
        return out_ids, out_sc

    # ------------------------------------------------------------------ accounting
    def memory_bytes(self) -> int:
        """Bytes held by the searchable index (vectors, graph links or lists, centroids, id map)."""
        if self._index is None:
            return 0
        n, D = self._index.ntotal, self.dim
        total = self.ids.nbytes
        if self.cfg.kind == "exact":
            return total + n * D * 4
        if self.cfg.kind == "hnsw":
            h = self._index.hnsw
            return total + n * D * 4 + h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8
        # IVF: vectors + a 64-bit id per entry in the inverted lists, plus the centroids
        return total + n * (self._index.code_size + 8) + self.nlist * D * 4

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> Path:
        """Write ``index.faiss`` (faiss's own binary format), ``ids.npz`` and ``ann_index.json``."""
        if self._index is None:
            raise RuntimeError("nothing to save: build the index first")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(out / "index.faiss"))
        pend_v = np.concatenate(self._pending_vecs) if self._pending_vecs else np.zeros((0, self.dim), np.float32)
        np.savez(out / "ids.npz", ids=self.ids, pending_ids=self.pending_ids, pending_vectors=pend_v)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "config": asdict(self.cfg),
            "dim": self.dim,
            "nlist": self.nlist,
            "sha256": {f: _sha256(out / f) for f in ("index.faiss", "ids.npz")},
        }
        (out / "ann_index.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> AnnIndex:
        """Read a directory written by :meth:`save`, checking format, version and sha256 sums."""
        d = Path(in_dir)
        meta_path = d / "ann_index.json"
        if not meta_path.exists():
            raise DataError(meta_path, "missing: not an ANN index directory")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(meta_path, f"unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
        for f, digest in meta["sha256"].items():
            if _sha256(d / f) != digest:
                raise DataError(d / f, "sha256 mismatch: the file is corrupt or was changed")
        self = cls(AnnConfig(**meta["config"]))
        self._index = faiss.read_index(str(d / "index.faiss"))
        self.dim, self.nlist = int(meta["dim"]), int(meta["nlist"])
        with np.load(d / "ids.npz", allow_pickle=False) as z:
            self.ids = z["ids"].astype(np.int64)
            if len(z["pending_ids"]):
                self._pending_ids = [z["pending_ids"].astype(np.int64)]
                self._pending_vecs = [z["pending_vectors"].astype(np.float32)]
        self.set_search_params(self.cfg.ef_search, self.cfg.nprobe)
        return self
