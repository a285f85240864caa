"""``mfli serve``: the HTTP retrieval service over the live snapshot of a store.

    mfli serve --store .mfli/store --host 127.0.0.1 --port 8000 --refresh-seconds 60
    mfli serve --store s3://models/mfli --cache-dir /var/cache/mfli

``mfli precompile`` compiles the serving kernels into numba's cache (once per install or image).

``--store`` defaults to ``$MFLI_STORE_URI``; S3 settings come from the environment (docs/storage.md).
User features for id-only requests come from Feast when ``MFLI_FEAST_REPO`` is set. See docs/serving.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

_CACHE_DIR = typer.Option(None, "--cache-dir", help="Local snapshot cache (default $MFLI_CACHE_DIR or $MFLI_HOME/cache).")

_LIMIT = typer.Option(None, "--limit", metavar="FIELD=VALUE",
                      help="Override a ServiceLimits field (mfli/serve/limits.py), e.g. --limit deadline_s=2 "
                           "--limit max_body_bytes=2097152; also $MFLI_SERVE_<FIELD>.")


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve`` command to ``app``."""

    @app.command("serve")
    def serve(
        store: str = typer.Option(..., "--store", envvar="MFLI_STORE_URI",
                                  help="Store URI: a directory, file:///dir or s3://bucket/prefix."),
        host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 to serve other machines)."),
        port: int = typer.Option(8000, help="TCP port."),
        refresh_seconds: float = typer.Option(60.0, "--refresh-seconds", min=0,
                                              help="Check LATEST and new deltas this often (0: never)."),
        cache_dir: Path | None = _CACHE_DIR,
        max_batch: int | None = typer.Option(None, "--max-batch", min=1,
                                             help="Most requests answered by one retriever call (default 64)."),
        limit: list[str] | None = _LIMIT,
        keep_alive: int = typer.Option(75, "--keep-alive-seconds", min=1,
                                       help="Close idle keep-alive connections after this long; keep it above the "
                                            "idle timeout of the load balancer or client in front (ALB: 60 s), or "
                                            "a request sent as the server closes the connection fails."),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn/python log level."),
        access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
    ) -> None:
        """Serve POST /retrieve, GET /livez, /readyz, /metrics and /metadata, following the store's LATEST snapshot."""
        import logging

        from mfli.serve.service import configure_threads

        configure_threads(1)  # before numpy/torch do any work: one BLAS thread is fastest here
        import uvicorn

        from mfli.serve.limits import ServiceLimits, parse_limit_options
        from mfli.serve.live import LiveRetriever
        from mfli.serve.service import create_app
        from mfli.serve.snapshot_retriever import SnapshotBuilder
        from mfli.store import StoreError

        try:
            limits = ServiceLimits.from_env().with_overrides(parse_limit_options(limit or []))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--limit / $MFLI_SERVE_*") from None
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            live = LiveRetriever(store, SnapshotBuilder(), cache_dir)
        except (StoreError, ValueError) as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        live.refresh()
        if live.state is None:
            # keep running: /readyz answers 503 until a snapshot is published or repaired
            typer.secho(f"no snapshot served yet from {live.store.uri}: {live.metadata()['last_refresh_error']}",
                        err=True, fg=typer.colors.YELLOW)
        api = create_app(live, refresh_seconds=refresh_seconds or None, max_batch=max_batch, limits=limits)
        uvicorn.run(api, host=host, port=port, log_level=log_level.lower(), access_log=access_log,
                    timeout_keep_alive=keep_alive)

    @app.command("precompile")
    def precompile_cmd() -> None:
        """Compile the serving kernels into numba's cache ($NUMBA_CACHE_DIR, default next to the package).

        Run once per install or image build: with an empty cache the first snapshot load compiles them
        (about a minute of one core); afterwards they load in under a second.
        """
        from mfli.serve.precompile import precompile
        from mfli.serve.service import configure_threads

        configure_threads(1)
        typer.echo(f"serving kernels compiled or loaded from cache in {precompile():.1f}s")
