"""Canonical tables every loader returns and every downstream stage consumes.

Ids are int64 everywhere: the public datasets ship integer ids, and int64 keeps 100M-row
interaction tables within memory. Sources with string ids keep a mapping beside the data.

- interactions: one row per (user, item, event); ``event_ts`` is a UTC timestamp, ``weight`` a
  float label strength (MovieLens: the rating; implicit data: 1.0).
- items: one row per item; ``categories`` is a list of strings where a hierarchical path is written
  ``"Top>Sub>Leaf"``; ``created_at`` is when the item entered the catalogue (UTC).
- users: ``user_id`` plus optional feature columns (dataset-specific, e.g. ``gender``, ``age``).
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from mfli.data.errors import DataError

#: Separator between levels of a hierarchical category path, e.g. ``"Tools>Fasteners>Staples"``.
CATEGORY_SEP = ">"

TS = pa.timestamp("ns", tz="UTC")

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event_ts", TS, nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("created_at", TS, nullable=False),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("brand", pa.string(), nullable=True),
    ]
)

#: Users must have ``user_id``; any further columns are optional features.
USERS_BASE_SCHEMA = pa.schema([pa.field("user_id", pa.int64(), nullable=False)])

SCHEMAS: dict[str, pa.Schema] = {
    "interactions": INTERACTIONS_SCHEMA,
    "items": ITEMS_SCHEMA,
    "users": USERS_BASE_SCHEMA,
}


def conform(df: pd.DataFrame, table: str, source: str = "<memory>") -> pd.DataFrame:
    """Check ``df`` has the canonical columns of ``table`` and cast them to canonical dtypes.

    Extra columns are allowed only for ``users`` (features). Raises :class:`DataError` naming the
    source and the column on a missing column, an extra column, a null in a non-nullable column or
    a value that cannot be cast.
    """
    schema = SCHEMAS[table]
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise DataError(source, f"{table}: missing column(s) {missing}", column=missing[0])
    if table != "users":
        extra = [c for c in df.columns if c not in schema.names]
        if extra:
            raise DataError(source, f"{table}: unexpected column(s) {extra}", column=extra[0])
    out = df.copy()
    for f in schema:
        col = out[f.name]
        if not f.nullable and col.isna().any():
            row = int(col.isna().to_numpy().nonzero()[0][0])
            raise DataError(source, f"{table}: null value in non-nullable column", line=row, column=f.name)
        try:
            if pa.types.is_timestamp(f.type):
                if not pd.api.types.is_datetime64_any_dtype(col):
                    raise TypeError(f"expected a timestamp column, got {col.dtype}")
                if getattr(col.dt, "tz", None) is None:
                    raise TypeError("timestamps must be timezone-aware (UTC)")
                out[f.name] = col.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
            elif f.type == pa.int64():
                out[f.name] = col.astype("int64")
            elif f.type == pa.float32():
                out[f.name] = col.astype("float32")
            elif f.type == pa.string():
                out[f.name] = col.astype("object")
        except (TypeError, ValueError) as exc:
            raise DataError(source, f"{table}: {exc}", column=f.name) from exc
    cols = list(schema.names) + ([c for c in df.columns if c not in schema.names] if table == "users" else [])
    return out[cols].reset_index(drop=True)


def to_arrow(df: pd.DataFrame, table: str) -> pa.Table:
    """Canonical dataframe -> arrow table with the documented schema (users keep feature columns)."""
    if table == "users":
        return pa.Table.from_pandas(df, preserve_index=False)
    return pa.Table.from_pandas(df[SCHEMAS[table].names], schema=SCHEMAS[table], preserve_index=False)
