"""The daily DAG's evaluation step and its run report (markdown + PNG plots).

The protocol (time holdout, MFLI vs exact search vs popularity, health figures) is
:func:`mfli.eval.holdout.evaluate_holdout`; this module fetches the run's artifacts, chooses the
serving config the snapshot is evaluated (and later served) with, and writes the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.artifacts import artifact_uri, get_dir, put_dir, run_dataset, scratch_dir


def _previous_metrics(store_uri: str) -> dict | None:
    from mfli.store import read_latest
    from mfli.store.snapshots import read_manifest
    from tasks.artifacts import open_run_store

    store = open_run_store(store_uri)
    latest = read_latest(store)
    if latest is None:
        return None
    manifest = read_manifest(store, latest.snapshot_id)
    return {"snapshot_id": latest.snapshot_id, "metrics": manifest.get("metrics") or {}}


def run_snapshot(run: dict, trained: dict, index: dict, tmp: Path, metrics: dict | None = None,
                 serving: dict | None = None):
    """The run's candidate :class:`~mfli.snapshot.Snapshot` from its model and index artifacts.

    ``serving`` (a :meth:`ServingConfig.to_dict`) defaults to :class:`~mfli.serve.config.ServingConfig`'s
    defaults: the evaluation chooses it, the publish step stores the same one.
    """
    from mfli.index.inverted import MultiFacetIndex
    from mfli.model.trained import TrainedModel
    from mfli.serve.config import ServingConfig
    from mfli.snapshot import Snapshot

    s = run["store_uri"]
    model = TrainedModel.load(get_dir(s, trained["model_uri"], tmp / "model"))
    idx = MultiFacetIndex.load(get_dir(s, index["index_uri"], tmp / "index"))
    # None: a new snapshot gets today's defaults (from_dict gives a dict without "engine" the legacy one)
    cfg = ServingConfig() if serving is None else ServingConfig.from_dict(serving)
    return Snapshot(model, idx, dict(metrics or {}), cfg)


def evaluate_run(run: dict, extracted: dict, trained: dict, index: dict) -> dict:
    """Metrics of the freshly built snapshot, the live snapshot's metrics, the report's URI and the
    serving config the metrics were measured with."""
    from mfli.eval.holdout import evaluate_holdout
    from tasks.params import daily_params

    s = run["store_uri"]
    ds = run_dataset(run, extracted)
    with scratch_dir() as tmp:
        snapshot = run_snapshot(run, trained, index, tmp)
    result = evaluate_holdout(snapshot, ds, pd.Timestamp(run["cutoff"]))
    with scratch_dir() as tmp:
        out = tmp / "report"
        out.mkdir()
        write_report(out, run, result.metrics, result.curves, index, result.codebook, result.index,
                     snapshot.model.facets)
        (out / "metrics_by_method.json").write_text(json.dumps(result.per_method, indent=2, sort_keys=True))
        report_uri = put_dir(s, artifact_uri(run, "report"), out)
    return {"metrics": result.metrics, "previous": _previous_metrics(s), "report_uri": report_uri,
            "serving": snapshot.serving.to_dict(), "gate_params": daily_params(run).gate_thresholds()}


def _ratio_row(metrics: dict, name: str) -> str:
    """``| recall@100_vs_exact | 0.998 [0.990, 1.005] |`` (``-`` where undefined)."""
    v, lo, hi = (metrics.get(name), metrics.get(f"{name}_lo"), metrics.get(f"{name}_hi"))
    if v is None:
        return f"| {name} | - |"
    return f"| {name} | {v:.3f} [{lo:.3f}, {hi:.3f}] |" if lo is not None and hi is not None else f"| {name} | {v:.3f} |"


def write_report(out: Path, run: dict, metrics: dict, curves: dict, index: dict, cb: dict, ih: dict,
                 facets: list[str]) -> None:
    """``report.md`` with PNG plots: recall@K curves vs baselines, cluster sizes, codebook utilisation."""
    import matplotlib

    from mfli.eval.holdout import RATIOS, RECALL_CURVE_KS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, ys in curves.items():
        ax.plot(RECALL_CURVE_KS, ys, marker="o", label=m)
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_title("Holdout recall@K")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for f, (before, after) in enumerate(zip(index["balance_before"], index["balance_after"])):
        edges = after["hist_edges"]
        ax.step(edges[: len(after["hist_counts"])], after["hist_counts"], where="post", label=f"{facets[f]} after")
        ax.step(before["hist_edges"][: len(before["hist_counts"])], before["hist_counts"], where="post",
                linestyle="--", label=f"{facets[f]} before")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cluster size (items)")
    ax.set_ylabel("clusters")
    ax.set_title("Cluster sizes before/after split-and-merge")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cluster_sizes.png", dpi=100)
    plt.close(fig)

    keys = sorted(k for k in cb if k.endswith(".utilisation"))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(range(len(keys)), [cb[k] for k in keys])
    ax.set_xticks(range(len(keys)), [k.replace(".utilisation", "") for k in keys], rotation=45, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of codes used")
    ax.set_title("Codebook utilisation per facet/layer")
    fig.tight_layout()
    fig.savefig(out / "codebook_utilisation.png", dpi=100)
    plt.close(fig)

    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted(metrics.items()))
    ratio_rows = "\n".join(_ratio_row(metrics, name) for name, *_ in RATIOS if name in metrics)
    (out / "report.md").write_text(
        f"# MFLI run report: snapshot {run['snapshot_id']}\n\n"
        f"Window `{run['start']}` .. `{run['end']}`, holdout from `{run['cutoff']}`; dataset `{run['dataset_uri']}`.\n\n"
        f"Facets: {', '.join(facets)}. Index: {index['items']} items, built in {index['build_seconds']} s.\n\n"
        f"## MFLI against its baselines ({metrics.get('test_users')} test users; paired bootstrap 95% intervals)\n\n"
        "| ratio | value [interval] |\n|---|---|\n" + ratio_rows + "\n\n"
        "## Metrics (MFLI unless prefixed by a baseline)\n\n| metric | value |\n|---|---|\n" + rows + "\n\n"
        "## Recall@K against the baselines\n\n![recall](recall_at_k.png)\n\n"
        "## Cluster sizes\n\n![clusters](cluster_sizes.png)\n\n"
        "## Codebook utilisation\n\n![codebook](codebook_utilisation.png)\n"
    )
