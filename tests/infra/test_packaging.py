"""The wheel carries everything a deployed worker needs, including the Feast repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_ships_the_feast_repo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "*.db")
    for name in ("mfli", "tasks", "feature_repo"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=280, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mfli_platform-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("feature_repo/feature_store.yaml", "feature_repo/feature_store.prod.yaml", "feature_repo/features.py",
              "feature_repo/.feastignore", "mfli/features/repo.py", "tasks/ingest.py"):
        assert f in names, f
    assert not any(n.startswith("feature_repo/scripts/") for n in names)  # scripts stay out of `feast apply`

    # installed (unpacked) without the checkout next to it, the default repo resolves to the packaged copy
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import mfli.features.repo as r, sys; print(r.DEFAULT_REPO); "
             "r.copy_repo(sys.argv[1]); import os; print(sorted(os.listdir(sys.argv[1])))")
    res = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "copy")], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    default, listing = res.stdout.strip().splitlines()[-2:]
    assert Path(default) == site / "feature_repo"
    assert "feature_store.yaml" in listing and "features.py" in listing


def test_copy_repo_refuses_a_folder_without_feast_yaml(tmp_path):
    from mfli.features.repo import copy_repo

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="feature_store.yaml missing"):
        copy_repo(tmp_path / "dst", src=tmp_path / "empty")
