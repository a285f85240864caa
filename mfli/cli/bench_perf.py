"""``mfli bench serving`` and ``mfli bench delta``: the serving and freshness benchmarks.

    mfli bench serving --items 1000000 --dim 64 --queries 2048 --out docs/results/serving_1m.json \
        --plot docs/results/serving_1m.png
    mfli bench delta --items 10000 --base-items 100000 --out docs/results/delta_10k.json

Both print markdown tables on stdout, progress on stderr, and write the full result as JSON.
``register(app)`` adds the two commands to the ``mfli bench`` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfli.eval.serving.config import ServingBenchConfig

_S = ServingBenchConfig()  # the defaults: one place, the config dataclass


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _mfli_sweep(text: str) -> tuple[tuple[int, int | None], ...]:
    """``"16:4,64:16,64"`` -> ((16, 4), (64, 16), (64, None)): beam[:clusters_per_query]."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        beam, _, cpq = part.partition(":")
        out.append((int(beam), int(cpq) if cpq and cpq != "all" else None))
    return tuple(out)


def serving(
    out: Annotated[Path, typer.Option("--out", help="Result JSON.")],
    items: Annotated[int, typer.Option("--items", min=1, help="Catalogue size N.")] = _S.n_items,
    dim: Annotated[
        int, typer.Option("--dim", min=1, help="Embedding size d per facet (ANN indexes F*d).")
    ] = _S.dim,
    queries: Annotated[
        int, typer.Option("--queries", min=1, help="Queries for batched timing and recall.")
    ] = _S.n_queries,
    facets: Annotated[int, typer.Option("--facets", min=1, help="F facets.")] = _S.facets,
    layers: Annotated[int, typer.Option("--layers", min=1, help="L codebook layers.")] = _S.layers,
    codes: Annotated[int, typer.Option("--codes", min=2, help="M codewords per layer.")] = _S.codes,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Search and torch threads.")] = _S.threads,
    build_threads: Annotated[
        int, typer.Option("--build-threads", min=1, help="FAISS build / k-means threads.")
    ] = _S.build_threads,
    plot: Annotated[Path | None, typer.Option("--plot", help="Recall-vs-throughput PNG.")] = None,
    embeddings: Annotated[
        str, typer.Option("--embeddings", help="model (trained towers) | synthetic (clusters).")
    ] = _S.embeddings,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma list of exact,mfli,mfli_scan,hnsw,ivf,ivfpq_fs,scann,dr.")
    ] = ",".join(_S.methods),
    b1_queries: Annotated[
        int, typer.Option("--b1-queries", min=0, help="Queries timed one at a time.")
    ] = _S.b1_queries,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = _S.batch_size,
    k: Annotated[int, typer.Option("--k", min=1, help="recall@k.")] = _S.k,
    train_steps: Annotated[
        int, typer.Option("--train-steps", min=1, help="Optimiser steps of the brief training.")
    ] = _S.train_steps,
    users: Annotated[int, typer.Option("--users", min=1, help="Synthetic users.")] = _S.n_users,
    interactions: Annotated[int, typer.Option("--interactions", min=1, help="Synthetic events.")] = _S.n_interactions,
    model_dir: Annotated[
        Path | None, typer.Option("--model", help="Reuse a model saved with --save-model.")
    ] = None,
    save_model: Annotated[
        Path | None, typer.Option("--save-model", help="Save the trained model here.")
    ] = None,
    mfli_sweep: Annotated[
        str,
        typer.Option(
            "--mfli-sweep", help="beam:clusters_per_query points ('all' or nothing: every cluster)."
        ),
    ] = ",".join(f"{b}:{c if c is not None else 'all'}" for b, c in _S.mfli_sweep),
    scan_sweep: Annotated[
        str, typer.Option("--scan-sweep", help="Scan engine n_clusters:shortlist points.")
    ] = ",".join(f"{n}:{r}" for n, r in _S.scan_sweep),
    scan_prerank: Annotated[
        str | None, typer.Option("--scan-prerank", help="Scan engine pre-ranker: codes or fastscan "
                                 "(default: what snapshots serve).")
    ] = None,
    hnsw_ef: Annotated[str, typer.Option("--hnsw-ef", help="efSearch values.")] = ",".join(map(str, _S.hnsw_ef)),
    ivf_nprobe: Annotated[str, typer.Option("--ivf-nprobe", help="nprobe values.")] = ",".join(map(str, _S.ivf_nprobe)),
    dr_beams: Annotated[str, typer.Option("--dr-beams", help="DR beam values.")] = ",".join(map(str, _S.dr_beams)),
    dr_items: Annotated[
        int, typer.Option("--dr-items", min=0, help="DR catalogue size (0: all items).")
    ] = _S.dr_items,
    budget: Annotated[
        float | None, typer.Option("--budget", help="Seconds after which remaining sweep points are skipped.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = _S.seed,
) -> None:
    """Build time, memory, queries/s (batch 1 and batched), p50/p99 and recall@k for every method."""
    from mfli.eval.serving_bench import ServingBenchConfig, format_tables, run_serving_bench, write_json
    from mfli.eval.serving_bench import plot as plot_fn

    cfg = ServingBenchConfig(
        n_items=items,
        dim=dim,
        n_queries=queries,
        b1_queries=b1_queries,
        batch_size=batch_size,
        k=k,
        facets=facets,
        layers=layers,
        codes=codes,
        threads=threads,
        build_threads=build_threads,
        embeddings=embeddings,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        seed=seed,
        n_users=users,
        n_interactions=interactions,
        train_steps=train_steps,
        model_dir=str(model_dir) if model_dir else None,
        save_model_dir=str(save_model) if save_model else None,
        mfli_sweep=_mfli_sweep(mfli_sweep),
        scan_sweep=tuple(tuple(int(v) for v in p.split(":")) for p in scan_sweep.split(",") if p.strip()),
        scan_prerank=scan_prerank,
        hnsw_ef=_ints(hnsw_ef),
        ivf_nprobe=_ints(ivf_nprobe),
        dr_beams=_ints(dr_beams),
        dr_items=dr_items,
        budget_s=budget,
    )
    try:
        cfg.validated()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = run_serving_bench(cfg, log=lambda s: typer.echo(s, err=True))
    write_json(result, out)
    if plot:
        plot_fn(result, plot)
    typer.echo(format_tables(result))
    typer.echo(f"wrote {out}" + (f" and {plot}" if plot else ""), err=True)


def delta(
    out: Annotated[Path, typer.Option("--out", help="Result JSON.")],
    items: Annotated[int, typer.Option("--items", min=1, help="New items in the delta.")] = 10_000,
    base_items: Annotated[
        int, typer.Option("--base-items", min=1, help="Items in the live full snapshot.")
    ] = 100_000,
    dim: Annotated[int, typer.Option("--dim", min=1)] = 64,
    facets: Annotated[int, typer.Option("--facets", min=1, max=3)] = 2,
    train_steps: Annotated[int, typer.Option("--train-steps", min=1)] = 200,
    users: Annotated[int, typer.Option("--users", min=1)] = 10_000,
    interactions: Annotated[int, typer.Option("--interactions", min=1)] = 200_000,
    threads: Annotated[int, typer.Option("--threads", min=1)] = 1,
    build_threads: Annotated[int, typer.Option("--build-threads", min=1)] = 2,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Keep the store and snapshot here (default: temporary).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Seconds from new items' features to a served delta (encode, assign, write, reload) vs HNSW."""
    from mfli.eval.freshness_bench import FreshnessBenchConfig, format_tables, run_freshness_bench
    from mfli.eval.serving_bench import write_json

    cfg = FreshnessBenchConfig(
        new_items=items,
        base_items=base_items,
        dim=dim,
        facets=facets,
        train_steps=train_steps,
        n_users=users,
        n_interactions=interactions,
        threads=threads,
        build_threads=build_threads,
        work_dir=str(work_dir) if work_dir else None,
        seed=seed,
    )
    result = run_freshness_bench(cfg, log=lambda s: typer.echo(s, err=True))
    write_json(result, out)
    typer.echo(format_tables(result))
    typer.echo(f"wrote {out}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``serving`` and ``delta`` to the ``mfli bench`` group."""
    app.command("serving")(serving)
    app.command("delta")(delta)
