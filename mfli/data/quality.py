"""Data-quality rules on canonical tables: ONE definition, read by the loaders' report and the GX suites.

A :class:`Rule` is declarative (columns, bounds, uniqueness, why). Two interpreters read it:

- :func:`violations` (pandas): the loaders' quality report (:func:`quality_report`), printed as
  warnings by ``mfli data ...`` and turned into a :class:`~mfli.data.errors.DataError` by ``--strict``;
- :func:`mfli.validation.suites.checks` (Great Expectations): the daily DAG's validation gate.

Rules (see :func:`rules_for`): ids are non-negative; ids of items and users are unique; events are
unique per (user, item, time); ``weight`` is in ``(weight_min, weight_max]``; timestamps are not
before 1970 (a zero or negative unix time is a parse default, not an event).

Example::

    from mfli.data.quality import quality_report
    for finding in quality_report(ds):
        print(finding.message())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mfli.data.errors import DataError

if TYPE_CHECKING:
    from mfli.data.dataset import Dataset

#: Earliest allowed timestamp: the unix epoch (0 and negative unix times are parse defaults).
TS_MIN = pd.Timestamp("1970-01-01", tz="UTC")
#: ``weight`` bounds: exclusive minimum (a zero/negative label strength is a broken parse or join) and
#: maximum (MovieLens ratings are <= 5, implicit data 1.0; far above is a unit mix-up).
WEIGHT_MIN, WEIGHT_MAX = 0.0, 100.0
ID_COLUMNS = {
    "interactions": ("user_id", "item_id"),
    "training": ("user_id", "item_id"),
    "items": ("item_id",),
    "new_items": ("item_id",),
    "users": ("user_id",),
}
TS_COLUMN = {"interactions": "event_ts", "training": "event_ts", "items": "created_at", "new_items": "created_at"}
EVENT_KEY = ("user_id", "item_id", "event_ts")


@dataclass(frozen=True)
class Rule:
    """One rule on one table: either a value range on one column, or uniqueness of a column set."""

    name: str  # stable id, e.g. "negative_id", "duplicate_event"
    columns: tuple[str, ...]
    why: str  # the sentence a violation is reported with
    min_value: Any = None
    max_value: Any = None
    strict_min: bool = False  # min_value itself is a violation
    unique: bool = False  # the columns together identify a row


def rules_for(table: str, weight_min: float = WEIGHT_MIN, weight_max: float = WEIGHT_MAX) -> list[Rule]:
    """The quality rules of ``table`` (one of :data:`ID_COLUMNS`'s keys)."""
    out = [Rule("negative_id", (c,), f"{c} is a non-negative id", min_value=0) for c in ID_COLUMNS[table]]
    if table in ("items", "new_items", "users"):
        c = ID_COLUMNS[table][0]
        out.append(Rule("duplicate_id", (c,), f"one row per {c}", unique=True))
    if table in ("interactions", "training"):
        out.append(Rule("duplicate_event", EVENT_KEY, "no duplicate events (same user, item and time)", unique=True))
        out.append(Rule("weight_range", ("weight",), f"weight in ({weight_min}, {weight_max}]", min_value=weight_min,
                        max_value=weight_max, strict_min=True))
    ts = TS_COLUMN.get(table)
    if ts:
        out.append(Rule("before_1970", (ts,), f"{ts} is not before 1970 (a zero or negative unix time)",
                        min_value=TS_MIN))
    return out


def violations(df: pd.DataFrame, rule: Rule) -> np.ndarray:
    """``(n,)`` bool: rows of ``df`` breaking ``rule`` (for uniqueness: every repeat after the first)."""
    if rule.unique:
        return df.duplicated(list(rule.columns), keep="first").to_numpy()
    col = df[rule.columns[0]]
    bad = np.zeros(len(df), dtype=bool)
    if rule.min_value is not None:
        bad |= (col <= rule.min_value if rule.strict_min else col < rule.min_value).to_numpy()
    if rule.max_value is not None:
        bad |= (col > rule.max_value).to_numpy()
    return bad


@dataclass
class Finding:
    """Rows of one table breaking one rule."""

    table: str
    rule: str
    column: str
    count: int
    first_row: int  # 0-based row of the canonical table
    example: str  # the first offending row's values in the rule's columns
    why: str

    def message(self) -> str:
        s = "" if self.count == 1 else "s"
        return f"{self.table}: {self.count} row{s} break '{self.why}' (first: row {self.first_row}, {self.example})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_table(df: pd.DataFrame, table: str) -> list[Finding]:
    """Findings of every rule of ``table`` on ``df`` (canonical columns; rules on absent columns are skipped)."""
    out = []
    for rule in rules_for(table):
        if not all(c in df.columns for c in rule.columns) or len(df) == 0:
            continue
        bad = violations(df, rule)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            example = ", ".join(f"{c}={_fmt(df[c].iloc[row])}" for c in rule.columns)
            out.append(Finding(table, rule.name, rule.columns[-1] if rule.unique else rule.columns[0],
                               int(bad.sum()), row, example, rule.why))
    return out


def _fmt(v: Any) -> str:
    return v.isoformat() if isinstance(v, pd.Timestamp) else repr(v.item() if hasattr(v, "item") else v)


def quality_report(ds: Dataset) -> list[Finding]:
    """Findings on the interactions, items and users of ``ds`` (an empty list: clean)."""
    return [*check_table(ds.interactions, "interactions"), *check_table(ds.items, "items"),
            *check_table(ds.users, "users")]


def raise_on_findings(findings: list[Finding], source: str) -> None:
    """``--strict``: the first finding as a :class:`DataError` naming the source, row and column."""
    if findings:
        f = findings[0]
        more = f" (+{len(findings) - 1} more finding(s))" if len(findings) > 1 else ""
        raise DataError(f"{source}:{f.table}", f"{f.count} row(s) break '{f.why}': {f.example}{more}",
                        line=f.first_row, column=f.column)
