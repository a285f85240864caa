"""Feast definitions for MFLI: entities, parquet sources, feature views and feature services.

This is the repository's single definitions module (`feast apply` imports it). Parquet sources live
under one data root so a copy of the repository (tests, a second environment) can point elsewhere:

    MFLI_FEAST_DATA=/abs/path/or/s3://bucket/prefix feast apply      # default: data/ next to this file

The tables under the root are written by `mfli.features.ingest` (hive partitions event_date=YYYY-MM-DD);
the column names below are that module's contract and a test checks they agree.
"""

from __future__ import annotations

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Int64, String, UnixTimestamp

# Relative roots resolve against this folder (Feast does the same for FileSource paths).
DATA_ROOT = os.environ.get("MFLI_FEAST_DATA", "data").rstrip("/")
# Non-AWS S3 (SeaweedFS, MinIO) needs the endpoint on every source; unused for local paths.
S3_ENDPOINT = os.environ.get("AWS_ENDPOINT_URL") if DATA_ROOT.startswith("s3://") else None


def _source(table: str, timestamp_field: str, description: str) -> FileSource:
    return FileSource(
        name=table,
        path=f"{DATA_ROOT}/{table}",
        file_format=ParquetFormat(),
        timestamp_field=timestamp_field,
        s3_endpoint_override=S3_ENDPOINT,
        description=description,
    )


# --- entities -----------------------------------------------------------------------------------

# The person a recommendation is for; every user-side feature view joins on it.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="canonical user id")

# The thing recommended; content and popularity features join on it, and the index is keyed by it.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="canonical item id")

# --- sources --------------------------------------------------------------------------------------

# The interaction log: training examples are its rows, used as the entity dataframe that every
# feature view is joined against point-in-time (no feature value newer than the event).
interactions_source = _source(
    "interactions", "event_ts", "user-item events (user_id, item_id, event_ts, weight)"
)

# Item catalogue rows, stamped with created_at so an item is invisible before it existed.
item_profile_source = _source("item_profile", "created_at", "item content, one row per item")

# Daily popularity snapshots; a row at midnight T counts events in [T - w, T).
item_stats_source = _source("item_stats", "snapshot_ts", "item engagement counts per window")

# Daily user activity snapshots plus the dataset's user attributes.
user_profile_source = _source("user_profile", "snapshot_ts", "user activity counts and attributes")

# One row just after each event (event_ts + 1 us) holding the items engaged so far, so a training
# row at the event itself never sees its own target item.
user_history_source = _source("user_history", "history_ts", "recent engaged item ids per user")

# --- feature views --------------------------------------------------------------------------------

# Item content for the item tower and for encoding new items in the delta pipeline; content never
# expires (ttl 0 = unbounded), the row simply does not exist before created_at.
item_profile = FeatureView(
    name="item_profile",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="categories", dtype=Array(String), description="hierarchical paths, levels joined by '>'"),
        Field(name="title", dtype=String),
        Field(name="text", dtype=String),
        Field(name="brand", dtype=String),
        Field(name="title_tokens", dtype=Array(String), description="lower-cased word tokens of the title"),
        Field(
            name="text_tokens", dtype=Array(String), description="first 128 lower-cased word tokens of text"
        ),
        Field(name="created_ts", dtype=UnixTimestamp, description="when the item entered the catalogue"),
    ],
    source=item_profile_source,
    online=True,
    tags={"owner": "mfli", "kind": "content"},
)

# Popularity over sliding windows: a feature for ranking and a health signal for the index. Snapshots
# are written only where a count changes, so ttl must cover the longest window (31 d): older rows
# can only be zeros, which the extraction fills in.
item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=timedelta(days=31),
    schema=[
        Field(name="item_cnt_1d", dtype=Int64, description="events in the last day"),
        Field(name="item_cnt_7d", dtype=Int64, description="events in the last 7 days"),
        Field(name="item_cnt_30d", dtype=Int64, description="events in the last 30 days"),
    ],
    source=item_stats_source,
    online=True,
    tags={"owner": "mfli", "kind": "aggregate"},
)

# The dataset's user attributes ("key=value" tokens, one schema for every dataset) and activity
# counts; serving uses it for users with little history. Same snapshot/ttl rule as item_stats.
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=31),
    schema=[
        Field(name="user_cnt_1d", dtype=Int64),
        Field(name="user_cnt_7d", dtype=Int64),
        Field(name="user_cnt_30d", dtype=Int64),
        Field(name="user_mean_weight_30d", dtype=Float32, description="mean event weight, last 30 days"),
        Field(name="user_attrs", dtype=Array(String), description="dataset user features as 'key=value'"),
    ],
    source=user_profile_source,
    online=True,
    tags={"owner": "mfli", "kind": "aggregate"},
)

# The user tower's input: the most recent engaged items (oldest first, at most 50, within 365 days).
user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[
        Field(name="history_item_ids", dtype=Array(Int64), description="engaged item ids, oldest first"),
        Field(name="history_len", dtype=Int64),
    ],
    source=user_history_source,
    online=True,
    tags={"owner": "mfli", "kind": "sequence"},
)

# --- feature services -----------------------------------------------------------------------------

# Everything a training example needs, joined onto the interaction log at event time.
training = FeatureService(
    name="training",
    features=[item_profile, item_stats, user_profile, user_history],
    description="point-in-time training examples",
    tags={"owner": "mfli"},
)

# Item content only: the hourly delta pipeline encodes new items, which have no stats yet.
item_delta = FeatureService(
    name="item_delta",
    features=[item_profile],
    description="content features for encoding new items",
    tags={"owner": "mfli"},
)

# What the retrieval service reads per request from the online store.
user_online = FeatureService(
    name="user_online",
    features=[user_history, user_profile],
    description="online user features for serving",
    tags={"owner": "mfli"},
)
