"""Great Expectations suites for the data MFLI learns from, defined in code and versioned with it.

Tables: ``interactions``, ``items`` (the catalogue), ``new_items`` (the delta pipeline's items-in-window
extraction: items plus token lists), ``users`` and ``training`` (point-in-time training examples).
A table is checked as up to four GX batches, each with its own suite:

- ``table``: the frame itself (row count, column set, nulls, uniqueness, value ranges);
- ``schema``: one row per column, ``"name:dtype"``, so a dtype mismatch (float ids, naive timestamps)
  is reported with the exact offending column and dtype;
- ``rows``: per-row measures GX cannot compute on list/text columns (list lengths, malformed lists,
  text lengths), same row numbers as ``table``;
- ``vocabulary``: every category path once, for vocabulary size and path syntax.

Value checks only run on columns whose dtype is right, so one wrong column yields one clear failure
instead of a cascade of type errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mfli.data.quality import ID_COLUMNS, TS_COLUMN, WEIGHT_MAX, WEIGHT_MIN, rules_for
from mfli.features.window import Window

#: Canonical dtypes per table (pandas dtype names). Timestamps must be tz-aware UTC.
TS = "datetime64[ns, UTC]"
INTERACTION_COLUMNS = {"user_id": "int64", "item_id": "int64", "event_ts": TS, "weight": "float32"}
ITEM_COLUMNS = {
    "item_id": "int64",
    "created_at": TS,
    "categories": "object",
    "title": "object",
    "text": "object",
    "brand": "object",
}
NEW_ITEM_COLUMNS = {**ITEM_COLUMNS, "title_tokens": "object", "text_tokens": "object"}
TRAINING_FEATURES = {
    "categories": "object",
    "title": "object",
    "text": "object",
    "brand": "object",
    "title_tokens": "object",
    "text_tokens": "object",
    "created_ts": TS,
    "item_cnt_1d": "int64",
    "item_cnt_7d": "int64",
    "item_cnt_30d": "int64",
    "user_cnt_1d": "int64",
    "user_cnt_7d": "int64",
    "user_cnt_30d": "int64",
    "user_mean_weight_30d": "float32",
    "user_attrs": "object",
    "history_item_ids": "object",
    "history_len": "int64",
}
TRAINING_COLUMNS = {**INTERACTION_COLUMNS, **TRAINING_FEATURES}
TABLES = ("interactions", "items", "new_items", "users", "training")
#: Category path: levels separated by ">", none empty or padded with spaces.
CATEGORY_PATH_REGEX = r"^[^>\s](?:[^>]*[^>\s])?(?:>[^>\s](?:[^>]*[^>\s])?)*$"


@dataclass
class ValidationConfig:
    """Thresholds of the suites; defaults fit MovieLens, Amazon LC-Rec and the synthetic catalogue."""

    weight_min: float = WEIGHT_MIN  # exclusive: a zero/negative label strength means a broken join or parse
    weight_max: float = WEIGHT_MAX  # MovieLens ratings are <= 5, implicit data 1.0; far above = unit mix-up
    volume_band: tuple[float, float] = (0.5, 2.0)  # allowed ratio to the previous run's row count
    max_empty_categories: float = 0.2  # share of items allowed without any category (Amazon: 3%)
    max_category_len: int = 200  # characters in one category path
    category_mostly: float = 0.99  # share of distinct paths that must be sane (Amazon has ~1% junk paths)
    max_vocabulary: int = 200_000  # distinct category paths in one batch
    max_title_len: int = 2_000  # characters
    max_text_len: int = 200_000  # characters
    max_history_len: int = 50  # = SnapshotConfig.history_len
    max_count: int = 10**9  # window counts above this are an overflow, not popularity


@dataclass
class RunScope:
    """What one run expects of its data.

    Args:
        window: timestamps must fall in ``[start, end)`` (events; items for ``new_items``); None = any.
        now: nothing may be stamped after this instant; default: the clock when validating.
        previous_count: the previous run's row count for the volume band; None = first run.
        user_columns: expected users feature columns -> dtype; None = any extra columns allowed.
    """

    window: Window | None = None
    now: pd.Timestamp | None = None
    previous_count: int | None = None
    user_columns: dict[str, str] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.as_dict() if self.window else None,
            "now": self.now.isoformat() if self.now is not None else None,
            "previous_count": self.previous_count,
            "user_columns": self.user_columns,
        }


@dataclass
class Check:
    """One expectation on one batch, plus the sentence a failure message starts with."""

    frame: str  # "table", "schema", "rows" or "vocabulary"
    expectation: Any  # a great_expectations.expectations.Expectation
    why: str


def expected_columns(table: str, df: pd.DataFrame, scope: RunScope) -> dict[str, str] | None:
    """Column -> dtype the table must have exactly; None for users without declared features."""
    if table == "interactions":
        return INTERACTION_COLUMNS
    if table == "items":
        return ITEM_COLUMNS
    if table == "new_items":
        return NEW_ITEM_COLUMNS
    if table == "training":
        return TRAINING_COLUMNS
    if table == "users":
        return None if scope.user_columns is None else {"user_id": "int64", **scope.user_columns}
    raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")


def _is_str_list(v: object) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, str) for x in v)


def _is_int_list(v: object) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v
    )


def _lengths(col: pd.Series, ok) -> pd.Series:
    """len() of well-formed list values, -1 for malformed ones (so one column carries both facts)."""
    return pd.Series([len(v) if ok(v) else -1 for v in col], index=col.index, dtype="int64")


def frames(table: str, df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The batches a table is validated as (see module docstring); ``df`` must have a RangeIndex."""
    out = {
        "table": df,
        "schema": pd.DataFrame({"column": [f"{c}:{t}" for c, t in df.dtypes.astype(str).items()]}),
    }
    rows = pd.DataFrame(index=df.index)
    for c in ("categories", "title_tokens", "text_tokens", "user_attrs"):
        if c in df and df[c].dtype == object:
            rows[f"{c}__len"] = _lengths(df[c], _is_str_list)
    if "history_item_ids" in df and df["history_item_ids"].dtype == object:
        rows["history_item_ids__len"] = _lengths(df["history_item_ids"], _is_int_list)
        if "history_len" in df:
            rows["history_len__matches"] = (
                rows["history_item_ids__len"].to_numpy() == df["history_len"].to_numpy()
            )
    for c in ("title", "text"):
        if c in df and df[c].dtype == object:
            rows[f"{c}__len"] = pd.Series(
                [len(v) if isinstance(v, str) else -1 for v in df[c]], index=df.index
            )
    if len(rows.columns):
        out["rows"] = rows
    if "categories" in df and df["categories"].dtype == object:
        vocab = sorted({x for v in df["categories"] if _is_str_list(v) for x in v})
        out["vocabulary"] = pd.DataFrame({"category": pd.Series(vocab, dtype="object")})
    return out


def checks(table: str, df: pd.DataFrame, scope: RunScope, cfg: ValidationConfig) -> list[Check]:
    """The expectations for ``table`` given the run's scope; see :data:`TABLES`."""
    import great_expectations.expectations as gxe

    expected = expected_columns(table, df, scope)
    dtypes = df.dtypes.astype(str).to_dict()

    def ok(col: str) -> bool:
        """Column present with the dtype its checks assume."""
        want = (expected or {}).get(col, {"user_id": "int64"}.get(col))
        return col in dtypes and (want is None or dtypes[col] == want)

    now = scope.now if scope.now is not None else pd.Timestamp.now(tz="UTC")
    out: list[Check] = [
        Check("table", gxe.ExpectTableRowCountToBeBetween(min_value=1), "batch is not empty"),
    ]
    if scope.previous_count:
        lo, hi = cfg.volume_band
        out.append(
            Check(
                "table",
                gxe.ExpectTableRowCountToBeBetween(
                    min_value=math.ceil(scope.previous_count * lo),
                    max_value=math.floor(scope.previous_count * hi),
                ),
                f"row volume within {lo}x-{hi}x of the previous run's {scope.previous_count} rows",
            )
        )
    # Schema: exact column set, exact dtypes.
    if expected is not None:
        out.append(
            Check(
                "table",
                gxe.ExpectTableColumnsToMatchSet(column_set=list(expected), exact_match=True),
                "columns are exactly the expected set (missing or unknown extra columns)",
            )
        )
        present = [f"{c}:{t}" for c, t in expected.items()]
        out.append(
            Check(
                "schema",
                gxe.ExpectColumnValuesToBeInSet(column="column", value_set=present),
                f"every column has its canonical dtype ({', '.join(present)})",
            )
        )
    else:  # users without declared features: user_id must exist as int64, other columns are free
        out.append(Check("table", gxe.ExpectColumnToExist(column="user_id"), "users have a user_id column"))
        free = [f"{c}:{t}" for c, t in dtypes.items() if c != "user_id"]
        out.append(
            Check(
                "schema",
                gxe.ExpectColumnValuesToBeInSet(column="column", value_set=["user_id:int64", *free]),
                "user_id is int64",
            )
        )

    def add(col: str, exp: Any, why: str, frame: str = "table") -> None:
        if ok(col):
            out.append(Check(frame, exp, why))

    # Ids, uniqueness, weight range, timestamps before 1970: the rules of mfli.data.quality, shared with
    # the loaders' quality report (one definition, two interpreters).
    weight = ["weight"] if table in ("interactions", "training") else []
    for c in [*ID_COLUMNS[table], *([TS_COLUMN[table]] if table in TS_COLUMN else []), *weight]:
        add(c, gxe.ExpectColumnValuesToNotBeNull(column=c), f"{c} is never null")
    for rule in rules_for(table, cfg.weight_min, cfg.weight_max):
        if not all(ok(c) for c in rule.columns):
            continue
        if rule.unique and len(rule.columns) > 1:
            exp = gxe.ExpectCompoundColumnsToBeUnique(column_list=list(rule.columns))
        elif rule.unique:
            exp = gxe.ExpectColumnValuesToBeUnique(column=rule.columns[0])
        else:
            exp = gxe.ExpectColumnValuesToBeBetween(column=rule.columns[0], min_value=rule.min_value,
                                                    max_value=rule.max_value, strict_min=rule.strict_min)
        out.append(Check("table", exp, rule.why))
    ts_col = TS_COLUMN.get(table)
    if ts_col:
        add(
            ts_col,
            gxe.ExpectColumnValuesToBeBetween(column=ts_col, max_value=now),
            f"{ts_col} is never in the future (now = {now.isoformat()})",
        )
        if scope.window is not None and table != "items":
            add(
                ts_col,
                gxe.ExpectColumnValuesToBeBetween(
                    column=ts_col, min_value=scope.window.start, max_value=scope.window.end, strict_max=True
                ),
                f"{ts_col} inside the run's window [{scope.window.start.isoformat()}, {scope.window.end.isoformat()})",
            )

    # Item content.
    if table in ("items", "new_items", "training"):
        add(
            "title",
            gxe.ExpectColumnValuesToNotBeNull(column="title"),
            "every item has content (training: the item existed at the event time)",
        )
        add(
            "title",
            gxe.ExpectColumnValuesToBeBetween(column="title__len", min_value=1, max_value=cfg.max_title_len),
            f"title length in [1, {cfg.max_title_len}] characters",
            "rows",
        )
        add(
            "text",
            gxe.ExpectColumnValuesToBeBetween(column="text__len", min_value=0, max_value=cfg.max_text_len),
            f"text is a string of at most {cfg.max_text_len} characters",
            "rows",
        )
        add(
            "brand",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="brand", min_value=1, max_value=cfg.max_category_len
            ),
            f"brand, when present, has 1-{cfg.max_category_len} characters",
        )
        add(
            "categories",
            gxe.ExpectColumnValuesToBeBetween(column="categories__len", min_value=0),
            "categories is a list of strings (malformed list feature)",
            "rows",
        )
        add(
            "categories",
            gxe.ExpectColumnValuesToBeBetween(
                column="categories__len", min_value=1, mostly=1.0 - cfg.max_empty_categories
            ),
            f"at most {cfg.max_empty_categories:.0%} of items without categories (empty categories flood)",
            "rows",
        )
        add(
            "categories",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="category", min_value=1, max_value=cfg.max_category_len, mostly=cfg.category_mostly
            ),
            f"{cfg.category_mostly:.0%} of category paths have 1-{cfg.max_category_len} characters",
            "vocabulary",
        )
        add(
            "categories",
            gxe.ExpectColumnValuesToMatchRegex(
                column="category", regex=CATEGORY_PATH_REGEX, mostly=cfg.category_mostly
            ),
            f"{cfg.category_mostly:.0%} of category paths are levels joined by '>' with no empty or space-padded "
            "level",
            "vocabulary",
        )
        add(
            "categories",
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="category", max_value=cfg.max_vocabulary),
            f"category vocabulary has at most {cfg.max_vocabulary} paths",
            "vocabulary",
        )
        for c in ("title_tokens", "text_tokens"):
            add(
                c,
                gxe.ExpectColumnValuesToBeBetween(column=f"{c}__len", min_value=0),
                f"{c} is a list of strings (malformed list feature)",
                "rows",
            )

    # Training features.
    if table == "training":
        if ok("event_ts") and ok("created_ts"):
            out.append(
                Check(
                    "table",
                    gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                        column_A="event_ts",
                        column_B="created_ts",
                        or_equal=True,
                        ignore_row_if="either_value_is_missing",
                    ),
                    "item features come from an item created at or before the event (point in time)",
                )
            )
        for side in ("item", "user"):
            for w in ("1d", "7d", "30d"):
                c = f"{side}_cnt_{w}"
                add(
                    c,
                    gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=cfg.max_count),
                    f"{c} in [0, {cfg.max_count}]",
                )
            for a, b in (("7d", "1d"), ("30d", "7d")):
                if ok(f"{side}_cnt_{a}") and ok(f"{side}_cnt_{b}"):
                    out.append(
                        Check(
                            "table",
                            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                                column_A=f"{side}_cnt_{a}", column_B=f"{side}_cnt_{b}", or_equal=True
                            ),
                            f"{side} counts grow with the window ({a} >= {b})",
                        )
                    )
        add(
            "user_mean_weight_30d",
            gxe.ExpectColumnValuesToBeBetween(
                column="user_mean_weight_30d", min_value=0.0, max_value=cfg.weight_max
            ),
            f"user_mean_weight_30d in [0, {cfg.weight_max}]",
        )
        add(
            "user_attrs",
            gxe.ExpectColumnValuesToBeBetween(column="user_attrs__len", min_value=0),
            "user_attrs is a list of strings (malformed list feature)",
            "rows",
        )
        add(
            "history_item_ids",
            gxe.ExpectColumnValuesToBeBetween(
                column="history_item_ids__len", min_value=0, max_value=cfg.max_history_len
            ),
            f"history_item_ids is a list of at most {cfg.max_history_len} integer ids (malformed list feature)",
            "rows",
        )
        if ok("history_item_ids") and ok("history_len"):
            out.append(
                Check(
                    "rows",
                    gxe.ExpectColumnValuesToBeInSet(column="history_len__matches", value_set=[True]),
                    "history_len equals the length of history_item_ids",
                )
            )
    return out
