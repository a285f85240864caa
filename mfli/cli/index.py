"""``mfli index``: build the multifaceted inverted index from a trained model and inspect it.

    mfli train ../shared/datasets/ml-latest-small --out runs/ml --split time
    mfli index build ../shared/datasets/ml-latest-small --model runs/ml --out runs/ml/index --split time
    mfli index stats runs/ml/index

``build`` embeds the whole catalogue (items seen in training use their id embedding plus content,
the others content alone), encodes each item's code path per facet with the learned codebooks,
builds the CSR lists, rebalances them by split-and-merge and writes ``index.npz`` + ``index.json``
(sha256 manifest). It prints one JSON object: sizes, timings and balance before/after per facet.
Bad input exits with code 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mfli.cli.train import EXIT_BAD_DATA, SplitKind

app = typer.Typer(no_args_is_help=True, help="Inverted index: build from a trained model, stats.")


def _balance(stats) -> list[dict]:
    return [s.as_dict() for s in stats]


@app.command()
def build(
    data_path: Annotated[Path, typer.Argument(help="Dataset folder the model was trained on.")],
    model: Annotated[Path, typer.Option("--model", help="Folder written by `mfli train`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for index.npz + index.json.")],
    split: Annotated[SplitKind, typer.Option("--split", help="Split whose train part orders clusters by popularity.")] = SplitKind.time,
    seed: Annotated[int, typer.Option("--seed", help="Split seed (as for `mfli train`) and k-means seed.")] = 0,
    paths_per_item: Annotated[int, typer.Option("--paths-per-item", min=1, help="Top-m code paths per item and facet.")] = 1,
    floor: Annotated[int | None, typer.Option("--floor", min=1, help="Smallest cluster size (default: scaled to the catalogue).")] = None,
    cap: Annotated[int | None, typer.Option("--cap", min=2, help="Largest cluster size (default: scaled to the catalogue).")] = None,
) -> None:
    """Encode the catalogue with a trained model, build and rebalance the index, save it to --out."""
    from dataclasses import replace

    from mfli.data.errors import DataError
    from mfli.data.loaders import load_dataset
    from mfli.data.split import make_split
    from mfli.index.balance import format_balance
    from mfli.index.build import auto_rebalance_config, build_from_encoded, encode_items, popularity_score
    from mfli.model.trained import TrainedModel

    try:
        t0 = time.perf_counter()
        ds = load_dataset(data_path)
        sp = make_split(ds, split.value, seed=seed)
        trained = TrainedModel.load(model)
        t1 = time.perf_counter()
        enc = encode_items(trained, ds.items, paths_per_item=paths_per_item)
        t2 = time.perf_counter()
        cfg = auto_rebalance_config(len(enc.item_ids), seed=seed)
        if floor is not None or cap is not None:
            # target None: the part size is (floor + cap) // 2 for the bounds given
            cfg = replace(cfg, floor=floor or cfg.floor, cap=cap or cfg.cap, target=None)
            try:
                cfg.validated()
            except ValueError as exc:
                raise DataError("--floor/--cap", str(exc)) from None
        result = build_from_encoded(enc, trained.codebooks, trained.facets,
                                    popularity_score(enc.item_ids, sp.train), cfg)
        t3 = time.perf_counter()
        manifest = result.index.save(out)
    except (DataError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None
    typer.echo(format_balance(result.before, result.after, trained.facets), err=True)
    typer.echo(json.dumps({
        "out": str(out),
        "manifest": str(manifest),
        "n_items": int(result.index.n_items),
        "facets": trained.facets,
        "clusters_per_facet": [csr.n_clusters for csr in result.index.facets],
        "floor": cfg.floor,
        "cap": cfg.cap,
        "load_seconds": round(t1 - t0, 3),
        "encode_seconds": round(t2 - t1, 3),
        "build_seconds": round(t3 - t2, 3),
        "balance_before": _balance(result.before),
        "balance_after": _balance(result.after),
    }))


@app.command()
def stats(
    index_dir: Annotated[Path, typer.Argument(help="Folder written by `mfli index build`.")],
) -> None:
    """Verify an index's checksum and print its size and per-facet balance as JSON."""
    from mfli.index.balance import index_balance
    from mfli.index.inverted import IndexIntegrityError, MultiFacetIndex

    try:
        index = MultiFacetIndex.load(index_dir)
    except IndexIntegrityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None
    typer.echo(json.dumps({
        "n_items": int(index.n_items),
        "facets": index.facet_names,
        "dim": int(index.dim),
        "M": int(index.M),
        "L": int(index.L),
        "paths_per_item": int(index.paths_per_item),
        "rebalanced": bool(index.rebalanced),
        "bytes": int(index.nbytes()),
        "balance": _balance(index_balance(index)),
    }))
