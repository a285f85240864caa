"""Engine start with neighbour lists and fast-scan quantiser built against read back from the snapshot.

Builds the same data, model and rebalanced index as ``bench/serving_engine.py``, then for each list
depth starts the serving engine three times with the served settings (``default_scan_config``): once
building its lists and fitting its fast-scan quantiser (the gate), once taking the lists the first one
saved (``neighbours.npz``, :mod:`mfli.serve.list_store`; the time includes reading the file and
checking every entry) but fitting its quantiser, and once taking both files (``fastscan.npz``,
:mod:`mfli.serve.quantiser_store`), as a service starts from a snapshot. It checks that all serve the
same lists and the same trigger- and user-mode answers, and reports the times and the files' sizes::

    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_start.py --items 1000000 \\
        --model-dir <model saved by an earlier run's --save-model-dir> --out docs/results/engine_start_1m.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _setup import engine_index, engine_parser, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = engine_parser(__doc__)
    p.add_argument("--depths", default="100,200", help="list lengths (100: trigger mode's default; 200: blend)")
    p.add_argument("--requests", type=int, default=256,
                   help="trigger requests (4 triggers each) and user queries compared")
    a = p.parse_args(argv)

    from mfli.eval.bench_engine import trigger_requests
    from mfli.serve import neighbours as NB
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine import ScanEngine
    from mfli.serve.list_store import load_lists
    from mfli.serve.quantiser_store import load_quantiser

    data, codes, index, out = engine_index(a, "bench/engine_start.py", argv, n_queries=a.requests)
    out["depths"] = {}
    reqs = index.item_ids[trigger_requests(a.items, a.requests, 4, 0)]
    print(f"{a.items:,} items")
    for depth in (int(x) for x in a.depths.split(",")):
        cfg = default_scan_config()
        cfg.neighbours, cfg.threads = depth, 1
        t0 = time.perf_counter()
        built = ScanEngine(index, data.codebooks, cfg, codes=codes)
        build_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            path, qpath = Path(tmp) / "neighbours.npz", Path(tmp) / "fastscan.npz"
            t0 = time.perf_counter()
            built.save_lists(path)
            save_s = time.perf_counter() - t0
            built.save_quantiser(qpath)
            size, qsize = path.stat().st_size, qpath.stat().st_size
            t0 = time.perf_counter()
            stored = load_lists(path)
            read_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lists_only = ScanEngine(index, data.codebooks, cfg, codes=codes, lists=stored)
            lists_s = time.perf_counter() - t0
            del lists_only
            t0 = time.perf_counter()
            served = ScanEngine(index, data.codebooks, cfg, codes=codes, lists=stored,
                                quantiser=load_quantiser(qpath))
            start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bad = NB.first_invalid(served._list_args, served._own, served.N)
        check_s = time.perf_counter() - t0
        same_lists = bool(np.array_equal(built.neighbour_rows(), served.neighbour_rows()))
        r1, r2 = built.search_triggers(reqs, 100), served.search_triggers(reqs, 100)
        u1, u2 = built.search(data.queries, 100), served.search(data.queries, 100)
        fields = ("item_ids", "scores", "source", "facet", "cluster")
        same = same_lists and all(np.array_equal(getattr(x, f), getattr(y, f)) for x, y in ((r1, r2), (u1, u2))
                                  for f in fields)
        row = {"probe": built.list_probe, "engine_with_built_lists_seconds": round(build_s, 2),
               "save_seconds": round(save_s, 2), "file_bytes": size, "read_seconds": round(read_s, 2),
               "engine_with_stored_lists_seconds": round(lists_s, 2),
               "quantiser_file_bytes": qsize, "engine_with_stored_lists_and_quantiser_seconds": round(start_s, 2),
               "entry_check_seconds": round(check_s, 2), "taken": served.lists_source != "built",
               "quantiser_taken": served.quantiser_source != "fitted", "invalid": int(bad), "same_answers": same}
        out["depths"][str(depth)] = row
        print(f"depth {depth} (probe {built.list_probe}): engine with built lists {build_s:.1f} s; saved "
              f"{size / 2**20:.0f} MiB in {save_s:.1f} s; read {read_s:.1f} s; engine with stored lists "
              f"{lists_s:.1f} s, with stored lists and quantiser ({qsize / 2**10:.0f} KiB) {start_s:.1f} s "
              f"(entry check {check_s:.2f} s); same trigger and user answers {same}")
        del built, served, stored
    return write_record(out, a.out)


if __name__ == "__main__":
    main()
