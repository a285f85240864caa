"""Failure notifications for the DAGs' ``on_failure_callback`` and deadline alerts (Airflow-free).

The notifier is pluggable: ``MFLI_NOTIFIER=package.module:function`` names a callable taking one
:class:`Failure`; without it (or when it raises) the failure is logged at ERROR, which is what a log
pipeline alerts on. A notifier must never turn a failed task into a crashed callback, so its own errors
are logged, not raised.

    on_failure_callback=notify_failure           # in a DAG's default_args
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("mfli.notify")


@dataclass(frozen=True)
class Failure:
    """What went wrong, in plain strings (safe to send anywhere: no secrets, no objects)."""

    kind: str  # "task_failed" | "deadline_missed"
    dag_id: str
    run_id: str
    task_id: str | None
    error: str
    log_url: str | None = None

    def text(self) -> str:
        where = f"{self.dag_id}/{self.run_id}" + (f"/{self.task_id}" if self.task_id else "")
        return f"mfli {self.kind}: {where}: {self.error}" + (f" (log: {self.log_url})" if self.log_url else "")


def load_notifier(spec: str | None = None) -> Callable[[Failure], Any] | None:
    """The callable named by ``spec`` / ``$MFLI_NOTIFIER`` (``module:function``), or None."""
    spec = spec if spec is not None else os.environ.get("MFLI_NOTIFIER", "")
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"MFLI_NOTIFIER must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def send(failure: Failure) -> None:
    """Log the failure, then hand it to the configured notifier (errors in it are logged only)."""
    log.error("%s", failure.text(), extra={"mfli_failure": asdict(failure)})
    try:
        notifier = load_notifier()
        if notifier is not None:
            notifier(failure)
    except Exception:
        log.exception("failure notifier %r failed", os.environ.get("MFLI_NOTIFIER"))


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def notify_failure(context: dict) -> None:
    """``on_failure_callback``: build a :class:`Failure` from an Airflow task context and send it."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
    send(Failure(
        kind="task_failed",
        dag_id=str(_get(ti, "dag_id") or _get(dag_run, "dag_id") or "?"),
        run_id=str(context.get("run_id") or _get(dag_run, "run_id") or "?"),
        task_id=_get(ti, "task_id"),
        error=f"{type(exc).__name__}: {exc}" if exc is not None else str(context.get("reason") or "failed"),
        log_url=_get(ti, "log_url"),
    ))


def notify_deadline(context: Any = None, *, dag_id: str = "?", what: str = "deadline missed", **kw: Any) -> None:
    """Deadline-alert callback (``SyncCallback("tasks.notify.notify_deadline", kwargs={...})``); Airflow
    passes its context (positionally or as ``context=``) and the kwargs."""
    context = context if isinstance(context, dict) else kw.get("context") or {}
    dag_run = context.get("dag_run")
    run_id = str(context.get("run_id") or _get(dag_run, "run_id") or kw.get("run_id") or "?")
    send(Failure(kind="deadline_missed", dag_id=dag_id, run_id=run_id, task_id=None, error=what))
