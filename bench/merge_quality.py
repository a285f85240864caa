"""Merge ``mfli bench quality`` JSON files of the same split and seeds into one, for the tables.

Usage::

    python bench/merge_quality.py OUT.json BASE.json NEWER.json [...]

Methods of later files replace those of earlier ones. Every method present in more than one file must
have identical per-user recall@100 in each (training and retrieval are seeded, so a rerun of the same
code on the same split gives the same lists): this is what makes rows from separate runs comparable,
and the merge refuses files where it does not hold. Ratio intervals are recomputed over the merged set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mfli.eval.harness import add_ratio_intervals


def merge(paths: list[str]) -> dict:
    out: dict = {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        for method, res in results.items():
            if method in out:
                a = out[method]["per_user"]["recall@100"]
                b = res["per_user"]["recall@100"]
                if a != b:
                    raise SystemExit(f"{path}: {method} differs from the earlier file's (per-user recall@100); "
                                     "not the same split, seeds or code")
            res.pop("ratios", None)
            out[method] = res
    return add_ratio_intervals(out)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    Path(sys.argv[1]).write_text(json.dumps(merge(sys.argv[2:]), indent=1))
    print(f"wrote {sys.argv[1]}")
