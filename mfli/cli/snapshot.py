"""``mfli snapshot``: list published snapshots, roll LATEST back, apply retention.

    mfli snapshot list --store s3://models/mfli
    mfli snapshot rollback 20240101T000000Z-3fa9c1 --store .mfli/store
    mfli snapshot prune --keep 5 --store s3://models/mfli

``--store`` defaults to ``$MFLI_STORE_URI``; S3 endpoint, region and credentials come from the environment
(see docs/storage.md).
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Published index snapshots (list, rollback, prune).")

_STORE = typer.Option(..., "--store", envvar="MFLI_STORE_URI",
                      help="Store URI: a directory, file:///dir or s3://bucket/prefix.")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_metric(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


@app.command("list")
def list_cmd(
    store: str = _STORE,
    all_: bool = typer.Option(False, "--all", help="Also show incomplete (unpublished or abandoned) snapshots."),
    metrics: str = typer.Option(
        "recall@100,cold_recall@100,topic_match@100,coverage@100", "--metrics",
        help="Comma list of metrics to show; 'all' shows every metric in the manifests.",
    ),
) -> None:
    """Show snapshots oldest first with their metrics; the live one is marked with '*'."""
    from rich.console import Console
    from rich.table import Table

    from mfli.store import StoreError, list_snapshots, open_store

    try:
        opened = open_store(store)
        rows = list_snapshots(opened, include_incomplete=all_)
    except StoreError as exc:
        _fail(exc)
    if not rows:
        typer.echo(f"no snapshots in {store}")
        return
    available = sorted({k for r in rows for k, v in r["metrics"].items() if isinstance(v, (int, float, str))})
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    metric_names = available if wanted == ["all"] else [m for m in wanted if m in available]
    table = Table(title=f"snapshots in {opened.uri}")
    table.add_column("live")
    table.add_column("snapshot_id")
    table.add_column("created_at")
    for m in metric_names:
        table.add_column(m, justify="right")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    table.add_column("code")
    for r in rows:
        code = r.get("code_version") or {}
        sha = (code.get("git_sha") or "")[:8]
        table.add_row(
            "*" if r["live"] else "",
            r["snapshot_id"] + ("" if r["complete"] else " (incomplete)"),
            r["created_at"][:19],
            *[_fmt_metric(r["metrics"].get(m, "")) for m in metric_names],
            str(r["n_files"]),
            _fmt_bytes(r["total_bytes"]),
            f"{code.get('mfli', '')} {sha}".strip(),
        )
    Console(width=200).print(table)


@app.command("rollback")
def rollback_cmd(snapshot_id: str = typer.Argument(..., help="Snapshot to make live."), store: str = _STORE) -> None:
    """Verify every checksum of SNAPSHOT_ID, then point LATEST at it."""
    from mfli.store import StoreError, open_store, rollback

    try:
        pointer = rollback(open_store(store), snapshot_id)
    except StoreError as exc:
        _fail(exc)
    typer.echo(f"LATEST -> {pointer.snapshot_id} (was {pointer.previous})")


@app.command("prune")
def prune_cmd(
    keep: int = typer.Option(..., "--keep", min=1, help="How many newest snapshots to keep (the live one always stays)."),
    store: str = _STORE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be deleted."),
) -> None:
    """Delete all but the newest KEEP snapshots and their deltas."""
    from mfli.store import StoreError, apply_retention, open_store

    try:
        gone = apply_retention(open_store(store), keep=keep, dry_run=dry_run)
    except StoreError as exc:
        _fail(exc)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {len(gone)} snapshot(s){': ' + ', '.join(gone) if gone else ''}")
