"""Print the markdown tables of ``mfli bench quality`` JSON files (what docs/benchmarks.md shows).

    python bench/quality_tables.py docs/results/quality_ml_time.json docs/results/quality_amazon_*.json
    python bench/quality_tables.py --compact FILE...   # recall@100 and cold recall@100 only

Ratios carry paired bootstrap 95% intervals over users (1000 resamples, seed 0) when the JSON holds
per-user values (runs since the item-item baselines were added); older files show plain ratios.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from mfli.eval.harness import format_facet_table, format_table


def cold_ratio(results: dict, num: str = "mfli", den: str = "hnsw") -> str:
    """MFLI's cold recall@100 over the rebuild-at-snapshot ANN's, as text (the ANN's is often 0)."""
    if num not in results or den not in results:
        return "-"
    a, b = results[num]["cold_recall@100"]["mean"], results[den]["cold_recall@100"]["mean"]
    if math.isnan(a) or math.isnan(b):
        return "n/a (no cold test items)"
    if b == 0:
        return f"{a:.4f} vs 0 (unbounded)" if a > 0 else "0 vs 0"
    return f"{a / b:.2f}x"


def blend_table(results: dict) -> str:
    """mfli_blend: each fused list's own recall, the chosen weights, and the cold ratios of the targets."""
    b = results["mfli_blend"]

    def m(key: str) -> str:
        v = b[key]
        return f"{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if len(v["values"]) > 1 else "")

    rows = ["| list | recall@100 | cold_recall@100 |", "|---|---|---|"]
    for part in ("user", "coengagement", "trigger", "trending"):
        if f"part:{part}/recall@100" not in b:  # runs before the trending list
            continue
        rows.append(f"| {part} | {m(f'part:{part}/recall@100')} | {m(f'part:{part}/cold_recall@100')} |")
    rows.append(f"| **blend** | {m('recall@100')} | {m('cold_recall@100')} |")
    w = ", ".join(f"{k.split(':')[1]} {v}" for k, v in
                  ((k, "/".join(f"{x:g}" for x in b[k]["values"])) for k in ("blend_w:coengagement", "blend_w:trigger", "blend_w:trending") if k in b))
    kind = "EASE" if b["coengagement_is_ease"]["mean"] == 1 else "item-kNN"
    extra = [(f"weights chosen per seed: {w}; co-engagement from {kind} "
             f"({'/'.join(f'{x:g}' for x in b['coengagement_param']['values'])}), "
             f"{b['coengagement_mb']['mean']:.0f} MB")]
    if "placement_mix" in b:
        extra.append("new-item placement mix per seed: " + "/".join(f"{x:g}" for x in b["placement_mix"]["values"]))
    ratios = b.get("ratios", {})
    for den in ("hnsw_add", "hnsw_i2i", "hnsw_add_placed", "hnsw_i2i_placed", "exact"):
        r = ratios.get(f"cold_recall@100 / {den}")
        if r is not None and r["ratio"] == r["ratio"]:  # an interval: paired bootstrap over users
            extra.append(f"blend cold recall@100 / {den}: {r['ratio']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]")
        elif den in results:
            extra.append(f"blend cold recall@100 / {den}: {cold_ratio(results, 'mfli_blend', den)}")
    return "\n".join(rows) + "\n\n" + "; ".join(extra)


def main(paths: list[str]) -> None:
    compact = "--compact" in paths
    paths = [p for p in paths if p != "--compact"]
    for path in paths:
        results = json.loads(Path(path).read_text())
        seeds = len(next(iter(results.values()))["recall@100"]["values"])
        print(f"### {Path(path).stem} ({seeds} seed{'s' if seeds != 1 else ''})\n")
        print(format_table(results, metrics=("recall@100", "cold_recall@100")) if compact else format_table(results))
        print(f"\nmfli cold recall@100 / hnsw (rebuild at snapshot): {cold_ratio(results)}\n")
        facets = format_facet_table(results) if {"mfli_facets", "mfli_f1", "mfli_f3"} & set(results) else ""
        if facets:  # facet ablation runs
            print(f"{facets}\n")
        if "mfli_blend" in results:
            print(f"{blend_table(results)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
