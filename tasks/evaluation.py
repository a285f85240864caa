"""The daily DAG's evaluation step and its run report (markdown + PNG plots).

Holdout protocol (REFERENCE.md section 4, time split inside the run's window): the model was trained
on events before ``cutoff``; test events are those in ``[cutoff, end)``; cold items are items with no
event before the cutoff (they are in the index from content alone). Queries are the test users'
training histories; retrieval excludes their training items. Baselines computed in the same step:
exact search over the same embeddings (the ceiling of the embeddings) and popularity (the floor).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.artifacts import artifact_uri, get_dir, put_dir, scratch_dir

K_MAX = 200
RECALL_CURVE_KS = (10, 20, 50, 100, 150, 200)


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


def _recall_curve(retrieved: np.ndarray, positives) -> list[float]:
    from mfli.eval.metrics import recall_at_k

    return [recall_at_k(retrieved, positives, k) for k in RECALL_CURVE_KS]


def evaluate_run(run: dict, extracted: dict, trained: dict, index: dict) -> dict:
    """Metrics of the freshly built snapshot, the live snapshot's metrics, and the report's URI."""
    from mfli.baselines.popularity import Popularity
    from mfli.eval.metrics import (
        categories_by_item,
        codebook_health,
        evaluate_retrieval,
        histories_by_user,
        index_health,
        positives_by_user,
        train_counts,
    )
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.serve.exact import exact_search
    from mfli.serve.retriever import Retriever, RetrieverConfig
    from mfli.train import TrainedModel
    from tasks.pipeline import _dataset

    s = run["store_uri"]
    ds = _dataset(run, extracted)
    cutoff = pd.Timestamp(run["cutoff"])
    inter = ds.interactions
    train_df = inter[inter["event_ts"] < cutoff]
    test_df = inter[inter["event_ts"] >= cutoff]
    hist = histories_by_user(train_df)
    users = np.sort(np.intersect1d(test_df["user_id"].unique(), hist.index.to_numpy()))
    histories = [hist[u] for u in users]
    positives = positives_by_user(test_df, users)
    known = set(train_df["item_id"].unique().tolist())
    cold = np.array([i for i in ds.items["item_id"].to_numpy() if i not in known], dtype=np.int64)
    metric_inputs = dict(cold_items=cold, item_categories=categories_by_item(ds.items),
                         train_counts=train_counts(train_df), catalogue=ds.items["item_id"].to_numpy(np.int64))

    with scratch_dir() as tmp:
        model = TrainedModel.load(get_dir(s, trained["model_uri"], tmp / "model"))
        idx = MultiFacetIndex.load(get_dir(s, index["index_uri"], tmp / "index"))
    results: dict[str, np.ndarray] = {}
    if len(users):
        q = model.user_embeddings(users, histories).numpy()
        retriever = Retriever(idx, model.codebooks, model.facets, RetrieverConfig(beam=32, merge="sum"))
        results["mfli"] = retriever.retrieve_users(q, K_MAX, exclude=histories).item_ids
        results["exact"] = exact_search(q, idx.embeddings, K_MAX, idx.item_ids, exclude=histories)[0]
        results["pop"] = Popularity().fit(train_df, item_ids=ds.items["item_id"].to_numpy(np.int64)) \
            .retrieve(histories, K_MAX, exclude=histories)[0]
    per_method = {m: {k: (v if np.isfinite(v) else None) for k, v in evaluate_retrieval(r, positives, **metric_inputs).items()}
                  for m, r in results.items()}
    curves = {m: _recall_curve(r, positives) for m, r in results.items()}

    codes = encode_paths(idx.embeddings, model.codebooks, m=1)
    cb = codebook_health(codes, int(model.codebooks.shape[2]))
    ih = index_health(idx)
    F, L = idx.n_facets, int(model.codebooks.shape[0])
    metrics = dict(per_method.get("mfli", {}))
    for m in ("exact", "pop"):
        for k, v in per_method.get(m, {}).items():
            metrics[f"{m}_{k}"] = v
    ex = metrics.get("exact_recall@100") or 0.0
    metrics["recall@100_vs_exact"] = (metrics.get("recall@100") or 0.0) / ex if ex > 0 else None
    metrics["codebook_utilisation"] = min(cb[f"f{f}.l{layer}.utilisation"] for f in range(F) for layer in range(L))
    metrics["codebook_perplexity"] = min(cb[f"f{f}.l{layer}.perplexity"] for f in range(F) for layer in range(L))
    metrics["max_cluster_share"] = max(ih[f"f{f}.max_cluster_share"] for f in range(F))
    metrics["gini"] = max(ih[f"f{f}.gini"] for f in range(F))
    metrics["test_users"] = int(len(users))
    metrics["items"] = int(idx.n_items)
    metrics["cold_items"] = int(len(cold))
    # undefined metrics (e.g. cold recall with no cold positive) are None, never NaN, in JSON and XCom
    metrics = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}

    with scratch_dir() as tmp:
        out = tmp / "report"
        out.mkdir()
        write_report(out, run, metrics, curves, index, cb, ih, model.facets)
        (out / "metrics_by_method.json").write_text(json.dumps(per_method, indent=2, sort_keys=True))
        report_uri = put_dir(s, artifact_uri(run, "report"), out)
    return {"metrics": metrics, "previous": _previous_metrics(s), "report_uri": report_uri,
            "gate_params": {k: v for k, v in run["params"].items() if k.startswith(("min_", "max_"))}}


def write_report(out: Path, run: dict, metrics: dict, curves: dict, index: dict, cb: dict, ih: dict,
                 facets: list[str]) -> None:
    """``report.md`` with PNG plots: recall@K curves vs baselines, cluster sizes, codebook utilisation."""
    import matplotlib

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
    (out / "report.md").write_text(
        f"# MFLI run report: snapshot {run['snapshot_id']}\n\n"
        f"Window `{run['start']}` .. `{run['end']}`, holdout from `{run['cutoff']}`; dataset `{run['dataset_uri']}`.\n\n"
        f"Facets: {', '.join(facets)}. Index: {index['items']} items, built in {index['build_seconds']} s.\n\n"
        "## Metrics (MFLI unless prefixed by a baseline)\n\n| metric | value |\n|---|---|\n" + rows + "\n\n"
        "## Recall@K against the baselines\n\n![recall](recall_at_k.png)\n\n"
        "## Cluster sizes\n\n![clusters](cluster_sizes.png)\n\n"
        "## Codebook utilisation\n\n![codebook](codebook_utilisation.png)\n"
    )
