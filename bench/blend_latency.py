"""Blend mode's per-request cost, list by list, against user mode alone.

Trains a model on a catalogue (the synthetic one unless ``--data``), builds the index and the scan engine
with 200-deep neighbour lists, chooses the blend (:func:`mfli.eval.blend_select.select_blend`, as the
daily DAG does), then times, on the test users of a split (``--split time``: the items first seen after
the cutoff are served from a delta, as between two daily snapshots), at each batch size:

- ``user``: user mode alone (``retrieve_users``, k = 200, the blend's depth);
- ``coengagement``: the co-engagement table's lists; ``trigger``: trigger mode from neighbour lists;
  ``trending``: the trending list minus each history (read only when its chosen weight is above 0);
- ``fuse``: :func:`mfli.serve.blend.blend` over the four lists;
- ``blend``: :func:`mfli.serve.blend.retrieve_blend`, all of it (lists, fusion, explanations), k = 100.

Every step runs over the same requests, one after the other, each a few times (median reported)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/blend_latency.py --out blend_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _setup import blend_world

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn, batches: list, repeats: int) -> float:
    """Median over ``repeats`` of the seconds ``fn`` takes over all ``batches``."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="dataset folder (default: a generated 10k-item synthetic catalogue)")
    p.add_argument("--split", default="time", help="time (new items after the cutoff form a delta) or last")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--requests", type=int, default=256, help="test users timed")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the JSON here")
    args = p.parse_args(argv)

    from mfli.data.loaders import load_dataset
    from mfli.index.trending import trending_lists
    from mfli.serve.blend import blend, retrieve_blend

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from mfli.data.synthetic import SyntheticConfig, write_synthetic

            data = str(write_synthetic(SyntheticConfig(n_items=10_000, n_users=3_000, n_interactions=100_000,
                                                       seed=0), Path(tmp) / "synthetic", progress=False))
        ds = load_dataset(data)
    t0 = time.perf_counter()
    run, model, view, retriever, sel = blend_world(ds, args.split, args.epochs)
    cfg, table = sel.config, sel.table
    build_s = time.perf_counter() - t0

    n = min(args.requests, len(run.users))
    users, hists = run.users[:n], run.histories[:n]
    q = model.user_embeddings(users, hists).numpy()
    depth = cfg.depth
    rows: list[dict] = []
    for bs in (int(x) for x in args.batches.split(",")):
        batches = [(q[a:a + bs], hists[a:a + bs]) for a in range(0, n, bs)]
        trig_in = [(h, [np.asarray(x, np.int64)[-cfg.triggers:] for x in h]) for _, h in batches]
        lists = [(retriever.retrieve_users(qb, depth, exclude=h).item_ids, table.retrieve(h, depth, exclude=h)[0],
                  retriever.retrieve_triggers(t, depth, exclude=h).item_ids, trending_lists(table.trending, h, depth))
                 for (qb, h), (_, t) in zip(batches, trig_in)]
        steps = {
            "user": (lambda b: retriever.retrieve_users(b[0], depth, exclude=b[1]), batches),
            "coengagement": (lambda b: table.retrieve(b[1], depth, exclude=b[1]), batches),
            "trigger": (lambda b: retriever.retrieve_triggers(b[1], depth, exclude=b[0]), trig_in),
            "trending": (lambda b: trending_lists(table.trending, b[1], depth), batches),
            "fuse": (lambda b: blend(*b[:3], cfg.weights, table.item_ids, 100, b[3]), lists),
            "blend": (lambda b: retrieve_blend(retriever, table, view, cfg, b[0], b[1], 100), batches),
        }
        for name, (fn, arg) in steps.items():
            fn(arg[0])  # warm-up: compiled kernels, caches
            s = _timed(fn, arg, args.repeats)
            rows.append({"batch": bs, "step": name, "ms_per_request": 1e3 * s / n, "requests_per_s": n / s})
    user_ms = {r["batch"]: r["ms_per_request"] for r in rows if r["step"] == "user"}
    for r in rows:
        r["x_user"] = r["ms_per_request"] / user_ms[r["batch"]]
    out = {"dataset": ds.name, "items": len(ds.items), "delta_items": len(run.new_items), "split": args.split,
           "requests": n, "build_s": build_s,
           "coengagement": {"method": table.method, "items": len(table), "mb": table.nbytes / 2**20},
           "blend": cfg.to_dict(), "rows": rows}
    print(f"{ds.name} / {args.split}: {len(ds.items):,} items ({len(run.new_items):,} in the delta), {n} requests; co-engagement {table.method} over {len(table):,} "
          f"items ({table.nbytes / 2**20:.0f} MB); weights {cfg.weights.coengagement:g} / {cfg.weights.trigger:g} / {cfg.weights.trending:g}\n")
    print("| batch | step | ms / request | requests/s | / user mode |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['step']} | {r['ms_per_request']:.3f} | {r['requests_per_s']:,.0f} | "
              f"{r['x_user']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
