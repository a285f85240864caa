"""Bad data at the command line: one clear line on stderr and exit 2, never a traceback; quality
findings are warnings unless --strict. Also ``mfli serve --limit`` refusing a bad limit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfli.cli import app

T = 881250949


def _ml_latest(root: Path, ratings: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(ratings) + "\n")
    (root / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Drama\n2,B (1996),Comedy\n")
    return root


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_data_check_reports_findings_and_strict_exits_2(tmp_path):
    root = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", f"1,1,4.0,{T}", f"2,2,-1,{T}"])
    res = _run("data", "check", str(root))
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "no duplicate events" in res.stderr and "weight in (0.0, 100.0]" in res.stderr
    out = json.loads(res.stdout)
    assert {f["rule"] for f in out["findings"]} == {"duplicate_event", "weight_range"}
    res = _run("data", "check", str(root), "--strict")
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.output
    assert ":interactions, line 1, column 'event_ts'" in res.stderr and "+1 more finding" in res.stderr


def test_data_convert_strict_writes_nothing(tmp_path):
    root = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", "2,2,3.0,-5"])
    res = _run("data", "convert", str(root), str(tmp_path / "out"), "--strict")
    assert res.exit_code == 2 and "is not before 1970" in res.stderr
    assert not (tmp_path / "out").exists()
    res = _run("data", "convert", str(root), str(tmp_path / "out"))
    assert res.exit_code == 0 and "warning:" in res.stderr and (tmp_path / "out" / "_dataset.json").is_file()


def test_out_of_range_timestamp_exits_2_naming_the_line(tmp_path):
    root = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", "1,2,3.0,99999999999"])
    res = _run("data", "stats", str(root))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "ratings.csv, line 3, column 'timestamp'" in res.stderr and "outside the supported range" in res.stderr


@pytest.mark.parametrize("case", ["out-of-range", "missing-folder", "corrupt-part", "strict-finding", "bad-config"])
def test_bench_quality_catches_data_errors(tmp_path, tiny_dataset, case):
    from mfli.data.parquet_format import write_dataset

    args = ["bench", "quality", "--methods", "pop", "--seeds", "1"]
    if case == "out-of-range":
        data = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", "1,2,3.0,99999999999"])
    elif case == "missing-folder":
        data = tmp_path / "nope"
    elif case == "corrupt-part":
        data = write_dataset(tiny_dataset, tmp_path / "d")
        part = data / "interactions" / "part-00000.parquet"
        raw = bytearray(part.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        part.write_bytes(bytes(raw))
    elif case == "strict-finding":
        data = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}", f"-1,2,3.0,{T}"])
        args.append("--strict")
    else:
        data = _ml_latest(tmp_path / "ml", [f"1,1,4.0,{T}"])
        (tmp_path / "cfg.json").write_text("{not json")
        args += ["--config", str(tmp_path / "cfg.json")]
    res = _run(*args, "--data", str(data))
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.output


def _flat(text: str) -> str:
    """typer's error box, as one line of words."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_serve_refuses_a_bad_limit(tmp_path):
    res = _run("serve", "--store", str(tmp_path / "store"), "--limit", "deadline_s=soon")
    assert res.exit_code == 2 and "deadline_s must be a number" in _flat(res.output)
    res = _run("serve", "--store", str(tmp_path / "store"), "--limit", "max_bodybytes=5")
    assert res.exit_code == 2 and "unknown service limit 'max_bodybytes'" in _flat(res.output)
