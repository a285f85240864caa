"""Derive a variant of a public dataset in another supported layout, to check that defaults hold on it.

    # LC-Rec catalogue with titles, descriptions and brands blanked (categories kept), or everything blanked
    .venv/bin/python bench/derive_dataset.py lcrec-strip ../shared/datasets/amazon-scientific OUT --keep categories
    .venv/bin/python bench/derive_dataset.py lcrec-strip ../shared/datasets/amazon-scientific OUT --keep none
    # MovieLens latest (ratings.csv, movies.csv) rewritten in the 1M layout (ratings.dat, movies.dat)
    .venv/bin/python bench/derive_dataset.py movielens-1m ../shared/datasets/ml-latest-small OUT

The first stands in for catalogues whose items carry only attributes (Last.fm-style tags as categories,
empty titles) or nothing but an id; the second for the 1M layout: integer ratings (rounded to the nearest,
halves to even as Python's ``round``, at least 1), "::" separators, no tags, so an item's text is its title alone. The interactions
are the source's, unchanged in order. The output is a folder ``mfli bench quality --data`` reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def lcrec_strip(src: Path, out: Path, keep: str) -> None:
    """Copy ``<Name>.inter.json`` and write ``<Name>.item.json`` with every text field empty."""
    inter = sorted(src.glob("*.inter.json"))
    if len(inter) != 1:
        raise SystemExit(f"{src}: expected one *.inter.json, found {len(inter)}")
    name = inter[0].name[: -len(".inter.json")]
    items = json.loads((src / f"{name}.item.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    (out / inter[0].name).write_bytes(inter[0].read_bytes())
    stripped = {k: {"title": "", "description": "", "brand": "",
                    "categories": v.get("categories", "") if keep == "categories" else ""}
                for k, v in items.items()}
    (out / f"{name}.item.json").write_text(json.dumps(stripped), encoding="utf-8")


def movielens_1m(src: Path, out: Path) -> None:
    """``ratings.csv`` / ``movies.csv`` -> ``ratings.dat`` / ``movies.dat`` (``::`` separated)."""
    ratings = pd.read_csv(src / "ratings.csv")
    movies = pd.read_csv(src / "movies.csv")
    out.mkdir(parents=True, exist_ok=True)
    stars = [max(1, round(x)) for x in ratings["rating"]]
    lines = (f"{u}::{i}::{s}::{t}\n" for u, i, s, t in zip(ratings["userId"], ratings["movieId"], stars,
                                                           ratings["timestamp"]))
    (out / "ratings.dat").write_text("".join(lines), encoding="utf-8")
    (out / "movies.dat").write_text("".join(f"{i}::{t}::{g}\n" for i, t, g in zip(
        movies["movieId"], movies["title"], movies["genres"])), encoding="latin-1", errors="replace")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("lcrec-strip")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--keep", choices=("categories", "none"), default="categories")
    m = sub.add_parser("movielens-1m")
    m.add_argument("src", type=Path)
    m.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.kind == "lcrec-strip":
        lcrec_strip(a.src, a.out, a.keep)
    else:
        movielens_1m(a.src, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
