"""HTTP retrieval service (FastAPI) over a :class:`~mfli.serve.live.LiveRetriever` of snapshot retrievers.

    mfli serve --store s3://models/mfli --host 127.0.0.1 --port 8000 --refresh-seconds 60

Endpoints:

- ``POST /retrieve``: ``{user_id?, recent_items?, user_features?, k=100, facet_quotas?, mode="auto"}`` ->
  ``{"snapshot_id", "mode", "items": [{"item_id", "score", "facet", "cluster", "trigger" | "path_rank"}]}``;
  422 for a bad request (``{"detail": [{"loc", "msg", "type"}]}``), 503 before a snapshot is loaded.
- ``GET /health``: 200 once a snapshot is loaded, 503 before (with the last refresh error).
- ``GET /metadata``: snapshot id, created_at, deltas applied, item count, facets, retriever settings.

Requests are answered in micro-batches: one worker thread takes every request waiting when it is free
(up to ``max_batch``) and answers them with one vectorised retriever call per mode. Nobody waits for a
batch to fill, so a lone request is answered at once; under load the per-request cost of numpy and
torch calls is shared. Each batch reads ``live.state`` once, so it is answered by one snapshot from
start to end while a refresh swaps in the next one.

Example::

    app = create_app(open_live(".mfli/store"))            # user features from Feast if MFLI_FEAST_REPO is set
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mfli.serve.live import LiveRetriever
from mfli.serve.snapshot_retriever import (
    RequestError,
    RetrievalRequest,
    UserFeatureLookup,
    default_user_features,
)

log = logging.getLogger(__name__)


class RetrieveBody(BaseModel):
    """``POST /retrieve`` body. Unknown fields are refused (a misspelt field is a 422, not a silent default)."""

    model_config = ConfigDict(extra="forbid")

    user_id: int | None = Field(None, description="user id; its features come from the online store")
    recent_items: list[int] = Field(default_factory=list, max_length=1000,
                                    description="recent item ids, oldest first: the triggers; never returned")
    user_features: dict[str, Any] | None = Field(
        None, description="raw user features (history_item_ids, user_attrs, user columns); skips the lookup")
    k: int = Field(100, ge=1, le=1000, description="results wanted")
    facet_quotas: dict[str, float] | None = Field(
        None, description="{facet: weight >= 0}: share of the k slots per facet; facets not named get none")
    mode: Literal["auto", "trigger", "user"] = Field(
        "auto", description="auto: trigger when a recent item is known, else user")


def configure_threads(n: int = 1) -> None:
    """One BLAS/OpenMP thread per process: the retriever's matmuls are too small to share.

    Environment variables reach libraries loaded later; threadpoolctl (when installed) limits those
    already loaded; torch's intra-op pool is set directly.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    import torch

    torch.set_num_threads(n)


def _unprocessable(field: str, message: str) -> JSONResponse:
    # same shape as FastAPI's own validation errors, so clients parse one format
    loc = ["body", *field.replace("[", ".").replace("]", "").split(".")]
    return JSONResponse(status_code=422, content={"detail": [{"loc": loc, "msg": message, "type": "value_error"}]})


class _Batcher:
    """One worker thread answering queued requests in batches of whatever is waiting (<= max_batch)."""

    def __init__(self, live: LiveRetriever, lookup: UserFeatureLookup | None, max_batch: int) -> None:
        self.live = live
        self.lookup = lookup
        self.max_batch = max(1, max_batch)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mfli-retrieve", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def submit(self, req: RetrievalRequest) -> concurrent.futures.Future:
        self.start()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((req, fut))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[tuple[RetrievalRequest, concurrent.futures.Future]]) -> None:
        state = self.live.state  # once per batch: the whole batch is answered by one snapshot
        futs = [f for _, f in batch]
        if state is None:
            for f in futs:
                f.set_exception(LookupError("no snapshot loaded"))
            return
        try:
            results = state.obj.retrieve_batch([r for r, _ in batch], self.lookup)
        except Exception as exc:  # a bug, not a bad request: every request of the batch gets a 500
            log.exception("retrieval failed for a batch of %d requests", len(batch))
            for f in futs:
                f.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(batch)
        for f, res in zip(futs, results):
            if isinstance(res, Exception):
                f.set_exception(res)
            else:
                f.set_result((state.snapshot_id, res))


def create_app(live: LiveRetriever, user_features: UserFeatureLookup | None | Literal[False] = None, *,
               refresh_seconds: float | None = None, max_batch: int = 64) -> FastAPI:
    """The FastAPI app serving ``live``.

    Args:
        live: a :class:`LiveRetriever` whose objects are :class:`~mfli.serve.snapshot_retriever.SnapshotRetriever`
            (e.g. :func:`~mfli.serve.snapshot_retriever.open_live`); it may have nothing loaded yet (503s
            until a refresh succeeds).
        user_features: lookup for requests with only a user id; None: the Feast online store when
            ``MFLI_FEAST_REPO`` is set, else none; False: none.
        refresh_seconds: poll the store this often while the app runs (None: the caller refreshes).
        max_batch: most requests answered by one retriever call.
    """
    lookup = default_user_features() if user_features is None else (user_features or None)
    batcher = _Batcher(live, lookup, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if refresh_seconds:
            live.start_polling(refresh_seconds)
        try:
            yield
        finally:
            if refresh_seconds:
                live.stop_polling()
            batcher.stop()

    app = FastAPI(title="MFLI retrieval", version="1", lifespan=lifespan)
    app.state.live = live
    app.state.batcher = batcher
    started = time.time()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.post("/retrieve")
    async def retrieve(body: RetrieveBody) -> JSONResponse:
        if live.state is None:
            return JSONResponse(status_code=503, content={"detail": "no snapshot loaded yet"})
        req = RetrievalRequest(body.user_id, body.recent_items, body.user_features, body.k, body.facet_quotas,
                               body.mode)
        try:
            snapshot_id, res = await asyncio.wrap_future(batcher.submit(req))
        except RequestError as exc:
            return _unprocessable(exc.field, exc.message)
        except LookupError:
            return JSONResponse(status_code=503, content={"detail": "no snapshot loaded yet"})
        return JSONResponse({"snapshot_id": snapshot_id, "mode": res["mode"], "items": res["items"]})

    @app.get("/health")
    def health() -> JSONResponse:
        state = live.state
        meta = {"snapshot_id": state.snapshot_id if state else None,
                "last_refresh_error": live.metadata().get("last_refresh_error")}
        if state is None:
            return JSONResponse(status_code=503, content={"status": "unavailable", **meta})
        return JSONResponse({"status": "ok", **meta})

    @app.get("/metadata")
    def metadata() -> JSONResponse:
        meta = live.metadata()
        obj = meta.pop("retriever", None) or {}
        out = {
            "snapshot_id": meta.get("snapshot_id"),
            "created_at": meta.get("created_at"),
            "deltas_applied": meta.get("deltas_applied", []),
            "n_items": obj.get("n_items"),
            "facets": obj.get("facets", []),
            **{k: v for k, v in meta.items() if k not in ("snapshot_id", "created_at", "deltas_applied")},
            "index": {k: v for k, v in obj.items() if k not in ("snapshot_id", "n_items", "facets")},
            "service": {"uptime_s": round(time.time() - started, 1), "batches": batcher.batches,
                        "requests": batcher.requests, "max_batch": batcher.max_batch,
                        "user_features": type(lookup).__name__ if lookup is not None else None},
        }
        return JSONResponse(status_code=200 if meta.get("snapshot_id") else 503, content=out)

    return app
