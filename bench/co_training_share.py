"""How much of the codebook loss's gradient the towers should take, per split: train the model with each
share (``codebook.qmf_query_scale`` and ``straight_through_scale`` both set to it, same seed) and print
what validation sees next to what the test split gives.

    OMP_NUM_THREADS=1 python bench/co_training_share.py ../shared/datasets/ml-latest-small time \
        --shares 1,0 --seed 0 --out docs/results/co_training_share_ml_time_seed0.json

Per share: the validation figures training records (recall@100 of each validation user's held-out latest
events, and of trained items played as new at the chosen placement mix: ``TrainedModel.history[-1]``);
recall@100 of the held-out events whose items the fitted model never saw (``valid_new_recall@100``: exact
search over the items that existed during training, :func:`mfli.eval.blend_select.existing_items`, each
embedded as serving embeds it); and the test split's recall@100 and cold recall@100 of exact search over
the model's own embeddings (the harness's ``exact`` method, so no index is involved). Share 0 trains the towers exactly as the plain
two-tower model (``docs/benchmarks.md``, "Co-training share").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def valid_new_recall(run, model, k: int = 100) -> tuple[float, int]:
    """Mean recall@k over the validation users of their held-out items that no fit event reached, and
    how many users have one: exact search over the items that existed during training, history excluded."""
    import numpy as np

    from mfli.eval.blend_select import existing_items
    from mfli.eval.metrics import recall_at_k
    from mfli.index.build import encode_items
    from mfli.serve.exact import exact_search

    vs = run.validation
    seen = np.unique(vs.fit["item_id"].to_numpy(np.int64))
    pos = [p[~np.isin(p, seen)] for p in vs.positives]
    keep = np.flatnonzero([len(p) > 0 for p in pos])
    if not len(keep):
        return float("nan"), 0
    items = run.ds.items[run.ds.items["item_id"].isin(existing_items(run.split.train, run.ds.items))]
    enc = encode_items(model, items)
    users = vs.users[keep]
    hist = [vs.histories[i] for i in keep]
    q = model.user_embeddings(users, hist).numpy()
    ids, _ = exact_search(q, enc.embeddings, k, enc.item_ids, exclude=hist)
    return recall_at_k(ids, [pos[i] for i in keep], k), len(keep)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("split")
    p.add_argument("--shares", default="1,0", help="comma list of gradient shares in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cutoff", default=None, help="time split only: this cutoff instead of the 80%% quantile "
                   "(the daily DAG holds out its last 7 days)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    from mfli.data.loaders import load_dataset
    from mfli.eval.harness import _RUNNERS, QualityConfig, _SeedRun

    ds = load_dataset(a.data)
    out: dict = {"data": Path(a.data).name, "split": a.split, "cutoff": a.cutoff, "seed": a.seed, "shares": {}}
    for share in (float(s) for s in a.shares.split(",")):
        codebook = {"straight_through_scale": share, "qmf_query_scale": share}
        cfg = QualityConfig(methods=("exact",), split=a.split, seeds=1, num_threads=1,
                            split_args={"cutoff": a.cutoff} if a.cutoff else {},
                            train_overrides={"progress": False, "model": {"codebook": codebook}})
        run = _SeedRun(ds, cfg, a.seed)
        t0 = time.perf_counter()
        model, train_s = run.model("joint")
        final = model.history[-1]
        table = (final.get("placement") or {}).get("valid_recall") or {}
        res = _RUNNERS["exact"](run)
        new_recall, new_users = valid_new_recall(run, model)
        row = {"valid_recall@100": final.get("best_valid_recall"),
               "valid_new_recall@100": new_recall, "valid_new_users": new_users,
               "played_new_recall@100": max(table.values()) if table else None,
               "placement": final.get("placement"),
               "test_recall@100": res["recall@100"], "test_cold_recall@100": res.get("cold_recall@100"),
               "train_s": round(train_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
        out["shares"][f"{share:g}"] = row
        print(f"share {share:g}: validation {row['valid_recall@100']:.4f}, never seen {new_recall:.4f} "
              f"({new_users} users), played-new "
              f"{row['played_new_recall@100'] or float('nan'):.4f}, test {row['test_recall@100']:.4f}, "
              f"test cold {row['test_cold_recall@100']:.4f} (train {train_s:.0f}s)", flush=True)
    if a.out:  # NaN (no user with a new item) is written as null: plain JSON
        Path(a.out).write_text(json.dumps(_nan_to_none(out), indent=1) + "\n")


def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


if __name__ == "__main__":
    main(sys.argv[1:])
