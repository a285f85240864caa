"""The daily DAG's quality gate step: absolute floors and no regression against the live snapshot.

The checks are :func:`mfli.eval.gates.evaluate_gate`. A failed gate raises :class:`GateFailed` listing
every failed check with its numbers; the DAG's publish step never runs, so the live snapshot stays untouched. ``force_publish`` lets an operator publish
anyway (the failures are still logged and recorded in the snapshot's manifest).
"""

from __future__ import annotations

import logging

from mfli.eval.gates import Check, GateFailed, evaluate_gate
from tasks.params import daily_params

log = logging.getLogger(__name__)

__all__ = ["Check", "GateFailed", "evaluate_gate", "quality_gate_task"]


def quality_gate_task(run: dict, evaluation: dict) -> dict:
    """Gate the run; raises :class:`GateFailed` unless every check passes or ``force_publish`` is set."""
    params = daily_params(run)
    checks = evaluate_gate(evaluation["metrics"], evaluation.get("previous"), params.gate_thresholds())
    failed = [c for c in checks if not c.passed]
    for c in checks:
        log.info("gate %s", c)
    summary = {"passed": not failed, "checks": [str(c) for c in checks], "forced": False}
    if failed:
        msg = f"quality gate failed for snapshot {run['snapshot_id']}:\n" + "\n".join(f"  - {c}" for c in failed)
        if not params.force_publish:
            raise GateFailed(msg + "\nnothing was published; the live snapshot is unchanged")
        log.warning("%s\nforce_publish is set: publishing anyway", msg)
        summary["forced"] = True
    return summary
