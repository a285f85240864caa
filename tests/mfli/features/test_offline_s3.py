"""The production layout: parquet sources on S3 (an in-process moto server), written and read back
through pyarrow exactly as the offline store reads them."""

from __future__ import annotations

import pandas as pd
import pytest
from pit_data import at

from mfli.features import offline
from mfli.features.ingest import write_offline
from mfli.features.window import Window


@pytest.fixture()
def s3_endpoint(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    srv = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mfli-feast")
    yield endpoint
    srv.stop()


def test_sources_on_s3_round_trip_and_prune(s3_endpoint, pit_dataset, tmp_path):
    from feast import FileSource

    from mfli.features.offline_store import read_source

    root = "s3://mfli-feast/offline"
    window = Window(at(3), at(6))  # three day partitions per table keep the fake S3 quick
    rep = write_offline(pit_dataset, root, window)
    local = write_offline(pit_dataset, str(tmp_path), window)
    assert rep.rows == local.rows
    got = offline.read_table(root, "interactions").sort_values(["event_ts", "user_id", "item_id"])
    want = offline.read_table(str(tmp_path), "interactions").sort_values(["event_ts", "user_id", "item_id"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    src = FileSource(
        name="item_stats",
        path=f"{root}/item_stats",
        timestamp_field="snapshot_ts",
        s3_endpoint_override=s3_endpoint,
    )
    rows = read_source(src, None, ["item_id", "snapshot_ts", "item_cnt_7d"], at(5), at(6))
    assert len(rows) and rows["snapshot_ts"].between(at(5), at(6)).all()
    # Derived rows count what the store holds: only days 3-5 were ingested, so the day-5 snapshot of
    # item 0 sees its two day-4 events (not the day-0 ones).
    assert rows.loc[(rows["item_id"] == 0) & (rows["snapshot_ts"] == at(5)), "item_cnt_7d"].tolist() == [2]
