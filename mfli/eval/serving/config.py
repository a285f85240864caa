"""The serving benchmark's configuration: one place for every default (the CLI reads them here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Log = Callable[[str], None]  # progress lines (print by default)
#: every method the benchmark knows, in the order it runs them
METHODS = ("exact", "mfli", "mfli_scan", "hnsw", "ivf", "ivfpq_fs", "scann", "dr")
#: MFLI's serving paths (the rest are baselines; "exact" is the reference)
MFLI_METHODS = ("mfli", "mfli_scan")


@dataclass
class ServingBenchConfig:
    """What the serving benchmark builds and measures. Defaults: the 1M-item run on 2 shared cores."""

    n_items: int = 1_000_000  # catalogue size N
    dim: int = 64  # d, per facet (HNSW/IVF/exact index the concatenation, F * d)
    n_queries: int = 2048  # queries for batched timing and recall
    b1_queries: int = 200  # the first ones, also timed one at a time (batch 1)
    batch_size: int = 256  # batched timing
    k: int = 100  # recall@k and results per query
    facets: int = 2  # F (model source: 1 = engagement, 2 = + semantic, 3 = the paper's default)
    layers: int = 2  # L codebook layers
    codes: int = 256  # M codewords per layer
    threads: int = 1  # search and torch threads
    # FAISS build / k-means threads. 1 by default: on a shared 2-core machine a second OpenMP thread
    # mostly spins (many small k-means in rebalancing ran 8x slower with 2 threads under load)
    build_threads: int = 1
    embeddings: str = "model"  # "model" (trained towers, content only) or "synthetic" (topic clusters)
    methods: tuple[str, ...] = ("exact", "mfli", "mfli_scan", "hnsw", "ivf", "ivfpq_fs", "scann", "dr")
    seed: int = 0
    # model source: the synthetic catalogue and the brief training
    n_users: int = 10_000  # synthetic users (queries are sampled from them)
    n_interactions: int = 200_000  # synthetic events; items with events form the training subsample
    train_steps: int = 150  # optimiser steps (batch 512): a brief training, enough for structure
    hidden: int = 128  # tower width
    model_dir: str | None = None  # load a model saved by a previous run instead of training
    save_model_dir: str | None = None  # save the trained model here (reuse with model_dir)
    # sweeps
    mfli_sweep: tuple[tuple[int, int | None], ...] = ((16, 4), (32, 8), (64, 16), (128, 32), (128, 64))
    # scan engine (mfli_scan): (clusters read over both facets, exact short list)
    scan_sweep: tuple[tuple[int, int], ...] = ((12, 200), (16, 200), (24, 250), (32, 300), (48, 400), (64, 500), (96, 500))
    scan_pq_subquantizers: int | None = None  # residual PQ sub-vectors (EngineConfig's default: one per 4 dims)
    scan_prerank: str | None = None  # "codes" or "fastscan"; None: what snapshots serve (default_scan_config)
    # IVF-PQ fast-scan (4-bit, one sub-quantiser per 2 dims) + exact reorder: (nprobe, reorder factor)
    ivfpq_sweep: tuple[tuple[int, int], ...] = ((16, 4), (24, 4), (32, 6), (48, 6), (64, 8))
    # ScaNN (tree + AH + reorder): leaves (~2 sqrt(N), capped at N / 100) and (leaves searched, reorder)
    scann_leaves: int | None = None
    # from 20 leaves: the sweep must reach below recall 0.90, or "ScaNN at 0.90" is a slower, higher point
    scann_sweep: tuple[tuple[int, int], ...] = ((20, 200), (30, 250), (40, 250), (60, 300), (80, 400), (120, 500),
                                                (160, 600))
    hnsw_ef: tuple[int, ...] = (100, 200, 400, 800, 1600)  # efSearch (AnnIndex raises it to >= k)
    ivf_nprobe: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    dr_beams: tuple[int, ...] = (10, 25, 50, 100)
    exact_queries: int = 512  # exact search is timed on the first ones only (slow; its recall is 1 anyway)
    exact_b1_queries: int = 50
    hnsw_m: int = 32
    ef_construction: int = 40
    ivf_train_per_list: int = 39  # IVF k-means sample: this many vectors per list (faiss's minimum)
    dr_items: int = 0  # DR catalogue size (0: all n_items)
    dr_nodes: int | None = None  # DR K; None: ~30 items per path with D=2, J=3
    budget_s: float | None = None  # stop sweeping (skip remaining points) once the run is this old

    def validated(self) -> ServingBenchConfig:
        if self.embeddings not in ("model", "synthetic"):
            raise ValueError(f"embeddings must be 'model' or 'synthetic', got {self.embeddings!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
        if self.embeddings == "model" and not 1 <= self.facets <= 3:
            raise ValueError("the model source supports 1 to 3 facets")
        if self.n_queries < 1 or self.b1_queries < 0 or self.batch_size < 1 or self.k < 1:
            raise ValueError("n_queries, batch_size and k must be >= 1, b1_queries >= 0")
        if self.scan_prerank not in (None, "codes", "fastscan"):
            raise ValueError(f"scan_prerank must be 'codes' or 'fastscan', got {self.scan_prerank!r}")
        if self.k > self.n_items:
            raise ValueError(f"k={self.k} exceeds the catalogue ({self.n_items} items)")
        return self
