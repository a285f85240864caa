"""Compare ``mfli bench quality`` runs of different configs on the same split, seed and users.

    python bench/quality_compare.py BASE.json OTHER.json [...] [--methods mfli,exact,hnsw]

Each file is one config's run (same ``--data``, ``--split`` and ``--seeds``, so the test users and
their order are the same). Prints recall@100 and cold recall@100 of every method in every file and
its ratio to the same method in BASE, with a paired bootstrap 95% interval over users
(:mod:`mfli.eval.bootstrap`, 1000 resamples, seed 0). Files whose per-user arrays differ in length
(not the same users) are refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mfli.eval.bootstrap import PairedBootstrap, pooled_per_user
from mfli.eval.harness import PER_USER_KEYS


def compare(paths: list[Path], methods: list[str] | None = None) -> str:
    """Markdown table: one row per (file, method); columns per metric: mean and ratio to BASE's method."""
    runs = {p.stem: json.loads(p.read_text()) for p in paths}
    base = paths[0].stem
    methods = methods or [m for m in runs[base] if "per_user" in runs[base][m]]
    boots = {}
    for metric in PER_USER_KEYS:
        pooled = {}
        for name, res in runs.items():
            for m, v in pooled_per_user(res, metric).items():
                if m in methods:
                    pooled[f"{name}:{m}"] = v
        sizes = {k: v.size for k, v in pooled.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{metric}: runs are not on the same users (per-user sizes {sizes})")
        boots[metric] = (PairedBootstrap(pooled), pooled)
    head = ["run", "method"]
    for metric in PER_USER_KEYS:
        head += [metric, f"{metric} / {base}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in runs.items():
        for m in methods:
            if m not in res:
                continue
            cells = [name, m]
            for metric in PER_USER_KEYS:
                cells.append(f"{res[m][metric]['mean']:.4f}" if metric in res[m] else "-")
                key, ref = f"{name}:{m}", f"{base}:{m}"
                boot, pooled = boots[metric]
                ok = key in pooled and ref in pooled
                cells.append(boot.ratio(key, ref).text() if ok and name != base else "1" if ok else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    methods = None
    if "--methods" in argv:
        i = argv.index("--methods")
        methods = argv[i + 1].split(",")
        argv = argv[:i] + argv[i + 2:]
    if len(argv) < 2:
        raise SystemExit(__doc__)
    print(compare([Path(a) for a in argv], methods))


if __name__ == "__main__":
    main(sys.argv[1:])
