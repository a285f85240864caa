"""Serving benchmark at 1M items: MFLI vs exact search, FAISS HNSW, FAISS IVF and Deep Retrieval.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serving.py --items 1000000 --dim 64 --queries 2048 \
        --out docs/results/serving_1m.json --plot docs/results/serving_1m.png

The same run as ``mfli bench serving``; see mfli/eval/serving_bench.py for what is measured and how,
and docs/benchmarks_serving.md for the results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfli.eval.serving_bench import ServingBenchConfig, format_tables, plot, run_serving_bench, write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--facets", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--embeddings", choices=("model", "synthetic"), default="model")
    ap.add_argument("--dr-items", type=int, default=0)
    ap.add_argument("--budget", type=float, default=None, help="seconds; later sweep points are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args(argv)
    cfg = ServingBenchConfig(n_items=a.items, dim=a.dim, n_queries=a.queries, facets=a.facets, layers=a.layers,
                             codes=a.codes, threads=a.threads, build_threads=a.build_threads,
                             embeddings=a.embeddings, dr_items=a.dr_items, budget_s=a.budget, seed=a.seed)
    result = run_serving_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    write_json(result, a.out)
    if a.plot:
        plot(result, a.plot)
    print(format_tables(result))
    return result


if __name__ == "__main__":
    main()
