"""Trigger-mode neighbour lists stored as uint16 neighbourhood codes against int32 rows.

Builds the same data, model and rebalanced index as ``bench/serving_engine.py`` (synthetic catalogue,
embeddings from a briefly trained model), then for each list depth builds the lists once and stores
them both ways (:func:`mfli.serve.neighbours.encode_lists`). It checks that both give the same answers,
and reports their bytes, the encoding time and requests/s in trigger mode: T random catalogue items
per request, k = 100, batch 1 and batch 64, the two stores alternated round by round on the same
requests (median of the rounds)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/neighbour_lists.py --items 1000000 \\
        --out docs/results/neighbour_lists_1m.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _setup import engine_index, engine_parser, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rps(fn, batches: list) -> float:
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        fn(b)
        n += len(b)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = engine_parser(__doc__)
    p.add_argument("--depths", default="100,200", help="list lengths (probe: auto_probe for each)")
    p.add_argument("--triggers", default="1,4,16")
    p.add_argument("--requests", type=int, default=512, help="requests per trigger count (batch 64)")
    p.add_argument("--b1-requests", type=int, default=128, help="of which timed one at a time")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)

    from mfli.eval.bench_engine import trigger_requests
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import ScanEngine
    from mfli.serve.neighbours import encode_lists

    data, codes, index, out = engine_index(a, "bench/neighbour_lists.py", argv)
    out["depths"] = {}
    cfg = default_scan_config()  # the served settings, lists built below
    cfg.neighbours, cfg.threads = 0, 1
    engine = ScanEngine(index, data.codebooks, cfg, codes=codes)
    col_len = np.diff(engine.offsets)
    out["columns"] = {"count": int(col_len.size), "mean": float(col_len.mean()), "max": int(col_len.max())}
    print(f"{a.items:,} items, {col_len.size:,} columns (mean {col_len.mean():.0f}, max {col_len.max()})")
    Ts = [int(t) for t in a.triggers.split(",")]
    reqs = {T: index.item_ids[trigger_requests(a.items, a.requests, T, 0)] for T in Ts}
    for depth in (int(x) for x in a.depths.split(",")):
        engine.config.compact_lists = False
        t0 = time.perf_counter()
        engine.build_lists(depth)
        build_s = time.perf_counter() - t0
        plain = engine._lists
        t0 = time.perf_counter()
        compact = encode_lists(plain.codes, engine._own, engine.col_neighbours, engine.entry_rows, engine.offsets)
        enc_s = time.perf_counter() - t0
        row = {"probe": engine.list_probe, "build_seconds": round(build_s, 1), "encode_seconds": round(enc_s, 2),
               "compact": compact.compact, "shift": compact.shift,
               "escaped": int(compact.esc_key.size), "escaped_share": compact.esc_key.size / plain.codes.size,
               "bytes_int32": plain.nbytes, "bytes_compact": compact.nbytes, "by_T": {}}
        print(f"depth {depth}, probe {engine.list_probe}: built {build_s:.0f}s, encoded {enc_s:.1f}s, "
              f"{plain.nbytes / 2**20:.0f} -> {compact.nbytes / 2**20:.0f} MiB, escaped {row['escaped_share']:.4%}")
        for T in Ts:
            r = reqs[T]
            b64 = [r[s : s + 64] for s in range(0, len(r), 64)]
            b1 = [r[s : s + 1] for s in range(a.b1_requests)]
            same = True
            res = {}
            for name, lists in (("int32", plain), ("compact", compact)):
                engine.set_lists(lists)
                res[name] = engine.search_triggers(r, 100)
            for f in ("item_ids", "scores", "source", "facet", "cluster"):
                same &= bool(np.array_equal(getattr(res["int32"], f), getattr(res["compact"], f)))
            times: dict = {("int32", 1): [], ("compact", 1): [], ("int32", 64): [], ("compact", 64): []}
            for rnd in range(a.rounds):
                order = (("int32", plain), ("compact", compact)) if rnd % 2 == 0 else (
                    ("compact", compact), ("int32", plain))
                for name, lists in order:
                    engine.set_lists(lists)
                    times[(name, 1)].append(_rps(lambda b: engine.search_triggers(b, 100), b1))
                    times[(name, 64)].append(_rps(lambda b: engine.search_triggers(b, 100), b64))
            med = {f"{n}_b{b}": statistics.median(v) for (n, b), v in times.items()}
            row["by_T"][str(T)] = {**{k: round(v, 1) for k, v in med.items()}, "same_answers": same,
                                   "ratio_b1": med["compact_b1"] / med["int32_b1"],
                                   "ratio_b64": med["compact_b64"] / med["int32_b64"]}
            print(f"  T={T}: same answers {same}; b1 {med['int32_b1']:.0f} -> {med['compact_b1']:.0f} r/s "
                  f"({row['by_T'][str(T)]['ratio_b1']:.2f}x); b64 {med['int32_b64']:.0f} -> "
                  f"{med['compact_b64']:.0f} r/s ({row['by_T'][str(T)]['ratio_b64']:.2f}x)")
        nb_ = engine.nbytes()
        row["engine_bytes_without_lists"] = nb_["total"] - engine.list_nbytes - engine._slots.nbytes
        out["depths"][str(depth)] = row
        engine.set_lists(compact)
        del plain
    return write_record(out, a.out)


if __name__ == "__main__":
    main()
