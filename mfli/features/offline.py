"""The offline store's parquet layout: one folder per source table, hive-partitioned by day.

    <data_root>/<table>/event_date=YYYY-MM-DD/part-0.parquet

``data_root`` is a local path or ``s3://bucket/prefix`` (endpoint from ``AWS_ENDPOINT_URL``). Writing a
window first deletes every partition of the window's days, so re-running the same window rewrites
rows instead of appending duplicates. The schemas here are the contract with ``feature_repo/features.py``.
"""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from mfli.data.errors import DataError
from mfli.features.window import Window

PARTITION = "event_date"
_TS = pa.timestamp("ns", tz="UTC")

#: Source table -> arrow schema of its parquet files (the partition column lives in the path).
SOURCE_SCHEMAS: dict[str, pa.Schema] = {
    "interactions": pa.schema(
        [("user_id", pa.int64()), ("item_id", pa.int64()), ("event_ts", _TS), ("weight", pa.float32())]
    ),
    "item_profile": pa.schema(
        [
            ("item_id", pa.int64()),
            ("created_at", _TS),
            ("categories", pa.list_(pa.string())),
            ("title", pa.string()),
            ("text", pa.string()),
            ("brand", pa.string()),
            ("title_tokens", pa.list_(pa.string())),
            ("text_tokens", pa.list_(pa.string())),
            ("created_ts", _TS),
        ]
    ),
    "item_stats": pa.schema(
        [
            ("item_id", pa.int64()),
            ("snapshot_ts", _TS),
            ("item_cnt_1d", pa.int64()),
            ("item_cnt_7d", pa.int64()),
            ("item_cnt_30d", pa.int64()),
        ]
    ),
    "user_profile": pa.schema(
        [
            ("user_id", pa.int64()),
            ("snapshot_ts", _TS),
            ("user_cnt_1d", pa.int64()),
            ("user_cnt_7d", pa.int64()),
            ("user_cnt_30d", pa.int64()),
            ("user_mean_weight_30d", pa.float32()),
            ("user_attrs", pa.list_(pa.string())),
        ]
    ),
    "user_history": pa.schema(
        [
            ("user_id", pa.int64()),
            ("history_ts", _TS),
            ("history_item_ids", pa.list_(pa.int64())),
            ("history_len", pa.int64()),
        ]
    ),
}

_PARTITIONING = pads.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive")


def filesystem(data_root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local folder or an ``s3://`` root."""
    if data_root.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint,
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            scheme="http" if endpoint and endpoint.startswith("http://") else "https",
        )
        return fs, data_root[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(data_root)


def write_partitions(df: pd.DataFrame, data_root: str, table: str, day_of: pd.Series, window: Window) -> int:
    """Replace the window's day partitions of ``table`` with the rows of ``df``.

    Args:
        df: rows whose columns match ``SOURCE_SCHEMAS[table]`` (extra columns are dropped).
        day_of: tz-aware timestamps aligned with ``df`` choosing each row's partition day.
        window: every day it touches is deleted first, even days with no new rows.
    Returns:
        rows written.
    """
    schema = SOURCE_SCHEMAS[table]
    fs, base = filesystem(data_root)
    days = set(window.days())
    part = day_of.dt.strftime("%Y-%m-%d")
    outside = ~part.isin(days)
    if outside.any():
        row = int(outside.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{data_root}/{table}", f"row partition day {part.iloc[row]} is outside {window}", line=row
        )
    for day in sorted(days.intersection(partition_days(data_root, table))):  # one listing, not one call per day
        fs.delete_dir(f"{base}/{table}/{PARTITION}={day}")
    # S3 has no directories, and pyarrow's CreateDir starts with HeadBucket, which a prefix-scoped
    # ListBucket grant refuses (infra/iam): never create "directories" on S3.
    on_s3 = isinstance(fs, pafs.S3FileSystem)
    if not len(df):
        if not on_s3:
            fs.create_dir(f"{base}/{table}", recursive=True)
        return 0
    arrow = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    arrow = arrow.append_column(PARTITION, pa.array(part.to_numpy(), pa.string()))
    pads.write_dataset(
        arrow,
        f"{base}/{table}",
        format="parquet",
        partitioning=_PARTITIONING,
        filesystem=fs,
        basename_template="part-{i}.parquet",
        existing_data_behavior="delete_matching",
        max_partitions=100_000,
        create_dir=not on_s3,
    )
    return len(df)


def read_table(data_root: str, table: str, window: Window | None = None) -> pd.DataFrame:
    """Rows of ``table`` in the partitions of the days ``window`` touches (all rows when None).

    Returns an empty frame with the table's columns when nothing was written yet.
    """
    schema = SOURCE_SCHEMAS[table]
    fs, base = filesystem(data_root)
    path = f"{base}/{table}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return schema.empty_table().to_pandas()
    dset = pads.dataset(
        path, format="parquet", partitioning=_PARTITIONING, filesystem=fs, schema=_with_partition(schema)
    )
    flt = None
    if window is not None:
        days = window.days()
        flt = (pads.field(PARTITION) >= days[0]) & (pads.field(PARTITION) <= days[-1])
    return dset.to_table(filter=flt, columns=schema.names).to_pandas()


def partition_days(data_root: str, table: str) -> list[str]:
    """Sorted ISO days that have a partition folder for ``table``."""
    fs, base = filesystem(data_root)
    path = f"{base}/{table}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    prefix = f"{PARTITION}="
    return sorted(
        i.base_name[len(prefix) :]
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
    )


def _with_partition(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(PARTITION, pa.string()))
