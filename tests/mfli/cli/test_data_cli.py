"""`mfli data ...` commands through typer's CliRunner: exact stats JSON, exit code 2 on bad data."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from mfli.cli.data import app

runner = CliRunner()


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object on stdout (progress bars go to stderr)


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not available")


def test_registered_under_root_app():
    from mfli.cli import app as root

    result = runner.invoke(root, ["data", "--help"])
    assert result.exit_code == 0 and "stats" in result.stdout and "generate" in result.stdout


def test_stats_ml_latest_small(ml_small):
    assert _json(runner.invoke(app, ["stats", str(ml_small)])) == {
        "format": "movielens-latest", "users": 610, "items": 9724, "interactions": 100836,
        "first_ts": "1996-03-29T18:36:55+00:00", "last_ts": "2018-09-24T14:27:30+00:00",
    }  # fmt: skip


def test_stats_amazon_scientific(amazon_sci):
    s = _json(runner.invoke(app, ["stats", str(amazon_sci)]))
    assert (s["format"], s["users"], s["items"], s["interactions"]) == ("amazon-lcrec", 8317, 4344, 58492)
    assert s["first_ts"] == "2018-01-03T08:09:13.846720+00:00" and s["last_ts"] == "2018-12-29T15:50:46.154413+00:00"


def test_convert_then_stats_streams_parquet(tiny_dataset, tmp_path):
    from mfli.data.parquet_format import write_dataset

    src = write_dataset(tiny_dataset, tmp_path / "src")
    out = _json(runner.invoke(app, ["convert", str(src), str(tmp_path / "copy")]))
    assert out["out_dir"] == str(tmp_path / "copy") and out["interactions"] == 320
    result = runner.invoke(app, ["stats", str(tmp_path / "copy")])
    assert _json(result) == {**tiny_dataset.stats(), "format": "mfli-parquet"}
    assert "rows" in result.stderr  # tqdm bar on stderr


def test_bad_input_exits_2_with_one_message(tmp_path):
    root = tmp_path / "ml"
    root.mkdir()
    (root / "movies.csv").write_text("movieId,title,genres\n1,A (1999),Drama\n")
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,1,four,11\n")
    result = runner.invoke(app, ["stats", str(root)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {root / 'ratings.csv'}, line 3, column 'rating': cannot parse 'four' as a number"
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["stats", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "no such dataset folder" in result.stderr

    result = runner.invoke(app, ["stats", str(tmp_path)])  # a folder with only a subfolder in it
    assert result.exit_code == 2 and "unrecognised dataset folder" in result.stderr


def test_generate_then_stats(tmp_path):
    _needs("mfli.data.synthetic")
    out = tmp_path / "synth"
    args = ["generate", str(out), "--items", "300", "--users", "60", "--interactions", "3000", "--seed", "3", "--no-progress"]
    first = _json(runner.invoke(app, args))
    assert first["format"] == "mfli-parquet" and first["users"] == 60
    assert 0 < first["items"] <= 300 and 0 < first["interactions"] <= 3000
    again = _json(runner.invoke(app, ["stats", str(out), "--no-progress"]))
    assert again == {k: v for k, v in first.items() if k != "out_dir"}
    # same seed -> same dataset
    second = _json(runner.invoke(app, args[:1] + [str(tmp_path / "synth2")] + args[2:]))
    assert {k: v for k, v in second.items() if k != "out_dir"} == again


@pytest.mark.parametrize("kind", ["time", "last", "cold"])
def test_split_sizes(tiny_dataset, tmp_path, kind):
    _needs("mfli.data.split")
    from mfli.data.parquet_format import write_dataset

    src = write_dataset(tiny_dataset, tmp_path / "tiny")
    s = _json(runner.invoke(app, ["split", str(src), "--kind", kind, "--seed", "1"]))
    assert s["kind"] == kind and s["test"] > 0 and s["train"] > 0
    if kind == "last":
        assert s["test"] == 40 and s["train"] == 320 - 40  # one held-out event per user
    if kind == "cold":
        assert s["cold_items"] > 0
    if kind == "time":
        assert s["cutoff"] is not None
    else:
        assert s["train"] + s["test"] <= 320


def test_split_rejects_unknown_kind(tiny_dataset, tmp_path):
    result = runner.invoke(app, ["split", str(tmp_path), "--kind", "random"])
    assert result.exit_code == 2 and "random" in result.stderr
