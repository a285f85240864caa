"""One function per method measured: exact, MFLI (reference retriever and scan engine), HNSW, IVF,
IVF-PQ fast-scan, ScaNN, Deep Retrieval (build, memory, sweep)."""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict

import numpy as np

from mfli.eval.serving.config import Log, ServingBenchConfig
from mfli.eval.serving.data import BenchData
from mfli.eval.serving.machine import MemoryMeter, set_threads
from mfli.eval.serving.timing import measure


class Deadline:
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


def bench_mfli(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: Deadline, log: Log,
               keep: dict | None = None) -> dict:
    """Encode code paths, build the CSR index, rebalance, serve by beam search (user mode, merge="sum").

    ``keep``: receives the rebalanced ``index`` and its build ``seconds`` (the scan engine reuses them)."""
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
    if keep is not None:
        keep.update(index=index, seconds={k: v for k, v in sec.items() if k != "serving_prep"})
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


def bench_hnsw(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: Deadline, log: Log) -> dict:
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


def bench_ivf(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: Deadline, log: Log) -> dict:
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


def dr_brute_force(dr, histories: list, k: int):
    """Freeze a fitted Deep Retrieval model's re-ranker for serving and score every item with it.

    The model does not change while serving, so the re-ranker's item vectors are computed once and
    ``reranker.items`` returns them from then on. Returns ``(cached item vectors (N', d) tensor,
    internal rows (U, k) of each history's exact top-k under the re-ranker, best first)``: DR's own
    brute force, the reference its beam search is measured against.
    """
    import faiss
    import torch

    rr = dr.net.reranker
    with torch.no_grad():
        cached = rr.items()
    rr.items = lambda idx=None: cached if idx is None else cached[idx]
    with torch.no_grad():
        u = np.concatenate([rr.user(dr.user_vectors(histories[s : s + 1024])).numpy()
                            for s in range(0, len(histories), 1024)])
    flat = faiss.IndexFlatIP(u.shape[1])
    flat.add(cached.numpy())
    return cached, flat.search(np.ascontiguousarray(u), k)[1]


def bench_dr(data: BenchData, cfg: ServingBenchConfig, deadline: Deadline, log: Log) -> dict:
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
    H = data.histories
    cached, ref_rows = dr_brute_force(dr, H, cfg.k)
    ref = dr.item_ids[ref_rows]
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


def _ids(data: BenchData, rows: np.ndarray) -> np.ndarray:
    """Item ids of library result rows (``-1`` padding kept): the reference holds item ids."""
    rows = np.asarray(rows, np.int64)
    return np.where(rows >= 0, data.item_ids[np.maximum(rows, 0)], -1)


def _rebalanced_index(data: BenchData, cfg: ServingBenchConfig) -> tuple:
    """``(index, seconds)``: code paths, CSR build and rebalance, as :func:`bench_mfli` builds them."""
    from mfli.index.build import auto_rebalance_config
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.index.split_merge import rebalance

    set_threads(cfg.build_threads)
    t0 = time.perf_counter()
    codes = encode_paths(data.items, data.codebooks)
    index = MultiFacetIndex.build(data.item_ids, data.items, codes, data.codebooks, facet_names=data.facet_names)
    index = rebalance(index, auto_rebalance_config(len(data.item_ids), seed=cfg.seed)).index
    set_threads(cfg.threads)
    return index, {"index_build": time.perf_counter() - t0}


def bench_mfli_scan(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: Deadline, log: Log,
                    prebuilt: dict | None = None) -> dict:
    """The scan engine (:class:`~mfli.serve.engine.ScanEngine`, what ``ServingConfig.engine="scan"`` serves)
    over the same rebalanced index as ``mfli`` (``prebuilt`` from :func:`bench_mfli`, else built here);
    sweep over ``(n_clusters, shortlist)``."""
    import numba

    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import EngineConfig, ScanEngine

    sec: dict[str, float] = {}
    with MemoryMeter() as mem:
        if prebuilt and "index" in prebuilt:
            index, sec = prebuilt["index"], dict(prebuilt["seconds"])
        else:
            index, sec = _rebalanced_index(data, cfg)
        numba.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        prerank = cfg.scan_prerank or default_scan_config().prerank
        engine = ScanEngine(index, data.codebooks, EngineConfig(pq_subquantizers=cfg.scan_pq_subquantizers,
                                                                threads=cfg.threads, seed=cfg.seed,
                                                                prerank=prerank))
        engine.search(data.queries[:2], cfg.k)  # compiles the kernels (numba caches them on disk)
        sec["engine_build"] = time.perf_counter() - t0
    sec["total"] = sum(sec.values())
    nb = engine.nbytes()
    # serving holds the engine, the embeddings it reads in place, item ids and the id -> row lookup
    serving_bytes = int(nb["total"] + index.item_ids.nbytes * 3)
    log(f"  mfli_scan: engine built in {sec['engine_build']:.1f}s; serving {serving_bytes / 2**20:,.0f} MB")
    sweep = []
    for n, R in cfg.scan_sweep:
        if deadline.passed():
            sweep.append({"n_clusters": n, "shortlist": R, "skipped": "over budget"})
            continue
        point = measure(lambda sl, n=n, R=R: engine.search(data.queries[sl], cfg.k, n_clusters=n,
                                                            shortlist=R).item_ids,
                        len(data.queries), cfg.b1_queries, cfg.batch_size, ref)
        sweep.append({"n_clusters": n, "shortlist": R, **point})
        log(f"  mfli_scan n={n} R={R}: recall {point['recall']:.3f}, {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}")
    return {"n_items": len(data.item_ids),
            "params": {"routing": engine.config.routing, "prerank": prerank, "pq_subquantizers": engine._n_pq,
                       "clusters": [c.n_clusters for c in index.facets]},
            "build": {"seconds": sec, "index_bytes": int(index.nbytes()), "serving_bytes": serving_bytes,
                      "engine_bytes": nb, **mem.report()},
            "sweep": sweep}


def bench_ivfpq_fs(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: Deadline, log: Log) -> dict:
    """FAISS IVF-PQ fast-scan (``IndexIVFPQFastScan``, 4-bit codes, one sub-quantiser per 2 dims, nlist =
    4 sqrt(N)) with an exact reorder of ``factor * k`` candidates (``IndexRefineFlat``); (nprobe, factor) sweep."""
    import faiss

    from mfli.baselines.ann import ivf_nlist
    from mfli.eval.serving.ann_libs import build_ivfpq_fs

    x, q = _concat(data.items), _concat(data.queries)
    nlist = ivf_nlist(len(x))
    with MemoryMeter() as mem:
        faiss.omp_set_num_threads(cfg.build_threads)
        t0 = time.perf_counter()
        index, base, nbytes = build_ivfpq_fs(x, nlist, cfg.seed)
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(cfg.threads)
    log(f"  ivfpq_fs: nlist={nlist}, built in {build:.1f}s")
    sweep = []
    for nprobe, factor in cfg.ivfpq_sweep:
        if nprobe > nlist:
            continue
        if deadline.passed():
            sweep.append({"nprobe": nprobe, "k_factor": factor, "skipped": "over budget"})
            continue
        base.nprobe = nprobe
        index.k_factor = factor
        point = measure(lambda sl: _ids(data, index.search(q[sl], cfg.k)[1]), len(q), cfg.b1_queries,
                        cfg.batch_size, ref)
        sweep.append({"nprobe": nprobe, "k_factor": factor, **point})
        log(f"  ivfpq_fs nprobe={nprobe} k_factor={factor}: recall {point['recall']:.3f}, {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}")
    return {"n_items": len(x), "params": {"nlist": nlist, "pq": f"{x.shape[1] // 2}x4 fast-scan", "reorder": "flat"},
            "build": {"seconds": {"total": build}, "index_bytes": nbytes, "serving_bytes": nbytes, **mem.report()},
            "sweep": sweep}


def bench_scann(data: BenchData, cfg: ServingBenchConfig, ref: np.ndarray, deadline: Deadline, log: Log) -> dict:
    """ScaNN 1.4.2 (tree + asymmetric hashing + exact reorder; optional: ``pip install scann==1.4.2``);
    (leaves searched, reorder) sweep. Without the package the method is reported as skipped."""
    try:
        import scann  # noqa: F401
    except ImportError as exc:
        log(f"  scann: skipped ({exc})")
        return {"n_items": len(data.item_ids), "skipped": f"scann not installed ({exc}); pip install scann==1.4.2",
                "sweep": []}
    from mfli.eval.serving.ann_libs import build_scann, scann_search

    x, q = _concat(data.items), _concat(data.queries)
    leaves = cfg.scann_leaves or max(1, int(2 * math.sqrt(len(x))))
    with MemoryMeter() as mem:
        t0 = time.perf_counter()
        searcher, nbytes = build_scann(x, cfg.k, leaves, cfg.seed)
        build = time.perf_counter() - t0
    leaves = min(leaves, max(1, len(x) // 100))  # build_scann's cap
    log(f"  scann: {leaves} leaves, built in {build:.1f}s")
    sweep = []
    for n_leaves, reorder in cfg.scann_sweep:
        if n_leaves > leaves:
            continue
        if deadline.passed():
            sweep.append({"leaves": n_leaves, "reorder": reorder, "skipped": "over budget"})
            continue
        point = measure(lambda sl, a=n_leaves, b=reorder: _ids(data, scann_search(searcher, q[sl], cfg.k, a, b,
                                                                                   cfg.threads)[0]),
                        len(q), cfg.b1_queries, cfg.batch_size, ref)
        sweep.append({"leaves": n_leaves, "reorder": reorder, **point})
        log(f"  scann leaves={n_leaves} reorder={reorder}: recall {point['recall']:.3f}, {point['qps_b1']:.0f} q/s b1, "
            f"{point[f'qps_b{cfg.batch_size}']:.0f} q/s b{cfg.batch_size}")
    return {"n_items": len(x), "params": {"leaves": leaves, "ah": "2 dims/block, threshold 0.2"},
            "build": {"seconds": {"total": build}, "index_bytes": nbytes, "serving_bytes": nbytes, **mem.report()},
            "sweep": sweep}
