"""Amazon reviews in the LC-Rec JSON layout -> canonical tables.

Files: ``<Name>.inter.json`` = ``{user_id: [item_id, ...]}`` with each user's items in time order and
no timestamps; ``<Name>.item.json`` = ``{item_id: {title, description, brand, categories}}`` where
``categories`` is a comma-joined path such as ``"Industrial & Scientific,Fasteners,Staples"``.

Canonical mapping:

- ``categories``: every prefix of the path, levels joined by ``">"``:
  ``["Industrial & Scientific", "Industrial & Scientific>Fasteners",
  "Industrial & Scientific>Fasteners>Staples"]``. Levels are split on commas *not* followed by a space,
  because level names themselves contain ``", "`` (``"Tapes, Adhesives & Sealants"``); a ``">"``
  inside a level becomes ``"/"``. An empty path gives ``[]``. (A list of levels, or a list of such
  lists as in raw Amazon metadata, is accepted too.)
- ``title`` = title, ``text`` = description (a list of paragraphs is joined with spaces), ``brand`` =
  brand, empty -> None. ``weight`` = 1.0 (implicit feedback).
- ``event_ts``, the *relative-position clock*: user ``u``'s ``j``-th of ``n_u`` events (0-based) happens
  at ``T0 + span * (j + 0.5) / n_u`` plus ``rank(u)`` microseconds, with ``T0`` = 2018-01-01 UTC,
  ``span`` = 365 days and ``rank(u)`` the user's 0-based rank by id (= the id for LC-Rec's dense
  ids). Each user's order is kept; every user's history is spread over the same year, so a global
  time cutoff at quantile ``q`` holds out roughly each user's last ``1 - q`` share of events; the
  microseconds break ties between users so the global order is total and deterministic.
- ``created_at`` = the item's first (synthesised) event time; never-seen items get the last event time.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfli.data.dataset import Dataset
from mfli.data.errors import DataError
from mfli.data.loaders import created_at_from_events, dataset_name
from mfli.data.schema import CATEGORY_SEP

#: Start of the synthesised clock.
T0 = pd.Timestamp("2018-01-01", tz="UTC")
#: Every user's history is spread over this span.
SPAN = pd.Timedelta(days=365)

# Levels are comma-joined, but names contain ", " ("Tapes, Adhesives & Sealants").
_LEVEL_SPLIT = re.compile(r",(?!\s)")
_INT_ID = re.compile(r"-?\d+")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def relative_position_clock(rank: np.ndarray, position: np.ndarray, n_events: np.ndarray) -> pd.DatetimeIndex:
    """Synthesised event times for events with no timestamp (see module docstring).

    Args:
        rank: (E,) int64 0-based rank of each event's user.
        position: (E,) int64 0-based position of the event in its user's history.
        n_events: (E,) int64 length of that user's history.
    Returns:
        (E,) UTC timestamps, microsecond resolution.
    """
    span_us = SPAN // pd.Timedelta(microseconds=1)
    rank, position, n = (np.asarray(a, dtype=np.int64) for a in (rank, position, n_events))
    # floor(span * (2j + 1) / (2n)) in exact int64 arithmetic: span = q * 2n + r splits the product.
    q, r = np.divmod(span_us, 2 * n)
    offset_us = q * (2 * position + 1) + (r * (2 * position + 1)) // (2 * n)
    t0_us = T0.value // 1000
    return pd.to_datetime(t0_us + offset_us + rank, unit="us", utc=True)


def category_paths(raw: Any, *, source: Path, line: int | None = None) -> list[str]:
    """Category path -> its prefixes joined by ``">"``, e.g. ``"A,B,C"`` -> ``["A", "A>B", "A>B>C"]``."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        paths = [_LEVEL_SPLIT.split(raw)]
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        paths = [raw]
    elif isinstance(raw, list) and all(isinstance(x, list) and all(isinstance(y, str) for y in x) for x in raw):
        paths = raw
    else:
        raise DataError(source, f"categories must be a string or a list of strings, got {raw!r:.80}", line=line, column="categories")
    out: list[str] = []
    for levels in paths:
        clean = [lv.strip().replace(CATEGORY_SEP, "/") for lv in levels]
        clean = [lv for lv in clean if lv]
        for i in range(len(clean)):
            prefix = CATEGORY_SEP.join(clean[: i + 1])
            if prefix not in out:
                out.append(prefix)
    return out


def load_amazon_lcrec(path: str | Path) -> Dataset:
    """Load a folder holding one ``<Name>.inter.json`` and its ``<Name>.item.json``."""
    path = Path(path)
    inter_files = sorted(path.glob("*.inter.json"))
    if not inter_files:
        raise DataError(path, "missing file <Name>.inter.json")
    if len(inter_files) > 1:
        raise DataError(path, f"several *.inter.json files, expected one: {[p.name for p in inter_files]}")
    inter_file = inter_files[0]
    name = inter_file.name[: -len(".inter.json")]
    item_file = path / f"{name}.item.json"

    items_obj, items_text = _read_json(item_file, what="item")
    item_ids = _int_ids(items_obj, item_file, items_text, what="item")
    items = _items(items_obj, item_ids, item_file, items_text)

    inter_obj, inter_text = _read_json(inter_file, what="user")
    user_ids = _int_ids(inter_obj, inter_file, inter_text, what="user")
    inter = _interactions(inter_obj, user_ids, item_ids, inter_file, inter_text, item_file.name)

    items.insert(1, "created_at", created_at_from_events(items["item_id"], inter, inter_file))
    users = pd.DataFrame({"user_id": np.sort(user_ids)})
    meta = {
        "source": str(path),
        "lcrec_name": name,
        "timestamp_rule": "relative-position clock: T0 + span*(j+0.5)/n_u + rank(u) us",
        "t0": T0.isoformat(),
        "span_days": SPAN.days,
        "created_at_rule": "first event time; never-seen items get the dataset's last event time",
    }
    return Dataset(dataset_name(path), "amazon-lcrec", inter, items, users, meta).conformed()


def _read_json(path: Path, *, what: str) -> tuple[dict, str]:
    """Parse a top-level JSON object, rejecting duplicate keys (``json`` would keep the last silently)."""
    if not path.is_file():
        raise DataError(path, "missing file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, "not valid utf-8 text", line=raw.count(b"\n", 0, exc.start) + 1) from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    raise _DuplicateKey(k)
                seen.add(k)
        return obj

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except _DuplicateKey as dup:
        raise DataError(path, f"duplicate key {dup.key!r}: each {what} id may appear once", line=key_line(text, dup.key, nth=1)) from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object keyed by {what} id, got {type(obj).__name__}", line=1)
    return obj, text


def key_line(text: str, key: str, nth: int = 0) -> int | None:
    """1-based line of the ``nth`` occurrence of ``"key":`` in a JSON text (for error messages)."""
    for i, m in enumerate(re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)):
        if i == nth:
            return text.count("\n", 0, m.start()) + 1
    return None


def _int_ids(obj: dict, path: Path, text: str, *, what: str) -> np.ndarray:
    """Top-level keys -> (N,) int64 ids; they must be integers and stay unique as integers."""
    keys = list(obj)
    bad = next((k for k in keys if not _INT_ID.fullmatch(k)), None)
    if bad is not None:
        raise DataError(path, f"{what} id {bad!r} is not an integer", line=key_line(text, bad))
    ids = np.array([int(k) for k in keys], dtype=np.int64)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        k = keys[int(np.flatnonzero(dup)[0])]
        raise DataError(path, f"duplicate {what} id {int(k)} (key {k!r})", line=key_line(text, k))
    return ids


def _text(value: Any, field: str, path: Path) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return " ".join(x.strip() for x in value if x.strip())
    raise DataError(path, f"{field} must be a string, got {value!r:.80}", column=field)


def _items(obj: dict, item_ids: np.ndarray, path: Path, text: str) -> pd.DataFrame:
    titles, texts, brands, cats = [], [], [], []
    for key, rec in obj.items():
        if not isinstance(rec, dict):
            raise DataError(path, f"item {key}: expected an object {{title, description, brand, categories}}", line=key_line(text, key))
        try:  # the line is looked up only when something is wrong
            titles.append(_text(rec.get("title"), "title", path))
            texts.append(_text(rec.get("description"), "description", path))
            brands.append(_text(rec.get("brand"), "brand", path) or None)
            cats.append(category_paths(rec.get("categories"), source=path))
        except DataError as exc:
            raise DataError(path, f"item {key}: {exc.problem}", line=key_line(text, key), column=exc.column) from None
    return pd.DataFrame({"item_id": item_ids, "categories": cats, "title": titles, "text": texts, "brand": brands})


def _interactions(
    obj: dict, user_ids: np.ndarray, item_ids: np.ndarray, path: Path, text: str, item_file: str
) -> pd.DataFrame:
    keys = list(obj)
    histories = list(obj.values())
    for k, h in zip(keys, histories):
        if not isinstance(h, list):
            raise DataError(path, f"user {k}: expected a list of item ids, got {type(h).__name__}", line=key_line(text, k))
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    flat = list(chain.from_iterable(histories))
    starts = np.cumsum(lengths) - lengths

    def user_of(event: int) -> str:
        return keys[int(np.searchsorted(starts, event, side="right") - 1)]

    bad = next((i for i, x in enumerate(flat) if not (type(x) is int or (isinstance(x, str) and _INT_ID.fullmatch(x)))), None)
    if bad is not None:
        k = user_of(bad)
        raise DataError(path, f"user {k}: item id {flat[bad]!r} is not an integer", line=key_line(text, k))
    items = np.array([int(x) for x in flat], dtype=np.int64)
    unknown = ~np.isin(items, item_ids)
    if unknown.any():
        e = int(np.flatnonzero(unknown)[0])
        k = user_of(e)
        raise DataError(path, f"user {k}: item {items[e]} is not in {item_file}", line=key_line(text, k))
    # users ranked by id, so the tie-break does not depend on the file's key order
    rank = np.argsort(np.argsort(user_ids, kind="stable"), kind="stable")
    users = np.repeat(user_ids, lengths)
    position = np.arange(len(items), dtype=np.int64) - np.repeat(starts, lengths)
    ts = relative_position_clock(np.repeat(rank, lengths), position, np.repeat(lengths, lengths))
    return pd.DataFrame(
        {"user_id": users, "item_id": items, "event_ts": ts, "weight": np.ones(len(items), dtype=np.float32)}
    )
