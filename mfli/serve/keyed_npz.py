"""An npz of arrays plus a JSON ``key`` saying what they were built for (no pickles).

The engine's stored parts (neighbour lists, :mod:`mfli.serve.list_store`; the fast-scan quantiser,
:mod:`mfli.serve.quantiser_store`) are each one such file: the arrays, and a key whose ``format`` names
the writer and whose other fields are compared with what an engine would build before it takes them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_keyed", "save_keyed"]


def save_keyed(path: str | Path, key: dict[str, Any], **arrays: np.ndarray) -> Path:
    """Write ``arrays`` and ``key`` to ``path`` (npz, uncompressed: codes do not compress and loading
    stays a copy)."""
    path = Path(path)
    with path.open("wb") as fh:
        np.savez(fh, **arrays, key=np.frombuffer(json.dumps(key, sort_keys=True).encode(), np.uint8))
    return path


def load_keyed(path: str | Path, names: Sequence[str], fmt: str, writer: str, optional: Sequence[str] = ()
               ) -> tuple[dict[str, np.ndarray], dict[str, Any], Callable[[str], ValueError]]:
    """Read the arrays ``names`` (and ``optional`` ones, where present) and the key of a file
    :func:`save_keyed` wrote with ``format == fmt``.

    Returns:
        ``(arrays, key, bad)``: ``bad(what)`` builds the ValueError naming the file and ``writer`` for
        the caller's own checks of the arrays.

    Raises:
        ValueError: naming the file and the array that is missing or malformed, or the wrong format.
    """
    path = Path(path)

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what} (not {writer})")

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {a: z[a] for a in (*names, *optional, "key") if a in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:  # numpy: "pickled data" for non-npz bytes
        raise ValueError(f"{path}: cannot be read as npz ({exc})") from exc
    missing = [a for a in (*names, "key") if a not in arrays]
    if missing:
        raise bad(f"no array {missing[0]!r}")
    try:
        key = json.loads(arrays.pop("key").tobytes().decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"array 'key' is not JSON ({exc})") from exc
    if not isinstance(key, dict) or key.get("format") != fmt:
        raise bad(f"format {key.get('format') if isinstance(key, dict) else key!r}, expected {fmt!r}")
    return arrays, key, bad
