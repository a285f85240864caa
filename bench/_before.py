"""Load a module's source as it was at an earlier git revision, beside the current one, so a benchmark
can time both versions in one process (same data, same machine state, rounds alternated)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str, rel: str, name: str):
    """``rel`` (a path in the repository) as it was at ``rev``, imported under the module name ``name``.

    Its own imports resolve to the current checkout; numba compiles its kernels anew (its cache is keyed
    by the file)."""
    src = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="mfli-before-")) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod
