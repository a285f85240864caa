"""Blend requests served by this checkout's code against an earlier revision's, in one process.

The blend module (``mfli/serve/blend.py``) and the engine retriever (``mfli/serve/engine_retriever.py``)
of ``--before`` are loaded from git next to the current ones; both answer the same requests on the same
model, index, delta and co-engagement table (built as ``bench/blend_latency.py`` builds them), checked
to give the same lists, and are timed alternately over ``--rounds`` rounds (median per request), so a
change of machine speed hits both::

    OMP_NUM_THREADS=1 .venv/bin/python bench/blend_before_after.py --data <synthetic catalogue> \\
        --before 78d09a4 --out docs/results/blend_before_after.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _before import module_at
from _setup import blend_world, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="dataset folder (default: a generated 10k-item synthetic catalogue)")
    p.add_argument("--split", default="time")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--before", default="78d09a4", help="the revision to compare with")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", help="write the JSON here")
    a = p.parse_args(argv)

    from mfli.data.loaders import load_dataset
    from mfli.data.synthetic import SyntheticConfig, generate
    from mfli.eval.serving.machine import machine_info
    from mfli.serve import blend as current
    from mfli.serve.engine_retriever import EngineRetriever

    old_blend = module_at(a.before, "mfli/serve/blend.py", "blend_before")
    old_er = module_at(a.before, "mfli/serve/engine_retriever.py", "engine_retriever_before")
    ds = load_dataset(a.data) if a.data else generate(SyntheticConfig(n_items=10_000, n_users=3_000,
                                                                      n_interactions=100_000, seed=0))
    run, model, view, r, sel = blend_world(ds, a.split, a.epochs)
    n = min(a.requests, len(run.users))
    hists = run.histories[:n]
    q = model.user_embeddings(run.users[:n], hists).numpy()
    merges = {"before": old_er.EngineRetriever._merge_parts, "after": EngineRetriever._merge_parts}
    mods = {"before": old_blend, "after": current}

    def answer(which: str, qb, h):
        EngineRetriever._merge_parts = merges[which]  # the delta merge the blend's trigger list runs
        return mods[which].retrieve_blend(r, sel.table, view, sel.config, qb, h, 100)

    try:
        x, y = answer("before", q, hists), answer("after", q, hists)
        same = {f: bool(np.array_equal(getattr(x, f), getattr(y, f)))
                for f in ("item_ids", "scores", "sources", "facet", "cluster")}
        out: dict = {"command": " ".join(["bench/blend_before_after.py", *(argv or sys.argv[1:])]),
                     "machine": machine_info(), "before": a.before, "requests": n,
                     "delta_items": len(run.new_items), "same": same, "batches": {}}
        print(f"{n} requests, {len(run.new_items):,} delta items; same lists: {same}")
        for bs in (int(v) for v in a.batches.split(",")):
            batches = [(q[s : s + bs], hists[s : s + bs]) for s in range(0, n, bs)]
            t: dict = {"before": [], "after": []}
            for rnd in range(a.rounds):
                for which in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
                    t0 = time.perf_counter()
                    for qb, h in batches:
                        answer(which, qb, h)
                    t[which].append((time.perf_counter() - t0) / n * 1e3)
            med = {w: statistics.median(v) for w, v in t.items()}
            out["batches"][str(bs)] = {"ms_before": med["before"], "ms_after": med["after"],
                                       "speedup": med["before"] / med["after"], "rounds": t}
            print(f"batch {bs}: {med['before']:.3f} -> {med['after']:.3f} ms per request "
                  f"({med['before'] / med['after']:.2f}x)")
    finally:
        EngineRetriever._merge_parts = merges["after"]
    return write_record(out, a.out)


if __name__ == "__main__":
    main()
