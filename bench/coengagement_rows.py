"""How much of EASE's recall the co-engagement table keeps when each row is cut to its top M weights.

Usage::

    OMP_NUM_THREADS=1 python bench/coengagement_rows.py ../shared/datasets/ml-latest-small user_time 200

Fits EASE once (the given lambda) on the split's training events and scores every test user with the
full matrix and with the top-M positive weights of each row (``CoEngagementConfig(keep_dense_gb=0,
neighbours=M)``), same users, exclusions and metric code as ``mfli bench quality``. Prints a table.
"""

from __future__ import annotations

import sys
import time

from mfli.data.loaders import load_dataset
from mfli.eval.harness import QualityConfig, _SeedRun
from mfli.eval.metrics import recall_at_k
from mfli.index.coengagement import CoEngagementConfig, build_coengagement


def main(data: str, split: str, l2: float, rows: tuple[int, ...] = (100, 200, 500, 2000)) -> None:
    run = _SeedRun(load_dataset(data), QualityConfig(split=split, seeds=1), 0)
    print(f"{data} / {split}: {len(run.users)} test users, EASE lambda {l2:g}\n")
    print("| table | MB | recall@100 | / full | fit + score s |\n|---|---|---|---|---|")
    full = None
    for m in (None, *rows):
        cfg = CoEngagementConfig(keep_dense_gb=0.0, neighbours=m) if m else CoEngagementConfig(keep_dense_gb=1e9)
        t0 = time.perf_counter()
        co = build_coengagement(run.split.train, cfg=cfg, param=l2)
        r = recall_at_k(co.retrieve(run.histories, 100, exclude=run.histories)[0], run.positives, 100)
        full = r if full is None else full
        name = "full matrix" if m is None else f"top {m} per row"
        print(f"| {name} | {co.nbytes / 2**20:.0f} | {r:.4f} | {r / full:.3f} | {time.perf_counter() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
