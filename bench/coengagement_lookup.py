"""The co-engagement table's dense look-up: the compiled batch call against numpy, request by request.

Builds random float16 EASE-shaped tables (``mfli.index.coengagement.to_half`` of a Gaussian matrix) of
each size, draws histories of each length, and times :meth:`CoEngagement.retrieve` (k = 200, history
excluded, as blend mode asks) against the numpy path it replaced (float16 rows summed by numpy in
float32, argpartition, argsort), in batches of 1 and 64, alternating the two, median of the rounds.
It checks both return the same items (up to ties)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/coengagement_lookup.py --out coengagement_lookup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def numpy_retrieve(co, histories, k: int) -> np.ndarray:
    """The numpy dense path: one request at a time, history excluded; ``(B, k)`` ids."""
    ids = np.full((len(histories), k), -1, np.int64)
    for b, hist in enumerate(histories):
        r = co.rows(hist)
        if not len(r):
            continue
        score = co.dense[r].sum(0, dtype=np.float32)
        score *= np.float32(co.dense_scale)
        score[r] = -np.inf
        n = min(k, int(np.isfinite(score).sum()))
        top = np.argpartition(-score, n - 1)[:n]
        ids[b, :n] = co.item_ids[top[np.argsort(-score[top], kind="stable")]]
    return ids


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", default="6751,16000", help="table sizes")
    p.add_argument("--history", default="10,50", help="history lengths")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args(argv)

    from mfli.index.coengagement import CoEngagement, to_half

    rows = []
    for n in (int(x) for x in a.items.split(",")):
        rng = np.random.default_rng(n)
        dense, scale = to_half((rng.standard_normal((n, n)) * 1e-3).astype(np.float32))
        ids = np.arange(n, dtype=np.int64) * 3
        co = CoEngagement(ids, np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), "ease",
                          1.0, dense, scale)
        for h in (int(x) for x in a.history.split(",")):
            hist = [rng.choice(ids, h, replace=False) for _ in range(a.requests)]
            got, want = co.retrieve(hist, 200)[0], numpy_retrieve(co, hist, 200)
            same = float(np.mean([len(set(g) & set(w)) / 200 for g, w in zip(got, want)]))
            row = {"items": n, "history": h, "top200_overlap": same}
            for B in (1, 64):
                t = {"numpy": [], "compiled": []}
                for rnd in range(a.rounds):
                    for name in (("numpy", "compiled") if rnd % 2 == 0 else ("compiled", "numpy")):
                        fn = (lambda x, co=co: numpy_retrieve(co, x, 200)) if name == "numpy" else (
                            lambda x, co=co: co.retrieve(x, 200))
                        t0 = time.perf_counter()
                        for s in range(0, a.requests, B):
                            fn(hist[s : s + B])
                        t[name].append((time.perf_counter() - t0) / a.requests * 1e3)
                row[f"b{B}_numpy_ms"] = statistics.median(t["numpy"])
                row[f"b{B}_compiled_ms"] = statistics.median(t["compiled"])
                row[f"b{B}_speedup"] = row[f"b{B}_numpy_ms"] / row[f"b{B}_compiled_ms"]
            rows.append(row)
    print("| items | history | batch 1: numpy / compiled ms | speed-up | batch 64: numpy / compiled ms | speed-up "
          "| top-200 overlap |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']:,} | {r['history']} | {r['b1_numpy_ms']:.3f} / {r['b1_compiled_ms']:.3f} | "
              f"{r['b1_speedup']:.2f} | {r['b64_numpy_ms']:.3f} / {r['b64_compiled_ms']:.3f} | "
              f"{r['b64_speedup']:.2f} | {r['top200_overlap']:.4f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
