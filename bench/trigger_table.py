"""Trigger mode at equal recall: an MFLI method over the fastest per-trigger ANN baseline, from the JSON
of ``bench/serving_engine.py --trigger-only`` (one file, or several runs of the same command side by side)::

    python bench/trigger_table.py docs/results/serving_engine_trigger_1m_one.json \\
        docs/results/serving_engine_trigger_1m_one_rerun.json

Each cell is ``method / fastest baseline`` per file, with the fastest baseline of the first file named.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BASELINES = ("ivf", "ivfpq_fs", "scann", "hnsw")


def fastest_ratio(row: dict, method: str) -> tuple[float | None, str | None]:
    """``(row[method] / the fastest baseline's rate, that baseline)``; None where either is missing."""
    rates = {b: row[b] for b in BASELINES if row.get(b)}
    if not rates or not row.get(method):
        return None, None
    best = max(rates, key=rates.get)
    return row[method] / rates[best], best


def table(results: list[dict], method: str) -> str:
    first = results[0]["equal_recall"]["trigger"]
    levels = [r["recall"] for r in next(iter(first.values()))]
    lines = ["| T | batch | " + " | ".join(f"recall {x:.2f}" for x in levels) + " |",
             "|---|---|" + "---|" * len(levels)]
    for key in first:  # "T1_rps_b1", ...
        T, batch = key[1:].split("_rps_b")
        cells = []
        for i in range(len(levels)):
            vals, name = [], None
            for res in results:
                ratio, best = fastest_ratio(res["equal_recall"]["trigger"][key][i], method)
                vals.append("-" if ratio is None else f"{ratio:.2f}")
                name = name or best
            cells.append(" / ".join(vals) + (f" ({name})" if name else ""))
        lines.append(f"| {T} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--method", default="mfli_lists")
    a = p.parse_args(argv)
    out = table([json.loads(f.read_text()) for f in a.files], a.method)
    print(out)
    return out


if __name__ == "__main__":
    main()
