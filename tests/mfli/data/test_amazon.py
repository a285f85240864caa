"""Amazon LC-Rec loader: fixture folders written here, the relative-position clock, and amazon-scientific."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfli.data.amazon import SPAN, T0, category_paths, load_amazon_lcrec, relative_position_clock
from mfli.data.errors import DataError
from mfli.data.loaders import detect_format, load_dataset

ITEMS = {
    "0": {"title": "Staples", "description": "Box of staples.", "brand": "Acme",
          "categories": "Industrial & Scientific,Fasteners,Collated Fasteners,Staples"},
    "1": {"title": "CA glue", "description": "Glue.", "brand": "",
          "categories": "Industrial & Scientific,Tapes, Adhesives & Sealants,Cyanoacrylate Adhesives"},
    "2": {"title": "Mystery", "description": "", "brand": "Acme", "categories": ""},
    "3": {"title": "Never bought", "description": "Dust.", "brand": "Zed", "categories": "Industrial & Scientific"},
}  # fmt: skip
INTER = {"0": [0, 1, 2], "1": [1, 0], "2": [2]}


def write_lcrec(root: Path, inter: dict | str = INTER, items: dict | str = ITEMS, name: str = "Tiny") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter.json").write_text(inter if isinstance(inter, str) else json.dumps(inter))
    (root / f"{name}.item.json").write_text(items if isinstance(items, str) else json.dumps(items, indent=2))
    return root


def _ts(user: int, j: int, n: int) -> pd.Timestamp:
    return T0 + SPAN * (j + 0.5) / n + pd.Timedelta(microseconds=user)


def test_lcrec_fixture(tmp_path):
    root = write_lcrec(tmp_path / "amazon-tiny")
    assert detect_format(root) == "amazon-lcrec"
    ds = load_dataset(root)
    assert ds.format == "amazon-lcrec" and ds.name == "amazon-tiny" and ds.meta["lcrec_name"] == "Tiny"
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (3, 3, 6)
    inter = ds.interactions
    assert inter["user_id"].tolist() == [0, 0, 0, 1, 1, 2] and inter["item_id"].tolist() == [0, 1, 2, 1, 0, 2]
    assert (inter["weight"] == 1.0).all()
    expected = [_ts(0, 0, 3), _ts(0, 1, 3), _ts(0, 2, 3), _ts(1, 0, 2), _ts(1, 1, 2), _ts(2, 0, 1)]
    assert inter["event_ts"].tolist() == expected
    items = ds.items.set_index("item_id")
    assert items.loc[0, "categories"] == [
        "Industrial & Scientific",
        "Industrial & Scientific>Fasteners",
        "Industrial & Scientific>Fasteners>Collated Fasteners",
        "Industrial & Scientific>Fasteners>Collated Fasteners>Staples",
    ]
    # level names containing ", " stay whole
    assert items.loc[1, "categories"][1] == "Industrial & Scientific>Tapes, Adhesives & Sealants"
    assert items.loc[2, "categories"] == []
    assert items.loc[1, "brand"] is None and items.loc[0, "brand"] == "Acme"
    assert items.loc[0, "text"] == "Box of staples." and items.loc[0, "title"] == "Staples"
    # created_at: first synthesised event; item 3 never bought -> the dataset's last event time
    assert items.loc[0, "created_at"] == _ts(0, 0, 3)
    assert items.loc[1, "created_at"] == _ts(1, 0, 2)  # user 1's first event precedes user 0's second
    assert items.loc[3, "created_at"] == inter["event_ts"].max()


def test_relative_position_clock_properties():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=300)
    rank = np.repeat(np.arange(300), lengths)
    pos = np.concatenate([np.arange(n) for n in lengths])
    ts = pd.Series(relative_position_clock(rank, pos, np.repeat(lengths, lengths)))
    assert ts.is_unique  # the per-user microseconds break every tie
    assert ts.min() >= T0 and ts.max() < T0 + SPAN + pd.Timedelta(seconds=1)
    df = pd.DataFrame({"u": rank, "ts": ts})
    assert df.groupby("u")["ts"].apply(lambda s: s.is_monotonic_increasing).all()
    # a global cutoff at the 80% time quantile holds out ~ the last 20% of each user's history
    cutoff = T0 + SPAN * 0.8
    held = (df["ts"] >= cutoff).groupby(df["u"]).mean()
    assert np.abs(held.to_numpy() - 0.2).max() <= 0.5 / lengths.min() + 1 / lengths.min()
    assert abs(held[lengths >= 50].mean() - 0.2) < 0.01
    # exact integer arithmetic even for very long histories (no int64 overflow)
    big = relative_position_clock(np.array([0]), np.array([999_999]), np.array([1_000_000]))
    assert big[0] == T0 + pd.Timedelta(microseconds=(SPAN // pd.Timedelta(microseconds=1)) * 1_999_999 // 2_000_000)


def test_category_paths_forms(tmp_path):
    src = tmp_path / "x.item.json"
    assert category_paths("A,B ,C", source=src) == ["A", "A>B", "A>B>C"]
    assert category_paths("A,B, C", source=src) == ["A", "A>B, C"]  # ", " belongs to a level name
    assert category_paths(["A", "B"], source=src) == ["A", "A>B"]
    assert category_paths([["A", "B"], ["A", "C"]], source=src) == ["A", "A>B", "A>C"]
    assert category_paths("A,x>y", source=src) == ["A", "A>x/y"]  # '>' is reserved for the hierarchy
    assert category_paths(None, source=src) == [] and category_paths("", source=src) == []
    with pytest.raises(DataError, match="categories must be"):
        category_paths({"a": 1}, source=src)


def test_amazon_scientific(amazon_sci):
    ds = load_amazon_lcrec(amazon_sci)
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (8317, 4344, 58492)
    assert s["first_ts"] >= "2018-01-01" and s["last_ts"] < "2019-01-01"
    assert ds.interactions["event_ts"].is_unique
    ordered = ds.interactions.groupby("user_id", sort=False)["event_ts"].apply(lambda x: x.is_monotonic_increasing)
    assert ordered.all()
    assert (ds.items["categories"].map(len) == 0).sum() == 131
    assert ds.items["brand"].isna().sum() == 12
    glue = ds.items.set_index("item_id").loc[5]
    assert glue["categories"][-1] == (
        "Industrial & Scientific>Tapes, Adhesives & Sealants>Cyanoacrylate Adhesives"
    )
    top = ds.items["categories"].map(lambda c: c[1] if len(c) > 1 else None).value_counts()
    assert top["Industrial & Scientific>Industrial Electrical"] == 585


# ---------------------------------------------------------------- bad input
def _error(root: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(root)
    return info.value


def test_bad_json_names_line(tmp_path):
    text = json.dumps(ITEMS, indent=2).replace('"title": "CA glue",', '"title": "CA glue"')  # drop a comma
    root = write_lcrec(tmp_path / "a", items=text)
    err = _error(root)
    expected_line = text.splitlines().index('    "title": "CA glue"') + 2  # the error is at the next key
    assert err.path.endswith("Tiny.item.json") and err.line == expected_line and "invalid JSON" in err.problem


def test_duplicate_item_id(tmp_path):
    text = json.dumps(ITEMS, indent=2)
    text = text[: text.rindex("}")].rstrip() + ',\n  "1": {"title": "again", "description": "", "brand": "", "categories": ""}\n}'
    root = write_lcrec(tmp_path / "a", items=text)
    err = _error(root)
    assert err.path.endswith("Tiny.item.json") and "duplicate key '1'" in err.problem
    assert err.line == len(text.splitlines()) - 1


def test_unknown_item_in_history(tmp_path):
    inter = '{"0": [0, 1],\n "1": [1, 77],\n "2": [2]}'
    root = write_lcrec(tmp_path / "a", inter=inter)
    err = _error(root)
    assert err.path.endswith("Tiny.inter.json") and err.line == 2
    assert "user 1: item 77 is not in Tiny.item.json" in err.problem


def test_non_integer_ids_and_bad_values(tmp_path):
    err = _error(write_lcrec(tmp_path / "a", inter='{"0": [0],\n "u7": [1]}'))
    assert err.line == 2 and "user id 'u7' is not an integer" in err.problem
    err = _error(write_lcrec(tmp_path / "b", inter='{"0": [0],\n "1": [1, 2.5]}'))
    assert err.line == 2 and "item id 2.5 is not an integer" in err.problem
    err = _error(write_lcrec(tmp_path / "c", inter='{"0": 5}'))
    assert err.line == 1 and "expected a list of item ids" in err.problem
    items = dict(ITEMS, **{"2": {"title": "x", "description": "", "brand": "", "categories": 7}})
    err = _error(write_lcrec(tmp_path / "d", items=items))
    assert err.path.endswith("Tiny.item.json") and err.column == "categories" and "item 2" in err.problem
    assert err.line == json.dumps(items, indent=2).splitlines().index('  "2": {') + 1
    err = _error(write_lcrec(tmp_path / "e", inter="[[0, 1]]"))
    assert err.line == 1 and "expected a JSON object" in err.problem


def test_missing_item_file(tmp_path):
    root = write_lcrec(tmp_path / "a")
    (root / "Tiny.item.json").unlink()
    err = _error(root)
    assert err.path.endswith("Tiny.item.json") and err.problem == "missing file"
