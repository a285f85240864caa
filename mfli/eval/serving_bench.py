"""Serving benchmark: MFLI beam serving against exact search, FAISS HNSW, FAISS IVF and Deep Retrieval.

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
   ``dr`` (Deep Retrieval trained on the same interactions; beam sweep; see below).
4. **Per sweep point**: queries/s at batch 1 (``b1_queries`` queries one at a time; p50/p99 latency
   from them) and at batch ``batch_size`` (all ``n_queries``), and recall@k from the batched run
   (exact search is timed on its first ``exact_queries`` only: it is slow and its recall is 1).
   Per method: build seconds by stage, peak RSS growth during the build (``VmHWM`` reset through
   ``/proc/self/clear_refs``; polled ``VmRSS`` where that is not allowed) and the bytes kept for serving.
5. **Equal recall**: every method's queries/s interpolated (log-linear between Pareto points) at
   target recalls and at every sweep point of HNSW and IVF; ``headline`` is MFLI over HNSW at the
   highest recall HNSW reaches (the target is >= 1.5).

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
import itertools
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ config
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
    methods: tuple[str, ...] = ("exact", "mfli", "hnsw", "ivf", "dr")
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
        unknown = set(self.methods) - {"exact", "mfli", "hnsw", "ivf", "dr"}
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; known: exact, mfli, hnsw, ivf, dr")
        if self.embeddings == "model" and not 1 <= self.facets <= 3:
            raise ValueError("the model source supports 1 to 3 facets")
        if self.n_queries < 1 or self.b1_queries < 0 or self.batch_size < 1 or self.k < 1:
            raise ValueError("n_queries, batch_size and k must be >= 1, b1_queries >= 0")
        if self.k > self.n_items:
            raise ValueError(f"k={self.k} exceeds the catalogue ({self.n_items} items)")
        return self


@dataclass
class BenchData:
    """Everything the methods share.

    Attributes:
        item_ids: ``(N,)`` int64.
        items: ``(N, F, d)`` float32 L2-normalised facet embeddings.
        queries: ``(Q, F, d)`` float32 query embeddings.
        codebooks: ``(L, F, M, d)`` float32.
        facet_names: F names.
        source: provenance (JSON).
        histories: Q lists of item ids, oldest first (model source; DR's queries).
        interactions: the training events (model source; DR's training data).
    """

    item_ids: np.ndarray
    items: np.ndarray
    queries: np.ndarray
    codebooks: np.ndarray
    facet_names: list[str]
    source: dict
    histories: list[list[int]] | None = None
    interactions: object | None = None


# ------------------------------------------------------------------------------------------------ machine
def machine_info() -> dict:
    """CPU model, cores, memory, load and library versions (the context every timing needs)."""
    import faiss
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "memory_bytes": mem,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "platform": platform.platform(),
    }


def set_threads(n: int) -> None:
    """torch and FAISS (OpenMP) thread counts."""
    import faiss
    import torch

    torch.set_num_threads(max(1, n))
    faiss.omp_set_num_threads(max(1, n))


# ------------------------------------------------------------------------------------------------ memory
def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; ru_maxrss elsewhere, an upper bound)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryMeter:
    """Peak and retained RSS growth over a ``with`` block.

    The peak comes from the kernel's high-water mark (``VmHWM``), reset on entry by writing 5 to
    ``/proc/self/clear_refs``; where that is refused, a thread samples ``VmRSS`` every 10 ms (can miss
    short spikes). ``peak_delta`` = peak - RSS on entry; ``retained_delta`` = RSS on exit - RSS on entry.
    """

    def __init__(self) -> None:
        self.rss0 = self.rss1 = self.peak = 0
        self.method = "vmhwm"
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        gc.collect()
        self.rss0 = rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kib("VmHWM") is None:
                raise OSError("no VmHWM")
        except OSError:
            self.method = "polled"
            self.peak = self.rss0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self.rss1 = rss_bytes()
        if self.method == "vmhwm":
            self.peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self.rss1)

    def report(self) -> dict:
        return {"peak_rss_delta_bytes": int(self.peak - self.rss0),
                "retained_rss_delta_bytes": int(self.rss1 - self.rss0), "method": self.method}


# ------------------------------------------------------------------------------------------------ data
def facet_configs(n: int) -> list:
    """Facet list of the model source: 1 engagement; 2 + semantic; 3 the paper's count."""
    from mfli.model.config import FacetConfig, default_facets, three_facets

    if n == 1:
        return [FacetConfig(name="engagement", kind="engagement")]
    if n == 2:
        return default_facets()
    if n == 3:
        return three_facets()
    raise ValueError(f"facets must be 1, 2 or 3, got {n}")


def train_bench_model(ds, interactions, *, dim: int, facets: int, layers: int, codes: int | None,
                      hidden: int, steps: int, threads: int, seed: int):
    """Train a small MFLI model briefly on ``ds``'s items that have events (its training subsample).

    Returns:
        ``(model, seconds, n_train_items)``.
    """
    from mfli.data.dataset import Dataset
    from mfli.model.config import CodebookConfig, ModelConfig
    from mfli.train import TrainConfig, train

    seen = np.unique(interactions["item_id"].to_numpy(np.int64))
    items = ds.items[ds.items["item_id"].isin(seen)].reset_index(drop=True)
    sub = Dataset(name=f"{ds.name}-train", format=ds.format, interactions=interactions, items=items,
                  users=ds.users, meta={})
    cfg = TrainConfig(
        model=ModelConfig(dim=dim, hidden=hidden, facets=facet_configs(facets),
                          # the gradient share the published serving figures were measured with: a model
                          # trained this briefly needs L_QMF to pull its items onto the codewords (with the
                          # library default 0 the 8-step test model's beam recall fell from > 0.9 to 0.76)
                          codebook=CodebookConfig(layers=layers, codes=codes, straight_through_scale=1.0,
                                                  qmf_query_scale=1.0)),
        # epochs only bound the loop: max_steps decides; no validation split (the benchmark needs
        # geometry, not a tuned model), no progress bar, a fixed thread count on a shared machine
        epochs=10_000, max_steps=steps, valid_frac=0.0, progress=False, num_threads=threads, seed=seed,
    )
    t0 = time.perf_counter()
    model = train(sub, interactions, cfg)
    return model, time.perf_counter() - t0, len(items)


def user_histories(interactions) -> dict[int, list[int]]:
    """user id -> item ids oldest first."""
    inter = interactions.sort_values(["user_id", "event_ts", "item_id"], kind="stable")
    return {int(u): g.tolist() for u, g in inter.groupby("user_id", sort=True)["item_id"]}


def kmeans_rq_codebooks(emb: np.ndarray, layers: int, codes: int, seed: int = 0,
                        max_points: int | None = None) -> np.ndarray:
    """``(L, F, M, d)`` residual k-means codebooks (faiss) fitted per facet on a sample of ``emb (N, F, d)``.

    Layer l clusters the residuals left by layers < l (the RQ construction of REFERENCE.md 1.2); the
    stand-in for co-trained codebooks when there is no trained model.
    """
    import faiss

    N, F, d = emb.shape
    max_points = max_points or 256 * codes
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(N, min(N, max_points), replace=False))
    cb = np.zeros((layers, F, codes, d), np.float32)
    for f in range(F):
        r = np.ascontiguousarray(emb[sample, f], dtype=np.float32)
        for layer in range(layers):
            km = faiss.Kmeans(d, codes, niter=20, seed=seed + layer, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=256)
            km.train(r)
            cb[layer, f] = km.centroids
            _, a = km.index.search(r, 1)
            r = r - km.centroids[a[:, 0]]
    return cb


def synthetic_embeddings(n: int, n_queries: int, F: int, d: int, seed: int = 0, topics: int = 100,
                         subtopics: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical topic clusters: ``items (n, F, d)`` and ``queries (n_queries, F, d)``, unit per facet.

    Per facet: topic centres ~ N(0, I); subtopic = topic + 0.6 N(0, I); item = subtopic + 0.5 N(0, I)
    with Zipf-sized topics. A query mixes 1-3 interest topics' subtopic centres plus noise, so its
    exact neighbours spread over several clusters, as a user's interests do.
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, topics + 1) ** 0.7
    p /= p.sum()
    items = np.empty((n, F, d), np.float32)
    queries = np.empty((n_queries, F, d), np.float32)
    leaf_of = rng.choice(topics, n, p=p) * subtopics + rng.integers(0, subtopics, n)
    n_int = rng.integers(1, 4, n_queries)
    for f in range(F):
        tc = rng.standard_normal((topics, d)).astype(np.float32)
        sc = (np.repeat(tc, subtopics, 0) + 0.6 * rng.standard_normal((topics * subtopics, d))).astype(np.float32)
        for s in range(0, n, 1 << 18):
            e = min(n, s + (1 << 18))
            x = sc[leaf_of[s:e]] + 0.5 * rng.standard_normal((e - s, d)).astype(np.float32)
            items[s:e, f] = x / np.linalg.norm(x, axis=1, keepdims=True)
        for i in range(n_queries):
            leaves = rng.choice(topics, n_int[i], p=p) * subtopics + rng.integers(0, subtopics, n_int[i])
            x = sc[leaves].mean(0) + 0.3 * rng.standard_normal(d).astype(np.float32)
            queries[i, f] = x / np.linalg.norm(x)
    return items, queries


def prepare_data(cfg: ServingBenchConfig, log: Log) -> tuple[BenchData, dict]:
    """Embeddings, queries and codebooks per ``cfg.embeddings``; returns the data and stage seconds."""
    sec: dict[str, float] = {}
    if cfg.embeddings == "synthetic":
        t0 = time.perf_counter()
        items, queries = synthetic_embeddings(cfg.n_items, cfg.n_queries, cfg.facets, cfg.dim, cfg.seed)
        sec["embeddings"] = time.perf_counter() - t0
        set_threads(cfg.build_threads)
        t0 = time.perf_counter()
        cb = kmeans_rq_codebooks(items, cfg.layers, cfg.codes, cfg.seed)
        sec["codebooks_kmeans"] = time.perf_counter() - t0
        set_threads(cfg.threads)
        src = {"embedding_source": "synthetic_clusters",
               "description": "hierarchical topic clusters (100 Zipf-sized topics x 10 subtopics per facet), "
                              "queries = noisy mixtures of 1-3 subtopic centres; no model",
               "codebook_source": "faiss k-means RQ on a sample of the item embeddings (no trained codebook)"}
        return BenchData(np.arange(cfg.n_items, dtype=np.int64), items, queries, cb,
                         [f"facet{f}" for f in range(cfg.facets)], src), sec

    from mfli.data.synthetic import SyntheticConfig, generate
    from mfli.train import TrainedModel

    t0 = time.perf_counter()
    n_users = max(cfg.n_users, cfg.n_queries)
    syn = SyntheticConfig(n_items=cfg.n_items, n_users=n_users,
                          n_interactions=max(cfg.n_interactions, 2 * n_users), seed=cfg.seed)
    ds = generate(syn)
    sec["generate"] = time.perf_counter() - t0
    log(f"  generated {len(ds.items):,} items, {len(ds.interactions):,} events in {sec['generate']:.1f}s")
    set_threads(cfg.threads)
    if cfg.model_dir:
        t0 = time.perf_counter()
        model = TrainedModel.load(cfg.model_dir)
        sec["model_load"] = time.perf_counter() - t0
        n_train = len(model.feature_space.known_item_ids)
        trained = False
    else:
        model, sec["train"], n_train = train_bench_model(
            ds, ds.interactions, dim=cfg.dim, facets=cfg.facets, layers=cfg.layers, codes=cfg.codes,
            hidden=cfg.hidden, steps=cfg.train_steps, threads=cfg.threads, seed=cfg.seed)
        trained = True
        log(f"  trained {cfg.train_steps} steps on {n_train:,} items in {sec['train']:.1f}s")
        if cfg.save_model_dir:
            model.save(cfg.save_model_dir)
    if model.model.cfg.dim != cfg.dim or len(model.facets) != cfg.facets:
        raise ValueError(f"model has F={len(model.facets)}, d={model.model.cfg.dim}; the run asks "
                         f"F={cfg.facets}, d={cfg.dim}")
    t0 = time.perf_counter()
    items = model.item_embeddings(ds.items, use_ids=False).numpy().astype(np.float32)
    sec["embed_items"] = time.perf_counter() - t0
    log(f"  embedded {len(items):,} items from content in {sec['embed_items']:.1f}s")
    t0 = time.perf_counter()
    hist = user_histories(ds.interactions)
    rng = np.random.default_rng(cfg.seed)
    users = np.sort(rng.choice(np.fromiter(hist.keys(), np.int64), cfg.n_queries, replace=False))
    histories = [hist[int(u)] for u in users]
    queries = model.user_embeddings(users, histories).numpy().astype(np.float32)
    sec["embed_queries"] = time.perf_counter() - t0
    cb = model.codebooks.numpy().astype(np.float32)
    cb_src = "co-trained (the model's codebooks)"
    if cb.shape[0] < cfg.layers or cb.shape[2] != cfg.codes:
        set_threads(cfg.build_threads)
        t0 = time.perf_counter()
        cb = kmeans_rq_codebooks(items, cfg.layers, cfg.codes, cfg.seed)
        sec["codebooks_kmeans"] = time.perf_counter() - t0
        set_threads(cfg.threads)
        cb_src = "faiss k-means RQ (the trained codebook had too few layers switched on)"
    src = {
        "embedding_source": "trained_model_content_only",
        "description": (f"synthetic catalogue of {cfg.n_items:,} items (mfli.data.synthetic, seed {cfg.seed}); an MFLI "
                        f"model trained {'for ' + str(cfg.train_steps) + ' steps ' if trained else ''}on its "
                        f"{n_train:,} items with events ({len(ds.interactions):,} events, {n_users:,} users); "
                        "item tower embeds every item from content only (no id embeddings); queries = "
                        "user-tower embeddings of sampled synthetic users from their histories"),
        "codebook_source": cb_src,
        "n_train_items": int(n_train),
        "n_events": len(ds.interactions),
        "n_users": int(n_users),
        "model_dir": cfg.model_dir,
    }
    return BenchData(ds.items["item_id"].to_numpy(np.int64), items, queries, cb, list(model.facets), src,
                     histories, ds.interactions), sec


def embedding_stats(items: np.ndarray, queries: np.ndarray, seed: int = 0, n: int = 1000,
                    pool: int = 200_000) -> dict:
    """Geometry that decides how hard recall@k is, per facet: mean cosine of random item pairs, of each
    of ``n`` probe items to its nearest other item among the first ``pool`` items, and of queries to items."""
    rng = np.random.default_rng(seed)
    N, F, _ = items.shape
    n = min(n, N // 2)
    pool = min(pool, N)
    out = {}
    for f in range(F):
        x = items[:, f]
        a, b = rng.choice(pool, n, replace=False), rng.choice(N, n, replace=False)
        best = np.full(n, -np.inf, np.float32)
        for s in range(0, pool, 25_000):
            sim = x[a] @ x[s : s + 25_000].T
            own = (a >= s) & (a < s + 25_000)
            sim[np.flatnonzero(own), a[own] - s] = -np.inf  # not itself
            best = np.maximum(best, sim.max(1))
        out[f"facet{f}"] = {
            "random_pair_cos": float(np.einsum("nd,nd->n", x[a], x[b]).mean()),
            "nn_cos": float(best.mean()),
            "nn_pool": int(pool),
            "query_item_cos": float((queries[: min(len(queries), 256), f] @ x[b].T).mean()),
        }
    return out


# ------------------------------------------------------------------------------------------------ timing
def recall_at_k(got: np.ndarray, ref: np.ndarray) -> float:
    """Mean over queries of ``|got_i ∩ ref_i| / |ref_i|`` (``-1`` padding ignored)."""
    vals = []
    for g, r in zip(got, ref):
        r = r[r >= 0]
        if r.size:
            vals.append(np.isin(r, g[g >= 0]).sum() / r.size)
    return float(np.mean(vals)) if vals else float("nan")


def measure(search: Callable[[slice], np.ndarray], n_queries: int, b1: int, batch: int,
            ref: np.ndarray | None) -> dict:
    """Time ``search(slice) -> ids (b, k)``: batch 1 over the first ``b1`` queries, then batches of ``batch``.

    A warm-up call on a few queries precedes the timings (lazy structures, caches).
    """
    search(slice(0, min(8, n_queries)))
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
    ids = np.concatenate(parts)
    lat_ms = np.asarray(lat) * 1e3
    out = {
        "qps_b1": float(len(lat) / sum(lat)) if lat else None,
        "p50_ms": float(np.percentile(lat_ms, 50)) if lat else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if lat else None,
        f"qps_b{batch}": float(n_queries / t_total),
        "batched_seconds": float(t_total),
    }
    if ref is not None:
        out["recall"] = recall_at_k(ids, ref)
    return out


# ------------------------------------------------------------------------------------------------ methods
class _Deadline:
    def __init__(self, start: float, budget: float | None) -> None:
        self.start, self.budget = start, budget

    def passed(self) -> bool:
        return self.budget is not None and time.perf_counter() - self.start > self.budget


def _concat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def bench_exact(data: BenchData, cfg: ServingBenchConfig, log: Log) -> tuple[dict, np.ndarray]:
    """Flat inner-product scan (FAISS ``IndexFlatIP`` on concatenated facets): reference ids and its own speed."""
    from mfli.baselines.ann import AnnConfig, AnnIndex

    q = _concat(data.queries)
    with MemoryMeter() as mem:
        t0 = time.perf_counter()
        index = AnnIndex(AnnConfig(kind="exact", num_threads=cfg.threads)).build(_concat(data.items), data.item_ids)
        build = time.perf_counter() - t0
    # FAISS's flat scan is far faster per query on large batches: the reference takes 4096 at a time
    ref = np.concatenate([index.search(q[s : s + 4096], cfg.k)[0] for s in range(0, len(q), 4096)])
    nq = min(len(q), cfg.exact_queries)
    point = measure(lambda sl: index.search(q[sl], cfg.k)[0], nq, min(cfg.b1_queries, cfg.exact_b1_queries),
                    cfg.batch_size, ref[:nq])
    point["timed_queries"] = nq
    log(f"  exact: {point['qps_b1']:.1f} q/s (b1), {point[f'qps_b{cfg.batch_size}']:.1f} q/s (b{cfg.batch_size})")
    out = {"n_items": len(data.item_ids), "params": {"index": "IndexFlatIP", "dim": int(q.shape[1])},
           "build": {"seconds": {"total": build}, "index_bytes": int(index.memory_bytes()),
                     "serving_bytes": int(index.memory_bytes()), **mem.report()},
           "sweep": [{**point}]}
    return out, ref


def bench_mfli(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: _Deadline, log: Log) -> dict:
    """Encode code paths, build the CSR index, rebalance, serve by beam search (user mode, merge="sum")."""
    from mfli.index.build import auto_rebalance_config
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.index.split_merge import rebalance
    from mfli.serve.retriever import Retriever, RetrieverConfig

    sec: dict[str, float] = {}
    rb_cfg = auto_rebalance_config(len(data.item_ids), seed=cfg.seed)
    with MemoryMeter() as mem:
        set_threads(cfg.build_threads)
        t0 = time.perf_counter()
        codes = encode_paths(data.items, data.codebooks)
        sec["encode_paths"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = MultiFacetIndex.build(data.item_ids, data.items, codes, data.codebooks, facet_names=data.facet_names)
        sec["csr_build"] = time.perf_counter() - t0
        del codes
        t0 = time.perf_counter()
        res = rebalance(index, rb_cfg)
        sec["rebalance"] = time.perf_counter() - t0
        del index
        index = res.index
        set_threads(cfg.threads)
        t0 = time.perf_counter()
        retriever = Retriever(index, data.codebooks, config=RetrieverConfig(merge="sum"))
        retriever.retrieve_users(data.queries[:1], k=cfg.k, beam=4)  # builds the lazy merge="sum" blocks
        sec["serving_prep"] = time.perf_counter() - t0
        gc.collect()
    sec["total"] = sum(sec.values())
    # what serving holds: the index (embeddings included) plus the retriever's facet-ordered copies,
    # (nnz_f, d) per facet and, for merge="sum", (nnz_f, F * d) per facet (see the Retriever docstring)
    F, d = index.n_facets, index.dim
    nnz = [int(csr.rows.size) for csr in index.facets]
    serving_bytes = int(index.nbytes() + sum(n * d * 4 + n * F * d * 4 for n in nnz))
    balance = [{"facet": data.facet_names[f], "clusters_before": b.n_clusters, "clusters_after": a.n_clusters,
                "max_before": b.max_size, "max_after": a.max_size, "gini_before": round(b.gini, 4),
                "gini_after": round(a.gini, 4)} for f, (b, a) in enumerate(zip(res.before, res.after))]
    log(f"  mfli: built in {sec['total']:.1f}s (encode {sec['encode_paths']:.1f}, csr {sec['csr_build']:.1f}, "
        f"rebalance {sec['rebalance']:.1f}); clusters {[b['clusters_after'] for b in balance]}")
    sweep = []
    for beam, cpq in cfg.mfli_sweep:
        if deadline.passed():
            sweep.append({"beam": beam, "clusters_per_query": cpq, "skipped": "over budget"})
            continue
        retriever.config.clusters_per_query = cpq
        point = measure(lambda sl, b=beam: retriever.retrieve_users(data.queries[sl], k=cfg.k, beam=b).item_ids,
                        len(data.queries), cfg.b1_queries, cfg.batch_size, ref)
        sweep.append({"beam": beam, "clusters_per_query": cpq, **point})
        log(f"  mfli beam={beam} clusters/query={cpq}: recall {point['recall']:.3f}, {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}, p99 {point['p99_ms']:.2f} ms")
    return {
        "n_items": len(data.item_ids),
        "params": {"L": int(data.codebooks.shape[0]), "M": int(data.codebooks.shape[2]), "facets": data.facet_names,
                   "merge": "sum", "beam_score": "ip", "rebalance": asdict(rb_cfg),
                   "codebook_source": data.source.get("codebook_source")},
        "build": {"seconds": sec, "index_bytes": int(index.nbytes()), "serving_bytes": serving_bytes, **mem.report(),
                  "note": "index_bytes: the saved index (embeddings, CSR, maps); serving_bytes adds the "
                          "retriever's facet-ordered copies of the embeddings"},
        "balance": balance,
        "sweep": sweep,
    }


def bench_hnsw(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: _Deadline, log: Log) -> dict:
    """FAISS HNSW (M=32, efConstruction=40) over the concatenated facets; efSearch sweep."""
    from mfli.baselines.ann import AnnConfig, AnnIndex

    x, q = _concat(data.items), _concat(data.queries)
    with MemoryMeter() as mem:
        t0 = time.perf_counter()
        index = AnnIndex(AnnConfig(kind="hnsw", hnsw_m=cfg.hnsw_m, ef_construction=cfg.ef_construction,
                                   num_threads=cfg.build_threads)).build(x, data.item_ids)
        build = time.perf_counter() - t0
    del x
    index.cfg.num_threads = cfg.threads
    log(f"  hnsw: built in {build:.1f}s ({cfg.build_threads} threads)")
    sweep = []
    for ef in cfg.hnsw_ef:
        if deadline.passed():
            sweep.append({"ef_search": ef, "skipped": "over budget"})
            continue
        index.set_search_params(ef_search=ef)
        point = measure(lambda sl: index.search(q[sl], cfg.k)[0], len(q), cfg.b1_queries, cfg.batch_size, ref)
        sweep.append({"ef_search": max(ef, cfg.k), **point})
        log(f"  hnsw ef={ef}: recall {point['recall']:.3f}, {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}")
    return {"n_items": len(data.item_ids),
            "params": {"M": cfg.hnsw_m, "ef_construction": cfg.ef_construction, "dim": int(q.shape[1]),
                       "build_threads": cfg.build_threads},
            "build": {"seconds": {"total": build}, "index_bytes": int(index.memory_bytes()),
                      "serving_bytes": int(index.memory_bytes()), **mem.report()},
            "sweep": sweep}


def bench_ivf(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: _Deadline, log: Log) -> dict:
    """FAISS IVF-Flat, nlist = 4 sqrt(N): k-means on a sample of ``ivf_train_per_list * nlist`` vectors,
    then every other vector added (FAISS's usual practice); nprobe sweep."""
    from mfli.baselines.ann import AnnConfig, AnnIndex, ivf_nlist

    x, q = _concat(data.items), _concat(data.queries)
    N = len(x)
    nlist = ivf_nlist(N)
    rng = np.random.default_rng(cfg.seed)
    n_train = min(N, cfg.ivf_train_per_list * nlist)
    perm = rng.permutation(N)
    first, rest = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    sec = {}
    with MemoryMeter() as mem:
        index = AnnIndex(AnnConfig(kind="ivf", nlist=nlist, mode="incremental", num_threads=cfg.build_threads))
        t0 = time.perf_counter()
        index.build(x[first], data.item_ids[first])
        sec["train_and_add_sample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if rest.size:
            index.add(x[rest], data.item_ids[rest])
        sec["add_rest"] = time.perf_counter() - t0
    sec["total"] = sum(sec.values())
    del x
    index.cfg.num_threads = cfg.threads
    log(f"  ivf: nlist={nlist}, built in {sec['total']:.1f}s")
    sweep = []
    for nprobe in cfg.ivf_nprobe:
        if nprobe > nlist:
            continue
        if deadline.passed():
            sweep.append({"nprobe": nprobe, "skipped": "over budget"})
            continue
        index.set_search_params(nprobe=nprobe)
        point = measure(lambda sl: index.search(q[sl], cfg.k)[0], len(q), cfg.b1_queries, cfg.batch_size, ref)
        sweep.append({"nprobe": nprobe, **point})
        log(f"  ivf nprobe={nprobe}: recall {point['recall']:.3f}, {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}")
    return {"n_items": int(N), "params": {"nlist": nlist, "train_sample": int(n_train), "dim": int(q.shape[1])},
            "build": {"seconds": sec, "index_bytes": int(index.memory_bytes()),
                      "serving_bytes": int(index.memory_bytes()), **mem.report()}, "sweep": sweep}


def bench_dr(data: BenchData, cfg: ServingBenchConfig, deadline: _Deadline, log: Log) -> dict:
    """Deep Retrieval on ``dr_items`` items: fit (EM) on the same events, place untrained items from
    content neighbours, beam sweep; recall against the re-ranker's brute force over its catalogue."""
    import torch

    from mfli.baselines.deep_retrieval import DeepRetrieval, DRConfig

    if data.interactions is None or data.histories is None:
        return {"skipped": "Deep Retrieval needs interactions (embeddings='model' only)"}
    inter = data.interactions
    N = len(data.item_ids)
    trained_ids = np.unique(inter["item_id"].to_numpy(np.int64))
    n_dr = N if not cfg.dr_items or cfg.dr_items >= N else max(cfg.dr_items, len(trained_ids))
    rng = np.random.default_rng(cfg.seed)
    others = np.setdiff1d(data.item_ids, trained_ids)
    cat = np.sort(np.concatenate([trained_ids, rng.choice(others, n_dr - len(trained_ids), replace=False)]))
    rows = np.searchsorted(data.item_ids, cat)
    content = _concat(data.items[rows])
    J, D = 3, 2
    K = cfg.dr_nodes or max(8, round(math.sqrt(n_dr * J / 30)))
    drc = DRConfig(n_layers=D, n_nodes=K, n_paths=J, em_rounds=1, epochs_per_round=1, final_epochs=1,
                   score_pairs_max=50_000, eval_pairs_max=5_000, num_threads=cfg.threads, seed=cfg.seed)
    dr = DeepRetrieval(drc)
    with MemoryMeter() as mem:
        t0 = time.perf_counter()
        dr.fit(inter, item_ids=cat, item_content=content)
        fit_s = time.perf_counter() - t0
    del content
    log(f"  dr: {n_dr:,} items ({len(trained_ids):,} trained), K={K}, D={D}, fit {fit_s:.1f}s")
    torch.set_num_threads(cfg.threads)
    # the model is frozen while serving: compute the re-ranker's item vectors once (see the module docstring)
    rr = dr.net.reranker
    with torch.no_grad():
        cached = rr.items()
    rr.items = lambda idx=None: cached if idx is None else cached[idx]
    H = data.histories
    with torch.no_grad():
        u = np.concatenate([rr.user(dr.user_vectors(H[s : s + 1024])).numpy() for s in range(0, len(H), 1024)])
    import faiss

    flat = faiss.IndexFlatIP(u.shape[1])
    flat.add(cached.numpy())
    ref = dr.item_ids[flat.search(np.ascontiguousarray(u), cfg.k)[1]]
    sweep = []
    for beam in cfg.dr_beams:
        if deadline.passed():
            sweep.append({"beam": beam, "skipped": "over budget"})
            continue
        point = measure(lambda sl, b=beam: dr.retrieve(H[sl], k=cfg.k, beam=b, exclude=None)[0], len(H),
                        cfg.b1_queries, cfg.batch_size, ref)
        dr.retrieve(H[: cfg.batch_size], k=cfg.k, beam=beam, exclude=None)
        point["union_mean"] = float(dr.last_union_sizes.mean())
        sweep.append({"beam": beam, **point})
        log(f"  dr beam={beam}: recall {point['recall']:.3f} (vs its brute force), {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}, union {point['union_mean']:.0f}")
    # serving holds the networks, the paths (+ their CSR) and the cached re-ranker item vectors
    model_bytes = sum(p.numel() * p.element_size() for p in dr.net.parameters())
    dr_bytes = int(model_bytes + dr.codes.nbytes * 2 + cached.numel() * 4)
    return {"n_items": int(n_dr), "n_trained_items": len(trained_ids),
            "params": {"n_layers": D, "n_nodes": K, "n_paths": J, "em_rounds": 1, "alpha": drc.alpha,
                       "content_for_placement": "two-tower content embeddings (concatenated facets)"},
            "reference": "the re-ranker's brute-force top-k over DR's catalogue (its own exact search)",
            "build": {"seconds": {"fit": fit_s, "total": fit_s}, "index_bytes": dr_bytes, "serving_bytes": dr_bytes,
                      **mem.report()}, "sweep": sweep}


# ------------------------------------------------------------------------------------------------ analysis
def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto points (recall, qps): sorted by recall, each faster than every point of higher recall."""
    pts = sorted(p for p in points if p[0] is not None and p[1] is not None and np.isfinite(p[0]))
    out: list[tuple[float, float]] = []
    for r, q in reversed(pts):
        if not out or q > out[-1][1]:
            out.append((r, q))
    return out[::-1]


def qps_at_recall(points: list[tuple[float, float]], target: float) -> float | None:
    """Queries/s a method reaches at ``target`` recall: log-linear between the Pareto points around it;
    below its lowest recall, its fastest point; above its highest recall, None (not reached)."""
    fr = _frontier(points)
    if not fr or target > fr[-1][0] + 1e-12:
        return None
    if target <= fr[0][0]:
        return fr[0][1]
    for (r0, q0), (r1, q1) in itertools.pairwise(fr):
        if r0 <= target <= r1:
            t = (target - r0) / (r1 - r0) if r1 > r0 else 1.0
            return float(math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0))))
    return None


def equal_recall(methods: dict, key: str, base: str = "mfli",
                 targets: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)) -> dict:
    """Per target recall: every method's interpolated ``key`` (queries/s) and ``base``'s ratio to each.

    Also, at every sweep point of each other method, ``base``'s interpolated speed at that point's recall
    (the matched comparison on the other method's own curve). DR is left out: its recall is against
    another reference and its catalogue is smaller.
    """
    curves = {}
    for name, m in methods.items():
        if name in ("dr", "exact") or "sweep" not in m:
            continue
        curves[name] = [(p.get("recall"), p.get(key)) for p in m["sweep"] if "skipped" not in p]
    table = []
    for t in targets:
        row = {"recall": t}
        for name, pts in curves.items():
            row[name] = qps_at_recall(pts, t)
        if row.get(base):
            for name in curves:
                if name != base and row.get(name):
                    row[f"{base}_over_{name}"] = row[base] / row[name]
        table.append(row)
    matched = {}
    for name, pts in curves.items():
        if name == base or base not in curves:
            continue
        rows = []
        for r, q in pts:
            b = qps_at_recall(curves[base], r)
            rows.append({"recall": r, name: q, base: b, "ratio": (b / q) if b else None})
        matched[name] = rows
    return {"key": key, "by_target": table, "at_points": matched}


def headline(result: dict, key: str) -> dict:
    """MFLI vs HNSW at matched recall@k: the ratio at the highest recall HNSW reaches that MFLI reaches too."""
    rows = result.get("equal_recall", {}).get(key, {}).get("at_points", {}).get("hnsw", [])
    ok = [r for r in rows if r["ratio"] is not None]
    if not ok:
        return {"key": key, "ratio": None, "note": "no overlap of the recall ranges"}
    best = max(ok, key=lambda r: r["recall"])
    return {"key": key, "recall": best["recall"], "mfli_qps": best["mfli"], "hnsw_qps": best["hnsw"],
            "ratio": best["ratio"], "target": 1.5, "meets_target": bool(best["ratio"] >= 1.5),
            "ratio_range": [min(r["ratio"] for r in ok), max(r["ratio"] for r in ok)]}


# ------------------------------------------------------------------------------------------------ driver
def run_serving_bench(cfg: ServingBenchConfig, log: Log = print) -> dict:
    """Run the whole benchmark; returns the JSON-ready result (see the module docstring)."""
    cfg.validated()
    t_start = time.perf_counter()
    deadline = _Deadline(t_start, cfg.budget_s)
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
    for name in ("mfli", "hnsw", "ivf", "dr"):
        if name not in cfg.methods:
            continue
        log(name)
        t0 = time.perf_counter()
        if name == "mfli":
            methods[name] = bench_mfli(data, cfg, ref, deadline, log)
        elif name == "hnsw":
            methods[name] = bench_hnsw(data, cfg, ref, deadline, log)
        elif name == "ivf":
            methods[name] = bench_ivf(data, cfg, ref, deadline, log)
        else:
            methods[name] = bench_dr(data, cfg, deadline, log)
        methods[name]["wall_seconds"] = time.perf_counter() - t0
        gc.collect()
    bkey = f"qps_b{cfg.batch_size}"
    result["equal_recall"] = {key: equal_recall(methods, key) for key in ("qps_b1", bkey)}
    result["headline"] = {key: headline(result, key) for key in ("qps_b1", bkey)}
    machine_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["machine"]["load_average_end"] = list(machine_end) if machine_end else None
    result["total_seconds"] = time.perf_counter() - t_start
    log(f"done in {result['total_seconds']:.0f}s")
    return result


# ------------------------------------------------------------------------------------------------ output
def _fmt(x, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _param(name: str, p: dict) -> str:
    if name == "mfli":
        return f"beam {p['beam']}, clusters {p['clusters_per_query'] or 'all'}"
    if name == "hnsw":
        return f"efSearch {p['ef_search']}"
    if name == "ivf":
        return f"nprobe {p['nprobe']}"
    if name == "dr":
        return f"beam {p['beam']}"
    return "-"


def format_tables(result: dict) -> str:
    """Markdown tables: build cost per method, the sweep points, the equal-recall comparison."""
    bs = result["config"]["batch_size"]
    bkey = f"qps_b{bs}"
    methods = result["methods"]
    lines = ["| method | items | build (s) | index (MB) | serving memory (MB) | peak RSS growth in build (MB) |",
             "|---|---|---|---|---|---|"]
    for name, m in methods.items():
        if "build" not in m:
            continue
        b = m["build"]
        lines.append(f"| {name} | {m['n_items']:,} | {b['seconds']['total']:.1f} | "
                     f"{b.get('index_bytes', 0) / 2**20:,.0f} | {b.get('serving_bytes', 0) / 2**20:,.0f} | "
                     f"{b['peak_rss_delta_bytes'] / 2**20:,.0f} |")
    head = (f"| method | setting | recall@{result['config']['k']} | q/s batch 1 | p50 ms | p99 ms | "
            f"q/s batch {bs} |")
    lines += ["", head, "|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        for p in m.get("sweep", []):
            if "skipped" in p:
                lines.append(f"| {name} | {_param(name, p)} | skipped ({p['skipped']}) | | | | |")
                continue
            lines.append(f"| {name} | {_param(name, p)} | {p['recall']:.3f} | {_fmt(p['qps_b1'])} | "
                         f"{_fmt(p['p50_ms'], 2)} | {_fmt(p['p99_ms'], 2)} | {_fmt(p[bkey])} |")
    for key in ("qps_b1", bkey):
        er = result["equal_recall"][key]
        others = [n for n in ("hnsw", "ivf") if n in methods]
        lines += ["", f"Equal recall ({'batch 1' if key == 'qps_b1' else f'batch {bs}'}, queries/s):", "",
                  "| recall@k | mfli | " + " | ".join(others) + " | " +
                  " | ".join(f"mfli / {o}" for o in others) + " |",
                  "|---|" + "---|" * (1 + 2 * len(others))]
        for row in er["by_target"]:
            if not any(row.get(n) for n in ["mfli", *others]):
                continue
            lines.append(f"| {row['recall']:.2f} | {_fmt(row.get('mfli'))} | "
                         + " | ".join(_fmt(row.get(o)) for o in others) + " | "
                         + " | ".join(_fmt(row.get(f"mfli_over_{o}"), 2) for o in others) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """Recall@k vs queries/s (log scale), batch 1 and batched, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = result["config"]["batch_size"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"mfli": ("C0", "o"), "hnsw": ("C1", "s"), "ivf": ("C2", "^"), "dr": ("C3", "D"), "exact": ("k", "*")}
    for ax, key, title in ((axes[0], "qps_b1", "batch 1"), (axes[1], f"qps_b{bs}", f"batch {bs}")):
        for name, m in result["methods"].items():
            pts = [p for p in m.get("sweep", []) if "skipped" not in p and p.get(key)]
            if not pts:
                continue
            color, marker = styles.get(name, ("C5", "x"))
            label = name if name != "dr" else f"dr (N={m['n_items']:,}, own reference)"
            ax.plot([p["recall"] for p in pts], [p[key] for p in pts], marker=marker, color=color, label=label,
                    linestyle="-" if name != "exact" else "none", markersize=8 if name == "exact" else 6)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{result['config']['k']} vs exact search")
        ax.set_ylabel("queries/s (1 thread)" if result["config"]["threads"] == 1 else "queries/s")
        ax.set_title(f"{title}, N={result['config']['n_items']:,}, F*d={result['config']['facets'] * result['config']['dim']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


__all__ = ["BenchData", "MemoryMeter", "ServingBenchConfig", "equal_recall", "format_tables", "machine_info",
           "plot", "qps_at_recall", "recall_at_k", "run_serving_bench", "train_bench_model", "write_json"]
