"""``mfli data``: inspect, convert, generate and split datasets.

    mfli data stats ../shared/datasets/ml-latest-small
    mfli data convert ../shared/datasets/amazon-scientific data/amazon-scientific
    mfli data generate data/synth --items 100000 --users 20000 --interactions 1000000 --seed 0
    mfli data split ../shared/datasets/ml-latest-small --kind time
    mfli data check ../shared/datasets/ml-latest-small --strict

Every command prints one JSON object on stdout. Bad input prints the error (file, line, problem) on
stderr and exits with code 2. Data-quality findings (duplicate events, negative ids or weights,
timestamps before 1970; rules in mfli/data/quality.py) are warnings on stderr; ``--strict`` makes
them errors (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Datasets: stats, convert, generate, split.")

#: Exit code for bad input data (typer/click use 2 for bad command-line usage too: both mean "fix the input").
EXIT_BAD_DATA = 2


class SplitKind(str, Enum):
    time = "time"
    last = "last"
    cold = "cold"


@contextmanager
def _data_errors() -> Iterator[None]:
    """Turn a DataError into one line on stderr and exit code 2 (no traceback)."""
    from mfli.data.errors import DataError  # here, not at the top: mfli.data pulls in pandas

    try:
        yield
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None


_STRICT = typer.Option("--strict/--no-strict", help="Data-quality findings are errors (exit 2), not warnings.")


def _load(path: Path, strict: bool):
    """load_dataset + its quality findings as warnings on stderr (or the first as an error with strict)."""
    from mfli.data.loaders import load_dataset

    ds = load_dataset(path, strict=strict)
    for f in ds.meta.get("quality", []):
        typer.echo(f"warning: {path}: {f['table']}: {f['count']} row(s) break '{f['why']}' "
                   f"(first: row {f['first_row']}, {f['example']})", err=True)
    return ds


def _print(obj: dict) -> None:
    typer.echo(json.dumps(obj))


@app.command()
def stats(
    path: Annotated[Path, typer.Argument(help="Dataset folder (MovieLens 100K/1M/latest, Amazon LC-Rec, mfli-parquet).")],
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr (mfli-parquet).")] = True,
) -> None:
    """Print {format, users, items, interactions, first_ts, last_ts} (users/items with >= 1 event)."""
    from mfli.data.loaders import dataset_stats

    with _data_errors():
        _print(dataset_stats(path, progress=progress))


@app.command()
def convert(
    path: Annotated[Path, typer.Argument(help="Dataset folder in any supported format.")],
    out_dir: Annotated[Path, typer.Argument(help="Target folder for the canonical mfli-parquet layout.")],
    strict: Annotated[bool, _STRICT] = False,
) -> None:
    """Load a dataset and write it in the canonical mfli-parquet layout (atomically); print its stats."""
    from mfli.data.parquet_format import parquet_stats, write_dataset

    with _data_errors():
        write_dataset(_load(path, strict), out_dir)
        _print({"out_dir": str(out_dir), **parquet_stats(out_dir)})


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Argument(help="Target folder (mfli-parquet layout).")],
    items: Annotated[int | None, typer.Option("--items", min=1, help="Catalogue size (default: generator's).")] = None,
    users: Annotated[int | None, typer.Option("--users", min=1, help="Number of users (default: generator's).")] = None,
    interactions: Annotated[int | None, typer.Option("--interactions", min=1, help="Target event count.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same dataset.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT_DIR even if it holds something else.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
) -> None:
    """Generate a synthetic catalogue into OUT_DIR and print its stats."""
    from mfli.data.parquet_format import parquet_stats
    from mfli.data.synthetic import SyntheticConfig, write_synthetic

    sizes = {"n_items": items, "n_users": users, "n_interactions": interactions}
    cfg = SyntheticConfig(seed=seed, **{k: v for k, v in sizes.items() if v is not None})
    with _data_errors():
        write_synthetic(cfg, out_dir, overwrite=overwrite, progress=progress)
        _print({"out_dir": str(out_dir), **parquet_stats(out_dir)})


@app.command()
def split(
    path: Annotated[Path, typer.Argument(help="Dataset folder in any supported format.")],
    kind: Annotated[
        SplitKind, typer.Option("--kind", help="time: global cutoff; last: leave-last-out; cold: cold-item holdout.")
    ] = SplitKind.time,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (cold-item holdout).")] = 0,
) -> None:
    """Split a dataset and print the sizes of train, test and the cold item set."""
    from mfli.data.loaders import load_dataset
    from mfli.data.split import make_split

    with _data_errors():
        s = make_split(load_dataset(path), kind.value, seed)
        _print(
            {
                "kind": s.kind,
                "train": len(s.train),
                "test": len(s.test),
                "cold_items": len(s.cold_items),
                "cutoff": s.cutoff.isoformat() if s.cutoff is not None else None,
            }
        )


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="Dataset folder in any supported format.")],
    strict: Annotated[bool, _STRICT] = False,
) -> None:
    """Load a dataset (checksums, schema, ranges) and print its data-quality report {format, findings}."""
    with _data_errors():
        ds = _load(path, strict)
        _print({"format": ds.format, **ds.stats(), "findings": ds.meta.get("quality", [])})
