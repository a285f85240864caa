"""Timing a search function: queries/s at batch 1 and batched, latency percentiles, recall against exact."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def recall_at_k(got: np.ndarray, ref: np.ndarray) -> float:
    """Mean over queries of ``|got_i ∩ ref_i| / |ref_i|`` (``-1`` padding ignored)."""
    vals = []
    for g, r in zip(got, ref):
        r = r[r >= 0]
        if r.size:
            vals.append(np.isin(r, g[g >= 0]).sum() / r.size)
    return float(np.mean(vals)) if vals else float("nan")


def timed_runs(search: Callable[[slice], np.ndarray], n_queries: int, b1: int,
               batch: int) -> tuple[list[float], float, np.ndarray]:
    """Run ``search(slice) -> ids (b, k)`` after a warm-up on a few queries (and on one alone: a method may
    take another code path at batch 1): one at a time over the first ``b1`` queries, then in batches of
    ``batch`` over all. Returns ``(batch-1 latencies in s, total batched seconds, batched ids (n_queries, k))``."""
    search(slice(0, min(8, n_queries)))
    if b1 and n_queries:
        search(slice(0, 1))
    lat = []
    for i in range(min(b1, n_queries)):
        t0 = time.perf_counter()
        search(slice(i, i + 1))
        lat.append(time.perf_counter() - t0)
    parts, t_total = [], 0.0
    for s in range(0, n_queries, batch):
        t0 = time.perf_counter()
        parts.append(search(slice(s, min(n_queries, s + batch))))
        t_total += time.perf_counter() - t0
    return lat, t_total, np.concatenate(parts)


def measure(search: Callable[[slice], np.ndarray], n_queries: int, b1: int, batch: int,
            ref: np.ndarray | None) -> dict:
    """Time ``search(slice) -> ids (b, k)``: batch 1 over the first ``b1`` queries, then batches of ``batch``.

    A warm-up call on a few queries precedes the timings (lazy structures, caches).
    """
    w0, c0 = time.perf_counter(), time.process_time()
    lat, t_total, ids = timed_runs(search, n_queries, b1, batch)
    # CPU seconds per wall second: about the thread count, unless a library uses more cores than it
    # was given (ScaNN's parallel batch call did, whatever set_num_threads said)
    cpu_per_wall = (time.process_time() - c0) / (time.perf_counter() - w0)
    lat_ms = np.asarray(lat) * 1e3
    out = {
        "cpu_per_wall": float(cpu_per_wall),
        "qps_b1": float(len(lat) / sum(lat)) if lat else None,
        "p50_ms": float(np.percentile(lat_ms, 50)) if lat else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if lat else None,
        f"qps_b{batch}": float(n_queries / t_total),
        "batched_seconds": float(t_total),
    }
    if ref is not None:
        out["recall"] = recall_at_k(ids, ref)
    return out
