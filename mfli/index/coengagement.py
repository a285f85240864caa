"""Co-engagement lists: each item's strongest item-item neighbours learned from the training events.

The towers score a user against items through one inner product; what they compress away is the
sparse, item-specific "people who engaged with i engaged with j" signal a closed-form item-item
model keeps (EASE is the strongest simple baseline on MovieLens). This table keeps that signal for
the serving path: EASE's full ``(N, N)`` weights when they take at most ``keep_dense_gb`` (negative
weights matter: cutting rows to their top 2,000 cost 5% of EASE's recall on ml-latest-small,
``bench/coengagement_rows.py``), stored as float16 (half the bytes; on the shared data its lists kept
recall@100 within 0.0002 of float32's, top-100 overlap >= 0.998: docs/benchmarks.md), else each item's ``neighbours`` largest weights as CSR rows, from EASE
when its dense solve fits ``max_dense_gb`` and from item-kNN cosine similarity (sparse, any size)
beyond. Both come from :mod:`mfli.baselines`, their hyper-parameter chosen on a validation split when
one is given. A history scores item j by ``sum over history items i of W[i, j]``; items without
training events have no row and never appear (the blend credits them from the other lists,
:mod:`mfli.serve.blend`). A batch of dense look-ups is one compiled call (:func:`_dense_top`: float16 rows
widened exactly by bit moves and summed in float32, the top k by a partial sort, ties by lower row).
Usage::

    co = build_coengagement(train_events, valid=validation_set(train_events))
    ids, scores = co.retrieve(histories, k=200)          # (B, k) ids, -1 padding; history excluded
    co.trending                                          # the latest events' most engaged items
    co.save("coengagement.npz"); CoEngagement.load("coengagement.npz")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np
import pandas as pd

from mfli.index.lookup import positions_in_sorted
from mfli.index.topk import top_unique

NPZ_KEYS = ("item_ids", "indptr", "cols", "weights")


@dataclass
class CoEngagementConfig:
    """How the co-engagement table is learned."""

    neighbours: int = 200  # kept per item when sparse: 8 bytes x neighbours per item with events
    method: str = "auto"  # "auto": EASE when its dense solve fits max_dense_gb, else "itemknn"
    max_dense_gb: float = 4.0  # EASE's dense Gram, inverse and weights must fit this
    # EASE's full (N, N) matrix is kept (float16), negative weights included, when it takes at most this
    # much (0.5 GB: about 16,000 items); cut rows lose recall (bench/coengagement_rows.py)
    keep_dense_gb: float = 0.5
    num_threads: int = 0  # torch threads for the EASE solve (0: process default)


@dataclass
class CoEngagement:
    """Per-item top-``neighbours`` item-item weights over the items with training events.

    Attributes:
        item_ids: ``(N,)`` sorted int64 ids of the items with training events (the rows).
        indptr: ``(N + 1,)`` int64 CSR row offsets.
        cols: ``(nnz,)`` int32 neighbour positions into ``item_ids``.
        weights: ``(nnz,)`` float32 weights (> 0), each row sorted best first.
        method: "ease" or "itemknn"; param: its chosen lambda or neighbourhood.
        dense: ``(N, N)`` float16 full weights divided by ``dense_scale`` (small EASE catalogues) or
            None; when set, the CSR arrays are empty and every weight, negative ones included, scores.
        dense_scale: what ``dense`` is multiplied by to give the weights (it brings the largest weight
            near float16's top, so small weights stay out of its subnormal range).
        trending: ``(n,)`` int64 ids of the items most engaged with in the latest training events, best
            first (:mod:`mfli.index.trending`; blend mode's fourth list), or None (tables saved before it).
    """

    item_ids: np.ndarray
    indptr: np.ndarray
    cols: np.ndarray
    weights: np.ndarray
    method: str = ""
    param: float = 0.0
    dense: np.ndarray | None = None
    dense_scale: float = 1.0
    trending: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.item_ids, self.indptr, self.cols, self.weights, self.dense, self.trending)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, history: Iterable[int]) -> np.ndarray:
        """Positions of the history's items that have a row (unknown ids dropped)."""
        h = np.unique(np.asarray(list(history) if not isinstance(history, np.ndarray) else history, np.int64))
        pos, ok = positions_in_sorted(self.item_ids, h)
        return pos[ok]

    def retrieve(self, histories: Sequence[Iterable[int]], k: int,
                 exclude: str | Sequence[Iterable[int]] | None = "history") -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per history by summed neighbour weight.

        Returns:
            ids ``(B, k)`` int64 and scores ``(B, k)`` float32; -1 / -inf padding where fewer items are
            scored (sparse rows: the neighbours of the history; dense: every item, negative scores
            included) and for histories with no known item.
        """
        B = len(histories)
        excl = histories if exclude == "history" else exclude
        if self.dense is not None:  # one compiled call for the batch
            h_rows, h_ptr = self._ragged_rows(histories)
            x_rows, x_ptr = self._ragged_rows(excl) if excl is not None else (np.zeros(0, np.int64),
                                                                             np.zeros(B + 1, np.int64))
            half = self.dense.dtype == np.float16
            dense = self.dense.view(np.uint16) if half else np.asarray(self.dense, np.float32)
            top, sc = _dense_top(dense, half, h_rows, h_ptr, x_rows, x_ptr, k, np.float32(self.dense_scale))
            return np.where(top >= 0, self.item_ids[np.maximum(top, 0)], -1), sc
        ids = np.full((B, k), -1, np.int64)
        sc = np.full((B, k), -np.inf, np.float32)
        for b, hist in enumerate(histories):
            r = self.rows(hist)
            if not len(r):
                continue
            at = np.concatenate([np.arange(self.indptr[i], self.indptr[i + 1]) for i in r])
            cols, inv = np.unique(self.cols[at], return_inverse=True)
            score = np.bincount(inv, weights=self.weights[at]).astype(np.float32)
            if excl is not None:
                score[np.isin(cols, self.rows(excl[b]))] = -np.inf
            n = min(k, int(np.isfinite(score).sum()))
            top = np.argpartition(-score, n - 1)[:n] if 0 < n < len(score) else np.arange(n)
            top = top[np.argsort(-score[top], kind="stable")]
            ids[b, :n] = self.item_ids[cols[top]]
            sc[b, :n] = score[top]
        return ids, sc

    def _ragged_rows(self, lists: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
        """B id lists -> ``(rows, ptr (B + 1,))``: list b's rows are ``rows[ptr[b]:ptr[b + 1]]`` (unknown ids
        dropped; repeats are kept, the kernel skips them)."""
        arrs = [np.asarray(list(x) if not isinstance(x, np.ndarray) else x, np.int64).reshape(-1) for x in lists]
        lens = np.fromiter((a.size for a in arrs), np.int64, count=len(arrs))
        ptr = np.zeros(len(arrs) + 1, np.int64)
        if not lens.sum():
            return np.zeros(0, np.int64), ptr
        pos, ok = positions_in_sorted(self.item_ids, np.concatenate(arrs))
        np.cumsum(np.bincount(np.repeat(np.arange(len(arrs)), lens)[ok], minlength=len(arrs)), out=ptr[1:])
        return pos[ok], ptr

    def save(self, path: str | Path) -> Path:
        """Write the table as an npz (no pickles); returns the path."""
        path = Path(path)
        extra = {} if self.dense is None else {"dense": self.dense}
        if self.trending is not None:
            extra["trending"] = np.asarray(self.trending, np.int64)
        np.savez(path, item_ids=self.item_ids, indptr=self.indptr, cols=self.cols, weights=self.weights,
                 meta=np.array([self.method, repr(float(self.param)), repr(float(self.dense_scale))]), **extra)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CoEngagement:
        with np.load(Path(path), allow_pickle=False) as z:
            missing = [key for key in (*NPZ_KEYS, "meta") if key not in z.files]
            if missing:
                raise ValueError(f"{path}: not a co-engagement table (missing arrays {missing})")
            meta = [str(x) for x in z["meta"]]
            method, param = meta[:2]
            scale = float(meta[2]) if len(meta) > 2 else 1.0  # tables saved before float16: float32, unscaled
            dense = z["dense"] if "dense" in z.files else None
            trending = z["trending"] if "trending" in z.files else None  # tables saved before it: none
            return cls(z["item_ids"], z["indptr"], z["cols"], z["weights"], method, float(param), dense, scale,
                       trending)


@nb.njit(nogil=True, cache=True)
def _add_row(dense: np.ndarray, half: bool, r: int, acc: np.ndarray, buf: np.ndarray) -> None:
    """``acc += dense[r]`` in float32; a uint16 table holds float16 bits, widened exactly by bit moves
    (numba has no float16): the magnitude shifted into float32's exponent and mantissa fields, times
    2 ** 112 to rebase the exponent (exact, and right for float16's subnormals too), the sign kept."""
    N = acc.size
    if not half:
        for j in range(N):
            acc[j] += dense[r, j]
        return
    for j in range(N):
        h = np.uint32(dense[r, j])
        buf[j] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
    f = buf.view(np.float32)
    for j in range(N):
        acc[j] += f[j] * np.float32(2.0**112)


@nb.njit(nogil=True, cache=True)
def _dense_top(dense: np.ndarray, half: bool, h_rows: np.ndarray, h_ptr: np.ndarray, x_rows: np.ndarray, x_ptr: np.ndarray,
               k: int, scale: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Per request: ``sum_i W[i]`` over its distinct history rows (times ``scale``), excluded rows dropped,
    the ``k`` best (ties: lower row). ``dense (N, N)``: float16 bits as uint16 (``half``), or float32.

    Returns ``(B, k)`` int64 rows (-1 padding: fewer finite scores, or no known history) and float32 scores.
    """
    B = h_ptr.size - 1
    N = dense.shape[1]
    top = np.full((B, k), -1, np.int64)
    out = np.full((B, k), -np.inf, np.float32)
    acc = np.empty(N, np.float32)
    buf = np.empty(N, np.uint32)
    seen = np.zeros(N, np.uint8)
    cols = np.arange(N)
    for b in range(B):
        if h_ptr[b + 1] == h_ptr[b]:
            continue
        acc[:] = 0
        for j in range(h_ptr[b], h_ptr[b + 1]):
            r = h_rows[j]
            if not seen[r]:
                seen[r] = 1
                _add_row(dense, half, r, acc, buf)
        for j in range(h_ptr[b], h_ptr[b + 1]):
            seen[h_rows[j]] = 0
        if scale != np.float32(1.0):
            for j in range(N):
                acc[j] *= scale
        for j in range(x_ptr[b], x_ptr[b + 1]):
            acc[x_rows[j]] = -np.inf
        sel = top_unique(acc, cols, N, k)
        n = 0
        for j in range(sel.size):
            if acc[sel[j]] > -np.inf:
                top[b, n] = sel[j]
                out[b, n] = acc[sel[j]]
                n += 1
    return top, out


def to_half(W: np.ndarray) -> tuple[np.ndarray, float]:
    """``(W / scale)`` as float16 and ``scale``: the largest ``|W|`` maps to 32,768 (float16's top is 65,504),
    so weights down to ~1e-9 of it stay normal numbers (EASE's weights span many orders of magnitude)."""
    top = float(np.abs(W).max()) if W.size else 0.0
    scale = top / 32768.0 if top > 0 else 1.0
    out = np.empty(W.shape, np.float16)
    for a in range(0, W.shape[0], 1024):  # blocks: no second float32 copy of a matrix of up to keep_dense_gb
        np.divide(W[a:a + 1024], scale, out=out[a:a + 1024], casting="unsafe")
    return out, scale


def _top_rows(W, neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, cols, weights) of each row's ``neighbours`` largest positive entries, best first.

    ``W`` is a dense ``(N, N)`` array or a scipy sparse matrix.
    """
    import scipy.sparse as sp

    N = W.shape[0]
    indptr, cols, vals = [0], [], []
    Wr = W.tocsr() if sp.issparse(W) else None
    for a in range(0, N, 1024):
        block = Wr[a:a + 1024].toarray() if Wr is not None else np.asarray(W[a:a + 1024])
        kk = min(neighbours, N)
        part = np.argpartition(-block, kk - 1, axis=1)[:, :kk] if kk < N else np.tile(np.arange(N), (len(block), 1))
        v = np.take_along_axis(block, part, 1)
        order = np.argsort(-v, axis=1, kind="stable")
        part, v = np.take_along_axis(part, order, 1), np.take_along_axis(v, order, 1)
        for r in range(len(block)):
            keep = v[r] > 0
            cols.append(part[r][keep].astype(np.int32))
            vals.append(v[r][keep].astype(np.float32))
            indptr.append(indptr[-1] + int(keep.sum()))
    return (np.asarray(indptr, np.int64), np.concatenate(cols) if cols else np.zeros(0, np.int32),
            np.concatenate(vals) if vals else np.zeros(0, np.float32))


def build_coengagement(train: pd.DataFrame, valid=None, cfg: CoEngagementConfig | None = None,
                       param: float | None = None) -> CoEngagement:
    """Learn the table from ``train`` events (user_id, item_id; event_ts for the trending list).

    Args:
        valid: a :class:`~mfli.eval.validation.ValidationSet` of ``train``: chooses EASE's lambda or
            item-kNN's neighbourhood (each model's own grid), then refits on all of ``train``.
        param: that hyper-parameter, fixed (skips the selection; e.g. the value a fit with ``valid`` chose).
    """
    from mfli.baselines.ease import Ease, EaseConfig
    from mfli.baselines.itemknn import ItemKNN, ItemKNNConfig
    from mfli.index.trending import trending_items

    cfg = cfg or CoEngagementConfig()
    trending = trending_items(train)
    if cfg.method not in ("auto", "ease", "itemknn"):
        raise ValueError(f"CoEngagementConfig.method must be auto, ease or itemknn, got {cfg.method!r}")
    n_items = int(train["item_id"].nunique())
    ease = Ease(EaseConfig(l2=param, max_memory_gb=cfg.max_dense_gb, num_threads=cfg.num_threads))
    method = cfg.method
    if method == "auto":
        try:
            ease.check_size(n_items)
            method = "ease"
        except ValueError:
            method = "itemknn"
    if method == "ease":
        ease.fit(train, valid=valid if param is None else None)
        item_ids, W, chosen = ease.item_ids, ease.B, ease.l2
        if W.size * 2 <= cfg.keep_dense_gb * 2**30:
            empty = (np.zeros(len(item_ids) + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
            dense, scale = to_half(W)
            return CoEngagement(np.asarray(item_ids, np.int64), *empty, "ease", float(chosen), dense, scale,
                                trending)
    else:
        knn = ItemKNN(ItemKNNConfig(neighbours=None if param is None else int(param)))
        knn.fit(train, valid=valid if param is None else None)
        item_ids, W, chosen = knn.item_ids, knn.S, knn.neighbours
    indptr, cols, weights = _top_rows(W, cfg.neighbours)
    return CoEngagement(np.asarray(item_ids, np.int64), indptr, cols, weights, method, float(chosen),
                        trending=trending)
