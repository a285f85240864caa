"""Merge ``mfli bench quality`` JSON files of the same split and seeds into one, for the tables.

Usage::

    python bench/merge_quality.py OUT.json BASE.json NEWER.json [...] [--replace METHOD,...]

Methods of later files replace those of earlier ones. Every method present in more than one file,
except those named by ``--replace`` (the methods whose code changed between the runs), must have
identical per-user recall@100 in each (training and retrieval are seeded, so a rerun of the same
code on the same split gives the same lists): this is what makes rows from separate runs comparable,
and the merge refuses files where it does not hold. Ratio intervals are recomputed over the merged set
(against exact, hnsw, hnsw_add, hnsw_i2i, their ``_placed`` variants and the best baseline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mfli.eval.harness import add_ratio_intervals


def merge(paths: list[str], replace: tuple[str, ...] = ()) -> dict:
    out: dict = {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        for method, res in results.items():
            if method in out and method not in replace:
                a = out[method]["per_user"]["recall@100"]
                b = res["per_user"]["recall@100"]
                if a != b:
                    raise SystemExit(f"{path}: {method} differs from the earlier file's (per-user recall@100); "
                                     "not the same split, seeds or code")
            res.pop("ratios", None)
            out[method] = res
    return add_ratio_intervals(out, also=("hnsw", "hnsw_add", "hnsw_i2i", "hnsw_add_placed", "hnsw_i2i_placed"))


if __name__ == "__main__":
    args = sys.argv[1:]
    replace: tuple[str, ...] = ()
    if "--replace" in args:
        i = args.index("--replace")
        replace = tuple(args[i + 1].split(","))
        args = args[:i] + args[i + 2:]
    if len(args) < 3:
        raise SystemExit(__doc__)
    Path(args[0]).write_text(json.dumps(merge(args[1:], replace)))
    print(f"wrote {args[0]}")
