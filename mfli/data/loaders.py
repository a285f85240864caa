"""Load any supported dataset folder into canonical tables, detecting its format from the files present.

Formats (see docs/data.md):

============================  ============================================================
format                        recognised by
============================  ============================================================
``mfli-parquet``              ``_dataset.json`` (written by :func:`mfli.data.parquet_format.write_dataset`)
``movielens-100k``            ``u.data`` (+ ``u.item``, optional ``u.user``)
``movielens-1m``              ``ratings.dat`` (+ ``movies.dat``, optional ``users.dat``; also ML-10M)
``movielens-latest``          ``ratings.csv`` (+ ``movies.csv``, optional ``tags.csv``; also ML-20M/25M)
``amazon-lcrec``              ``<Name>.inter.json`` (+ ``<Name>.item.json``)
============================  ============================================================

Item ``created_at`` rule shared by every loader of event logs: an item enters the catalogue at its
first event; items that were never interacted with get the dataset's last event time (they enter as
the newest catalogue entries, so a time split treats them as cold).

Example::

    from mfli.data.loaders import load_dataset
    ds = load_dataset("../shared/datasets/ml-latest-small")
    print(ds.stats())
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfli.data.errors import DataError

if TYPE_CHECKING:  # pandas stays out of the import path of `mfli --help`
    import pandas as pd

    from mfli.data.dataset import Dataset

log = logging.getLogger(__name__)

FORMATS = ("movielens-100k", "movielens-1m", "movielens-latest", "amazon-lcrec", "mfli-parquet")

# format -> (module, loader function); modules are imported on use so detection stays cheap.
_LOADERS: dict[str, tuple[str, str]] = {
    "mfli-parquet": ("mfli.data.parquet_format", "load_parquet_dataset"),
    "movielens-100k": ("mfli.data.movielens", "load_movielens_100k"),
    "movielens-1m": ("mfli.data.movielens", "load_movielens_1m"),
    "movielens-latest": ("mfli.data.movielens", "load_movielens_latest"),
    "amazon-lcrec": ("mfli.data.amazon", "load_amazon_lcrec"),
}

# What detection looks for, in priority order (the marker of our own layout wins).
_MARKERS: list[tuple[str, str]] = [
    ("_dataset.json", "mfli-parquet"),
    ("u.data", "movielens-100k"),
    ("ratings.dat", "movielens-1m"),
    ("ratings.csv", "movielens-latest"),
    ("*.inter.json", "amazon-lcrec"),
]


def detect_format(path: str | Path) -> str:
    """Name the format of the dataset folder ``path`` (one of :data:`FORMATS`) from the files it holds.

    Raises :class:`DataError` when the folder is missing, is a file, or matches no known layout (the
    message lists what was looked for and what was found).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such dataset folder")
    if not path.is_dir():
        raise DataError(path, "expected a dataset folder, got a file")
    for pattern, fmt in _MARKERS:
        if any(path.glob(pattern)):
            return fmt
    found = sorted(p.name for p in path.iterdir())
    shown = found[:12] + (["..."] if len(found) > 12 else [])
    looked = ", ".join(f"{pattern} ({fmt})" for pattern, fmt in _MARKERS)
    raise DataError(path, f"unrecognised dataset folder: looked for {looked}; found {shown or 'nothing'}")


def load_dataset(path: str | Path, *, strict: bool = False) -> Dataset:
    """Load the dataset folder ``path`` in whatever supported format it is, as canonical tables.

    Returns a :class:`~mfli.data.dataset.Dataset` whose tables conform to :mod:`mfli.data.schema`, with
    its data-quality findings (:mod:`mfli.data.quality`: duplicates, negative ids or weights, timestamps
    before 1970) in ``meta["quality"]`` and logged as warnings. Raises :class:`DataError` (naming file,
    line and problem) on bad input, and with ``strict`` on the first quality finding too.
    """
    from mfli.data.quality import quality_report, raise_on_findings

    fmt = detect_format(path)
    module, func = _LOADERS[fmt]
    loader = getattr(importlib.import_module(module), func)
    ds = loader(Path(path))
    findings = quality_report(ds)
    if strict:
        raise_on_findings(findings, str(path))
    for f in findings:
        log.warning("%s: %s", path, f.message())
    ds.meta["quality"] = [f.as_dict() for f in findings]
    return ds


def dataset_stats(path: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Summary of a dataset folder: ``{format, users, items, interactions, first_ts, last_ts}``.

    ``users``/``items`` count ids with at least one event. mfli-parquet folders are streamed part by
    part (memory stays flat at 100M events, optional tqdm bar on stderr); other formats are loaded.
    """
    fmt = detect_format(path)
    if fmt == "mfli-parquet":
        from mfli.data.parquet_format import parquet_stats

        return parquet_stats(path, progress=progress)
    return load_dataset(path).stats()


def dataset_name(path: Path) -> str:
    """Short dataset name: the folder's name (``"."`` resolved)."""
    return path.name or path.resolve().name


def created_at_from_events(item_ids: pd.Series, interactions: pd.DataFrame, source: str | Path) -> pd.Series:
    """Catalogue entry time per item: its first event; never-seen items get the last event time.

    Args:
        item_ids: (N,) int64 item ids of the item table.
        interactions: canonical interactions (``item_id``, ``event_ts``).
        source: what to name in the error when there are no events at all.
    Returns:
        (N,) datetime64[ns, UTC] aligned with ``item_ids``.
    """
    if len(interactions) == 0:
        raise DataError(source, "contains no events, so item created_at cannot be derived")
    first = interactions.groupby("item_id", sort=False)["event_ts"].min()
    last = interactions["event_ts"].max()
    return item_ids.map(first).fillna(last).astype("datetime64[ns, UTC]")
