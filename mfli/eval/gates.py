"""The two publishing gates: the daily quality gate and the hourly cold-start gate.

Both decide from numbers only and return every check with its value, so a failure names what failed;
the DAG tasks (``tasks/gates.py``, ``tasks/delta.py``) only fetch inputs, call these and raise
:class:`GateFailed`. The cold-start gate scores new items with :meth:`mfli.snapshot.Snapshot.retriever`,
the retriever the service answers with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: (param, metric, direction): a floor ("min") or a ceiling ("max") on a metric.
ABSOLUTE_CHECKS = (
    ("min_recall_at_100", "recall@100", "min"),
    ("min_cold_recall_at_100", "cold_recall@100", "min"),
    ("min_topic_match_at_100", "topic_match@100", "min"),
    ("min_codebook_utilisation", "codebook_utilisation", "min"),
    ("max_cluster_share", "max_cluster_share", "max"),
)
#: Metrics that must not drop by more than ``max_regression`` (relative) against the live snapshot.
REGRESSION_METRICS = ("recall@100", "cold_recall@100", "topic_match@100")


class GateFailed(RuntimeError):
    """A gate failed; the message lists each failed check with its numbers."""


@dataclass
class Check:
    """One check of a gate: the measured value against its threshold."""

    name: str
    value: float | None
    threshold: float
    passed: bool

    def __str__(self) -> str:
        v = "missing" if self.value is None else f"{self.value:.4f}"
        return f"{self.name}: {v} (threshold {self.threshold:.4f}) -> {'ok' if self.passed else 'FAILED'}"


def evaluate_gate(metrics: Mapping[str, Any], previous: Mapping[str, Any] | None,
                  thresholds: Mapping[str, Any]) -> list[Check]:
    """Every check of the quality gate for ``metrics`` (new snapshot) against ``previous`` (live snapshot's).

    Args:
        metrics: the new snapshot's evaluation metrics.
        previous: ``{"snapshot_id", "metrics"}`` of the live snapshot, or None.
        thresholds: the ``ABSOLUTE_CHECKS`` params (absent or None: not checked) and ``max_regression``.
    """
    checks = []
    for param, metric, direction in ABSOLUTE_CHECKS:
        if thresholds.get(param) is None:
            continue
        thr = float(thresholds[param])
        v = metrics.get(metric)
        if v is None:  # undefined on this window (e.g. no test user has a cold positive): not gateable
            checks.append(Check(f"{metric} (not measurable on this window)", None, thr, True))
            continue
        ok = v >= thr if direction == "min" else v <= thr
        checks.append(Check(f"{metric} {'>=' if direction == 'min' else '<='} {param}", v, thr, ok))
    tol = float(thresholds.get("max_regression", 0.1))
    prev = (previous or {}).get("metrics") or {}
    for metric in REGRESSION_METRICS:
        old = prev.get(metric)
        if old is None or old <= 0:
            continue
        thr = old * (1 - tol)
        v = metrics.get(metric)
        if v is None:
            continue
        checks.append(Check(f"{metric} vs live {previous['snapshot_id']} (-{tol:.0%} max)", v, thr, v >= thr))
    return checks


@dataclass
class ColdStartReport:
    """What the cold-start gate measured on a window's new items."""

    items: int
    self_retrieval_rate: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "self_retrieval_rate": self.self_retrieval_rate, "items": self.items,
                "failures": list(self.failures)}


def cold_start_gate(snapshot: Any, item_ids: np.ndarray, embeddings: np.ndarray, clusters: np.ndarray, *,
                    min_self_retrieval_rate: float = 0.5, max_cluster_overflow: float = 2.0,
                    k: int = 100) -> ColdStartReport:
    """New items must land in non-empty, non-overflowing clusters and be retrievable by a query made of
    their own content embedding (user mode, the snapshot's serving retriever) at ``min_self_retrieval_rate``.

    Args:
        snapshot: the live :class:`mfli.snapshot.Snapshot` the delta is assigned against.
        item_ids: ``(n,)`` new item ids; embeddings ``(n, F, d)``; clusters ``(n, F)`` or ``(n, F, m)``
            (:func:`mfli.index.delta.assign_paths`).
        max_cluster_overflow: a cluster may grow to at most this times the index's rebalancing cap.
        k: results per self-query.

    Returns:
        the report; ``report.failures`` lists every failed check with its numbers (empty: passed).
    """
    from mfli.index.build import auto_rebalance_config
    from mfli.index.delta import apply_delta

    index = snapshot.index
    ids = np.asarray(item_ids, np.int64)
    cap = auto_rebalance_config(index.n_items).cap * float(max_cluster_overflow)
    failures = []
    c0 = clusters[:, :, 0] if clusters.ndim == 3 else clusters
    for f in range(index.n_facets):
        cid, size = index.cluster_sizes(f)
        sizes = dict(zip(cid.tolist(), size.tolist()))
        before = np.array([sizes.get(int(c), 0) for c in c0[:, f]])
        if (before == 0).any():
            failures.append(f"{(before == 0).sum()} new items routed to empty clusters in facet {index.facet_names[f]}")
        uniq, add = np.unique(c0[:, f], return_counts=True)
        after = np.array([sizes.get(int(c), 0) for c in uniq]) + add
        if (after > cap).any():
            failures.append(f"{int((after > cap).sum())} clusters of facet {index.facet_names[f]} would hold more "
                            f"than {cap:.0f} items (largest {int(after.max())})")
    rate = 1.0
    if ids.size:
        retriever = snapshot.retriever(apply_delta(index, ids, embeddings, clusters))
        got = retriever.retrieve_users(embeddings, k).item_ids
        rate = float((got == ids[:, None]).any(1).mean())
    if rate < float(min_self_retrieval_rate):
        failures.append(f"self-retrieval rate {rate:.3f} < {float(min_self_retrieval_rate):.3f}")
    return ColdStartReport(int(ids.size), rate, failures)
