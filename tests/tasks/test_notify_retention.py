"""Failure notifications (pluggable, logs by default) and runs/ retention."""

from __future__ import annotations

import logging
import os
import sys
import types
from datetime import UTC, datetime, timedelta

import pytest

from tasks import notify
from tasks.retention import prune_runs


def _context(exc: Exception) -> dict:
    ti = types.SimpleNamespace(dag_id="mfli_daily_retrain", task_id="validate", log_url="http://x/log")
    return {"ti": ti, "run_id": "scheduled__2024-07-01", "exception": exc}


def test_failure_is_logged_without_a_notifier(monkeypatch, caplog):
    monkeypatch.delenv("MFLI_NOTIFIER", raising=False)
    with caplog.at_level(logging.ERROR, logger="mfli.notify"):
        notify.notify_failure(_context(ValueError("bad rows in items.parquet")))
    assert "mfli task_failed: mfli_daily_retrain/scheduled__2024-07-01/validate: ValueError: bad rows" in caplog.text


def test_pluggable_notifier_receives_the_failure_and_its_errors_are_contained(monkeypatch, caplog):
    got = []
    mod = types.ModuleType("mfli_test_notifier")
    mod.record = got.append
    mod.broken = lambda f: 1 / 0
    monkeypatch.setitem(sys.modules, "mfli_test_notifier", mod)
    monkeypatch.setenv("MFLI_NOTIFIER", "mfli_test_notifier:record")
    notify.notify_failure(_context(RuntimeError("boom")))
    assert len(got) == 1 and got[0].task_id == "validate" and got[0].error == "RuntimeError: boom"
    monkeypatch.setenv("MFLI_NOTIFIER", "mfli_test_notifier:broken")
    with caplog.at_level(logging.ERROR, logger="mfli.notify"):
        notify.notify_deadline({"run_id": "r1"}, dag_id="mfli_daily_retrain", what="publish not done in 8h")
    assert "mfli deadline_missed: mfli_daily_retrain/r1: publish not done in 8h" in caplog.text
    assert "failure notifier" in caplog.text
    with pytest.raises(ValueError, match="module:function"):
        notify.load_notifier("no_colon")


def test_prune_runs_deletes_only_idle_run_folders(tmp_path):
    from mfli.store import open_store

    store = open_store(tmp_path / "store")
    for key in ("runs/old/a.parquet", "runs/old/model/w.safetensors", "runs/new/a.parquet", "snapshots/s/x"):
        store.put_bytes(key, b"x")
    old = (datetime.now(UTC) - timedelta(days=10)).timestamp()
    for p in (tmp_path / "store" / "runs" / "old").rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))
    out = prune_runs(str(tmp_path / "store"), keep_days=7)
    assert out == {"pruned": ["old"], "kept": 1, "objects_deleted": 2}
    assert not store.exists("runs/old/a.parquet") and store.exists("runs/new/a.parquet")
    assert store.exists("snapshots/s/x")
    # keep_days=0 prunes everything idle, but never outside runs/
    assert prune_runs(str(tmp_path / "store"), keep_days=0,
                      now=datetime.now(UTC) + timedelta(seconds=5))["pruned"] == ["new"]
    assert store.exists("snapshots/s/x")
    with pytest.raises(ValueError):
        prune_runs(str(tmp_path / "store"), keep_days=-1)
