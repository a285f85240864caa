"""Freshness benchmark: seconds from 10k new items' features to a served delta, against an HNSW rebuild.

    OMP_NUM_THREADS=1 .venv/bin/python bench/freshness.py --items 10000 --base-items 100000 \
        --out docs/results/delta_10k.json

The same run as ``mfli bench delta``; see mfli/eval/freshness_bench.py for the stages and
docs/benchmarks_serving.md for the results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfli.eval.freshness_bench import FreshnessBenchConfig, format_tables, run_freshness_bench
from mfli.eval.serving_bench import write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000, help="new items in the delta")
    ap.add_argument("--base-items", type=int, default=100_000, help="items in the live snapshot")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    cfg = FreshnessBenchConfig(new_items=a.items, base_items=a.base_items, dim=a.dim, threads=a.threads,
                               build_threads=a.build_threads, seed=a.seed)
    result = run_freshness_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    write_json(result, a.out)
    print(format_tables(result))
    return result


if __name__ == "__main__":
    main()
