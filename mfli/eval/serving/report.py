"""Reading a run: Pareto fronts, queries/s at equal recall, headline figures, tables, plot and JSON."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto points (recall, qps): sorted by recall, each faster than every point of higher recall."""
    pts = sorted(p for p in points if p[0] is not None and p[1] is not None and np.isfinite(p[0]))
    out: list[tuple[float, float]] = []
    for r, q in reversed(pts):
        if not out or q > out[-1][1]:
            out.append((r, q))
    return out[::-1]


def qps_at_recall(points: list[tuple[float, float]], target: float) -> float | None:
    """Queries/s a method reaches at ``target`` recall: log-linear between the Pareto points around it;
    below its lowest recall, its fastest point; above its highest recall, None (not reached)."""
    fr = _frontier(points)
    if not fr or target > fr[-1][0] + 1e-12:
        return None
    if target <= fr[0][0]:
        return fr[0][1]
    for (r0, q0), (r1, q1) in itertools.pairwise(fr):
        if r0 <= target <= r1:
            t = (target - r0) / (r1 - r0) if r1 > r0 else 1.0
            return float(math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0))))
    return None


def equal_recall(methods: dict, key: str, base: str = "mfli",
                 targets: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)) -> dict:
    """Per target recall: every method's interpolated ``key`` (queries/s) and ``base``'s ratio to each.

    Also, at every sweep point of each other method, ``base``'s interpolated speed at that point's recall
    (the matched comparison on the other method's own curve). DR is left out: its recall is against
    another reference and its catalogue is smaller.
    """
    curves = {}
    for name, m in methods.items():
        if name in ("dr", "exact") or "sweep" not in m:
            continue
        curves[name] = [(p.get("recall"), p.get(key)) for p in m["sweep"] if "skipped" not in p]
    table = []
    for t in targets:
        row = {"recall": t}
        for name, pts in curves.items():
            row[name] = qps_at_recall(pts, t)
        if row.get(base):
            for name in curves:
                if name != base and row.get(name):
                    row[f"{base}_over_{name}"] = row[base] / row[name]
        table.append(row)
    matched = {}
    for name, pts in curves.items():
        if name == base or base not in curves:
            continue
        rows = []
        for r, q in pts:
            b = qps_at_recall(curves[base], r)
            rows.append({"recall": r, name: q, base: b, "ratio": (b / q) if b else None})
        matched[name] = rows
    return {"key": key, "by_target": table, "at_points": matched}


def headline(result: dict, key: str) -> dict:
    """MFLI vs HNSW at matched recall@k: the ratio at the highest recall HNSW reaches that MFLI reaches too."""
    rows = result.get("equal_recall", {}).get(key, {}).get("at_points", {}).get("hnsw", [])
    ok = [r for r in rows if r["ratio"] is not None]
    if not ok:
        return {"key": key, "ratio": None, "note": "no overlap of the recall ranges"}
    best = max(ok, key=lambda r: r["recall"])
    return {"key": key, "recall": best["recall"], "mfli_qps": best["mfli"], "hnsw_qps": best["hnsw"],
            "ratio": best["ratio"], "target": 1.5, "meets_target": bool(best["ratio"] >= 1.5),
            "ratio_range": [min(r["ratio"] for r in ok), max(r["ratio"] for r in ok)]}


BASELINES = ("hnsw", "ivf", "ivfpq_fs", "scann")  # the ANN libraries MFLI is compared with
MFLI_PATHS = ("mfli", "mfli_scan")


def headline_fastest(methods: dict, key: str, targets: Sequence[float] = (0.9, 0.95)) -> list[dict]:
    """Per target recall: each MFLI path's interpolated ``key`` (queries/s) over the fastest baseline's
    at that recall (None where a method does not reach it)."""
    curves = {n: [(p.get("recall"), p.get(key)) for p in m.get("sweep", []) if "skipped" not in p]
              for n, m in methods.items() if n in BASELINES + MFLI_PATHS}
    rows = []
    for t in targets:
        base = {n: qps_at_recall(curves[n], t) for n in BASELINES if n in curves}
        reached = {n: q for n, q in base.items() if q}
        fastest = max(reached, key=reached.get) if reached else None
        row = {"recall": t, "fastest_baseline": fastest, "fastest_qps": reached.get(fastest) if fastest else None}
        for n in MFLI_PATHS:
            if n in curves:
                q = qps_at_recall(curves[n], t)
                row[n] = q
                row[f"{n}_over_fastest"] = (q / row["fastest_qps"]) if q and row["fastest_qps"] else None
        rows.append(row)
    return rows


def _fmt(x, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _param(name: str, p: dict) -> str:
    if name == "mfli":
        return f"beam {p['beam']}, clusters {p['clusters_per_query'] or 'all'}"
    if name == "hnsw":
        return f"efSearch {p['ef_search']}"
    if name == "ivf":
        return f"nprobe {p['nprobe']}"
    if name == "dr":
        return f"beam {p['beam']}"
    if name == "mfli_scan":
        return f"clusters {p['n_clusters']}, short list {p['shortlist']}"
    if name == "ivfpq_fs":
        return f"nprobe {p['nprobe']}, reorder {p['k_factor']}k"
    if name == "scann":
        return f"leaves {p['leaves']}, reorder {p['reorder']}"
    return "-"


def format_tables(result: dict) -> str:
    """Markdown tables: build cost per method, the sweep points, the equal-recall comparison."""
    bs = result["config"]["batch_size"]
    bkey = f"qps_b{bs}"
    methods = result["methods"]
    lines = ["| method | items | build (s) | index (MB) | serving memory (MB) | peak RSS growth in build (MB) |",
             "|---|---|---|---|---|---|"]
    for name, m in methods.items():
        if "build" not in m:
            if m.get("skipped"):
                lines.append(f"| {name} | skipped: {m['skipped']} | | | | |")
            continue
        b = m["build"]
        lines.append(f"| {name} | {m['n_items']:,} | {b['seconds']['total']:.1f} | "
                     f"{b.get('index_bytes', 0) / 2**20:,.0f} | {b.get('serving_bytes', 0) / 2**20:,.0f} | "
                     f"{b['peak_rss_delta_bytes'] / 2**20:,.0f} |")
    head = (f"| method | setting | recall@{result['config']['k']} | q/s batch 1 | p50 ms | p99 ms | "
            f"q/s batch {bs} |")
    lines += ["", head, "|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        for p in m.get("sweep", []):
            if "skipped" in p:
                lines.append(f"| {name} | {_param(name, p)} | skipped ({p['skipped']}) | | | | |")
                continue
            lines.append(f"| {name} | {_param(name, p)} | {p['recall']:.3f} | {_fmt(p['qps_b1'])} | "
                         f"{_fmt(p['p50_ms'], 2)} | {_fmt(p['p99_ms'], 2)} | {_fmt(p[bkey])} |")
    for key in ("qps_b1", bkey):
        er = result["equal_recall"][key]
        shown = [n for n in (*MFLI_PATHS, *BASELINES) if n in methods and methods[n].get("sweep")]
        others = [n for n in ("hnsw", "ivf") if n in methods]
        lines += ["", f"Equal recall ({'batch 1' if key == 'qps_b1' else f'batch {bs}'}, queries/s):", "",
                  "| recall@k | " + " | ".join(shown) + " | " + " | ".join(f"mfli / {o}" for o in others) + " |",
                  "|---|" + "---|" * (len(shown) + len(others))]
        for row in er["by_target"]:
            if not any(row.get(n) for n in shown):
                continue
            lines.append(f"| {row['recall']:.2f} | " + " | ".join(_fmt(row.get(n)) for n in shown) + " | "
                         + " | ".join(_fmt(row.get(f"mfli_over_{o}"), 2) for o in others) + " |")
    fastest = result.get("headline_fastest") or {}
    if fastest:
        paths = [n for n in MFLI_PATHS if n in methods and methods[n].get("sweep")]
        lines += ["", "MFLI vs the fastest baseline at equal recall (queries/s ratio):", "",
                  "| recall@k | batch | fastest baseline | its q/s | " + " | ".join(f"{n} q/s | {n} / fastest"
                                                                            for n in paths) + " |",
                  "|---|---|---|---|" + "---|---|" * len(paths)]
        for key, rows in fastest.items():
            label = "1" if key == "qps_b1" else key.removeprefix("qps_b")
            for row in rows:
                lines.append(f"| {row['recall']:.2f} | {label} | {row['fastest_baseline'] or 'none reaches it'} | "
                             f"{_fmt(row['fastest_qps'])} | " + " | ".join(
                                 f"{_fmt(row.get(n))} | {_fmt(row.get(f'{n}_over_fastest'), 2)}" for n in paths) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """Recall@k vs queries/s (log scale), batch 1 and batched, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = result["config"]["batch_size"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"mfli": ("C0", "o"), "hnsw": ("C1", "s"), "ivf": ("C2", "^"), "dr": ("C3", "D"), "exact": ("k", "*"),
              "mfli_scan": ("C4", "P"), "ivfpq_fs": ("C6", "v"), "scann": ("C8", "X")}
    for ax, key, title in ((axes[0], "qps_b1", "batch 1"), (axes[1], f"qps_b{bs}", f"batch {bs}")):
        for name, m in result["methods"].items():
            pts = [p for p in m.get("sweep", []) if "skipped" not in p and p.get(key)]
            if not pts:
                continue
            color, marker = styles.get(name, ("C5", "x"))
            label = name if name != "dr" else f"dr (N={m['n_items']:,}, own reference)"
            ax.plot([p["recall"] for p in pts], [p[key] for p in pts], marker=marker, color=color, label=label,
                    linestyle="-" if name != "exact" else "none", markersize=8 if name == "exact" else 6)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{result['config']['k']} vs exact search")
        ax.set_ylabel("queries/s (1 thread)" if result["config"]["threads"] == 1 else "queries/s")
        ax.set_title(f"{title}, N={result['config']['n_items']:,}, F*d={result['config']['facets'] * result['config']['dim']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
