"""The code revision that built an artifact: part of snapshot ids and manifests.

A fix to the training or indexing code must give a re-run of the same day a *new* snapshot id (the
package version alone does not change between commits). The revision is:

- ``MFLI_CODE_REVISION`` when set (a build pipeline that knows better, e.g. the image's commit);
- ``git:<commit>`` in a git checkout, with ``+src:<hash>`` appended when ``mfli/`` or ``tasks/`` have
  uncommitted changes (so a local fix is a new revision too);
- ``src:<hash>`` otherwise (an installed wheel): sha256 over the package's own ``.py`` files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
from pathlib import Path

_PACKAGES = ("mfli", "tasks")


def _package_dirs() -> list[Path]:
    import importlib.util

    dirs = []
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(Path(loc))
    return dirs


def source_hash() -> str:
    """First 12 hex of sha256 over (relative path, content) of every ``.py`` file of mfli/ and tasks/."""
    h = hashlib.sha256()
    for d in _package_dirs():
        for f in sorted(d.rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            h.update(f"{d.name}/{f.relative_to(d).as_posix()}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:12]


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """The revision string described in the module doc (cached per process)."""
    if os.environ.get("MFLI_CODE_REVISION"):
        return os.environ["MFLI_CODE_REVISION"]
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        sha = (_git(repo, "rev-parse", "HEAD") or "").strip()
        if re.fullmatch(r"[0-9a-f]{40}", sha):
            dirty = _git(repo, "status", "--porcelain", "--", *_PACKAGES)
            return f"git:{sha}" + (f"+src:{source_hash()}" if dirty else "")
    return f"src:{source_hash()}"
