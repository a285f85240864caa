"""What snapshot and delta manifests share: JSON encoding, secret masking, timestamps, code version and
checking a downloaded file against its manifest entry (size + sha256)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mfli.store.errors import CorruptSnapshot

# Config keys whose values are masked in manifests: words that always mean a secret, anywhere in the
# name (aws_secret_access_key, SecretAccessKey, db_password), and short ones only as a whole word
# (session_token, auth) so that fields like `tokenizer` or `max_tokens` or `author` stay readable.
_SECRET_WORDS = ("secret", "password", "passwd", "credential", "privatekey", "accesskey", "apikey", "sessiontoken")
_SECRET_PART = re.compile(r"(?i)(^|[_\-.])(token|auth|authorization|pwd|dsn)($|[_\-.])")
_CHUNK = 1 << 20

__all__ = ["check_file", "code_version", "dumps", "file_digest", "now_iso", "scrub"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def file_digest(path: str | Path) -> tuple[str, int, str]:
    """(sha256 hex, size in bytes, md5 hex) of a local file, read in 1 MiB chunks."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size, md5.hexdigest()


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    if os.environ.get("MFLI_GIT_SHA"):
        return os.environ["MFLI_GIT_SHA"]
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def code_version() -> dict[str, str | None]:
    """``{"mfli": version, "git_sha": <commit or None>, "revision": mfli.revision.code_revision()}``
    (``MFLI_GIT_SHA`` overrides git); ``revision`` is what snapshot ids hash."""
    import mfli
    from mfli.revision import code_revision

    return {"mfli": mfli.__version__, "git_sha": _git_sha(), "revision": code_revision()}


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, datetime)):
        return str(obj) if isinstance(obj, Path) else obj.isoformat()
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"value of type {type(obj).__name__} cannot go into a manifest (JSON only)")


def _secret_name(name: str) -> bool:
    compact = re.sub(r"[^a-z0-9]", "", name.lower())
    return any(w in compact for w in _SECRET_WORDS) or bool(_SECRET_PART.search(name))


def scrub(obj: Any) -> Any:
    """Replace values under secret-looking names (``*secret*``, ``*token*``, ``password`` ...) with ``***``."""
    if isinstance(obj, Mapping):
        return {k: ("***" if _secret_name(str(k)) and v not in (None, "") else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()


def check_file(snapshot_id: str, rel: str, entry: Mapping[str, Any], path: Path, cls=CorruptSnapshot) -> None:
    sha, size, _ = file_digest(path)
    if size != int(entry["size"]):
        raise cls(snapshot_id, rel, "truncated" if size < int(entry["size"]) else "wrong size",
                  f"{entry['size']} bytes", f"{size} bytes")
    if sha != entry["sha256"]:
        raise cls(snapshot_id, rel, "sha256 mismatch", entry["sha256"], sha)


