"""Quality gates: absolute floors and no regression against the live snapshot.

A failed gate raises :class:`GateFailed` listing every failed check with its numbers; the DAG's publish
step never runs, so the live snapshot stays untouched. ``force_publish`` lets an operator publish
anyway (the failures are still logged and recorded in the snapshot's manifest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

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
    """The new snapshot failed its quality gate; the message lists each failed check."""


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float
    passed: bool

    def __str__(self) -> str:
        v = "missing" if self.value is None else f"{self.value:.4f}"
        return f"{self.name}: {v} (threshold {self.threshold:.4f}) -> {'ok' if self.passed else 'FAILED'}"


def evaluate_gate(metrics: dict, previous: dict | None, params: dict) -> list[Check]:
    """Every check of the gate for ``metrics`` (new snapshot) against ``previous`` (live snapshot's)."""
    checks = []
    for param, metric, direction in ABSOLUTE_CHECKS:
        if param not in params or params[param] is None:
            continue
        thr = float(params[param])
        v = metrics.get(metric)
        if v is None:  # undefined on this window (e.g. no test user has a cold positive): not gateable
            checks.append(Check(f"{metric} (not measurable on this window)", None, thr, True))
            continue
        ok = v >= thr if direction == "min" else v <= thr
        checks.append(Check(f"{metric} {'>=' if direction == 'min' else '<='} {param}", v, thr, ok))
    tol = float(params.get("max_regression", 0.1))
    prev = (previous or {}).get("metrics") or {}
    for metric in REGRESSION_METRICS:
        old = prev.get(metric)
        if old is None or old <= 0:
            continue
        thr = old * (1 - tol)
        v = metrics.get(metric)
        if v is None:
            continue
        checks.append(Check(f"{metric} vs live {previous['snapshot_id']} (-{tol:.0%} max)", v, thr,
                            v >= thr))
    return checks


def quality_gate_task(run: dict, evaluation: dict) -> dict:
    """Gate the run; raises :class:`GateFailed` unless every check passes or ``force_publish`` is set."""
    params = run["params"]
    checks = evaluate_gate(evaluation["metrics"], evaluation.get("previous"), params)
    failed = [c for c in checks if not c.passed]
    for c in checks:
        log.info("gate %s", c)
    summary = {"passed": not failed, "checks": [str(c) for c in checks], "forced": False}
    if failed:
        msg = f"quality gate failed for snapshot {run['snapshot_id']}:\n" + "\n".join(f"  - {c}" for c in failed)
        if not params.get("force_publish"):
            raise GateFailed(msg + "\nnothing was published; the live snapshot is unchanged")
        log.warning("%s\nforce_publish is set: publishing anyway", msg)
        summary["forced"] = True
    return summary
