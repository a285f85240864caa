"""Neighbour lists on disk: built once where the snapshot is gated, loaded wherever it is served.

Building an engine's trigger-mode lists (:mod:`mfli.serve.neighbours`) is the costly part of a service
start: 64-124 s at 1M items on one thread, against milliseconds to read them back. A snapshot therefore
carries the lists its quality gate measured (``neighbours.npz``, :mod:`mfli.snapshot`), with their
stored scores, and an engine
built over the same index and list settings takes them instead of building its own.

The file is one npz (no pickles): the :class:`~mfli.serve.neighbours.NeighbourLists` arrays and a JSON
``key`` of what they depend on (:func:`list_key`): the list length, the probe setting, the storage
format and a digest of the engine's column layout. An engine whose key differs (another index, other
list settings) builds its own lists; it never serves lists built over other columns.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mfli.serve.keyed_npz import load_keyed, save_keyed
from mfli.serve.neighbours import NeighbourLists

FORMAT = "mfli-neighbour-lists/1"
_ARRAYS = ("codes", "shift", "col_nbr", "esc_key", "esc_row")
_SCORES = ("score_q", "score_lo", "score_step")  # present when the key says list_scores

__all__ = ["FORMAT", "StoredLists", "layout_digest", "list_key", "load_lists", "save_lists"]


def layout_digest(offsets: np.ndarray, entry_rows: np.ndarray, own: np.ndarray, emb: np.ndarray) -> str:
    """sha256 of an engine's columns ``offsets (C + 1,)`` / ``entry_rows (E,)``, every item's own columns
    ``own (N, W)`` and a sample of its vectors ``emb (N, D)`` (every 1,009th row, so a different embedding
    of the same clustering does not match either; about 10 ms at 1M items)."""
    h = hashlib.sha256()
    for a in (offsets.astype(np.int64), entry_rows.astype(np.int32), own.astype(np.int32),
              np.ascontiguousarray(emb[::1009], dtype=np.float32)):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def list_key(neighbours: int, probe: int | None, compact: bool, layout: str, scores: bool = False) -> dict[str, Any]:
    """What a set of lists depends on: ``EngineConfig.neighbours``, ``neighbour_probe`` (the setting,
    None for automatic), ``compact_lists``, :func:`layout_digest` and, when they carry stored scores,
    ``list_scores`` (a key without it: lists rescored exactly, as files written before stored scores)."""
    key = {"format": FORMAT, "neighbours": int(neighbours), "neighbour_probe": None if probe is None else int(probe),
           "compact_lists": bool(compact), "layout": str(layout)}
    if scores:
        key["list_scores"] = True
    return key


class StoredLists:
    """Lists read back from a file, with the key they were saved under (:func:`load_lists`)."""

    def __init__(self, lists: NeighbourLists, key: dict[str, Any], source: str = "") -> None:
        self.lists, self.key, self.source = lists, key, source

    def matches(self, key: dict[str, Any]) -> bool:
        return self.key == key


def save_lists(path: str | Path, lists: NeighbourLists, key: dict[str, Any]) -> Path:
    """Write ``lists`` and their ``key`` (:func:`list_key`) to ``path`` (:func:`~mfli.serve.keyed_npz.save_keyed`)."""
    if bool(key.get("list_scores")) != lists.has_scores:
        raise ValueError(f"key says list_scores={bool(key.get('list_scores'))} but the lists "
                         f"{'carry' if lists.has_scores else 'have no'} stored scores")
    scores = {a: getattr(lists, a) for a in _SCORES} if lists.has_scores else {}
    return save_keyed(path, key, codes=lists.codes, shift=np.int64(lists.shift), col_nbr=lists.col_nbr,
                      esc_key=lists.esc_key, esc_row=lists.esc_row, **scores)


def load_lists(path: str | Path) -> StoredLists:
    """Read lists written by :func:`save_lists`.

    Raises:
        ValueError: naming the file and the array that is missing or malformed.
    """
    arrays, key, bad = load_keyed(path, _ARRAYS, FORMAT, "neighbour lists written by mfli.serve.list_store",
                                  optional=_SCORES)
    shift = int(arrays["shift"])
    codes, col_nbr, esc_key, esc_row = (arrays[a] for a in ("codes", "col_nbr", "esc_key", "esc_row"))
    want = np.uint16 if shift >= 0 else np.int32
    if codes.ndim != 2 or codes.dtype != want or codes.shape[1] != key.get("neighbours"):
        raise bad(f"array 'codes' is {codes.dtype} {codes.shape}, expected {np.dtype(want)} (N, {key.get('neighbours')})")
    if col_nbr.ndim != 2 or col_nbr.dtype != np.int32:
        raise bad(f"array 'col_nbr' is {col_nbr.dtype} {col_nbr.shape}, expected int32 (C, probe)")
    if esc_key.ndim != 1 or esc_key.dtype != np.int64 or esc_row.shape != esc_key.shape or esc_row.dtype != np.int32:
        raise bad(f"arrays 'esc_key' / 'esc_row' are {esc_key.dtype} {esc_key.shape} / {esc_row.dtype} "
                  f"{esc_row.shape}, expected int64 / int32 of one length")
    scores: dict[str, np.ndarray] = {}
    if key.get("list_scores"):
        missing = [a for a in _SCORES if a not in arrays]
        if missing:
            raise bad(f"no array {missing[0]!r}")
        scores = {a: arrays[a] for a in _SCORES}
        sq, slo, sstep = (scores[a] for a in _SCORES)
        if sq.dtype != np.uint8 or sq.shape != arrays["codes"].shape or slo.dtype != np.float32 or \
                sstep.dtype != np.float32 or slo.shape != (sq.shape[0],) or sstep.shape != slo.shape:
            raise bad(f"arrays 'score_q' / 'score_lo' / 'score_step' are {sq.dtype} {sq.shape} / {slo.dtype} "
                      f"{slo.shape} / {sstep.dtype} {sstep.shape}, expected uint8 {arrays['codes'].shape} and "
                      f"float32 ({arrays['codes'].shape[0]},)")
        if not (np.isfinite(slo).all() and np.isfinite(sstep).all() and (sstep >= 0).all()):
            raise bad("arrays 'score_lo' / 'score_step' hold non-finite or negative steps")
    return StoredLists(NeighbourLists(codes, shift, col_nbr, esc_key, esc_row, **scores), key, str(Path(path)))
