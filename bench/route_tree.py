"""User mode with routing through the column tree against flat routing, same engine, alternated per request.

    OMP_NUM_THREADS=1 .venv/bin/python bench/route_tree.py --items 1000000 \\
        --model-dir <model saved by bench/serving_engine.py --save-model-dir> --out docs/results/route_tree_1m.json

One engine (the serving default, ``mfli/serve/route_tree.py`` on or off by swapping its tree), the
same user-tower queries; each (clusters, short list) point answers every request both ways, the two
ways alternating per step on different requests, over ``--rounds`` rounds (median). Reports whether both ways chose the same
clusters and answers, the columns the tree scored, and queries/s of routing alone and of whole
requests at batch 1 and 256 (1 thread). Flat routing of batches over 16 runs BLAS, whose rounding
picks other clusters than the int8 kernels for a few queries; the tree scores with the int8 kernels at
every batch size, so "same clusters" compares with flat routing in batches of 16.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _setup import engine_index, engine_parser, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import ScanEngine

    p = engine_parser(__doc__)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--points", default="48/400,80/500", help="comma list of clusters/short list")
    a = p.parse_args(argv)
    data, codes, index, out = engine_index(a, "bench/route_tree.py", argv, n_queries=a.queries)
    cfg = default_scan_config()
    cfg.threads, cfg.neighbours = 1, 0  # user mode only
    engine = ScanEngine(index, data.codebooks, cfg, codes=codes)
    tree = engine._tree
    if tree is None:
        raise SystemExit(f"{engine._cent.shape[0]} columns: under the tree's minimum, nothing to compare")
    q = data.queries
    qf = engine.weighted(q).reshape(len(q), -1)
    out.update({"columns": int(engine._cent.shape[0]), "groups": tree.n_groups, "points": {}})
    print(f"{engine._cent.shape[0]} columns in {tree.n_groups} groups; {len(q)} queries, {a.rounds} rounds")
    print("| clusters / short list | same clusters | same answers | columns scored | batch | routing q/s flat -> tree "
          "| requests q/s flat -> tree | ratio (rounds) |\n|---|---|---|---|---|---|---|---|")
    for point in a.points.split(","):
        n, R = (int(x) for x in point.split("/"))
        visited = engine._K.route_tree(qf, *tree.arrays, n)[2]
        # flat routing in batches of 16, which score with the tree's int8 arithmetic (larger batches use
        # BLAS, whose rounding picks other clusters for a few queries)
        engine._tree = None
        flat_gid = np.concatenate([engine.route(engine.weighted(q[s : s + 16]), n, "joint")[0]
                                   for s in range(0, len(q), 16)])
        flat = [engine.search(q[s : s + 16], 100, n_clusters=n, shortlist=R) for s in range(0, len(q), 16)]
        engine._tree = tree
        same_cols = bool(np.array_equal(flat_gid, engine.route(engine.weighted(q), n, "joint")[0]))
        mine = engine.search(q, 100, n_clusters=n, shortlist=R)
        same = all(np.array_equal(np.concatenate([getattr(r, f) for r in flat]), getattr(mine, f))
                   for f in ("item_ids", "scores", "facet", "cluster", "source"))
        row = {"same_clusters": same_cols, "same_answers": same, "columns_scored_mean": float(visited.mean()),
               "columns_scored_share": float(visited.mean() / engine._cent.shape[0]), "batches": {}}
        for bs in (1, 256):
            batches = [q[s : s + bs] for s in range(0, len(q) if bs > 1 else min(len(q), 256), bs)]
            t_route: dict = {"flat": [], "tree": []}
            t_all: dict = {"flat": [], "tree": []}
            for rnd in range(a.rounds):
                acc_r = dict.fromkeys(t_route, 0.0)
                acc_a = dict.fromkeys(t_all, 0.0)
                for i in range(len(batches)):
                    for way in (("flat", "tree") if (i + rnd) % 2 == 0 else ("tree", "flat")):
                        # the two ways answer different requests at each step: neither finds the other's
                        # work for its request in cache
                        qb = batches[(i + (way == "tree") * (len(batches) // 2)) % len(batches)]
                        engine._tree = tree if way == "tree" else None
                        t0 = time.perf_counter()
                        engine.route(engine.weighted(qb), n, "joint")
                        t1 = time.perf_counter()
                        engine.search(qb, 100, n_clusters=n, shortlist=R)
                        acc_r[way] += t1 - t0
                        acc_a[way] += time.perf_counter() - t1
                engine._tree = tree
                nq = sum(len(b) for b in batches)
                for way, qps in t_route.items():
                    qps.append(nq / acc_r[way])
                    t_all[way].append(nq / acc_a[way])
            ratios = [b_ / a_ for a_, b_ in zip(t_all["flat"], t_all["tree"])]
            b = {"route_qps": {w: statistics.median(v) for w, v in t_route.items()},
                 "qps": {w: statistics.median(v) for w, v in t_all.items()},
                 "ratio_median": statistics.median(ratios), "ratio_rounds": ratios}
            row["batches"][str(bs)] = b
            print(f"| {n} / {R} | {same_cols} | {same} | {visited.mean():.0f} ({row['columns_scored_share']:.0%}) | {bs} "
                  f"| {b['route_qps']['flat']:,.0f} -> {b['route_qps']['tree']:,.0f} "
                  f"| {b['qps']['flat']:,.0f} -> {b['qps']['tree']:,.0f} "
                  f"| {b['ratio_median']:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) |", flush=True)
        out["points"][point] = row
    return write_record(out, a.out)


if __name__ == "__main__":
    main()
