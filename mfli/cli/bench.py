"""``mfli bench``: quality, serving and freshness benchmarks (results as JSON plus a printed table)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Benchmarks: quality (all methods, one split), serving, freshness.")


def compact_json(obj) -> str:
    """Indented JSON with lists of numbers on one line (the per-user arrays stay readable in diffs)."""
    import re

    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*((?:-?[0-9.eE+-]+|NaN|-?Infinity)(?:,\s*(?:-?[0-9.eE+-]+|NaN|-?Infinity))*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


@app.command()
def quality(
    data: Path = typer.Option(..., "--data", help="Dataset folder (auto-detected format)."),
    split: str = typer.Option("time", "--split", help="time | last | user_time | cold"),
    methods: str = typer.Option("mfli,exact", "--methods",
                                help="Comma list: mfli,mfli_trigger,mfli_scan,mfli_quota,mfli_facets,mfli_f1,mfli_f3,mfli_neww,"
                                     "mfli_new_sem0,exact,"
                                     "mfli_kmeans,hnsw,hnsw_add,ivf,dr,pop,ease,itemknn"),
    seeds: int = typer.Option(3, "--seeds", min=1),
    epochs: int = typer.Option(None, "--epochs", help="Override the training epochs."),
    beam: int = typer.Option(32, "--beam", help="MFLI user-mode beam per facet."),
    max_users: int = typer.Option(None, "--max-users", help="Evaluate a seeded sample of test users."),
    out: Path = typer.Option(None, "--out", help="Write {method: {metric: {mean, std, values}}} as JSON."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads for training (0: process default)."),
    config: Path = typer.Option(None, "--config", help="JSON file of TrainConfig overrides (as for `mfli train`)."),
    strict: bool = typer.Option(False, "--strict/--no-strict", help="Data-quality findings are errors (exit 2)."),
    dr_placement: str = typer.Option("neighbours", "--dr-placement",
                                     help="Deep Retrieval placement of items without events: neighbours | reranker"),
) -> None:
    """Train, index and evaluate every method on the same split, in one process."""
    from mfli.cli.train import EXIT_BAD_DATA
    from mfli.data.errors import DataError
    from mfli.data.loaders import load_dataset
    from mfli.eval.harness import QualityConfig, format_facet_table, format_table, run_quality
    from mfli.train import TrainConfig

    try:  # bad data or a bad config: one line on stderr and exit 2, like the other commands
        overrides = {}
        if config is not None:
            try:
                overrides = json.loads(config.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(config, f"cannot read config JSON: {exc}") from None
            if not isinstance(overrides, dict):
                raise DataError(config, "expected a JSON object of TrainConfig fields")
            try:
                TrainConfig.from_dict(overrides)  # unknown keys fail here, before any training
            except (TypeError, ValueError) as exc:
                raise DataError(config, str(exc)) from None
        ds = load_dataset(data, strict=strict)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None
    cfg = QualityConfig(methods=tuple(m.strip() for m in methods.split(",") if m.strip()), split=split,
                        seeds=seeds, epochs=epochs, beam=beam, max_users=max_users,
                        num_threads=threads, train_overrides=overrides, dr_placement=dr_placement)

    def write(results: dict) -> None:
        # rewritten after every seed: an interrupted run keeps the seeds it finished
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(compact_json(results))
        tmp.replace(out)

    try:
        results = run_quality(ds, cfg, log=lambda s: typer.echo(s, err=True), on_seed=write if out else None)
    except DataError as exc:  # e.g. a split that leaves no test events
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None
    typer.echo(format_table(results))
    facet_table = format_facet_table(results)
    if facet_table:  # MFLI methods with a facet count: merged and per-facet recall side by side
        typer.echo("\n" + facet_table)
    if out:  # on_seed wrote it after the last seed
        typer.echo(f"wrote {out}", err=True)
from mfli.cli.bench_perf import register as _reg; _reg(app)  # noqa: I001
