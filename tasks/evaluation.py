"""The daily DAG's evaluation step and its run report (markdown + PNG plots).

The protocol (time holdout, MFLI vs exact search vs popularity, health figures) is
:func:`mfli.eval.holdout.evaluate_holdout`; this module fetches the run's artifacts, chooses the
serving config the snapshot is evaluated (and later served) with, and writes the report.

Blend mode (``params.blend``, on by default): :func:`fit_coengagement` learns the co-engagement tables
from the events before the cutoff; :func:`evaluate_run` chooses the blend weights on the validation
split (:func:`mfli.eval.blend_select.choose_blend`, each user's latest training events; the holdout is
never read), evaluates the snapshot in blend mode and records the table's URI, which the publish step
puts into the snapshot (``coengagement.npz``).

The scan engine's neighbour lists the evaluation built (trigger mode and blend mode read them) are
uploaded as the run's ``neighbours`` artifact and published in the snapshot (``neighbours.npz``), so
the service and the hourly gate serve the lists that were measured without building them again.
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


CO_TABLE = "coengagement.npz"  # the served table, in the run's ``coengagement`` artifact
CO_FIT_TABLE = "coengagement_fit.npz"  # the table on the validation split's fit events (weights only)


def _train_events(run: dict, extracted: dict) -> pd.DataFrame:
    from tasks.artifacts import get_parquet

    inter = get_parquet(run["store_uri"], extracted["interactions_uri"])
    return inter[inter["event_ts"] < pd.Timestamp(run["cutoff"])]


def _validation(run: dict, train: pd.DataFrame):
    from mfli.eval.validation import validation_set
    from tasks.params import daily_params

    return validation_set(train, seed=daily_params(run).seed)


def fit_coengagement(run: dict, extracted: dict) -> dict:
    """Fit blend mode's two co-engagement tables (:func:`mfli.eval.blend_select.fit_tables`) and upload
    them; ``{"enabled": False}`` when the run's ``blend`` param is off."""
    import time

    from mfli.eval.blend_select import fit_tables
    from tasks.params import daily_params

    if not daily_params(run).blend:
        return {"enabled": False}
    train = _train_events(run, extracted)
    t0 = time.perf_counter()
    table, fit_table = fit_tables(train, _validation(run, train))
    seconds = time.perf_counter() - t0
    with scratch_dir() as tmp:
        table.save(tmp / CO_TABLE)
        fit_table.save(tmp / CO_FIT_TABLE)
        uri = put_dir(run["store_uri"], artifact_uri(run, "coengagement"), tmp)
    return {"enabled": True, "coengagement_uri": uri, "method": table.method, "param": table.param,
            "items": len(table), "mb": round(table.nbytes / 2**20, 1), "seconds": round(seconds, 2)}


def _load_tables(run: dict, uri: str, tmp: Path):
    from mfli.index.coengagement import CoEngagement

    folder = get_dir(run["store_uri"], uri, tmp / "coengagement")
    return CoEngagement.load(folder / CO_TABLE), CoEngagement.load(folder / CO_FIT_TABLE)


def run_snapshot(run: dict, trained: dict, index: dict, tmp: Path, metrics: dict | None = None,
                 serving: dict | None = None, coengagement_uri: str | None = None, engine_uri: str | None = None):
    """The run's candidate :class:`~mfli.snapshot.Snapshot` from its model and index artifacts.

    ``serving`` (a :meth:`ServingConfig.to_dict`) defaults to :class:`~mfli.serve.config.ServingConfig`'s
    defaults: the evaluation chooses it, the publish step stores the same one. ``coengagement_uri``:
    the run's co-engagement artifact (:func:`fit_coengagement`), whose served table the snapshot carries.
    ``engine_uri``: the neighbour lists and fast-scan quantiser of the evaluation's engine (:func:`evaluate_run`).
    """
    from mfli.index.inverted import MultiFacetIndex
    from mfli.model.trained import TrainedModel
    from mfli.serve.config import ServingConfig
    from mfli.serve.list_store import load_lists
    from mfli.serve.quantiser_store import load_quantiser
    from mfli.snapshot import FASTSCAN_FILE, NEIGHBOURS_FILE, Snapshot

    s = run["store_uri"]
    model = TrainedModel.load(get_dir(s, trained["model_uri"], tmp / "model"))
    idx = MultiFacetIndex.load(get_dir(s, index["index_uri"], tmp / "index"))
    # None: a new snapshot gets today's defaults (from_dict gives a dict without "engine" the legacy one)
    cfg = ServingConfig() if serving is None else ServingConfig.from_dict(serving)
    table = _load_tables(run, coengagement_uri, tmp)[0] if coengagement_uri else None
    files = get_dir(s, engine_uri, tmp / "engine") if engine_uri else None
    lists = load_lists(files / NEIGHBOURS_FILE) if files and (files / NEIGHBOURS_FILE).is_file() else None
    quantiser = load_quantiser(files / FASTSCAN_FILE) if files and (files / FASTSCAN_FILE).is_file() else None
    return Snapshot(model, idx, dict(metrics or {}), cfg, coengagement=table, neighbour_lists=lists,
                    fastscan_quantiser=quantiser)


def _with_blend(run: dict, extracted: dict, snapshot, coengagement: dict, tmp: Path, items=None) -> dict:
    """Turn on blend mode in ``snapshot``: weights chosen on the validation split. Returns the metrics
    that record the choice."""
    import dataclasses

    from mfli.eval.blend_select import choose_blend, existing_items
    from mfli.serve.blend import BlendConfig, grid_key

    table, fit_table = _load_tables(run, coengagement["coengagement_uri"], tmp)
    depth = BlendConfig().depth
    serving = snapshot.serving
    if serving.engine == "scan" and serving.scan.neighbours and serving.scan.neighbours < depth:
        # trigger lists as deep as the other lists: neighbour lists answer k <= their length
        serving = dataclasses.replace(serving, scan=dataclasses.replace(serving.scan, neighbours=depth))
    snapshot.serving = serving
    train = _train_events(run, extracted)
    cfg, valid_recall = choose_blend(snapshot.model, snapshot.retriever(), snapshot.index, _validation(run, train),
                                     fit_table, depth=depth, existing=existing_items(train, items))
    grid = {key: r for key, r in valid_recall.items() if not key.startswith("new_items:")}
    snapshot.serving = dataclasses.replace(serving, blend=cfg)
    snapshot.coengagement = table
    snapshot.check()
    return {"blend_w_coengagement": cfg.weights.coengagement, "blend_w_trigger": cfg.weights.trigger,
            "blend_w_trending": cfg.weights.trending, "blend_w_new_items": cfg.weights.new_items,
            "blend_valid_recall@100": max(grid.values(), default=None),
            "blend_valid_recall@100_new_items": valid_recall.get(f"new_items:{cfg.weights.new_items:g}"),
            "blend_valid_recall@100_user": grid.get(grid_key(0.0, 0.0), grid.get(grid_key(0.0, 0.0, 0.0))),
            "coengagement_items": len(table), "coengagement_mb": round(table.nbytes / 2**20, 1)}


def evaluate_run(run: dict, extracted: dict, trained: dict, index: dict, coengagement: dict | None = None) -> dict:
    """Metrics of the freshly built snapshot, the live snapshot's metrics, the report's URI and the
    serving config the metrics were measured with (blend mode when ``coengagement`` holds tables)."""
    from mfli.eval.holdout import evaluate_holdout
    from mfli.snapshot import FASTSCAN_FILE, NEIGHBOURS_FILE
    from tasks.params import daily_params

    s = run["store_uri"]
    ds = run_dataset(run, extracted)
    blend_metrics: dict = {}
    with scratch_dir() as tmp:
        snapshot = run_snapshot(run, trained, index, tmp)
        if coengagement and coengagement.get("enabled"):
            blend_metrics = _with_blend(run, extracted, snapshot, coengagement, tmp, ds.items)
    result = evaluate_holdout(snapshot, ds, pd.Timestamp(run["cutoff"]))
    result.metrics.update(blend_metrics)
    engine_uri = None  # what the gated engine fitted: served as measured, not refitted at publish
    with scratch_dir() as tmp:
        saved = [snapshot.save_lists(tmp / NEIGHBOURS_FILE), snapshot.save_quantiser(tmp / FASTSCAN_FILE)]
        if any(saved):
            engine_uri = put_dir(s, artifact_uri(run, "engine"), tmp)
    with scratch_dir() as tmp:
        out = tmp / "report"
        out.mkdir()
        write_report(out, run, result.metrics, result.curves, index, result.codebook, result.index,
                     snapshot.model.facets)
        (out / "metrics_by_method.json").write_text(json.dumps(result.per_method, indent=2, sort_keys=True))
        report_uri = put_dir(s, artifact_uri(run, "report"), out)
    return {"metrics": result.metrics, "previous": _previous_metrics(s), "report_uri": report_uri,
            "serving": snapshot.serving.to_dict(), "gate_params": daily_params(run).gate_thresholds(),
            "coengagement_uri": (coengagement or {}).get("coengagement_uri") if snapshot.serving.blend else None,
            "engine_uri": engine_uri}


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
