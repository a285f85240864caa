"""No bad byte passes silently: out-of-range timestamps, corrupt or stray parquet parts, and the data-quality
report (duplicates, negative ids or weights, pre-1970 timestamps; ``strict`` makes them errors). The same
rules drive the GX suites, checked here by comparing what both flag on one broken table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfli.data.errors import DataError
from mfli.data.loaders import load_dataset
from mfli.data.parquet_format import file_checksums, parquet_stats, write_dataset
from mfli.data.quality import TS_MIN, check_table, quality_report, rules_for, violations

T = 881250949  # 1997


def _ml_latest(root: Path, ratings: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(ratings) + "\n")
    (root / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Drama\n2,B (1996),Comedy\n3,C,Action\n")
    return root


def _ml1m(root: Path, ratings: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.dat").write_text(ratings)
    (root / "movies.dat").write_text("1::A (1995)::Drama\n2::B (1996)::Comedy\n")
    return root


def _ml100k(root: Path, data: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text(data)
    genres = ["unknown", "Drama"]
    (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)))
    (root / "u.item").write_text("1|A|01-Jan-1995||u|0|1\n2|B|01-Jan-1995||u|0|1\n")
    return root


# ------------------------------------------------------------------------------------------------
# timestamps a datetime64[ns] cannot hold
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [10**11, 2**62, -(10**11)], ids=["year-5138", "2^62", "year--1200"])
def test_out_of_range_timestamp_is_a_data_error_with_line_and_column(tmp_path, ts):
    root = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", f"1,2,3.0,{T + 1}", f"2,3,5.0,{ts}"])
    with pytest.raises(DataError) as info:
        load_dataset(root)
    err = info.value
    assert err.path.endswith("ratings.csv") and (err.line, err.column) == (4, "timestamp")
    assert f"timestamp {ts} is outside the supported range" in err.problem


def test_out_of_range_timestamp_in_ml1m_and_ml100k(tmp_path):
    root = _ml1m(tmp_path / "m1", f"1::1::5::{T}\n\n2::2::4::99999999999\n")  # blank line: line 3 is data row 1
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert info.value.path.endswith("ratings.dat") and (info.value.line, info.value.column) == (3, "Timestamp")
    root = _ml100k(tmp_path / "m100", f"1\t1\t4\t{T}\n1\t2\t3\t-99999999999\n")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert info.value.path.endswith("u.data") and (info.value.line, info.value.column) == (2, "timestamp")


def test_out_of_range_timestamp_in_a_parquet_part(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "d")
    part = out / "interactions" / "part-00000.parquet"
    t = pq.read_table(part)
    us = t.column("event_ts").cast(pa.timestamp("us", "UTC")).to_pylist()
    us[7] = pd.Timestamp("3000-01-01", tz="UTC").to_pydatetime()
    t = t.set_column(2, "event_ts", pa.array(us, pa.timestamp("us", "UTC")))
    pq.write_table(t, part)
    _rehash(out)
    with pytest.raises(DataError) as info:
        load_dataset(out)
    err = info.value
    assert err.path.endswith("part-00000.parquet") and (err.line, err.column) == (7, "event_ts")
    assert "3000-01-01" in err.problem and "outside the supported range" in err.problem


# ------------------------------------------------------------------------------------------------
# checksums of the canonical layout
# ------------------------------------------------------------------------------------------------
def _rehash(out: Path) -> None:
    marker = json.loads((out / "_dataset.json").read_text())
    marker["sha256"] = file_checksums(out)
    (out / "_dataset.json").write_text(json.dumps(marker))


def test_checksums_are_recorded_for_every_data_file(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "d", rows_per_part=100)
    marker = json.loads((out / "_dataset.json").read_text())
    parts = sorted(p.name for p in (out / "interactions").glob("part-*.parquet"))
    assert len(parts) >= 2
    assert set(marker["sha256"]) == {"items.parquet", "users.parquet", *(f"interactions/{p}" for p in parts)}
    assert all(len(h) == 64 for h in marker["sha256"].values())


@pytest.mark.parametrize("reader", [load_dataset, parquet_stats], ids=["load", "stats"])
def test_one_flipped_byte_in_a_part_is_refused(tiny_dataset, tmp_path, reader):
    out = write_dataset(tiny_dataset, tmp_path / "d")
    part = out / "interactions" / "part-00000.parquet"
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 3] ^= 0x40  # in the data pages: parquet itself may well read this without complaint
    part.write_bytes(bytes(raw))
    with pytest.raises(DataError) as info:
        reader(out)
    assert info.value.path.endswith("interactions/part-00000.parquet")
    assert "corrupt file: sha256" in info.value.problem and "recorded in _dataset.json" in info.value.problem


def test_stray_part_and_bad_checksum_table_are_refused(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "d")
    stray = out / "interactions" / "part-00001.parquet"
    stray.write_bytes((out / "interactions" / "part-00000.parquet").read_bytes())
    with pytest.raises(DataError, match="not listed in _dataset.json"):
        load_dataset(out)
    stray.unlink()
    marker = json.loads((out / "_dataset.json").read_text())
    marker["sha256"] = ["nope"]
    (out / "_dataset.json").write_text(json.dumps(marker))
    with pytest.raises(DataError) as info:
        load_dataset(out)
    assert info.value.column == "sha256"


def test_synthetic_catalogue_records_checksums_too(tmp_path):
    from mfli.data.synthetic import SyntheticConfig, write_synthetic

    out = write_synthetic(SyntheticConfig(n_items=200, n_users=50, n_interactions=1000, seed=0), tmp_path / "s",
                          progress=False)
    assert "interactions/part-00000.parquet" in json.loads((out / "_dataset.json").read_text())["sha256"]
    assert load_dataset(out).meta["quality"] == []
    with open(out / "items.parquet", "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(DataError, match="corrupt file"):
        load_dataset(out)


# ------------------------------------------------------------------------------------------------
# quality report and --strict
# ------------------------------------------------------------------------------------------------
BAD_ROWS = [
    # (id, ratings lines, rule, column, count, first row)
    ("duplicate-event", [f"1,1,4.0,{T}", f"1,2,3.0,{T}", f"1,1,4.0,{T}"], "duplicate_event", "event_ts", 1, 2),
    ("negative-user", [f"1,1,4.0,{T}", f"-5,2,3.0,{T}"], "negative_id", "user_id", 1, 1),
    ("negative-rating", [f"1,1,-1.0,{T}", f"2,2,3.0,{T}", f"3,2,-2.5,{T}"], "weight_range", "weight", 2, 0),
    ("zero-rating", [f"1,1,0.0,{T}", f"2,2,3.0,{T}"], "weight_range", "weight", 1, 0),
    ("huge-rating", [f"1,1,4.0,{T}", f"2,2,1e9,{T}"], "weight_range", "weight", 1, 1),
    ("pre-1970", [f"1,1,4.0,{T}", "2,2,3.0,-86400"], "before_1970", "event_ts", 1, 1),
]


@pytest.mark.parametrize("lines, rule, column, count, row", [b[1:] for b in BAD_ROWS], ids=[b[0] for b in BAD_ROWS])
def test_quality_findings_are_reported_and_strict_makes_them_errors(tmp_path, lines, rule, column, count, row):
    root = _ml_latest(tmp_path / "ml", lines)
    ds = load_dataset(root)
    [finding] = [f for f in ds.meta["quality"] if f["table"] == "interactions"]
    assert (finding["rule"], finding["column"], finding["count"], finding["first_row"]) == (rule, column, count, row)
    with pytest.raises(DataError) as info:
        load_dataset(root, strict=True)
    err = info.value
    assert err.path.endswith(":interactions") and (err.line, err.column) == (row, column)
    assert finding["why"] in err.problem


def test_negative_item_id_is_flagged_in_items_and_interactions(tmp_path):
    root = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", f"2,2,3.0,{T}"])
    (root / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n2,B,Comedy\n-3,C,Action\n")
    found = {(f["table"], f["rule"]) for f in load_dataset(root).meta["quality"]}
    assert found == {("items", "negative_id")}


def test_clean_data_has_no_findings(tmp_path):
    assert load_dataset(_ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", f"2,2,3.0,{T + 5}"])).meta["quality"] == []


def test_the_gx_suite_and_the_loader_report_read_the_same_rules(tiny_dataset):
    """One definition: every rule the loader report uses is in the GX checks with the same sentence."""
    from mfli.validation.suites import RunScope, ValidationConfig, checks

    inter = tiny_dataset.interactions.copy()
    inter.loc[3, "user_id"] = -1
    inter.loc[5, "event_ts"] = TS_MIN - pd.Timedelta(days=1)
    inter.loc[8, "weight"] = 0.0
    inter = pd.concat([inter, inter.iloc[[10]]], ignore_index=True)
    whys = {c.why for c in checks("interactions", inter, RunScope(), ValidationConfig())}
    rules = rules_for("interactions")
    assert {r.why for r in rules} <= whys
    found = {f.rule: (f.count, f.first_row) for f in check_table(inter, "interactions")}
    assert found == {"negative_id": (1, 3), "before_1970": (1, 5), "weight_range": (1, 8),
                     "duplicate_event": (1, len(inter) - 1)}
    assert sum(violations(inter, r).sum() for r in rules) == 4
    assert quality_report(tiny_dataset) == []
