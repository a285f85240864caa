"""Interleaved serving timing: the fast-scan engine, IVF-Flat and ScaNN measured in alternating rounds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serving_engine_interleaved.py --items 1000000 --rounds 3 \
        --model-dir <dir saved by bench/serving_engine.py --save-model-dir> \
        --out docs/results/serving_engine_1m_interleaved.json

``bench/serving_engine.py`` times each method once, one after the other; on a shared machine the
speed can drift by 1.5x within one run, so a method timed in a slow minute looks worse. Here the
methods alternate on every request (``--interleave query``: at each step every sweep point of every
method answers one query, in a rotated order, each point a different query than the point before it,
so no point finds the previous point's work for the same query in cache; likewise per batch of 256),
so a slow second falls on all of them alike; the median over rounds is reported (each round's figure is in the
JSON). ``--interleave point`` times one sweep point at a time per round (the earlier protocol). Same data, queries, reference and index as
``bench/serving_engine.py`` (:func:`mfli.eval.serving_bench.prepare_data`); 1 search thread; batch 1
over the first 200 queries one at a time, batch 256 over all.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np


def _per_query_round(points: dict, names: list[str], n_queries: int, rnd: int,
                     b1_queries: int = 200, batch: int = 256) -> tuple[dict, dict]:
    """One round, methods alternating per request, so a slow second on the shared machine lands on all
    of them alike. At step i the points run in an order rotated per step, and point j answers query
    ``(i + j) mod n`` (likewise batch ``(i + j) mod n_batches``): each point answers every query once,
    and never the query the point before it just answered, whose clusters, lists and vectors would
    still be in cache. Returns queries/s at batch 1 and at ``batch`` per point."""
    t1 = dict.fromkeys(names, 0.0)
    tb = dict.fromkeys(names, 0.0)
    P = len(names)
    nb1 = min(b1_queries, n_queries)
    for i in range(nb1):
        for j in range(P):
            name = names[(i + j + rnd) % P]
            qi = (i + j) % nb1
            t0 = time.perf_counter()
            points[name][1](slice(qi, qi + 1))
            t1[name] += time.perf_counter() - t0
    starts = list(range(0, n_queries, batch))
    for bi in range(len(starts)):
        for j in range(P):
            name = names[(bi + j + rnd) % P]
            s = starts[(bi + j) % len(starts)]
            t0 = time.perf_counter()
            points[name][1](slice(s, min(n_queries, s + batch)))
            tb[name] += time.perf_counter() - t0
    return {n: nb1 / t1[n] for n in names}, {n: n_queries / tb[n] for n in names}


def main(argv: list[str] | None = None) -> dict:
    import faiss

    from mfli.eval.bench_engine import build_ivf
    from mfli.eval.serving.ann_libs import build_scann, scann_search
    from mfli.eval.serving.config import ServingBenchConfig
    from mfli.eval.serving.data import prepare_data
    from mfli.eval.serving.machine import machine_info, set_threads
    from mfli.eval.serving.report import qps_at_recall, write_json
    from mfli.eval.serving.timing import recall_at_k, timed_runs
    from mfli.index.build import auto_rebalance_config
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.index.split_merge import rebalance
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import ScanEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--no-scann", action="store_true", help="leave ScaNN out (it needs the bench extra)")
    ap.add_argument("--interleave", choices=("query", "point"), default="query",
                    help="query: methods alternate on every request (default); point: each sweep point "
                         "runs all its queries, then the next point")
    ap.add_argument("--subquantizers", default="",
                    help="comma list of EngineConfig.fastscan_subquantizers to time side by side as methods "
                         "mfli_sN (empty: the serving default only, as method mfli)")
    ap.add_argument("--variants", default="",
                    help="comma list of sub-quantisers/eta (EngineConfig.fastscan_subquantizers / fastscan_eta; "
                         "'d' for one per dimension) to time side by side as methods mfli_sN_eE")
    ap.add_argument("--points", default="32/300,48/300,48/400,64/400,64/500,80/500,96/500",
                    help="the engine's sweep: comma list of clusters/short list")
    ap.add_argument("--scann-points", default="20/200,30/250,40/250,60/300,80/400",
                    help="ScaNN (leaves searched / reorder) sweep points")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)

    set_threads(1)
    data, _ = prepare_data(ServingBenchConfig(n_items=a.items, n_queries=a.queries, model_dir=a.model_dir,
                                              methods=("exact",)), log)
    X = np.ascontiguousarray(data.items.reshape(len(data.items), -1))
    Q = np.ascontiguousarray(data.queries.reshape(len(data.queries), -1))
    N, D = X.shape
    k = 100
    flat = faiss.IndexFlatIP(D)
    flat.add(X)
    ref = flat.search(Q, k)[1]
    del flat
    index = MultiFacetIndex.build(data.item_ids, data.items, encode_paths(data.items, data.codebooks),
                                  data.codebooks, facet_names=data.facet_names)
    index = rebalance(index, auto_rebalance_config(N, seed=0)).index
    as_rows = (lambda ids: ids) if np.array_equal(index.item_ids, np.arange(N)) else (
        lambda ids: np.where(ids >= 0, index.rows_of(ids), -1))
    engines = {"mfli": ScanEngine(index, data.codebooks, default_scan_config())}  # what snapshots serve
    if a.subquantizers:
        engines = {f"mfli_s{v}": ScanEngine(index, data.codebooks, dataclasses.replace(
            default_scan_config(), fastscan_subquantizers=int(v))) for v in a.subquantizers.split(",")}
    if a.variants:
        engines = {}
        for v in a.variants.split(","):
            ns, eta = v.split("/")
            engines[f"mfli_s{ns}_e{eta}"] = ScanEngine(index, data.codebooks, dataclasses.replace(
                default_scan_config(), fastscan_subquantizers=None if ns == "d" else int(ns), fastscan_eta=float(eta)))
    ivf, _ = build_ivf(X, round(4 * math.sqrt(N)), 0)
    points: dict[str, tuple] = {}
    sweep = [tuple(int(x) for x in p.split("/")) for p in a.points.split(",")]
    for label, engine in engines.items():
        for n, R in sweep:
            points[f"{label} {n} clusters / short list {R}"] = (label, lambda sl, n=n, R=R, e=engine: as_rows(
                e.search(data.queries[sl], k, n_clusters=n, shortlist=R).item_ids))
    for npb in (20, 24, 32, 40, 48):
        points[f"ivf nprobe {npb}"] = ("ivf", lambda sl, npb=npb: (setattr(ivf, "nprobe", npb),
                                                                   ivf.search(Q[sl], k)[1])[1])
    if not a.no_scann:
        sc, _ = build_scann(X, k, round(2 * math.sqrt(N)), 0)
        for leaves, R in (tuple(int(x) for x in p.split("/")) for p in a.scann_points.split(",")):
            points[f"scann {leaves} leaves / reorder {R}"] = ("scann", lambda sl, a_=leaves, b_=R: scann_search(
                sc, Q[sl], k, a_, b_)[0])

    res: dict[str, dict] = {}
    names = list(points)
    for name in names:  # warm-up, and the recall of every point
        method, fn = points[name]
        w0, c0 = time.perf_counter(), time.process_time()
        got = np.concatenate([fn(slice(s, min(len(Q), s + 256))) for s in range(0, len(Q), 256)])
        # CPU seconds per wall second of this process over the batches: ~1 on one thread; above it a
        # library is using more cores than the comparison allows (ScaNN's parallel batch call did)
        cpu = (time.process_time() - c0) / (time.perf_counter() - w0)
        res[name] = {"method": method, "recall": recall_at_k(got, ref), "cpu_per_wall_b256": cpu,
                     "qps_b1": [], "qps_b256": []}
        if cpu > 1.25:
            log(f"WARNING {name}: {cpu:.2f} CPU seconds per wall second in batches of 256 (more than one thread)")
    for rnd in range(a.rounds):
        if a.interleave == "query":
            b1, b256 = _per_query_round(points, names, len(Q), rnd)
        else:
            b1, b256 = {}, {}
            for name in names:
                lat, tot, _ = timed_runs(points[name][1], len(Q), 200, 256)
                b1[name], b256[name] = len(lat) / sum(lat), len(Q) / tot
        for name in names:
            res[name]["qps_b1"].append(b1[name])
            res[name]["qps_b256"].append(b256[name])
        log(f"round {rnd + 1}/{a.rounds} done")
    for p in res.values():
        p["median_b1"] = float(np.median(p["qps_b1"]))
        p["median_b256"] = float(np.median(p["qps_b256"]))
    equal: list[dict] = []
    for target in (0.90, 0.95):
        for key in ("median_b1", "median_b256"):
            row: dict = {"recall": target, "batch": key.split("_b")[1]}
            for method in (*engines, "ivf", "scann"):
                pts = [(p["recall"], p[key]) for p in res.values() if p["method"] == method]
                row[method] = qps_at_recall(pts, target) if pts else None
            for mine in engines:
                for other in ("ivf", "scann"):
                    if row.get(mine) and row.get(other):
                        row[f"{mine}_over_{other}"] = row[mine] / row[other]
            equal.append(row)
    result = {"config": vars(a) | {"out": str(a.out)}, "machine": machine_info(),
              "engine": {"prerank": engines[next(iter(engines))].config.prerank,
                         "clusters": [c.n_clusters for c in index.facets]},
              "points": res, "equal_recall": equal}
    write_json(result, a.out)
    print("| point | recall@100 | q/s b1 (median; rounds) | q/s b256 (median; rounds) |\n|---|---|---|---|")
    for name, p in res.items():
        print(f"| {name} | {p['recall']:.3f} | {p['median_b1']:,.0f} ({', '.join(f'{x:,.0f}' for x in p['qps_b1'])}) "
              f"| {p['median_b256']:,.0f} ({', '.join(f'{x:,.0f}' for x in p['qps_b256'])}) |")
    f = lambda x, nd=0: "-" if x is None else f"{x:,.{nd}f}"
    for mine in engines:
        print(f"\n| recall | batch | {mine} | ivf | scann | {mine}/ivf | {mine}/scann |\n|---|---|---|---|---|---|---|")
        for r in equal:
            print(f"| {r['recall']:.2f} | {r['batch']} | {f(r[mine])} | {f(r['ivf'])} | {f(r.get('scann'))} | "
                  f"{f(r.get(f'{mine}_over_ivf'), 2)} | {f(r.get(f'{mine}_over_scann'), 2)} |")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
