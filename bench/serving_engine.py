"""Serving-engine benchmark: MFLI's compiled scan engine vs IVF-Flat, IVF-PQ fast-scan, ScaNN and HNSW.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/serving_engine.py --items 1000000 --budget 840 \
        --out docs/results/serving_engine_1m.json
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/serving_engine.py --items 1000000 --trigger-only \
        --methods mfli_fs,ivf,scann,hnsw --out docs/results/serving_engine_trigger_1m.json

See mfli/eval/bench_engine.py for what is measured and docs/benchmarks_serving.md for the results.
Needs the ``bench`` extra (``scann``) for the ScaNN baseline; ``--methods`` can leave it out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfli.eval.bench_engine import EngineBenchConfig, format_tables, run_engine_bench
from mfli.eval.serving.report import write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--embeddings", choices=("model", "synthetic"), default="model")
    ap.add_argument("--methods", default="mfli,mfli_fs,ivf,ivfpq_fs,scann,hnsw")
    ap.add_argument("--model-dir", default=None, help="load the model a previous run saved (skips training)")
    ap.add_argument("--save-model-dir", default=None)
    ap.add_argument("--budget", type=float, default=None, help="seconds; later sweep points are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trigger-only", action="store_true",
                    help="trigger mode only: no user-mode sweep points, 1 thread")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    only = {"mfli_sweep": (), "mfli_fs_sweep": (), "ivf_nprobe": (), "ivfpq_sweep": (), "scann_sweep": (),
            "hnsw_ef": (), "threads": (1,)} if a.trigger_only else {}
    cfg = EngineBenchConfig(n_items=a.items, dim=a.dim, n_queries=a.queries, embeddings=a.embeddings,
                            methods=tuple(a.methods.split(",")), model_dir=a.model_dir,
                            save_model_dir=a.save_model_dir, budget_s=a.budget, seed=a.seed, **only)
    result = run_engine_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    write_json(result, a.out)
    print(format_tables(result))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
