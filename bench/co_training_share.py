"""How much of the codebook loss's gradient the towers should take, per split: train the model with each
share (``codebook.qmf_query_scale`` and ``straight_through_scale`` both set to it, same seed) and print
what validation sees next to what the test split gives.

    OMP_NUM_THREADS=1 python bench/co_training_share.py ../shared/datasets/ml-latest-small time \
        --shares 1,0 --seed 0 --out docs/results/co_training_share_ml_time_seed0.json

Per share: the validation figures training records (recall@100 of each validation user's held-out latest
events, and of trained items played as new at the chosen placement mix: ``TrainedModel.history[-1]``) and
the test split's recall@100 and cold recall@100 of exact search over the model's own embeddings (the
harness's ``exact`` method, so no index is involved). Share 0 trains the towers exactly as the plain
two-tower model (``docs/benchmarks.md``, "Co-training share").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("split")
    p.add_argument("--shares", default="1,0", help="comma list of gradient shares in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    from mfli.data.loaders import load_dataset
    from mfli.eval.harness import _RUNNERS, QualityConfig, _SeedRun

    ds = load_dataset(a.data)
    out: dict = {"data": Path(a.data).name, "split": a.split, "seed": a.seed, "shares": {}}
    for share in (float(s) for s in a.shares.split(",")):
        codebook = {"straight_through_scale": share, "qmf_query_scale": share}
        cfg = QualityConfig(methods=("exact",), split=a.split, seeds=1, num_threads=1,
                            train_overrides={"progress": False, "model": {"codebook": codebook}})
        run = _SeedRun(ds, cfg, a.seed)
        t0 = time.perf_counter()
        model, train_s = run.model("joint")
        final = model.history[-1]
        table = (final.get("placement") or {}).get("valid_recall") or {}
        res = _RUNNERS["exact"](run)
        row = {"valid_recall@100": final.get("best_valid_recall"),
               "played_new_recall@100": max(table.values()) if table else None,
               "placement": final.get("placement"),
               "test_recall@100": res["recall@100"], "test_cold_recall@100": res.get("cold_recall@100"),
               "train_s": round(train_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
        out["shares"][f"{share:g}"] = row
        print(f"share {share:g}: validation {row['valid_recall@100']:.4f}, played-new "
              f"{row['played_new_recall@100'] or float('nan'):.4f}, test {row['test_recall@100']:.4f}, "
              f"test cold {row['test_cold_recall@100']:.4f} (train {train_s:.0f}s)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
