"""Serving benchmark: MFLI (beam serving and the scan engine) against exact search, FAISS HNSW, FAISS IVF,
FAISS IVF-PQ fast-scan, ScaNN and Deep Retrieval.

    mfli bench serving --items 1000000 --dim 64 --queries 2048 --out docs/results/serving_1m.json \
        --plot docs/results/serving_1m.png

One process, one catalogue, one set of queries (REFERENCE.md section 4, "serving"):

1. **Embeddings.** ``embeddings="model"`` (default): a synthetic catalogue of ``n_items`` items is
   generated (:mod:`mfli.data.synthetic`), a small MFLI model is trained briefly (``train_steps``
   optimiser steps) on its interactions, whose items are a subsample of the catalogue (the items that
   have events), and its item tower then embeds *all* ``n_items`` items from content alone
   (categories, title/text tokens, brand, age; no id embeddings, so every item is treated alike).
   Queries are user-tower embeddings of ``n_queries`` synthetic users from their histories. The
   model's co-trained codebooks index the catalogue. ``embeddings="synthetic"``: hierarchical topic
   clusters (topic -> subtopic -> item, per facet) with faiss k-means RQ codebooks; no model, no DR.
2. **Reference.** Exact top-k by ``sum_f q_f . e_f`` (FAISS flat inner product over the concatenated
   facets); recall@k of every method is measured against it (no seen-item exclusion anywhere, so
   every method does the same work).
3. **Methods**, each built, timed and swept, then freed:
   ``exact`` (flat scan), ``mfli`` (encode code paths, CSR build, split-and-merge rebalance,
   :class:`~mfli.serve.retriever.Retriever` in user mode with ``merge="sum"``; sweep over
   ``(beam, clusters_per_query)``), ``hnsw`` (M=32, efConstruction=40; efSearch sweep), ``ivf``
   (nlist = 4 sqrt(N), trained on a sample of 39 * nlist vectors, the rest added; nprobe sweep),
   ``dr`` (Deep Retrieval trained on the same interactions; beam sweep; see below);
   ``mfli_scan`` (:class:`~mfli.serve.engine.ScanEngine` over the same rebalanced index, what
   ``ServingConfig.engine="scan"`` serves; sweep over ``(n_clusters, shortlist)``), ``ivfpq_fs``
   (``IndexIVFPQFastScan``, 4-bit codes, one sub-quantiser per 2 dims, exact reorder of
   ``k_factor * k``; sweep over ``(nprobe, k_factor)``), ``scann`` (ScaNN 1.4.2 tree + AH + reorder,
   optional import: reported as skipped without the package; sweep over ``(leaves, reorder)``).
4. **Per sweep point**: queries/s at batch 1 (``b1_queries`` queries one at a time; p50/p99 latency
   from them) and at batch ``batch_size`` (all ``n_queries``), and recall@k from the batched run
   (exact search is timed on its first ``exact_queries`` only: it is slow and its recall is 1).
   Per method: build seconds by stage, peak RSS growth during the build (``VmHWM`` reset through
   ``/proc/self/clear_refs``; polled ``VmRSS`` where that is not allowed) and the bytes kept for serving.
5. **Equal recall**: every method's queries/s interpolated (log-linear between Pareto points) at
   target recalls and at every sweep point of HNSW and IVF; ``headline`` is MFLI over HNSW at the
   highest recall HNSW reaches (the target is >= 1.5); ``headline_fastest`` is each MFLI path over the
   fastest baseline (HNSW, IVF, IVF-PQ fast-scan, ScaNN) at recall 0.90 and 0.95, batch 1 and batched.

**Deep Retrieval** scores with its own networks (user encoder over item-id histories, path model,
re-ranker), not with the two-tower embeddings, so its recall is measured against *its own* exact
search: the re-ranker's brute-force top-k over its whole catalogue (DR's own "brute force"
reference). DR is trained on the items with events and every other item of its catalogue is
placed from content neighbours (two-tower content embeddings; faiss IVF k-NN above 20k trained
items). ``dr_items`` (default 0: the whole catalogue) can shrink its catalogue to the trained items
plus a random fill; queries/s then belong to that smaller catalogue and are reported as such.
The library's ``DeepRetrieval.retrieve`` re-normalises every item vector on each call; the benchmark
caches them (the model is frozen while serving) so that batch-1 latency measures the method.

Threads: searches and all torch work use ``threads`` (default 1: queries/s per core); FAISS index
builds, encoding and k-means use ``build_threads`` (default 1 as well: on a busy shared machine a
second OpenMP thread mostly spins).
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict

from mfli.eval.serving.config import METHODS, Log, ServingBenchConfig
from mfli.eval.serving.data import BenchData, embedding_stats, prepare_data, train_bench_model
from mfli.eval.serving.machine import MemoryMeter, machine_info, rss_bytes, set_threads
from mfli.eval.serving.methods import (
    Deadline,
    bench_dr,
    bench_exact,
    bench_hnsw,
    bench_ivf,
    bench_ivfpq_fs,
    bench_mfli,
    bench_mfli_scan,
    bench_scann,
)
from mfli.eval.serving.report import (
    equal_recall,
    format_tables,
    headline,
    headline_fastest,
    plot,
    qps_at_recall,
    write_json,
)
from mfli.eval.serving.timing import measure, recall_at_k

# the benchmark's public API, importable from here as before the split into mfli/eval/serving/
__all__ = ["BenchData", "Log", "MemoryMeter", "ServingBenchConfig", "embedding_stats", "equal_recall", "format_tables",
           "machine_info", "measure", "plot", "qps_at_recall", "recall_at_k", "rss_bytes", "run_serving_bench",
           "set_threads", "train_bench_model", "write_json"]


def run_serving_bench(cfg: ServingBenchConfig, log: Log = print) -> dict:
    """Run the whole benchmark; returns the JSON-ready result (see the module docstring)."""
    cfg.validated()
    t_start = time.perf_counter()
    deadline = Deadline(t_start, cfg.budget_s)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    set_threads(cfg.threads)
    machine = machine_info()
    log(f"serving benchmark: N={cfg.n_items:,} F={cfg.facets} d={cfg.dim} Q={cfg.n_queries} "
        f"({cfg.embeddings} embeddings, {cfg.threads} search thread(s))")
    data, data_sec = prepare_data(cfg, log)
    result: dict = {
        "config": asdict(cfg),
        "machine": machine,
        **data.source,
        "embedding_stats": embedding_stats(data.items, data.queries, cfg.seed),
        "timing_method": {
            "batch1": f"first {min(cfg.b1_queries, cfg.n_queries)} queries one at a time; p50/p99 over them",
            f"batch{cfg.batch_size}": f"all {cfg.n_queries} queries in batches of {cfg.batch_size}",
            "recall": f"recall@{cfg.k} of the batched results against exact search (no seen-item exclusion)",
            "threads": f"search {cfg.threads}, FAISS builds {cfg.build_threads}",
        },
        "data_seconds": data_sec,
        "methods": {},
    }
    methods = result["methods"]
    log("exact search (reference)")
    t0 = time.perf_counter()
    exact, ref = bench_exact(data, cfg, log)
    exact["wall_seconds"] = time.perf_counter() - t0
    if "exact" in cfg.methods:
        methods["exact"] = exact
    shared: dict = {}  # the rebalanced index, built by "mfli" and scanned by "mfli_scan"
    for name in METHODS:
        if name == "exact" or name not in cfg.methods:
            continue
        log(name)
        t0 = time.perf_counter()
        if name == "mfli":
            methods[name] = bench_mfli(data, cfg, ref, deadline, log, keep=shared if "mfli_scan" in cfg.methods
                                       else None)
        elif name == "mfli_scan":
            methods[name] = bench_mfli_scan(data, cfg, ref, deadline, log, prebuilt=shared)
            shared.clear()
        elif name == "hnsw":
            methods[name] = bench_hnsw(data, cfg, ref, deadline, log)
        elif name == "ivf":
            methods[name] = bench_ivf(data, cfg, ref, deadline, log)
        elif name == "ivfpq_fs":
            methods[name] = bench_ivfpq_fs(data, cfg, ref, deadline, log)
        elif name == "scann":
            methods[name] = bench_scann(data, cfg, ref, deadline, log)
        else:
            methods[name] = bench_dr(data, cfg, deadline, log)
        methods[name]["wall_seconds"] = time.perf_counter() - t0
        gc.collect()
    bkey = f"qps_b{cfg.batch_size}"
    result["equal_recall"] = {key: equal_recall(methods, key) for key in ("qps_b1", bkey)}
    result["headline"] = {key: headline(result, key) for key in ("qps_b1", bkey)}
    result["headline_fastest"] = {key: headline_fastest(methods, key) for key in ("qps_b1", bkey)}
    machine_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["machine"]["load_average_end"] = list(machine_end) if machine_end else None
    result["total_seconds"] = time.perf_counter() - t_start
    log(f"done in {result['total_seconds']:.0f}s")
    return result
