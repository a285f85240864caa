"""MovieLens loaders for the three public layouts, returning canonical tables.

- 100K: ``u.data`` (tab separated ``user item rating timestamp``), ``u.item`` (latin-1, ``|``
  separated: id, title, release date, video release date, IMDb URL, 19 genre flags; genre names from
  ``u.genre`` when present), optional ``u.user`` (``id|age|gender|occupation|zip``).
- 1M: ``ratings.dat``, ``movies.dat`` (latin-1 in 1M, UTF-8 in 10M: whichever decodes), ``|``-joined
  genres, optional ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``), all ``::`` separated. ML-10M has the same files
  (without ``users.dat``) and loads the same way.
- latest (ml-latest, ml-latest-small, ML-20M, ML-25M): ``ratings.csv``, ``movies.csv``, optional
  ``tags.csv``. There is no user file: users are the distinct rating user ids.

Canonical mapping: ``weight`` = rating; ``event_ts`` = the unix timestamp as UTC; item ``categories``
= genres (flat, no hierarchy; ``"(no genres listed)"`` and 100K's ``unknown`` flag -> ``[]``);
``title`` = title as published (with its year); ``text`` = title, plus for latest `` | `` and the
movie's distinct tags joined by ``", "`` in order of first use; ``brand`` = None. An item's
``created_at`` is its first rating time; items never rated get the dataset's last rating time (they
enter as the newest catalogue entries). 100K/1M users keep ``age``, ``gender``, ``occupation`` (1M
codes mapped to the README's names) and ``zip`` as feature columns.

Text is parsed with pandas' C reader; when it fails, or a number does not parse, the file is read
again as text to find the first offending line, so every :class:`DataError` names file and line.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mfli.data.dataset import Dataset
from mfli.data.errors import DataError
from mfli.data.loaders import created_at_from_events, dataset_name

#: u.item's 19 genre flag columns, in file order (used when u.genre is absent).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip

#: ML-1M occupation codes (its README), so 100K and 1M user features read alike.
ML1M_OCCUPATIONS = {
    0: "other", 1: "academic/educator", 2: "artist", 3: "clerical/admin", 4: "college/grad student",
    5: "customer service", 6: "doctor/health care", 7: "executive/managerial", 8: "farmer",
    9: "homemaker", 10: "K-12 student", 11: "lawyer", 12: "programmer", 13: "retired",
    14: "sales/marketing", 15: "scientist", 16: "self-employed", 17: "technician/engineer",
    18: "tradesman/craftsman", 19: "unemployed", 20: "writer",
}  # fmt: skip

NO_GENRES = "(no genres listed)"

# "::" is two characters, which pandas' fast C reader cannot split on; it is swapped for this byte.
_UNIT_SEP = "\x1f"


@dataclass(frozen=True)
class Col:
    """One expected column of a delimited text file and how to parse it."""

    name: str
    kind: Literal["int", "float", "str"]


_PANDAS_DTYPE = {"int": "int64", "float": "float64", "str": "object"}


def read_delimited(
    path: Path,
    cols: Sequence[Col],
    *,
    sep: str,
    header: bool,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    data: bytes | None = None,
) -> pd.DataFrame:
    """Parse a delimited text file into a frame with ``cols`` typed as asked.

    Args:
        path: the file (named in errors; read unless ``data`` is given).
        cols: expected columns. With ``header`` the header must contain them (extra columns are
            ignored); without, every line must have exactly ``len(cols)`` fields.
        sep: one-character field separator.
        data: the file's bytes, already transformed (e.g. ``::`` -> one byte), line for line.
    Returns:
        (n_rows, len(cols)) frame; str columns hold ``""`` for empty fields.
    Raises:
        DataError naming the file, the 1-based line and, where known, the column.
    """
    if data is None and not path.is_file():
        raise DataError(path, "missing file")
    names = [c.name for c in cols]

    def source() -> Path | io.BytesIO:
        return io.BytesIO(data) if data is not None else path

    if header:
        found = _header(path, source(), sep=sep, encoding=encoding, quoting=quoting)
        missing = [n for n in names if n not in found]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; header has {found}", line=1, column=missing[0])
        dup = sorted({h for h in found if found.count(h) > 1})
        if dup:
            raise DataError(path, f"duplicate column(s) {dup} in header", line=1, column=dup[0])
        # every header column is read (no usecols) so a line with extra fields is an error, not ignored;
        # names= carries the stripped header ("userId, movieId" still works)
        layout: dict = {"header": 0, "names": found, "index_col": False}
    else:
        layout = {"header": None, "names": names, "index_col": False}
    opts = dict(sep=sep, encoding=encoding, quoting=quoting, engine="c", **layout)
    numeric = [c for c in cols if c.kind != "str"]
    try:
        with warnings.catch_warnings():
            # pandas only *warns* (and drops fields) when the first data line is too long: make it an error
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                source(), dtype={c.name: _PANDAS_DTYPE[c.kind] for c in cols}, keep_default_na=False, na_values=[""], **opts
            )
    except pd.errors.ParserWarning:
        width = len(found) if header else len(cols)
        raise _too_many_fields(path, source(), width, header=header, sep=sep, encoding=encoding, quoting=quoting) from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from None
    except UnicodeDecodeError:
        raise _decode_error(path, data if data is not None else path.read_bytes(), encoding) from None
    except (ValueError, OverflowError):  # a value that does not parse as its column's type: find which line
        df = None
    if df is None or any(df[c.name].isna().any() for c in numeric):
        raise _first_bad_value(path, source(), cols, header=header, opts=opts)
    for c in cols:
        if c.kind == "str":
            df[c.name] = df[c.name].fillna("")
    return df[names]


def _header(path: Path, src: Path | io.BytesIO, *, sep: str, encoding: str, quoting: int) -> list[str]:
    with open(src, "rb") if isinstance(src, Path) else src as f:
        raw = f.readline()
    if not raw.strip():
        raise DataError(path, "file is empty" if not raw else "missing header line", line=1)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid {encoding} text: {exc.reason}", line=1) from None
    return [h.strip() for h in next(csv.reader([text.rstrip("\r\n")], delimiter=sep, quoting=quoting))]


def _too_many_fields(
    path: Path, src: Path | io.BytesIO, expected: int, *, header: bool, sep: str, encoding: str, quoting: int
) -> DataError:
    """Find the first line with more than ``expected`` fields (the case pandas only warns about)."""
    with open(src, "rb") if isinstance(src, Path) else src as f:
        reader = csv.reader(io.TextIOWrapper(f, encoding=encoding, newline=""), delimiter=sep, quoting=quoting)
        for i, row in enumerate(reader):
            if (header and i == 0) or not row:
                continue
            if len(row) > expected:
                return DataError(path, f"expected {expected} fields, found {len(row)}", line=reader.line_num)
    return DataError(path, f"a line has more than {expected} fields")


def _parser_error(path: Path, exc: Exception) -> DataError:
    msg = str(exc)
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
    if m:
        return DataError(path, f"expected {m[1]} fields, found {m[3]}", line=int(m[2]))
    m = re.search(r"(?:line|row) (\d+)", msg)
    return DataError(path, f"cannot parse: {msg.replace('Error tokenizing data. ', '')}", line=int(m[1]) if m else None)


def _decode_error(path: Path, raw: bytes, encoding: str) -> DataError:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return DataError(path, f"not valid {encoding} text (byte 0x{raw[exc.start]:02x})", line=line)
    return DataError(path, f"not valid {encoding} text")


def _first_bad_value(path: Path, src: Path | io.BytesIO, cols: Sequence[Col], *, header: bool, opts: dict) -> DataError:
    """Re-read every field as text and name the first line whose number does not parse."""
    try:
        df = pd.read_csv(src, dtype=str, na_filter=False, **opts)
    except pd.errors.ParserError as exc:
        return _parser_error(path, exc)
    best: tuple[int, str, str, str] | None = None  # (row, column, raw value, kind)
    for c in cols:
        if c.kind == "str":
            continue
        text = df[c.name]
        num = pd.to_numeric(text, errors="coerce")
        bad = num.isna().to_numpy() | ~np.isfinite(num.to_numpy(dtype="float64", na_value=np.nan))
        if c.kind == "int":
            as_float = num.to_numpy(dtype="float64", na_value=np.nan)
            with np.errstate(invalid="ignore"):
                bad |= (np.mod(as_float, 1) != 0) | (np.abs(as_float) >= 2.0**63)
        rows = np.flatnonzero(bad)
        if len(rows) and (best is None or rows[0] < best[0]):
            best = (int(rows[0]), c.name, str(text.iloc[rows[0]]), c.kind)
    if best is None:
        return DataError(path, "cannot parse file")
    row, column, value, kind = best
    if value == "":
        problem = "missing value (empty field or too few fields)"
    else:
        problem = f"cannot parse {value!r} as {'an integer' if kind == 'int' else 'a number'}"
    return DataError(path, problem, line=line_of_row(src, row, header=header), column=column)


def line_of_row(src: Path | io.BytesIO | bytes, row: int, *, header: bool) -> int:
    """1-based physical line of 0-based data ``row`` (pandas skips blank lines, so count them back)."""
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    if isinstance(src, io.BytesIO):
        src.seek(0)
    seen, lineno = -1, 0
    with open(src, "rb") if isinstance(src, Path) else src as f:
        for lineno, raw in enumerate(f, start=1):
            if header and lineno == 1:
                continue
            if raw.strip(b"\r\n"):
                seen += 1
                if seen == row:
                    return lineno
    return lineno + 1 if seen >= 0 else 1


def _row_error(path: Path, src: Path | bytes, row: int, problem: str, *, header: bool, column: str) -> DataError:
    return DataError(path, problem, line=line_of_row(src, row, header=header), column=column)


def _check_unique(df: pd.DataFrame, column: str, path: Path, src: Path | bytes, *, header: bool, what: str) -> None:
    dup = df[column].duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        value = df[column].iloc[row]
        raise _row_error(path, src, row, f"duplicate {what} id {value}", header=header, column=column)


def _check_known(
    df: pd.DataFrame, column: str, known: pd.Series, path: Path, src: Path | bytes, *, header: bool, where: str
) -> None:
    unknown = ~df[column].isin(known).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        value = df[column].iloc[row]
        raise _row_error(path, src, row, f"{column} {value} is not in {where}", header=header, column=column)


#: Unix seconds a datetime64[ns] can hold (1677-09-21 .. 2262-04-11); outside it pandas raises OutOfBoundsDatetime.
_TS_SECONDS = (-(2**63) // 10**9 + 1, (2**63 - 1) // 10**9)


def _interactions(ratings: pd.DataFrame, user: str, item: str, rating: str, ts: str, *, path: Path,
                  src: Path | bytes, header: bool) -> pd.DataFrame:
    seconds = ratings[ts].astype("int64")
    out = (seconds < _TS_SECONDS[0]) | (seconds > _TS_SECONDS[1])
    if out.any():  # a clear error naming the line, not pandas' OutOfBoundsDatetime traceback
        row = int(np.flatnonzero(out.to_numpy())[0])
        raise _row_error(path, src, row, f"timestamp {int(seconds.iloc[row])} is outside the supported range "
                         "(unix seconds for 1677-09-22 .. 2262-04-11)", header=header, column=ts)
    return pd.DataFrame(
        {
            "user_id": ratings[user].astype("int64"),
            "item_id": ratings[item].astype("int64"),
            "event_ts": pd.to_datetime(seconds, unit="s", utc=True),
            "weight": ratings[rating].astype("float32"),
        }
    )


def _genres(joined: pd.Series) -> list[list[str]]:
    return [[g for g in s.split("|") if g and g != NO_GENRES] for s in joined]


def _items(item_ids: pd.Series, titles: pd.Series, categories: list[list[str]], text: pd.Series | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": item_ids.astype("int64").to_numpy(),
            "categories": categories,
            "title": titles.to_numpy(dtype=object),
            "text": (titles if text is None else text).to_numpy(dtype=object),
            "brand": None,
        }
    )


def _finish(path: Path, fmt: str, ratings_file: Path, inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> Dataset:
    items.insert(1, "created_at", created_at_from_events(items["item_id"], inter, ratings_file))
    meta = {
        "source": str(path),
        "created_at_rule": "first event time; never-rated items get the dataset's last event time",
    }
    return Dataset(dataset_name(path), fmt, inter, items, users, meta).conformed()


def load_movielens_latest(path: str | Path) -> Dataset:
    """Load the latest/20M/25M layout (``ratings.csv``, ``movies.csv``, optional ``tags.csv``)."""
    path = Path(path)
    ratings_file, movies_file, tags_file = path / "ratings.csv", path / "movies.csv", path / "tags.csv"
    ratings = read_delimited(
        ratings_file, [Col("userId", "int"), Col("movieId", "int"), Col("rating", "float"), Col("timestamp", "int")],
        sep=",", header=True,
    )  # fmt: skip
    movies = read_delimited(movies_file, [Col("movieId", "int"), Col("title", "str"), Col("genres", "str")], sep=",", header=True)
    _check_unique(movies, "movieId", movies_file, movies_file, header=True, what="movie")
    _check_known(ratings, "movieId", movies["movieId"], ratings_file, ratings_file, header=True, where=movies_file.name)
    text = movies["title"]
    if tags_file.exists():
        tags = read_delimited(
            tags_file, [Col("userId", "int"), Col("movieId", "int"), Col("tag", "str"), Col("timestamp", "int")],
            sep=",", header=True,
        )  # fmt: skip
        _check_known(tags, "movieId", movies["movieId"], tags_file, tags_file, header=True, where=movies_file.name)
        text = _title_and_tags(movies, tags)
    inter = _interactions(ratings, "userId", "movieId", "rating", "timestamp", path=ratings_file, src=ratings_file,
                          header=True)
    items = _items(movies["movieId"], movies["title"], _genres(movies["genres"]), text)
    users = pd.DataFrame({"user_id": np.sort(inter["user_id"].unique())})
    return _finish(path, "movielens-latest", ratings_file, inter, items, users)


def _title_and_tags(movies: pd.DataFrame, tags: pd.DataFrame) -> pd.Series:
    """``"Title | tag1, tag2"``: each movie's distinct tags (case-insensitive) in order of first use."""
    t = tags.assign(tag=tags["tag"].str.strip())
    t = t[t["tag"] != ""].sort_values(["movieId", "timestamp"], kind="stable")
    t = t[~t.assign(key=t["tag"].str.lower()).duplicated(["movieId", "key"])]
    joined = t.groupby("movieId", sort=False)["tag"].agg(", ".join)
    tag_text = movies["movieId"].map(joined)
    return movies["title"].where(tag_text.isna(), movies["title"] + " | " + tag_text.fillna(""))


def load_movielens_1m(path: str | Path) -> Dataset:
    """Load the 1M layout (``ratings.dat``, ``movies.dat``, optional ``users.dat``; ``::`` separated)."""
    path = Path(path)
    ratings_file, movies_file, users_file = path / "ratings.dat", path / "movies.dat", path / "users.dat"
    ratings_raw = _double_colon(ratings_file)
    ratings = read_delimited(
        ratings_file, [Col("UserID", "int"), Col("MovieID", "int"), Col("Rating", "float"), Col("Timestamp", "int")],
        sep=_UNIT_SEP, header=False, quoting=csv.QUOTE_NONE, data=ratings_raw,
    )  # fmt: skip
    movies_raw = _double_colon(movies_file)
    movies = read_delimited(
        movies_file, [Col("MovieID", "int"), Col("Title", "str"), Col("Genres", "str")],
        sep=_UNIT_SEP, header=False, encoding=_text_encoding(movies_raw), quoting=csv.QUOTE_NONE, data=movies_raw,
    )  # fmt: skip
    _check_unique(movies, "MovieID", movies_file, movies_raw, header=False, what="movie")
    _check_known(ratings, "MovieID", movies["MovieID"], ratings_file, ratings_raw, header=False, where=movies_file.name)
    if users_file.exists():
        users_raw = _double_colon(users_file)
        u = read_delimited(
            users_file,
            [Col("UserID", "int"), Col("Gender", "str"), Col("Age", "int"), Col("Occupation", "int"), Col("Zip-code", "str")],
            sep=_UNIT_SEP, header=False, quoting=csv.QUOTE_NONE, data=users_raw,
        )  # fmt: skip
        _check_unique(u, "UserID", users_file, users_raw, header=False, what="user")
        _check_known(ratings, "UserID", u["UserID"], ratings_file, ratings_raw, header=False, where=users_file.name)
        occupation = u["Occupation"].map(ML1M_OCCUPATIONS).fillna(u["Occupation"].astype(str))
        users = pd.DataFrame(
            {"user_id": u["UserID"], "age": u["Age"], "gender": u["Gender"], "occupation": occupation, "zip": u["Zip-code"]}
        )
    else:
        users = pd.DataFrame({"user_id": np.sort(ratings["UserID"].unique())})
    inter = _interactions(ratings, "UserID", "MovieID", "Rating", "Timestamp", path=ratings_file, src=ratings_raw,
                          header=False)
    items = _items(movies["MovieID"], movies["Title"], _genres(movies["Genres"]))
    return _finish(path, "movielens-1m", ratings_file, inter, items, users)


def _text_encoding(raw: bytes) -> str:
    """UTF-8 when the bytes decode as UTF-8, else latin-1 (ML-100K/1M files predate UTF-8 releases)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _double_colon(path: Path) -> bytes:
    """The file's bytes with ``::`` replaced by one separator byte (lines unchanged, for line numbers)."""
    if not path.is_file():
        raise DataError(path, "missing file")
    raw = path.read_bytes()
    sep = _UNIT_SEP.encode()
    if sep in raw:
        line = raw.count(b"\n", 0, raw.index(sep)) + 1
        raise DataError(path, "unexpected control byte 0x1f", line=line)
    return raw.replace(b"::", sep)


def load_movielens_100k(path: str | Path) -> Dataset:
    """Load the 100K layout (``u.data``, ``u.item``, optional ``u.user`` and ``u.genre``)."""
    path = Path(path)
    data_file, item_file, user_file = path / "u.data", path / "u.item", path / "u.user"
    ratings = read_delimited(
        data_file, [Col("user_id", "int"), Col("item_id", "int"), Col("rating", "float"), Col("timestamp", "int")],
        sep="\t", header=False, quoting=csv.QUOTE_NONE,
    )  # fmt: skip
    genres = _ml100k_genres(path / "u.genre")
    # flag columns are named after their genre so errors read "column 'Comedy'"
    flags = genres if len(set(genres)) == len(genres) else [f"genre{i}" for i in range(len(genres))]
    item_cols = [Col("movie_id", "int"), Col("movie_title", "str"), Col("release_date", "str"), Col("video_release_date", "str"),
        Col("IMDb_URL", "str")]
    movies = read_delimited(
        item_file, item_cols + [Col(f, "int") for f in flags],
        sep="|", header=False, encoding="latin-1", quoting=csv.QUOTE_NONE,
    )  # fmt: skip
    _check_unique(movies, "movie_id", item_file, item_file, header=False, what="movie")
    _check_known(ratings, "item_id", movies["movie_id"], data_file, data_file, header=False, where=item_file.name)
    on = movies[flags].to_numpy() == 1
    named = np.array([g != "unknown" for g in genres])
    categories = [[genres[j] for j in np.flatnonzero(row & named)] for row in on]
    if user_file.exists():
        u = read_delimited(
            user_file,
            [Col("user_id", "int"), Col("age", "int"), Col("gender", "str"), Col("occupation", "str"), Col("zip_code", "str")],
            sep="|", header=False, encoding="latin-1", quoting=csv.QUOTE_NONE,
        )  # fmt: skip
        _check_unique(u, "user_id", user_file, user_file, header=False, what="user")
        _check_known(ratings, "user_id", u["user_id"], data_file, data_file, header=False, where=user_file.name)
        users = u.rename(columns={"zip_code": "zip"})
    else:
        users = pd.DataFrame({"user_id": np.sort(ratings["user_id"].unique())})
    inter = _interactions(ratings, "user_id", "item_id", "rating", "timestamp", path=data_file, src=data_file,
                          header=False)
    items = _items(movies["movie_id"], movies["movie_title"], categories)
    return _finish(path, "movielens-100k", data_file, inter, items, users)


def _ml100k_genres(genre_file: Path) -> list[str]:
    """Genre names by flag position: from ``u.genre`` (``name|index``) when present, else the published list."""
    if not genre_file.exists():
        return list(ML100K_GENRES)
    g = read_delimited(
        genre_file, [Col("name", "str"), Col("index", "int")], sep="|", header=False, encoding="latin-1",
        quoting=csv.QUOTE_NONE,
    )  # fmt: skip
    if sorted(g["index"].tolist()) != list(range(len(g))):
        raise DataError(genre_file, f"genre indices must be 0..{len(g) - 1}, got {sorted(g['index'].tolist())}")
    return g.sort_values("index")["name"].tolist()
