"""Serving-engine benchmark: MFLI's compiled scan engine against the fastest ANN libraries.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/serving_engine.py --items 1000000 --budget 840 \
        --out docs/results/serving_engine_1m.json

One process, one catalogue, one set of queries; data, queries and codebooks come from
:func:`mfli.eval.serving_bench.prepare_data` (the same generation as ``mfli bench serving``).

**User mode.** Recall@k against exact search over ``sum_f q_f . e_f``; every method ranks by that
score over the F * d concatenation:

- ``mfli``: :class:`~mfli.serve.engine.ScanEngine` over the rebalanced MultiFacetIndex (learned-code +
  residual-PQ pre-ranking, exact short list); sweep over ``(n_clusters, shortlist)``;
- ``mfli_fs``: the same engine over the same index with the 4-bit fast-scan pre-ranker
  (``prerank="fastscan"``, what snapshots serve); its own sweep;
- ``ivf``: FAISS IVF-Flat, nlist = 4 sqrt(N) (the floor of the targets); nprobe sweep;
- ``ivfpq_fs``: FAISS IVF-PQ fast-scan (4-bit PQ, one sub-quantiser per 2 dims) with an exact reorder
  of ``k_factor * k`` candidates (``IndexRefineFlat``); sweep over (nprobe, k_factor);
- ``scann``: ScaNN 1.4.2, tree + asymmetric hashing + exact reorder; sweep over (leaves searched, reorder);
- ``hnsw``: FAISS HNSW (M=32, efConstruction=40); efSearch sweep.

Each sweep point is timed at batch 1 and batch ``batch_size``, on 1 and on 2 threads; recall from
the batched run. Equal-recall tables interpolate queries/s (log-linear between Pareto points).

**Trigger mode** (item to item). A request is ``T`` trigger items; the answer is the k items (the
triggers excluded) with the best ``max_t sum_f e_t,f . e_i,f``. The exact reference merges exact
per-trigger neighbour lists (each trigger's top ``k + T``, which contains every item of the merged
top k that it is the best trigger of). Baselines run one ANN search per trigger (all triggers of a
batch in one call) and merge the lists the same way, merge included in the timing; MFLI scans each
trigger's own clusters (plus ``extra_clusters`` nearest ones) in one engine call.

Timings are relative within one run: the machine is shared and noisy.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from mfli.eval.serving.ann_libs import build_ivfpq_fs, build_scann, scann_search
from mfli.eval.serving.config import ServingBenchConfig
from mfli.eval.serving.data import prepare_data
from mfli.eval.serving.machine import MemoryMeter, machine_info, set_threads
from mfli.eval.serving.methods import Deadline
from mfli.eval.serving.report import qps_at_recall
from mfli.eval.serving.timing import recall_at_k, timed_runs

Log = Callable[[str], None]


@dataclass
class EngineBenchConfig:
    """What the engine benchmark builds and measures (defaults: the 1M-item run on 2 shared cores)."""

    n_items: int = 1_000_000
    dim: int = 64  # d per facet
    facets: int = 2
    layers: int = 2
    codes: int = 256
    n_queries: int = 2048
    b1_queries: int = 200
    batch_size: int = 256
    k: int = 100
    embeddings: str = "model"  # as ServingBenchConfig
    model_dir: str | None = None  # reuse a model saved by an earlier run (skips training)
    save_model_dir: str | None = None
    threads: tuple[int, ...] = (1, 2)  # search threads measured
    # "mfli": the engine pre-ranking by learned codes; "mfli_fs": by 4-bit fast-scan codes (same index)
    methods: tuple[str, ...] = ("mfli", "mfli_fs", "ivf", "ivfpq_fs", "scann", "hnsw")
    seed: int = 0
    # mfli engine
    pq_subquantizers: int = 32
    mfli_sweep: tuple[tuple[int, int], ...] = ((12, 200), (16, 200), (24, 250), (32, 300), (48, 400), (64, 500))
    # (n_clusters, shortlist) of the fast-scan pre-ranker: scanning is cheap, so wider routing
    mfli_fs_sweep: tuple[tuple[int, int], ...] = ((24, 200), (32, 200), (48, 300), (64, 300), (64, 400),
                                                  (96, 400), (96, 500), (128, 500))
    # baselines
    ivf_nprobe: tuple[int, ...] = (16, 24, 32, 48, 64)
    ivfpq_sweep: tuple[tuple[int, int], ...] = ((16, 4), (24, 4), (32, 6), (48, 6), (64, 8))
    scann_leaves: int = 2000  # ~sqrt(N) * 2 at 1M (STACK_NOTES: tree + AH + reorder)
    # from 20 leaves: the sweep must reach below recall 0.90, or "ScaNN at 0.90" is a slower, higher point
    scann_sweep: tuple[tuple[int, int], ...] = ((20, 200), (30, 250), (40, 250), (60, 300), (80, 400), (120, 500),
                                                (160, 600))
    hnsw_ef: tuple[int, ...] = (400, 1600)
    hnsw_build_threads: int = 2
    # trigger mode
    trigger_counts: tuple[int, ...] = (1, 4, 16)
    trigger_headline: int = 4  # T of the equal-recall trigger table
    trigger_requests: int = 256
    trigger_batch: int = 64
    # requests timed one at a time: every one. A one-trigger request from the lists takes ~15 us at 1M items,
    # so 64 of them last ~1 ms, and one scheduler pause of that order halved the mean rate
    trigger_b1: int = 256
    mfli_trigger_sweep: tuple[tuple[int, int], ...] = ((0, 200), (2, 300), (4, 400), (8, 500))
    # neighbour-list trigger mode (EngineConfig.neighbours = k): columns probed per column at build
    # (None: the engine's default, mfli.serve.neighbours.auto_probe)
    mfli_trigger_lists: tuple[int | None, ...] = (4, None, 16)
    # also time the same lists rescored exactly (mfli_lists_exact, EngineConfig.list_scores=False) and / or
    # stored as int32 rows (mfli_lists_int32)
    trigger_lists_exact: bool = True
    trigger_lists_int32: bool = False
    ann_trigger_ivf: tuple[int, ...] = (1, 2, 4, 8, 16)
    ann_trigger_hnsw: tuple[int, ...] = (120, 240)
    ann_trigger_scann: tuple[tuple[int, int], ...] = ((5, 150), (10, 200), (20, 250), (40, 300), (80, 400))
    budget_s: float | None = None  # skip remaining sweep points once the run is this old
    targets: tuple[float, ...] = field(default=(0.8, 0.85, 0.9, 0.95))
    trigger_targets: tuple[float, ...] = field(default=(0.8, 0.9, 0.95, 0.97, 0.99))


# ------------------------------------------------------------------------------------------- timing
def _timed(fn: Callable[[slice], np.ndarray], n: int, b1: int, batch: int) -> tuple[float | None, float, np.ndarray,
                                                                                  float | None]:
    """``(q/s at batch 1, q/s at batch ``batch``, batched ids, p50 ms)`` of ``fn(slice) -> ids``."""
    lat, tot, ids = timed_runs(fn, n, b1, batch)
    qb1 = len(lat) / sum(lat) if lat else None
    p50 = float(np.median(lat) * 1e3) if lat else None
    return qb1, n / tot, ids, p50


def _point(fn, ref, cfg: EngineBenchConfig, set_t: Callable[[int], None]) -> dict:
    """Recall and q/s at batch ``batch_size`` for each thread count, at batch 1 on the first (1 thread:
    a single query is not split across threads by any method here, and idle OpenMP threads spin)."""
    out: dict = {}
    for t in cfg.threads:
        set_t(t)
        w0, c0 = time.perf_counter(), time.process_time()
        qb1, qb, ids, p50 = _timed(fn, len(ref), cfg.b1_queries if t == cfg.threads[0] else 0, cfg.batch_size)
        # CPU seconds per wall second: about t, unless a library uses more threads than it was given
        out[f"cpu_per_wall_t{t}"] = (time.process_time() - c0) / (time.perf_counter() - w0)
        out[f"qps_b1_t{t}"] = qb1
        out[f"qps_b{cfg.batch_size}_t{t}"] = qb
        out[f"p50_ms_t{t}"] = p50
        if "recall" not in out:
            out["recall"] = recall_at_k(ids, ref)
    set_t(1)
    return out


# ------------------------------------------------------------------------------------------- trigger data
def trigger_requests(n_items: int, n_requests: int, T: int, seed: int) -> np.ndarray:
    """``(n_requests, T)`` distinct random trigger rows per request."""
    rng = np.random.default_rng(seed + 1000 * T)
    return np.stack([rng.choice(n_items, T, replace=False) for _ in range(n_requests)])


def merge_per_trigger(ids: np.ndarray, scores: np.ndarray, T: int, k: int, triggers: np.ndarray) -> np.ndarray:
    """Merge per-trigger lists into one per request: best score per item, triggers dropped, top k.

    Args:
        ids, scores: ``(B * T, k')`` per-trigger results (rows of a request contiguous; -1 padding).
        triggers: ``(B, T)`` the requests' trigger ids.
    Returns:
        ``(B, k)`` int64 ids (-1 padding).
    """
    from mfli.serve.merge import merge_best

    B = triggers.shape[0]
    owner = np.repeat(np.arange(B), T)
    own_triggers = np.repeat(triggers, T, axis=0)  # (B * T, T): each row's request's triggers
    hit = (ids[:, :, None] == own_triggers[:, None, :]).any(-1)
    return merge_best(np.where(hit, -1, ids), scores, owner, B, k)


# ------------------------------------------------------------------------------------------- methods
def _faiss_threads(t: int) -> None:
    import faiss

    faiss.omp_set_num_threads(t)


def build_ivf(x: np.ndarray, nlist: int, seed: int):
    """IVF-Flat (inner product): k-means on 39 * nlist sampled vectors, all vectors added."""
    import faiss

    D = x.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    index.cp.seed = seed
    index.train(x[np.sort(rng.choice(len(x), min(len(x), 39 * nlist), replace=False))])
    index.add(x)
    return index, int(len(x) * (D * 4 + 8) + nlist * D * 4)


# ------------------------------------------------------------------------------------------- driver
def run_engine_bench(cfg: EngineBenchConfig, log: Log = print) -> dict:
    """Run the whole benchmark; returns the JSON-ready result."""
    import faiss
    import numba

    from mfli.index.build import auto_rebalance_config
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.index.split_merge import rebalance
    from mfli.serve.engine import EngineConfig, ScanEngine

    t_start = time.perf_counter()
    deadline = Deadline(t_start, cfg.budget_s)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    set_threads(1)
    scfg = ServingBenchConfig(n_items=cfg.n_items, dim=cfg.dim, n_queries=cfg.n_queries, facets=cfg.facets,
                              layers=cfg.layers, codes=cfg.codes, embeddings=cfg.embeddings, seed=cfg.seed,
                              model_dir=cfg.model_dir, save_model_dir=cfg.save_model_dir, methods=("exact",))
    log(f"engine benchmark: N={cfg.n_items:,} F={cfg.facets} d={cfg.dim} Q={cfg.n_queries}")
    data, data_sec = prepare_data(scfg, log)
    X = np.ascontiguousarray(data.items.reshape(len(data.items), -1))
    Qc = np.ascontiguousarray(data.queries.reshape(len(data.queries), -1))
    N, D = X.shape
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(D)
    flat.add(X)
    ref = np.concatenate([flat.search(Qc[s : s + 4096], cfg.k)[1] for s in range(0, len(Qc), 4096)])
    ref_sec = time.perf_counter() - t0
    log(f"  reference: {ref_sec:.1f}s")
    result: dict = {"config": asdict(cfg), "machine": machine_info(), **data.source, "data_seconds": data_sec,
                    "reference_seconds": ref_sec, "methods": {}, "trigger": {}}
    methods = result["methods"]
    nlist = round(4 * math.sqrt(N))
    bk = f"qps_b{cfg.batch_size}"

    # trigger-mode requests and their exact merged reference (shared by every method)
    trig_sets = {T: trigger_requests(N, cfg.trigger_requests, T, cfg.seed) for T in cfg.trigger_counts}
    trig_ref = {}
    for T, rows in trig_sets.items():
        d_, i_ = flat.search(X[rows.reshape(-1)], cfg.k + T)
        trig_ref[T] = merge_per_trigger(i_, d_, T, cfg.k, rows)
    del flat
    gc.collect()

    def trig_points(name: str, run: Callable[[np.ndarray], np.ndarray]) -> dict:
        """Per trigger count: recall vs the merged exact reference, requests/s at batch 1 and batched."""
        out = {}
        for T, rows in trig_sets.items():
            fn = lambda sl, r=rows: run(r[sl])
            w0, c0 = time.perf_counter(), time.process_time()
            qb1, qb, ids, p50 = _timed(fn, len(rows), cfg.trigger_b1, cfg.trigger_batch)
            out[str(T)] = {"recall": recall_at_k(ids, trig_ref[T]), "rps_b1": qb1,
                           f"rps_b{cfg.trigger_batch}": qb, "p50_ms": p50,
                           "cpu_per_wall": (time.process_time() - c0) / (time.perf_counter() - w0)}
        return out

    # ---------------------------------------------------------------- MFLI engine (both pre-rankers)
    variants = [(m, "codes" if m == "mfli" else "fastscan") for m in ("mfli", "mfli_fs") if m in cfg.methods]
    if variants:
        sec_index = {}
        t0 = time.perf_counter()
        codes = encode_paths(data.items, data.codebooks)
        sec_index["encode_paths"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = MultiFacetIndex.build(data.item_ids, data.items, codes, data.codebooks,
                                      facet_names=data.facet_names)
        index = rebalance(index, auto_rebalance_config(N, seed=cfg.seed)).index
        sec_index["csr_and_rebalance"] = time.perf_counter() - t0
        # results are item ids; the reference holds rows (the catalogue order the index was built in)
        ident = bool(np.array_equal(index.item_ids, np.arange(N)))
        as_rows = (lambda ids: ids) if ident else (lambda ids: np.where(ids >= 0, index.rows_of(ids), -1))
    for name, prerank in variants:
        log(f"{name} engine (pre-rank: {prerank})")
        sec = dict(sec_index)
        with MemoryMeter() as mem:
            t0 = time.perf_counter()
            engine = ScanEngine(index, data.codebooks, EngineConfig(pq_subquantizers=cfg.pq_subquantizers,
                                                                    threads=max(cfg.threads), seed=cfg.seed,
                                                                    prerank=prerank),
                                codes=codes)
            sec["engine"] = time.perf_counter() - t0
            gc.collect()
        sec["total"] = sum(sec.values())
        nb_ = engine.nbytes()
        # serving holds the engine, the embeddings it reads in place, item ids and the id -> row lookup
        serving = nb_["total"] + index.item_ids.nbytes * 3
        log(f"  built in {sec['total']:.1f}s; clusters {[c.n_clusters for c in index.facets]}; "
            f"serving {serving / 2**20:.0f} MB")

        def eng_threads(t: int, engine=engine) -> None:
            engine.config.threads = t
            numba.set_num_threads(t)

        sweep = []
        for n, R in (cfg.mfli_sweep if prerank == "codes" else cfg.mfli_fs_sweep):
            if deadline.passed():
                sweep.append({"n_clusters": n, "shortlist": R, "skipped": "over budget"})
                continue
            p = _point(lambda sl, n=n, R=R, engine=engine: as_rows(
                engine.search(data.queries[sl], cfg.k, n_clusters=n, shortlist=R).item_ids),
                       ref, cfg, eng_threads)
            st = engine.search(data.queries[: cfg.batch_size], cfg.k, n_clusters=n, shortlist=R)
            p.update(entries=float(st.entries.mean()), rescored=float(st.rescored.mean()))
            sweep.append({"n_clusters": n, "shortlist": R, **p})
            log(f"  n={n} R={R}: recall {p['recall']:.3f}, b1 {p['qps_b1_t1']:.0f}, {bk} {p[bk + '_t1']:.0f} q/s "
                f"(2 threads {p.get(bk + '_t2', 0):.0f}), entries {p['entries']:.0f}")
        methods[name] = {"build": {"seconds": sec, "serving_bytes": int(serving), "engine_bytes": nb_,
                                   **mem.report()},
                         "params": {"clusters": [c.n_clusters for c in index.facets], "prerank": prerank,
                                    "pq_subquantizers": cfg.pq_subquantizers if prerank == "codes" else None,
                                    "fastscan": f"{D // 2}x4 by residual to cluster means" if prerank != "codes"
                                    else None, "routing": "joint"},
                         "sweep": sweep}
        tsweep = []
        for extra, R in cfg.mfli_trigger_sweep:
            if deadline.passed():
                break
            pts = trig_points(name, lambda r, e=extra, R=R, engine=engine: as_rows(engine.search_triggers(
                index.item_ids[r], cfg.k, extra_clusters=e, shortlist=R).item_ids))
            tsweep.append({"extra_clusters": extra, "shortlist": R, "by_T": pts})
            log(f"  trigger extra={extra} R={R}: " + ", ".join(
                f"T={T} recall {v['recall']:.3f} {v[f'rps_b{cfg.trigger_batch}']:.0f} r/s" for T, v in pts.items()))
        result["trigger"][name] = tsweep
        if name == variants[-1][0] and cfg.mfli_trigger_lists:
            from mfli.serve.neighbours import encode_lists

            lsweep, lsweepx, lsweep32 = [], [], []
            for probe in cfg.mfli_trigger_lists:
                if deadline.passed():
                    break
                t0 = time.perf_counter()
                engine.build_lists(cfg.k, probe)
                build = round(time.perf_counter() - t0, 1)
                # the lists as built (compact codes and stored scores by default), then the same lists
                # rescored exactly, and as int32 rows
                built = engine._lists
                stores = [("mfli_lists", lsweep, built)]
                if cfg.trigger_lists_exact and built.has_scores:
                    stores.append(("mfli_lists_exact", lsweepx, built.without_scores()))
                if cfg.trigger_lists_int32 and built.compact:
                    stores.append(("mfli_lists_int32", lsweep32, encode_lists(
                        engine.neighbour_rows(), engine._own, engine.col_neighbours, engine.entry_rows,
                        engine.offsets, compact=False)))
                for label, out_sweep, lists in stores:
                    engine.set_lists(lists)
                    pts = trig_points(label, lambda r, engine=engine: as_rows(engine.search_triggers(
                        index.item_ids[r], cfg.k, lists=True).item_ids))
                    out_sweep.append({"neighbours": cfg.k, "probe": engine.list_probe, "auto": probe is None,
                                      "build_seconds": build, "list_bytes": int(lists.nbytes),
                                      "list_compact": bool(lists.compact), "list_scores": bool(lists.has_scores),
                                      "by_T": pts})
                    log(f"  trigger {label} probe={engine.list_probe} (built in {build:.0f}s): " + ", ".join(
                        f"T={T} recall {v['recall']:.3f} {v[f'rps_b{cfg.trigger_batch}']:.0f} r/s"
                        for T, v in pts.items()))
            result["trigger"]["mfli_lists"] = lsweep
            if lsweepx:
                result["trigger"]["mfli_lists_exact"] = lsweepx
            if lsweep32:
                result["trigger"]["mfli_lists_int32"] = lsweep32
        del engine
        gc.collect()
    if variants:
        del index, codes
        gc.collect()

    # ---------------------------------------------------------------- IVF-Flat
    if "ivf" in cfg.methods:
        log(f"ivf-flat nlist={nlist}")
        with MemoryMeter() as mem:
            t0 = time.perf_counter()
            ivf, ivf_bytes = build_ivf(X, nlist, cfg.seed)
            build = time.perf_counter() - t0
        sweep = []
        for npb in cfg.ivf_nprobe:
            if deadline.passed():
                sweep.append({"nprobe": npb, "skipped": "over budget"})
                continue
            ivf.nprobe = npb
            p = _point(lambda sl: ivf.search(Qc[sl], cfg.k)[1], ref, cfg, _faiss_threads)
            sweep.append({"nprobe": npb, **p})
            log(f"  nprobe={npb}: recall {p['recall']:.3f}, b1 {p['qps_b1_t1']:.0f}, {bk} {p[bk + '_t1']:.0f} q/s")
        methods["ivf"] = {"build": {"seconds": {"total": build}, "serving_bytes": ivf_bytes, **mem.report()},
                          "params": {"nlist": nlist}, "sweep": sweep}
        tsweep = []
        for npb in cfg.ann_trigger_ivf:
            if deadline.passed():
                break
            ivf.nprobe = npb

            def run(r, T=None):
                T = r.shape[1]
                d_, i_ = ivf.search(X[r.reshape(-1)], cfg.k + T)
                return merge_per_trigger(i_, d_, T, cfg.k, r)

            tsweep.append({"nprobe": npb, "by_T": trig_points("ivf", run)})
        result["trigger"]["ivf"] = tsweep
        del ivf
        gc.collect()

    # ---------------------------------------------------------------- IVF-PQ fast-scan + reorder
    if "ivfpq_fs" in cfg.methods:
        log("ivf-pq fast-scan + reorder")
        with MemoryMeter() as mem:
            t0 = time.perf_counter()
            pqi, base, pq_bytes = build_ivfpq_fs(X, nlist, cfg.seed)
            build = time.perf_counter() - t0
        sweep = []
        for npb, kf in cfg.ivfpq_sweep:
            if deadline.passed():
                sweep.append({"nprobe": npb, "k_factor": kf, "skipped": "over budget"})
                continue
            base.nprobe = npb
            pqi.k_factor = kf
            p = _point(lambda sl: pqi.search(Qc[sl], cfg.k)[1], ref, cfg, _faiss_threads)
            sweep.append({"nprobe": npb, "k_factor": kf, **p})
            log(f"  nprobe={npb} k_factor={kf}: recall {p['recall']:.3f}, b1 {p['qps_b1_t1']:.0f}, "
                f"{bk} {p[bk + '_t1']:.0f} q/s")
        methods["ivfpq_fs"] = {"build": {"seconds": {"total": build}, "serving_bytes": pq_bytes, **mem.report()},
                               "params": {"nlist": nlist, "pq": f"{D // 2}x4 fast-scan", "reorder": "flat"},
                               "sweep": sweep}
        del pqi, base
        gc.collect()

    # ---------------------------------------------------------------- ScaNN
    if "scann" in cfg.methods:
        log("scann")
        with MemoryMeter() as mem:
            t0 = time.perf_counter()
            sc, sc_bytes = build_scann(X, cfg.k, cfg.scann_leaves, cfg.seed)
            build = time.perf_counter() - t0
        log(f"  built in {build:.1f}s")
        sweep = []
        for leaves, R in cfg.scann_sweep:
            if deadline.passed():
                sweep.append({"leaves": leaves, "reorder": R, "skipped": "over budget"})
                continue
            threads = {"n": 1}  # the count _point times next (scann_search's serial or parallel call)

            def set_threads_scann(t: int, box=threads) -> None:
                box["n"] = t

            p = _point(lambda sl, a=leaves, b=R: scann_search(sc, Qc[sl], cfg.k, a, b, threads["n"])[0], ref, cfg,
                       set_threads_scann)
            sweep.append({"leaves": leaves, "reorder": R, **p})
            log(f"  leaves={leaves} reorder={R}: recall {p['recall']:.3f}, b1 {p['qps_b1_t1']:.0f}, "
                f"{bk} {p[bk + '_t1']:.0f} q/s")
        methods["scann"] = {"build": {"seconds": {"total": build}, "serving_bytes": sc_bytes, **mem.report()},
                            "params": {"leaves": cfg.scann_leaves, "ah": "2 dims/block, threshold 0.2"},
                            "sweep": sweep}
        tsweep = []
        for leaves, R in cfg.ann_trigger_scann:
            if deadline.passed():
                break

            def run(r, a=leaves, b=R):
                T = r.shape[1]
                i_, d_ = scann_search(sc, X[r.reshape(-1)], cfg.k + T, a, b)
                return merge_per_trigger(i_, d_, T, cfg.k, r)

            tsweep.append({"leaves": leaves, "reorder": R, "by_T": trig_points("scann", run)})
        result["trigger"]["scann"] = tsweep
        del sc
        gc.collect()

    # ---------------------------------------------------------------- HNSW
    if "hnsw" in cfg.methods and not deadline.passed():
        log("hnsw")
        with MemoryMeter() as mem:
            _faiss_threads(cfg.hnsw_build_threads)
            t0 = time.perf_counter()
            hn = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
            hn.hnsw.efConstruction = 40
            hn.add(X)
            build = time.perf_counter() - t0
            _faiss_threads(1)
        log(f"  built in {build:.1f}s ({cfg.hnsw_build_threads} threads)")
        sweep = []
        for ef in cfg.hnsw_ef:
            if deadline.passed():
                sweep.append({"ef_search": ef, "skipped": "over budget"})
                continue
            hn.hnsw.efSearch = max(ef, cfg.k)
            p = _point(lambda sl: hn.search(Qc[sl], cfg.k)[1], ref, cfg, _faiss_threads)
            sweep.append({"ef_search": ef, **p})
            log(f"  ef={ef}: recall {p['recall']:.3f}, b1 {p['qps_b1_t1']:.0f}, {bk} {p[bk + '_t1']:.0f} q/s")
        methods["hnsw"] = {"build": {"seconds": {"total": build}, "serving_bytes": int(N * (D * 4 + 32 * 2 * 4 + 8)),
                                     **mem.report()}, "params": {"M": 32, "ef_construction": 40}, "sweep": sweep}
        tsweep = []
        for ef in cfg.ann_trigger_hnsw:
            if deadline.passed():
                break
            hn.hnsw.efSearch = max(ef, cfg.k + max(cfg.trigger_counts))

            def run(r):
                T = r.shape[1]
                d_, i_ = hn.search(X[r.reshape(-1)], cfg.k + T)
                return merge_per_trigger(i_, d_, T, cfg.k, r)

            tsweep.append({"ef_search": ef, "by_T": trig_points("hnsw", run)})
        result["trigger"]["hnsw"] = tsweep
        del hn
        gc.collect()

    result["equal_recall"] = equal_recall_tables(result, cfg)
    result["total_seconds"] = time.perf_counter() - t_start
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    log(f"done in {result['total_seconds']:.0f}s")
    return result


# ------------------------------------------------------------------------------------------- analysis
def _is_mfli(name: str) -> bool:
    return name.startswith("mfli")


def _ratios(row: dict, names: list[str]) -> None:
    """Add ``{m}_over_{o}`` = q/s of every MFLI variant m over every other method o, where both exist."""
    for m in filter(_is_mfli, names):
        for o in names:
            if not _is_mfli(o) and row.get(m) and row.get(o):
                row[f"{m}_over_{o}"] = row[m] / row[o]


def equal_recall_tables(result: dict, cfg: EngineBenchConfig) -> dict:
    """Per (batch, threads) and target recall: every method's interpolated q/s and MFLI's ratios;
    per trigger count: requests/s at equal recall for MFLI and each per-trigger ANN."""
    out: dict = {"user": {}, "trigger": {}}
    keys = [f"qps_b{b}_t{t}" for b in (1, cfg.batch_size) for t in cfg.threads]
    for key in keys:
        rows = []
        for target in cfg.targets:
            row: dict = {"recall": target}
            for name, m in result["methods"].items():
                pts = [(p["recall"], p.get(key)) for p in m["sweep"] if "skipped" not in p and p.get(key)]
                row[name] = qps_at_recall(pts, target)
            _ratios(row, list(result["methods"]))
            rows.append(row)
        out["user"][key] = rows
    tb = f"rps_b{cfg.trigger_batch}"
    for T in cfg.trigger_counts:
        for key in ("rps_b1", tb):
            rows = []
            for target in cfg.trigger_targets:
                row = {"recall": target}
                for name, sweep in result["trigger"].items():
                    pts = [(p["by_T"][str(T)]["recall"], p["by_T"][str(T)][key]) for p in sweep]
                    row[name] = qps_at_recall(pts, target)
                _ratios(row, list(result["trigger"]))
                rows.append(row)
            out["trigger"][f"T{T}_{key}"] = rows
    return out


def _f(x, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def format_tables(result: dict) -> str:
    """Markdown: memory, sweep, user-mode equal recall (ratios to IVF-Flat), trigger mode."""
    cfg = result["config"]
    bs, tbs = cfg["batch_size"], cfg["trigger_batch"]
    threads = cfg["threads"]
    ms = result["methods"]
    lines = ["| method | build (s) | serving memory (MB) | / IVF-Flat |", "|---|---|---|---|"]
    ivf_mem = ms.get("ivf", {}).get("build", {}).get("serving_bytes")
    for name, m in ms.items():
        b = m["build"]
        lines.append(f"| {name} | {b['seconds']['total']:.1f} | {b['serving_bytes'] / 2**20:,.0f} | "
                     f"{_f(b['serving_bytes'] / ivf_mem, 2) if ivf_mem else '-'} |")
    cols = [f"qps_b{b}_t{t}" for b in (1, bs) for t in threads]
    lines += ["", "| method | setting | recall@100 | " + " | ".join(
        f"q/s b{c.split('_b')[1].split('_t')[0]} t{c.split('_t')[1]}" for c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols)]
    for name, m in ms.items():
        for p in m["sweep"]:
            setting = ", ".join(f"{k} {v}" for k, v in p.items() if k in (
                "n_clusters", "shortlist", "nprobe", "k_factor", "leaves", "reorder", "ef_search"))
            if "skipped" in p:
                lines.append(f"| {name} | {setting} | skipped |" + " |" * len(cols))
                continue
            lines.append(f"| {name} | {setting} | {p['recall']:.3f} | " + " | ".join(_f(p.get(c)) for c in cols) + " |")
    names = list(ms)
    pairs = [(m, o) for m in names if _is_mfli(m) for o in names if not _is_mfli(o)]
    for key, rows in result["equal_recall"]["user"].items():
        lines += ["", f"User mode, {key} (q/s interpolated at equal recall; ratios = MFLI / other):", "",
                  "| recall | " + " | ".join(names) + " | " + " | ".join(f"{m}/{o}" for m, o in pairs) + " |",
                  "|---|" + "---|" * (len(names) + len(pairs))]
        for r in rows:
            lines.append(f"| {r['recall']:.2f} | " + " | ".join(_f(r.get(o)) for o in names)
                         + " | " + " | ".join(_f(r.get(f'{m}_over_{o}'), 2) for m, o in pairs) + " |")
    tn = list(result["trigger"])
    tpairs = [(m, o) for m in tn if _is_mfli(m) for o in tn if not _is_mfli(o)]
    for key, rows in result["equal_recall"]["trigger"].items():
        lines += ["", f"Trigger mode, {key} (requests/s at equal recall):", "",
                  "| recall | " + " | ".join(tn) + " | " + " | ".join(f"{m}/{o}" for m, o in tpairs) + " |",
                  "|---|" + "---|" * (len(tn) + len(tpairs))]
        for r in rows:
            lines.append(f"| {r['recall']:.2f} | " + " | ".join(_f(r.get(o)) for o in tn) + " | "
                         + " | ".join(_f(r.get(f'{m}_over_{o}'), 2) for m, o in tpairs) + " |")
    lines += ["", f"Trigger sweep (recall / requests/s at batch {tbs} / p50 ms at batch 1, per T):", "",
              "| method | setting | " + " | ".join(f"T={T}" for T in cfg["trigger_counts"]) + " |",
              "|---|---|" + "---|" * len(cfg["trigger_counts"])]
    for name, sweep in result["trigger"].items():
        for p in sweep:
            setting = ", ".join(f"{k} {v}" for k, v in p.items() if k != "by_T")
            lines.append(f"| {name} | {setting} | " + " | ".join(
                f"{p['by_T'][str(T)]['recall']:.3f} / {_f(p['by_T'][str(T)][f'rps_b{tbs}'])} / "
                f"{_f(p['by_T'][str(T)]['p50_ms'], 2)}" for T in cfg["trigger_counts"]) + " |")
    return "\n".join(lines)


__all__ = ["EngineBenchConfig", "equal_recall_tables", "format_tables", "merge_per_trigger", "run_engine_bench",
           "trigger_requests"]
