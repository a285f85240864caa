"""bench/derive_dataset.py writes folders the loaders read, with the content it says it keeps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

from mfli.data.loaders import load_dataset

_SPEC = importlib.util.spec_from_file_location("derive_dataset", Path(__file__).parents[2] / "bench" / "derive_dataset.py")
derive = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(derive)


def _lcrec(path: Path) -> Path:
    path.mkdir()
    (path / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": [1, 2], "2": [2, 0, 1]}))
    items = {str(i): {"title": f"item {i}", "description": "words", "brand": "B", "categories": "A,B"} for i in range(3)}
    (path / "Toy.item.json").write_text(json.dumps(items))
    return path


def test_lcrec_strip_blanks_text_and_keeps_what_it_is_told(tmp_path):
    src = _lcrec(tmp_path / "src")
    for keep, cats in (("categories", ["A", "A>B"]), ("none", [])):
        out = tmp_path / keep
        derive.main(["lcrec-strip", str(src), str(out), "--keep", keep])
        ds, orig = load_dataset(out), load_dataset(src)
        assert (ds.items["title"] == "").all() and (ds.items["text"] == "").all() and ds.items["brand"].isna().all()
        assert all(list(c) == cats for c in ds.items["categories"])
        pd.testing.assert_frame_equal(ds.interactions, orig.interactions)


def test_movielens_latest_to_1m_layout(tmp_path):
    src = tmp_path / "latest"
    src.mkdir()
    pd.DataFrame({"userId": [1, 1, 2, 2], "movieId": [10, 20, 10, 30], "rating": [0.5, 2.5, 3.5, 5.0],
                  "timestamp": [100, 200, 150, 300]}).to_csv(src / "ratings.csv", index=False)
    pd.DataFrame({"movieId": [10, 20, 30], "title": ["A (1995)", "B (2001)", "Café (2010)"],
                  "genres": ["Comedy", "Drama|Comedy", "(no genres listed)"]}).to_csv(src / "movies.csv", index=False)
    out = tmp_path / "ml1m"
    derive.main(["movielens-1m", str(src), str(out)])
    assert (out / "ratings.dat").read_text().splitlines() == ["1::10::1::100", "1::20::2::200", "2::10::4::150", "2::30::5::300"]
    ds = load_dataset(out)
    assert ds.format == "movielens-1m"
    assert sorted(ds.items["title"]) == ["A (1995)", "B (2001)", "Café (2010)"]
    assert len(ds.interactions) == 4
