"""Run a table's GX suites; write the full result as JSON; raise ``ValidationFailed`` on any failure.

    report = validate(df, "interactions", out_dir=run_dir, scope=RunScope(window=w, previous_count=n))

The error message names every failed expectation, the column and why the check exists, and shows up
to three offending rows (row numbers are 0-based positions in ``df``).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfli.data.errors import DataError
from mfli.validation.suites import Check, RunScope, ValidationConfig, checks, frames

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

_EXAMPLES = 3
_CTX_LOCK = threading.Lock()
_CTX: dict[str, Any] = {}


@dataclass
class Failure:
    """One failed expectation."""

    expectation: str  # GX expectation type, e.g. "expect_column_values_to_not_be_null"
    column: str | None  # column (or column pair/list) it checks
    frame: str  # batch it ran on: table, schema, rows, vocabulary
    why: str  # what the check protects
    unexpected_count: int | None = None  # offending rows/values, when GX counts them
    element_count: int | None = None
    observed: Any = None  # observed value of aggregate checks (row count, column set ...)
    examples: list[dict] = field(default_factory=list)  # offending rows or values
    error: str | None = None  # exception text when the expectation could not run

    def describe(self) -> str:
        """One readable line: expectation(column) -- why: what was seen; e.g. rows."""
        where = f"(column={self.column!r})" if self.column else ""
        head = f"{self.expectation}{where} -- {self.why}"
        if self.error:
            return f"{head}: could not run: {self.error}"
        parts = []
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} of {self.element_count} values unexpected")
        if self.observed is not None:
            parts.append(f"observed {_short(self.observed, 200)}")
        if self.examples:
            parts.append("e.g. " + "; ".join(_short(e, 240) for e in self.examples))
        return f"{head}: {', '.join(parts) or 'failed'}"


class ValidationFailed(DataError):
    """A batch failed its suite: nothing downstream may use it.

    Attributes:
        table: validated table kind.
        failures: every failed expectation.
        result_path: the JSON file with the full GX results.
    """

    def __init__(self, table: str, failures: list[Failure], result_path: Path, n_checks: int) -> None:
        self.table = table
        self.failures = failures
        self.result_path = result_path
        lines = "\n".join(f"  - {f.describe()}" for f in failures)
        super().__init__(
            table,
            f"{len(failures)} of {n_checks} expectations failed (full result: {result_path}):\n{lines}",
            column=failures[0].column if failures else None,
        )


@dataclass
class ValidationReport:
    """Outcome of one validation run."""

    table: str
    name: str
    success: bool
    rows: int
    checks: int
    failures: list[Failure]
    result_path: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": [f.describe() for f in self.failures]}


def _plain(v: Any) -> Any:
    """JSON-friendly, readable cell value: numpy scalars -> Python, timestamps -> ISO strings."""
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return None
    return v


def _short(v: Any, n: int) -> str:
    s = repr(v) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


def _context() -> Any:
    """One ephemeral GX context per process with a pandas data source and one asset per batch kind."""
    with _CTX_LOCK:
        if "ctx" not in _CTX:
            import great_expectations as gx

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = {"globally": False}  # no tqdm output in task logs
            source = ctx.data_sources.add_pandas("mfli")
            _CTX["ctx"] = ctx
            _CTX["batches"] = {
                kind: source.add_dataframe_asset(kind).add_batch_definition_whole_dataframe("whole")
                for kind in ("table", "schema", "rows", "vocabulary")
            }
        return _CTX["ctx"]


def _examples(check: Check, result: dict, batch: pd.DataFrame, df: pd.DataFrame) -> list[dict]:
    """Up to three offending rows of ``df`` (table/rows batches) or offending values (schema/vocabulary)."""
    idx = result.get("partial_unexpected_index_list") or []
    if check.frame in ("table", "rows") and idx:
        cfg = check.expectation
        cols = [c for c in ("user_id", "item_id") if c in df.columns]
        for name in ("column", "column_A", "column_B"):
            col = getattr(cfg, name, None)
            if col:
                cols.append(col.split("__")[0])
        cols += list(getattr(cfg, "column_list", None) or [])
        cols = [c for c in dict.fromkeys(cols) if c in df.columns]
        out = []
        for i in idx[:_EXAMPLES]:
            row = int(i) if not isinstance(i, dict) else None
            if row is None or row not in df.index:
                out.append({"index": i})
                continue
            out.append({"row": row, **{c: _plain(df.at[row, c]) for c in cols}})
        return out
    values = result.get("partial_unexpected_list") or []
    return [{"value": _plain(v)} for v in values[:_EXAMPLES]]


def validate(
    df: pd.DataFrame,
    table: str,
    out_dir: str | Path,
    scope: RunScope | None = None,
    cfg: ValidationConfig | None = None,
    name: str | None = None,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Validate ``df`` as ``table`` (see :data:`mfli.validation.suites.TABLES`).

    Args:
        df: the batch (any index; rows are reported by 0-based position).
        out_dir: where ``validation_<name>.json`` (the full GX results) is written, pass or fail.
        scope: the run's window, clock, previous row count, declared user columns.
        name: artifact name (default: ``table``).
        raise_on_failure: raise :class:`ValidationFailed` when any expectation fails.
    Returns:
        a :class:`ValidationReport`.
    """
    import great_expectations as gx

    scope = scope or RunScope()
    cfg = cfg or ValidationConfig()
    name = name or table
    df = df.reset_index(drop=True)
    batches = frames(table, df)
    todo = checks(table, df, scope, cfg)
    ctx = _context()
    failures: list[Failure] = []
    raw: dict[str, Any] = {}
    for frame in dict.fromkeys(c.frame for c in todo):
        mine = [c for c in todo if c.frame == frame]
        suite_name = f"{name}-{frame}-{uuid.uuid4().hex[:8]}"
        with _CTX_LOCK:
            suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
            by_id = {suite.add_expectation(c.expectation).id: c for c in mine}
            vd = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=suite_name, data=_CTX["batches"][frame], suite=suite)
            )
        try:
            res = vd.run(
                batch_parameters={"dataframe": batches[frame]},
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
            )
        finally:
            with _CTX_LOCK:
                ctx.validation_definitions.delete(suite_name)
                ctx.suites.delete(suite_name)
        raw[frame] = res.to_json_dict()
        for r in res.results:
            if r.success:
                continue
            check = by_id[r.expectation_config.id]
            kw = r.expectation_config.kwargs
            column = kw.get("column") or kw.get("column_A") or kw.get("column_list")
            if isinstance(column, str) and "__" in column:
                column = column.split("__")[0]
            if frame == "vocabulary":
                column = "categories"
            result = r.result or {}
            exc = r.exception_info or {}
            error = exc.get("exception_message") if exc.get("raised_exception") else None
            observed = result.get("observed_value")
            if r.expectation_config.type == "expect_table_columns_to_match_set":
                mism = (result.get("details") or {}).get("mismatched") or {}
                observed = {"missing": mism.get("missing", []), "unknown extra": mism.get("unexpected", [])}
            failures.append(
                Failure(
                    expectation=r.expectation_config.type,
                    column=column if not isinstance(column, list) else ",".join(column),
                    frame=frame,
                    why=check.why,
                    unexpected_count=result.get("unexpected_count"),
                    element_count=result.get("element_count"),
                    observed=observed,
                    examples=_examples(check, result, batches[frame], df),
                    error=error,
                )
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"validation_{name}.json"
    report = ValidationReport(table, name, not failures, len(df), len(todo), failures, str(path))
    doc = {
        "table": table,
        "name": name,
        "success": report.success,
        "rows": len(df),
        "scope": scope.as_dict(),
        "config": asdict(cfg),
        "failures": [asdict(f) | {"message": f.describe()} for f in failures],
        "results": raw,
    }
    path.write_text(json.dumps(doc, indent=1, default=str))
    if failures and raise_on_failure:
        raise ValidationFailed(table, failures, path, len(todo))
    return report
