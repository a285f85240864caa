"""`mfli snapshot list | rollback | prune` on a local store."""

from __future__ import annotations

from typer.testing import CliRunner

from mfli.cli.snapshot import app
from mfli.store import open_store, publish_snapshot, read_latest

runner = CliRunner()


def _publish_two(tmp_path, artifacts):
    store = open_store(tmp_path / "store")
    publish_snapshot(store, artifacts, "s1", metrics={"recall@50": 0.3012345, "ndcg@10": 0.11})
    (artifacts / "report.json").write_text("v2")
    publish_snapshot(store, artifacts, "s2", metrics={"recall@50": 0.35})
    return store


def test_list_shows_metrics_and_live_marker(tmp_path, artifacts):
    _publish_two(tmp_path, artifacts)
    res = runner.invoke(app, ["list", "--store", str(tmp_path / "store"), "--metrics", "recall@50,ndcg@10"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if " s1 " in ln or " s2 " in ln]
    assert len(lines) == 2
    s1, s2 = lines
    assert "0.3012" in s1 and "0.11" in s1 and "*" not in s1
    assert "0.35" in s2 and "*" in s2
    assert "recall@50" in res.output and "ndcg@10" in res.output


def test_rollback_and_prune(tmp_path, artifacts, monkeypatch):
    store = _publish_two(tmp_path, artifacts)
    monkeypatch.setenv("MFLI_STORE_URI", str(tmp_path / "store"))  # --store from the environment
    res = runner.invoke(app, ["rollback", "s1"])
    assert res.exit_code == 0, res.output
    assert "LATEST -> s1 (was s2)" in res.output
    assert read_latest(store).snapshot_id == "s1"

    res = runner.invoke(app, ["prune", "--keep", "1", "--dry-run"])
    assert res.exit_code == 0 and "would delete 0" in res.output  # newest (s2) + live (s1) stay
    (tmp_path / "artifacts" / "report.json").write_text("v3")
    publish_snapshot(store, tmp_path / "artifacts", "s3")
    res = runner.invoke(app, ["prune", "--keep", "1"])
    assert res.exit_code == 0 and "deleted 2 snapshot(s): s2, s1" in res.output


def test_errors_exit_nonzero_with_a_message(tmp_path, artifacts):
    _publish_two(tmp_path, artifacts)
    res = runner.invoke(app, ["rollback", "nope", "--store", str(tmp_path / "store")])
    assert res.exit_code == 1
    assert "no snapshot 'nope'" in res.output
    res = runner.invoke(app, ["list", "--store", str(tmp_path / "empty")])
    assert res.exit_code == 0 and "no snapshots" in res.output
