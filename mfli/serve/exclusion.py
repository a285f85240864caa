"""Rows a request must never get back: its excluded items (seen items, triggers) and removed rows.

Built once per call from item ids; applied to any padded candidate layout whose rows belong to
requests (one row per request in user mode, one per chosen cluster in trigger mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mfli.index.delta import DeltaIndex


class Exclusions:
    """Per request, the combined rows never to return, plus the space's removed rows.

    Args:
        space: the row space the candidates come from.
        B: requests in the batch.
        exclude: B lists of item ids (ids not in the space are ignored), or None.
        extra: ``(request, row)`` pairs to exclude as well (trigger mode: the triggers themselves).
    """

    def __init__(self, space: DeltaIndex, B: int, exclude: Sequence[Sequence[int]] | None = None,
                 extra: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.space = space
        self.removed = space.removed_mask()
        req_parts, row_parts = [], []
        if exclude is not None:
            if len(exclude) != B:
                raise ValueError(f"exclude must hold one list per request ({B}), got {len(exclude)}")
            lens = np.array([len(e) for e in exclude], np.int64)
            if lens.sum():
                rows = space.rows_of(np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude]))
                req = np.repeat(np.arange(B, dtype=np.int64), lens)
                req_parts.append(req[rows >= 0])
                row_parts.append(rows[rows >= 0])
        if extra is not None:
            req_parts.append(np.asarray(extra[0], np.int64))
            row_parts.append(np.asarray(extra[1], np.int64))
        self.rows: list[np.ndarray] = [np.zeros(0, np.int64)] * B
        if req_parts:
            req, rows = np.concatenate(req_parts), np.concatenate(row_parts)
            order = np.argsort(req, kind="stable")
            req, rows = req[order], rows[order]
            bounds = np.searchsorted(req, np.arange(B + 1))
            self.rows = [rows[bounds[b]:bounds[b + 1]] for b in range(B)]

    def apply(self, p_score: np.ndarray, p_rows: np.ndarray, row_req: np.ndarray | None = None) -> None:
        """Set ``p_score`` to -inf (in place) where ``p_rows (R, W)`` holds a removed row or one excluded for
        the row's request ``row_req (R,)`` (sorted; default: row r is request r). Padding (-1) is untouched."""
        if self.removed is not None:
            p_score[self.removed[p_rows]] = -np.inf  # row -1 reads the trailing False
        if not any(r.size for r in self.rows):
            return
        R = p_rows.shape[0]
        bounds = (np.arange(len(self.rows) + 1) if row_req is None
                  else np.searchsorted(row_req, np.arange(len(self.rows) + 1)))
        mark = np.zeros(self.space.n_rows + 1, bool)
        for b, ex in enumerate(self.rows):
            lo, hi = int(bounds[b]), int(min(bounds[b + 1], R))
            if ex.size and hi > lo:
                mark[ex] = True
                block = p_score[lo:hi]
                block[mark[p_rows[lo:hi]]] = -np.inf
                mark[ex] = False
