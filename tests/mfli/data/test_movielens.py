"""MovieLens loaders on small fixture folders written here (100K, 1M, latest) and on ml-latest-small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfli.data.errors import DataError
from mfli.data.loaders import detect_format, load_dataset
from mfli.data.movielens import ML100K_GENRES

T = 881250949  # a unix time in 1997, as in ML-100K


# ---------------------------------------------------------------- fixture writers
def write_ml100k(root: Path, *, with_genre_file: bool = True) -> Path:
    """u.data / u.item / u.user / u.genre in the published 100K format (tab and | separated, latin-1)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text(
        f"1\t10\t4\t{T + 30}\n1\t20\t3\t{T + 10}\n2\t10\t5\t{T}\n3\t30\t2\t{T + 50}\n2\t30\t1\t{T + 20}\n"
    )

    def flags(*names: str) -> str:
        return "|".join("1" if g in names else "0" for g in ML100K_GENRES)

    url = "http://us.imdb.com/M/title-exact?x"
    toy = flags("Animation", "Children's", "Comedy")
    lines = [
        f"10|Toy Story (1995)|01-Jan-1995||{url}|{toy}",
        f"20|Misérables, Les (1995)|01-Jan-1995||{url}|{flags('Drama', 'War')}",
        f"30|unknown|||{url}|{flags('unknown')}",
        f"40|Never Rated (1996)|01-Jan-1996||{url}|{flags('Action')}",
    ]
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n")
    if with_genre_file:
        (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    return root


def write_ml1m(root: Path) -> Path:
    """ratings.dat / movies.dat / users.dat in the published 1M format (:: separated, latin-1 titles)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.dat").write_text(
        f"1::1193::5::{T + 100}\n1::661::3::{T + 5}\n2::1193::4::{T + 7}\n6::2::1::{T + 400}\n"
    )
    movies = "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n2::Jumanji (1995)::Adventure|Children's|Fantasy\n3::Misérables, Les (1995)::Drama|Musical\n"
    (root / "movies.dat").write_bytes(movies.encode("latin-1"))
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n6::F::50::9::55117\n")
    return root


def write_ml_latest(root: Path, *, n_ratings: int = 80, with_tags: bool = True) -> Path:
    """ratings.csv / movies.csv / tags.csv as in ml-latest(-small); ratings has ``n_ratings`` data lines."""
    root.mkdir(parents=True, exist_ok=True)
    movie_ids = [1, 2, 3, 5, 7]
    rows = ["userId,movieId,rating,timestamp"]
    for i in range(n_ratings):  # data line i is file line i + 2
        rows.append(f"{1 + i % 7},{movie_ids[i % 4]},{0.5 + (i % 10) / 2},{T + 1000 * i}")
    (root / "ratings.csv").write_text("\n".join(rows) + "\n")
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Café (2010),(no genres listed)\n"
        "5,Heat (1995),Action|Crime|Thriller\n"
        "7,Never Rated (2018),Drama\n"
    )
    if with_tags:
        (root / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n"
            f"2,1,pixar,{T + 5}\n"
            f"3,1,fun,{T + 9}\n"
            f"4,1,Pixar,{T + 11}\n"
            f"2,5,\"heist, crime\",{T + 3}\n"
        )
    return root


# ---------------------------------------------------------------- 100K
def test_ml100k_layout(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k")
    assert detect_format(root) == "movielens-100k"
    ds = load_dataset(root)
    assert ds.format == "movielens-100k" and ds.name == "ml-100k"
    assert ds.stats()["interactions"] == 5 and ds.stats()["items"] == 3 and ds.stats()["users"] == 3
    inter = ds.interactions
    assert inter["weight"].tolist() == [4.0, 3.0, 5.0, 2.0, 1.0]
    assert inter["event_ts"].iloc[2] == pd.Timestamp(T, unit="s", tz="UTC")
    items = ds.items.set_index("item_id")
    assert items.loc[10, "categories"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[20, "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items.loc[30, "categories"] == []  # the 'unknown' flag is no genre
    assert items.loc[10, "text"] == "Toy Story (1995)" and items["brand"].isna().all()
    # created_at = first rating; item 40 was never rated -> last event time of the dataset
    assert items.loc[10, "created_at"] == pd.Timestamp(T, unit="s", tz="UTC")
    assert items.loc[30, "created_at"] == pd.Timestamp(T + 20, unit="s", tz="UTC")
    assert items.loc[40, "created_at"] == pd.Timestamp(T + 50, unit="s", tz="UTC")
    users = ds.users.set_index("user_id")
    assert list(users.columns) == ["age", "gender", "occupation", "zip"]
    assert users.loc[2].tolist() == [53, "F", "other", "94043"]


def test_ml100k_without_genre_and_user_files(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k", with_genre_file=False)
    (root / "u.user").unlink()
    ds = load_dataset(root)
    assert ds.users["user_id"].tolist() == [1, 2, 3] and list(ds.users.columns) == ["user_id"]
    assert ds.items.set_index("item_id").loc[20, "categories"] == ["Drama", "War"]


# ---------------------------------------------------------------- 1M
def test_ml1m_layout(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m")
    assert detect_format(root) == "movielens-1m"
    ds = load_dataset(root)
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (3, 3, 4)
    assert s["first_ts"] == pd.Timestamp(T + 5, unit="s", tz="UTC").isoformat()
    items = ds.items.set_index("item_id")
    assert items.loc[661, "categories"] == ["Animation", "Children's", "Musical"]
    assert items.loc[3, "title"] == "Misérables, Les (1995)"
    assert items.loc[1193, "created_at"] == pd.Timestamp(T + 7, unit="s", tz="UTC")
    assert items.loc[3, "created_at"] == pd.Timestamp(T + 400, unit="s", tz="UTC")  # never rated
    users = ds.users.set_index("user_id")
    assert users.loc[1].tolist() == [1, "F", "K-12 student", "48067"]
    assert users.loc[2, "occupation"] == "self-employed"
    assert ds.interactions["weight"].dtype == np.float32


# ---------------------------------------------------------------- latest
def test_ml_latest_layout(tmp_path):
    root = write_ml_latest(tmp_path / "ml-latest", n_ratings=12)
    assert detect_format(root) == "movielens-latest"
    ds = load_dataset(root)
    assert ds.stats()["interactions"] == 12 and ds.stats()["items"] == 4 and ds.stats()["users"] == 7
    items = ds.items.set_index("item_id")
    assert items.loc[2, "title"] == "American President, The (1995)"
    assert items.loc[3, "categories"] == [] and items.loc[3, "title"] == "Café (2010)"
    # tags: distinct case-insensitively, in order of first use
    assert items.loc[1, "text"] == "Toy Story (1995) | pixar, fun"
    assert items.loc[5, "text"] == "Heat (1995) | heist, crime"
    assert items.loc[2, "text"] == "American President, The (1995)"
    assert items.loc[7, "created_at"] == ds.interactions["event_ts"].max()
    assert ds.users["user_id"].tolist() == list(range(1, 8))
    assert ds.interactions["weight"].tolist()[:3] == [0.5, 1.0, 1.5]


def test_ml_latest_small(ml_small):
    ds = load_dataset(ml_small)
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (610, 9724, 100836)
    assert s["first_ts"] == "1996-03-29T18:36:55+00:00" and s["last_ts"] == "2018-09-24T14:27:30+00:00"
    assert len(ds.items) == 9742 and ds.items["item_id"].is_unique
    assert (ds.items["categories"].map(len) == 0).sum() == 34  # '(no genres listed)'
    never = ~ds.items["item_id"].isin(ds.interactions["item_id"])
    assert never.sum() == 18 and (ds.items.loc[never, "created_at"] == ds.interactions["event_ts"].max()).all()
    toy = ds.items.set_index("item_id").loc[1]
    assert toy["categories"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy["text"].startswith("Toy Story (1995) | pixar, ")
    assert sorted(set(ds.interactions["weight"].tolist())) == [x / 2 for x in range(1, 11)]


# ---------------------------------------------------------------- bad input
def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _error(root: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(root)
    return info.value


@pytest.mark.parametrize(
    "line_text, expect_line, expect_col, expect_problem",
    [
        (f"3,5,abc,{T}", 57, "rating", "cannot parse 'abc' as a number"),
        (f"3,5,,{T}", 57, "rating", "missing value"),
        ("3,5,4.0", 57, "timestamp", "missing value"),
        (f"3.5,5,4.0,{T}", 57, "userId", "cannot parse '3.5' as an integer"),
        (f"99999999999999999999,5,4.0,{T}", 57, "userId", "cannot parse '99999999999999999999' as an integer"),
        (f"3,5,4.0,{T},extra", 57, None, "expected 4 fields, found 5"),
    ],
)
def test_latest_unparseable_line(tmp_path, line_text, expect_line, expect_col, expect_problem):
    root = write_ml_latest(tmp_path / "ml")
    _replace_line(root / "ratings.csv", 57, line_text)
    err = _error(root)
    assert err.path.endswith("ratings.csv") and err.line == expect_line and err.column == expect_col
    assert expect_problem in err.problem
    assert "ratings.csv, line 57" in str(err)


def test_latest_line_numbers_count_blank_lines(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    lines = (root / "ratings.csv").read_text().splitlines()
    lines[10:10] = ["", ""]  # two blank lines: pandas skips them, the message must not
    lines[40] = f"1,1,oops,{T}"
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    err = _error(root)
    assert err.line == 41 and err.column == "rating"


def test_latest_wrong_header(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    _replace_line(root / "ratings.csv", 1, "userId,movieId,score,timestamp")
    err = _error(root)
    assert err.path.endswith("ratings.csv") and err.line == 1 and err.column == "rating"
    assert "missing column(s) ['rating']" in err.problem and "score" in err.problem


def test_latest_missing_movies_file(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    (root / "movies.csv").unlink()
    err = _error(root)
    assert err.path.endswith("movies.csv") and err.problem == "missing file"


def test_latest_duplicate_movie_id(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    with open(root / "movies.csv", "a") as f:
        f.write("3,Another Film (2001),Drama\n")
    err = _error(root)
    assert err.path.endswith("movies.csv") and err.line == 7 and err.column == "movieId"
    assert "duplicate movie id 3" in err.problem


def test_latest_rating_of_unknown_movie(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    _replace_line(root / "ratings.csv", 30, f"4,999,3.0,{T}")
    err = _error(root)
    assert err.path.endswith("ratings.csv") and err.line == 30 and err.column == "movieId"
    assert "movieId 999 is not in movies.csv" in err.problem


def test_latest_tag_of_unknown_movie(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    with open(root / "tags.csv", "a") as f:
        f.write(f"2,12345,orphan,{T}\n")
    err = _error(root)
    assert err.path.endswith("tags.csv") and err.line == 6 and "movieId 12345 is not in movies.csv" in err.problem


def test_latest_invalid_utf8(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    raw = (root / "movies.csv").read_bytes().replace("Café".encode(), b"Caf\xe9")
    (root / "movies.csv").write_bytes(raw)
    err = _error(root)
    assert err.path.endswith("movies.csv") and err.line == 4 and "not valid utf-8" in err.problem


def test_latest_empty_ratings(tmp_path):
    root = write_ml_latest(tmp_path / "ml")
    (root / "ratings.csv").write_text("")
    err = _error(root)
    assert err.path.endswith("ratings.csv") and "empty" in err.problem


def test_100k_bad_rating_line(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k")
    _replace_line(root / "u.data", 3, f"2\t10\tfive\t{T}")
    err = _error(root)
    assert err.path.endswith("u.data") and err.line == 3 and err.column == "rating"


def test_100k_item_line_with_missing_field(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k")
    lines = (root / "u.item").read_bytes().decode("latin-1").splitlines()
    lines[1] = lines[1].rsplit("|", 1)[0] + "|0|0"  # 25 fields instead of 24
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    err = _error(root)
    assert err.path.endswith("u.item") and err.line == 2 and "expected 24 fields, found 25" in err.problem


def test_100k_duplicate_item_and_unknown_user(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k")
    with open(root / "u.item", "ab") as f:
        f.write(b"20|Again|||x|" + b"|".join([b"0"] * 19) + b"\n")
    err = _error(root)
    assert err.path.endswith("u.item") and err.line == 5 and "duplicate movie id 20" in err.problem

    root = write_ml100k(tmp_path / "ml-100k-b")
    with open(root / "u.data", "a") as f:
        f.write(f"9\t10\t3\t{T}\n")
    err = _error(root)
    assert err.path.endswith("u.data") and err.line == 6 and "user_id 9 is not in u.user" in err.problem


def test_1m_bad_lines(tmp_path):
    root = write_ml1m(tmp_path / "a")
    _replace_line(root / "ratings.dat", 2, f"1::661:3::{T}")  # a single ':' -> 3 fields
    err = _error(root)
    assert err.path.endswith("ratings.dat") and err.line == 2 and err.column == "MovieID"
    assert "cannot parse '661:3' as an integer" in err.problem

    root = write_ml1m(tmp_path / "b")
    with open(root / "ratings.dat", "a") as f:
        f.write(f"2::4242::3::{T}\n")
    err = _error(root)
    assert err.path.endswith("ratings.dat") and err.line == 5 and "MovieID 4242 is not in movies.dat" in err.problem

    root = write_ml1m(tmp_path / "c")
    with open(root / "users.dat", "a") as f:
        f.write("2::F::18::3::11111\n")
    err = _error(root)
    assert err.path.endswith("users.dat") and err.line == 4 and "duplicate user id 2" in err.problem


@pytest.mark.parametrize("lineno", [2, 3])
def test_latest_extra_field_on_first_or_later_line(tmp_path, lineno):
    # pandas drops the extra field of the *first* data line with only a warning: must still be an error
    root = write_ml_latest(tmp_path / "ml")
    _replace_line(root / "ratings.csv", lineno, f"1,1,4.0,{T},surplus")
    err = _error(root)
    assert err.path.endswith("ratings.csv") and err.line == lineno and "expected 4 fields, found 5" in err.problem


def test_100k_extra_field_on_first_line(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k")
    _replace_line(root / "u.data", 1, f"1\t10\t4\t{T}\t7")
    err = _error(root)
    assert err.path.endswith("u.data") and err.line == 1 and "expected 4 fields, found 5" in err.problem


def test_1m_layout_with_utf8_titles(tmp_path):
    # ML-10M ships the same files UTF-8 encoded: titles must not come out as mojibake
    root = write_ml1m(tmp_path / "ml-10m")
    (root / "movies.dat").write_text(
        "1193::Cuckoo (1975)::Drama\n661::Peach (1996)::Animation\n2::Jumanji (1995)::Adventure\n3::Misérables, Les (1995)::(no genres listed)\n",
        encoding="utf-8",
    )
    (root / "users.dat").unlink()
    ds = load_dataset(root)
    items = ds.items.set_index("item_id")
    assert items.loc[3, "title"] == "Misérables, Les (1995)" and items.loc[3, "categories"] == []
    assert ds.users["user_id"].tolist() == [1, 2, 6]


def test_latest_header_with_spaces_and_duplicates(tmp_path):
    root = write_ml_latest(tmp_path / "ml", n_ratings=12)
    _replace_line(root / "ratings.csv", 1, "userId, movieId, rating, timestamp")
    assert load_dataset(root).stats()["interactions"] == 12
    _replace_line(root / "ratings.csv", 1, "userId,movieId,rating,timestamp,rating")
    err = _error(root)
    assert err.line == 1 and "duplicate column(s) ['rating']" in err.problem
