"""Snapshot ids change with the code, not only with the package version."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from mfli import revision


def test_source_hash_changes_with_a_source_file(tmp_path, monkeypatch):
    pkg = tmp_path / "mfli"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(revision, "_package_dirs", lambda: [pkg])
    first = revision.source_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert revision.source_hash() == first  # deterministic
    (pkg / "a.py").write_text("x = 2\n")
    assert revision.source_hash() != first
    (pkg / "a.py").write_text("x = 1\n")
    assert revision.source_hash() == first


def test_revision_override_and_format(monkeypatch):
    revision.code_revision.cache_clear()
    monkeypatch.setenv("MFLI_CODE_REVISION", "image:abc123")
    assert revision.code_revision() == "image:abc123"
    revision.code_revision.cache_clear()
    monkeypatch.delenv("MFLI_CODE_REVISION")
    assert re.fullmatch(r"(git:[0-9a-f]{40}(\+src:[0-9a-f]{12})?|src:[0-9a-f]{12})", revision.code_revision())
    revision.code_revision.cache_clear()


def test_snapshot_id_depends_on_the_revision(monkeypatch):
    from tasks.runs import snapshot_id_for

    end = datetime(2024, 7, 1, tzinfo=UTC)
    params = {"lookback_days": 30, "holdout_days": 7, "facets": ["engagement"], "epochs": 3, "seed": 0}
    ids = []
    for rev in ("git:" + "a" * 40, "git:" + "b" * 40):
        revision.code_revision.cache_clear()
        monkeypatch.setenv("MFLI_CODE_REVISION", rev)
        ids.append(snapshot_id_for(end, "f" * 64, params))
    revision.code_revision.cache_clear()
    assert ids[0] != ids[1] and ids[0][:14] == ids[1][:14] == "20240701T0000-"
