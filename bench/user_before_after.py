"""User-mode requests through the scan engine: this checkout's kernels against an earlier revision's, in
one process.

Builds the data, model and index of ``bench/serving_engine.py`` and the served engine, loads
``mfli/serve/engine_kernels.py`` as it was at ``--before`` beside the current one (the engine calls its
kernels through one module reference), checks that both give the same answers, and alternates them over
``--rounds`` rounds on the same user-tower queries (k = 100, 1 thread), at batch 1 and 256. Against a
revision before the column tree (``mfli/serve/route_tree.py``) the earlier side routes flat, and batches
over 16 then ran BLAS, which picks other clusters than the int8 kernels for about 0.5% of queries: the
answers can differ there::

    OMP_NUM_THREADS=1 .venv/bin/python bench/user_before_after.py --items 1000000 --before 06b001b \\
        --model-dir <model saved by an earlier run's --save-model-dir> --out docs/results/user_before_after_1m.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _before import module_at
from _setup import engine_index, engine_parser, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = engine_parser(__doc__)
    p.add_argument("--before", default="06b001b", help="the revision to compare with")
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=11)
    a = p.parse_args(argv)

    from mfli.serve import engine_kernels as current
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import ScanEngine

    before = module_at(a.before, "mfli/serve/engine_kernels.py", "engine_kernels_before")
    data, codes, index, out = engine_index(a, "bench/user_before_after.py", argv, n_queries=a.queries)
    cfg = default_scan_config()
    cfg.threads, cfg.neighbours = 1, 0  # user mode only
    engine = ScanEngine(index, data.codebooks, cfg, codes=codes)
    out.update({"before": a.before, "config": {"n_clusters": cfg.n_clusters, "shortlist": cfg.shortlist},
                "batches": {}})
    kernels = {"before": before, "after": current}
    # a revision without the column tree's kernel routed flat (mfli/serve/route_tree.py: the same clusters)
    trees = {"before": engine._tree if hasattr(before, "route_tree") else None, "after": engine._tree}
    q = data.queries

    def answer(which: str, qb):
        engine._K, engine._tree = kernels[which], trees[which]
        gid, rank = engine.route(qb, cfg.n_clusters, cfg.routing)
        return engine.scan_users(qb, gid, rank, 100)

    try:
        x, y = answer("before", q), answer("after", q)
        same = all(np.array_equal(getattr(x, f), getattr(y, f)) for f in ("item_ids", "scores", "source", "facet"))
        out["same_answers"] = same
        for bs in (1, 256):
            batches = [q[s : s + bs] for s in range(0, len(q) if bs > 1 else min(len(q), 256), bs)]
            t: dict = {"before": [], "after": []}
            for rnd in range(a.rounds):
                for which in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
                    t0 = time.perf_counter()
                    for qb in batches:
                        answer(which, qb)
                    t[which].append(sum(len(b) for b in batches) / (time.perf_counter() - t0))
            ratios = [b_ / a_ for a_, b_ in zip(t["before"], t["after"])]
            row = {"qps_before": statistics.median(t["before"]), "qps_after": statistics.median(t["after"]),
                   "ratio_median": statistics.median(ratios),
                   "ratio_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]}
            out["batches"][str(bs)] = row
            print(f"batch {bs}: {row['qps_before']:.0f} -> {row['qps_after']:.0f} q/s, per-round ratio "
                  f"{row['ratio_median']:.2f} [{row['ratio_quartiles'][0]:.2f}, {row['ratio_quartiles'][1]:.2f}]; "
                  f"same {same}")
    finally:
        engine._K, engine._tree = current, trees["after"]
    return write_record(out, a.out)


if __name__ == "__main__":
    main()
