"""Trigger-mode requests from neighbour lists: this checkout's engine and kernels against an earlier
revision's, in one process.

Builds the data, model and index of ``bench/serving_engine.py`` and the served engine (lists of 100),
loads ``mfli/serve/engine.py`` and ``mfli/serve/neighbours.py`` as they were at ``--before`` beside the
current ones (an engine of each over the same index, serving the same lists), checks that both give the
same answers, and alternates them over ``--rounds`` short rounds (the same requests, T random catalogue
items each, k = 100, 1 thread), so machine noise hits both alike; reports the median requests/s and the
median and quartiles of the per-round ratios::

    OMP_NUM_THREADS=1 .venv/bin/python bench/trigger_before_after.py --items 1000000 --before 1d54285 \\
        --model-dir <model saved by an earlier run's --save-model-dir> --out docs/results/trigger_before_after_1m.json
"""

from __future__ import annotations

import dataclasses
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
    p.add_argument("--before", default="1d54285", help="the revision to compare with")
    p.add_argument("--triggers", default="1,4,16")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--exact-lists", action="store_true",
                   help="lists without stored scores (EngineConfig.list_scores=False): every entry rescored exactly")
    p.add_argument("--requests", type=int, default=256,
                   help="distinct requests per T (a round answers them all; many: their vectors are not cached)")
    p.add_argument("--lists", default=None, help="stored neighbour lists (ScanEngine.save_lists) to serve instead of "
                   "building them, when they match")
    a = p.parse_args(argv)

    from mfli.eval.bench_engine import trigger_requests
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import ScanEngine
    from mfli.serve.list_store import load_lists

    before_nb = module_at(a.before, "mfli/serve/neighbours.py", "neighbours_before")
    before_engine = module_at(a.before, "mfli/serve/engine.py", "engine_before")
    data, codes, index, out = engine_index(a, "bench/trigger_before_after.py", argv)
    out.update({"before": a.before, "list_scores": not a.exact_lists, "by_T": {}})
    cfg = default_scan_config()
    cfg.threads = 1
    cfg.list_scores = not a.exact_lists
    engine = ScanEngine(index, data.codebooks, cfg, codes=codes, lists=load_lists(a.lists) if a.lists else None)
    # the earlier engine serves the lists just built (its own kernels read them)
    old = before_engine.ScanEngine(index, data.codebooks, dataclasses.replace(cfg, neighbours=0), codes=codes)
    old._NB = before_nb
    old.set_lists(engine._lists)
    engines = {"before": old, "after": engine}

    def rps(which: str, batches: list) -> float:
        e = engines[which]
        t0 = time.perf_counter()
        for b in batches:
            e.search_triggers(b, 100)
        return sum(len(b) for b in batches) / (time.perf_counter() - t0)

    for T in (int(t) for t in a.triggers.split(",")):
        r = index.item_ids[trigger_requests(a.items, a.requests, T, 0)]
        res = {}
        for which, e in engines.items():
            res[which] = e.search_triggers(r, 100)
        same = all(np.array_equal(getattr(res["before"], f), getattr(res["after"], f))
                   for f in ("item_ids", "scores", "source", "facet", "cluster"))
        row: dict = {"same_answers": same}
        b1 = [r[s : s + 1] for s in range(min(len(r), max(64, a.requests // 4)))]
        for bs, batches in ((1, b1), (64, [r[s : s + 64] for s in range(0, len(r), 64)])):
            t: dict = {"before": [], "after": []}
            for rnd in range(a.rounds):
                for which in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
                    t[which].append(rps(which, batches))
            ratios = [y / x for x, y in zip(t["before"], t["after"])]
            row[f"b{bs}"] = {"rps_before": statistics.median(t["before"]), "rps_after": statistics.median(t["after"]),
                             "ratio_median": statistics.median(ratios),
                             "ratio_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]}
            print(f"T={T} batch {bs}: {row[f'b{bs}']['rps_before']:.0f} -> {row[f'b{bs}']['rps_after']:.0f} "
                  f"requests/s, per-round ratio {row[f'b{bs}']['ratio_median']:.2f} "
                  f"[{row[f'b{bs}']['ratio_quartiles'][0]:.2f}, {row[f'b{bs}']['ratio_quartiles'][1]:.2f}]; same {same}")
        out["by_T"][str(T)] = row
    return write_record(out, a.out)


if __name__ == "__main__":
    main()
