"""Builders of the fast ANN baselines both serving benchmarks run: FAISS IVF-PQ fast-scan and ScaNN.

Shared by ``mfli bench serving`` (:mod:`mfli.eval.serving.methods`) and the engine benchmark
(:mod:`mfli.eval.bench_engine`), so both measure the same indexes.
"""

from __future__ import annotations

import numpy as np


def build_ivfpq_fs(x: np.ndarray, nlist: int, seed: int):
    """IVF-PQ fast-scan (4-bit, D/2 sub-quantisers, by residual) + exact reorder (IndexRefineFlat)."""
    import faiss

    D = x.shape[1]
    base = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(D), D, nlist, D // 2, 4, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    base.cp.seed = seed
    base.train(x[np.sort(rng.choice(len(x), min(len(x), 39 * nlist), replace=False))])
    base.add(x)
    index = faiss.IndexRefineFlat(base, faiss.swig_ptr(x))
    code = base.code_size if hasattr(base, "code_size") else D // 4
    return index, base, int(len(x) * (code + 8 + D * 4) + nlist * D * 4)


def build_scann(x: np.ndarray, k: int, leaves: int, seed: int):
    """ScaNN: tree (``leaves`` partitions) + AH (2 dims per 4-bit block, threshold 0.2) + reorder."""
    import scann

    n = len(x)
    leaves = min(leaves, max(1, n // 100))
    searcher = (scann.scann_ops_pybind.builder(x, k, "dot_product")
                .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 50),
                      training_sample_size=min(n, 250_000))
                .score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(500).build())
    return searcher, int(n * (x.shape[1] // 4 + x.shape[1] * 4 + 8) + leaves * x.shape[1] * 4)


def scann_search(searcher, q: np.ndarray, k: int, leaves: int, reorder: int,
                 threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (B, k), scores (B, k))`` for queries ``q (B, D)`` on ``threads`` threads: one call at batch 1,
    batched otherwise.

    One thread takes ScaNN's serial ``search_batched``: its ``search_batched_parallel`` runs on every core
    whatever ``set_num_threads`` says (ScaNN 1.4.2 on 2 cores: 1.96 s of CPU per second of wall time with
    ``set_num_threads(1)``, twice the serial call's queries/s), which made earlier one-thread batch
    comparisons against ScaNN two-thread ones."""
    if len(q) == 1:
        i, d = searcher.search(q[0], final_num_neighbors=k, pre_reorder_num_neighbors=reorder,
                               leaves_to_search=leaves)
        return np.asarray(i, np.int64)[None], np.asarray(d)[None]
    if threads <= 1:
        i, d = searcher.search_batched(q, final_num_neighbors=k, pre_reorder_num_neighbors=reorder,
                                       leaves_to_search=leaves)
    else:
        searcher.set_num_threads(threads)
        i, d = searcher.search_batched_parallel(q, final_num_neighbors=k, pre_reorder_num_neighbors=reorder,
                                                leaves_to_search=leaves, batch_size=64)
    return np.asarray(i, np.int64), np.asarray(d)
