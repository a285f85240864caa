"""The daily evaluation protocol: one snapshot on a time holdout, against exact search and popularity.

Holdout (REFERENCE.md section 4, time split inside the run's window): the model was trained on events
before ``cutoff``; test events are those at or after it; cold items are items with no event before the
cutoff (they are in the index from content alone). Queries are the test users' training histories;
retrieval excludes their training items. MFLI is scored with :meth:`mfli.snapshot.Snapshot.retriever`,
so the lists the quality gate judges are the lists the service returns for the same users. Baselines in
the same pass: exact search over the same embeddings (the embeddings' ceiling) and popularity (the floor).
A snapshot served in blend mode (``serving.blend``) is scored by its blended lists
(:func:`mfli.serve.blend.retrieve_blend`, the service's call); its user-mode lists are reported beside
them as ``mfli_user``. MFLI's ratios to them carry paired bootstrap 95% intervals over the test users
(:func:`ratio_intervals`, the quality benchmark's :class:`mfli.eval.bootstrap.PairedBootstrap`):
``recall@100_vs_exact`` with ``recall@100_vs_exact_lo`` / ``_hi``, likewise ``recall@100_vs_pop`` and
``cold_recall@100_vs_exact`` and, in blend mode, ``recall@100_vs_user``.

Example::

    result = evaluate_holdout(snapshot, dataset, cutoff=pd.Timestamp("2024-03-24", tz="UTC"))
    result.metrics["recall@100"], result.retrieved["mfli"].shape      # (U, k_max)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

K_MAX = 200  # results per test user (the largest K of the recall curve)
RECALL_CURVE_KS = (10, 20, 50, 100, 150, 200)


@dataclass
class HoldoutResult:
    """What :func:`evaluate_holdout` measured.

    Attributes:
        users: ``(U,)`` test user ids, ascending; histories: their training histories (item ids, oldest first).
        retrieved: per method (``mfli``, ``exact``, ``pop``; ``mfli_user`` in blend mode) ``(U, k_max)``
            item ids (-1 padding).
        per_method: per method the metrics of :func:`mfli.eval.metrics.evaluate_retrieval` (None = undefined).
        curves: per method recall@K at ``RECALL_CURVE_KS``.
        codebook, index: codebook and index health figures.
        metrics: the flat metrics the quality gate reads (MFLI's, ``exact_*``/``pop_*`` baselines, health).
    """

    users: np.ndarray
    histories: list[np.ndarray]
    retrieved: dict[str, np.ndarray] = field(default_factory=dict)
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    codebook: dict[str, float] = field(default_factory=dict)
    index: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _finite(v: Any) -> Any:
    # undefined metrics (e.g. cold recall with no cold positive) are None, never NaN, in JSON and XCom
    return None if isinstance(v, float) and not np.isfinite(v) else v


#: ratios the daily evaluation reports with a paired bootstrap interval: (name, numerator, denominator, metric)
RATIOS = (("recall@100_vs_exact", "mfli", "exact", "recall@100"),
          ("recall@100_vs_pop", "mfli", "pop", "recall@100"),
          ("cold_recall@100_vs_exact", "mfli", "exact", "cold_recall@100"),
          ("recall@100_vs_user", "mfli", "mfli_user", "recall@100"))


def ratio_intervals(retrieved: dict[str, np.ndarray], positives: list, cold: np.ndarray,
                    n_resamples: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """Paired bootstrap 95% intervals over the test users of :data:`RATIOS` (as the quality benchmark's).

    Args:
        retrieved: per method ``(U, K)`` item ids; positives: U arrays of test items; cold: cold item ids.

    Returns:
        ``{name: ratio, name_lo: ..., name_hi: ...}`` for every ratio whose methods were run (None where
        undefined, e.g. no user with a cold positive).
    """
    from mfli.eval.bootstrap import PairedBootstrap
    from mfli.eval.metrics import recall_per_user

    cold_pos = [np.asarray(p, np.int64)[np.isin(np.asarray(p, np.int64), cold)] for p in positives]
    per_metric = {
        "recall@100": {m: recall_per_user(r, positives, 100) for m, r in retrieved.items()},
        "cold_recall@100": {m: recall_per_user(r, cold_pos, 100) for m, r in retrieved.items()},
    }
    boots = {metric: PairedBootstrap(v, n_resamples, seed) for metric, v in per_metric.items() if v}
    out: dict[str, float | None] = {}
    for name, num, den, metric in RATIOS:
        if metric not in boots or num not in retrieved or den not in retrieved:
            continue
        ci = boots[metric].ratio(num, den)
        out.update({name: _finite(ci.ratio), f"{name}_lo": _finite(ci.lo), f"{name}_hi": _finite(ci.hi)})
    return out


def evaluate_holdout(snapshot: Any, dataset: Any, cutoff: pd.Timestamp, k_max: int = K_MAX) -> HoldoutResult:
    """Evaluate ``snapshot`` (:class:`mfli.snapshot.Snapshot`) on the events of ``dataset`` at or after ``cutoff``.

    Args:
        dataset: a conformed :class:`mfli.data.dataset.Dataset` (interactions with ``event_ts``, items).
        cutoff: the holdout boundary (tz-aware like ``event_ts``).
        k_max: results per test user.
    """
    from mfli.baselines.popularity import Popularity
    from mfli.eval.metrics import (
        categories_by_item,
        codebook_health,
        evaluate_retrieval,
        histories_by_user,
        index_health,
        positives_by_user,
        recall_at_k,
        train_counts,
    )
    from mfli.index.inverted import encode_paths
    from mfli.serve.exact import exact_search

    model, idx = snapshot.model, snapshot.index
    inter = dataset.interactions
    train_df = inter[inter["event_ts"] < cutoff]
    test_df = inter[inter["event_ts"] >= cutoff]
    hist = histories_by_user(train_df)
    users = np.sort(np.intersect1d(test_df["user_id"].unique(), hist.index.to_numpy()))
    histories = [hist[u] for u in users]
    positives = positives_by_user(test_df, users)
    known = set(train_df["item_id"].unique().tolist())
    cold = np.array([i for i in dataset.items["item_id"].to_numpy() if i not in known], dtype=np.int64)
    metric_inputs = {"cold_items": cold, "item_categories": categories_by_item(dataset.items),
                     "train_counts": train_counts(train_df), "catalogue": dataset.items["item_id"].to_numpy(np.int64)}

    out = HoldoutResult(users=users, histories=histories)
    if len(users):
        q = model.user_embeddings(users, histories).numpy()
        retriever = snapshot.retriever()
        if snapshot.serving.blend is not None:
            from mfli.serve.blend import retrieve_blend

            res = retrieve_blend(retriever, snapshot.coengagement, idx, snapshot.serving.blend, q, histories, k_max)
            out.retrieved["mfli"] = res.item_ids
            # user mode's list was asked for at the same depth when the blend depth is k_max
            same = res.user is not None and res.user.shape[1] == k_max
            out.retrieved["mfli_user"] = res.user if same else \
                retriever.retrieve_users(q, k_max, exclude=histories).item_ids
        else:
            out.retrieved["mfli"] = retriever.retrieve_users(q, k_max, exclude=histories).item_ids
        out.retrieved["exact"] = exact_search(q, idx.embeddings, k_max, idx.item_ids, exclude=histories)[0]
        out.retrieved["pop"] = Popularity().fit(train_df, item_ids=dataset.items["item_id"].to_numpy(np.int64)) \
            .retrieve(histories, k_max, exclude=histories)[0]
    out.per_method = {m: {k: _finite(v) for k, v in evaluate_retrieval(r, positives, **metric_inputs).items()}
                      for m, r in out.retrieved.items()}
    out.curves = {m: [recall_at_k(r, positives, k) for k in RECALL_CURVE_KS] for m, r in out.retrieved.items()}

    codes = encode_paths(idx.embeddings, model.codebooks, m=1)
    out.codebook = codebook_health(codes, int(model.codebooks.shape[2]))
    out.index = index_health(idx)
    F, L = idx.n_facets, int(model.codebooks.shape[0])
    metrics = dict(out.per_method.get("mfli", {}))
    for m in ("exact", "pop", "mfli_user"):
        for k, v in out.per_method.get(m, {}).items():
            metrics[f"{m}_{k}"] = v
    metrics.update(ratio_intervals(out.retrieved, positives, cold))
    metrics.setdefault("recall@100_vs_exact", None)  # no test user: no ratio
    cb, ih = out.codebook, out.index
    metrics["codebook_utilisation"] = min(cb[f"f{f}.l{layer}.utilisation"] for f in range(F) for layer in range(L))
    metrics["codebook_perplexity"] = min(cb[f"f{f}.l{layer}.perplexity"] for f in range(F) for layer in range(L))
    metrics["max_cluster_share"] = max(ih[f"f{f}.max_cluster_share"] for f in range(F))
    metrics["gini"] = max(ih[f"f{f}.gini"] for f in range(F))
    metrics["test_users"] = len(users)
    metrics["items"] = int(idx.n_items)
    metrics["cold_items"] = len(cold)
    out.metrics = {k: _finite(v) for k, v in metrics.items()}
    return out
