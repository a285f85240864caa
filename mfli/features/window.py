"""A half-open UTC time window [start, end): what one ingestion or extraction run covers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

DAY = pd.Timedelta(days=1)


def utc(ts: str | datetime | pd.Timestamp) -> pd.Timestamp:
    """Parse ``ts`` as a UTC timestamp; strings without an offset are read as UTC.

    Raises ValueError for a timezone-naive ``datetime``/``Timestamp`` object, because silently reading a
    local wall-clock time as UTC shifts every window by hours.
    """
    out = pd.Timestamp(ts)
    if out.tzinfo is None:
        if not isinstance(ts, str):
            raise ValueError(f"timestamp {ts!r} is timezone-naive; pass an aware UTC time")
        out = out.tz_localize("UTC")
    return out.tz_convert("UTC").as_unit("ns")


@dataclass(frozen=True)
class Window:
    """UTC window ``[start, end)``.

    Args:
        start: first instant included (tz-aware, converted to UTC).
        end: first instant excluded; must be after ``start``.
    """

    start: pd.Timestamp
    end: pd.Timestamp

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start))
        object.__setattr__(self, "end", utc(self.end))
        if self.end <= self.start:
            raise ValueError(f"empty window: end {self.end} is not after start {self.start}")

    @classmethod
    def of(cls, start: str | datetime | pd.Timestamp, end: str | datetime | pd.Timestamp) -> Window:
        """Build from ISO strings or aware datetimes, e.g. ``Window.of("2024-01-01", "2024-01-08")``."""
        return cls(utc(start), utc(end))

    @classmethod
    def covering(cls, *timestamps: pd.Series) -> Window:
        """Smallest whole-day window containing every timestamp of the given tz-aware series."""
        lo = min(s.min() for s in timestamps if len(s))
        hi = max(s.max() for s in timestamps if len(s))
        return cls(lo, hi + pd.Timedelta(1, "ns")).whole_days()

    def whole_days(self) -> Window:
        """Widen to UTC midnights: storage partitions are days, so ingestion rewrites whole days."""
        start = self.start.floor("D")
        end = self.end.ceil("D")
        return Window(start, end if end > start else start + DAY)

    def days(self) -> list[str]:
        """ISO dates (``YYYY-MM-DD``) of every day the window touches, in order."""
        wd = self.whole_days()
        return [d.strftime("%Y-%m-%d") for d in pd.date_range(wd.start, wd.end - DAY, freq="D")]

    def mask(self, ts: pd.Series) -> pd.Series:
        """Boolean mask of ``ts`` values inside ``[start, end)``."""
        return (ts >= self.start) & (ts < self.end)

    def as_dict(self) -> dict[str, str]:
        """ISO 8601 strings, for task results and validation artifacts."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}
