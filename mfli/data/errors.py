"""The one error type bad input raises: it names the file, the line/row, the column and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data.

    Args:
        path: file (or logical table) the problem is in.
        problem: what is wrong, in words.
        line: 1-based line (text files) or 0-based row (tables), when known.
        column: offending column/field, when known.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")
