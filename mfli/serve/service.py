"""HTTP retrieval service (FastAPI) over a :class:`~mfli.serve.live.LiveRetriever` of snapshot retrievers.

    mfli serve --store s3://models/mfli --host 127.0.0.1 --port 8000 --refresh-seconds 60

Endpoints:

- ``POST /retrieve``: ``{user_id?, recent_items?, user_features?, k=100, facet_quotas?, mode="auto"}`` ->
  ``{"snapshot_id", "mode", "items": [{"item_id", "score", "facet", "cluster", "trigger" | "path_rank" |
  "sources"}]}`` (``sources``: blend mode, the lists that held the item);
  422 for a bad request (``{"detail": [{"loc", "msg", "type"}]}``), 413 for a body over the limit,
  503 before a snapshot is loaded or when the queue is full (with ``Retry-After``), 504 past the deadline.
- ``GET /livez``: 200 while the process answers (liveness: restart when it stops answering).
- ``GET /readyz``: 200 once a verified snapshot is loaded, 503 before (with the last refresh error);
  ``GET /health`` is the same answer, kept for existing clients.
- ``GET /metrics``: Prometheus text format (:mod:`mfli.serve.metrics`).
- ``GET /metadata``: snapshot id, created_at, deltas applied, item count, facets, retriever settings.

Requests are answered in micro-batches: one worker thread takes every request waiting when it is free
(up to ``max_batch``) and answers them with one vectorised retriever call per mode. Nobody waits for a
batch to fill, so a lone request is answered at once; under load the per-request cost of numpy and
torch calls is shared. Each batch reads ``live.state`` once, so it is answered by one snapshot from
start to end while a refresh swaps in the next one.

No request can hurt another: every field is checked at the edge (:mod:`mfli.serve.schemas`, bounds
from :class:`~mfli.serve.limits.ServiceLimits`); a request the snapshot refuses gets its own 422; and
should a batch still fail, it is split in halves until the failing request is alone, so every other
request of the batch gets the answer it would have had on its own.

Example::

    app = create_app(open_live(".mfli/store"))            # user features from Feast if MFLI_FEAST_REPO is set
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mfli.serve.limits import ServiceLimits
from mfli.serve.live import LiveRetriever
from mfli.serve.metrics import CONTENT_TYPE, ServiceMetrics
from mfli.serve.schemas import (
    ErrorResponse,
    LiveResponse,
    MetadataResponse,
    ReadyResponse,
    RetrieveResponse,
    ValidationErrorResponse,
    request_models,
)
from mfli.serve.snapshot_retriever import (
    RequestError,
    RetrievalRequest,
    UserFeatureLookup,
    default_user_features,
)

log = logging.getLogger(__name__)


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


class Overloaded(RuntimeError):
    """The batcher's queue is full: the request was not queued (HTTP 503 + Retry-After)."""


class DeadlineExceeded(TimeoutError):
    """The request waited past its deadline before a batch took it (HTTP 504)."""


class _Batcher:
    """One worker thread answering queued requests in batches of whatever is waiting (<= max_batch).

    The queue is bounded (``max_queue``: :class:`Overloaded` beyond), requests whose deadline passed
    or whose caller gave up are dropped when taken, and a batch that fails is bisected so only the
    failing request gets the error.
    """

    def __init__(self, live: LiveRetriever, lookup: UserFeatureLookup | None, max_batch: int,
                 max_queue: int = 1024, on_batch: Callable[[int], None] | None = None) -> None:
        self.live = live
        self.lookup = lookup
        self.max_batch = max(1, max_batch)
        self.max_queue = max(1, max_queue)
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0  # queued, not yet taken; guarded by _lock
        self.batches = 0
        self.requests = 0
        self.isolated_failures = 0  # requests that failed alone after their batch failed

    @property
    def pending(self) -> int:
        return self._pending

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

    def submit(self, req: RetrievalRequest, deadline: float = float("inf")) -> concurrent.futures.Future:
        """Queue ``req`` (answer by ``deadline``, a ``time.monotonic()`` instant). Raises :class:`Overloaded`."""
        self.start()
        with self._lock:
            if self._pending >= self.max_queue:
                raise Overloaded(f"{self._pending} requests queued")
            self._pending += 1
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((req, fut, deadline))
        return fut

    def _take(self, item: tuple) -> tuple | None:
        """The item if it still wants an answer; drops it (deadline, cancelled) otherwise."""
        with self._lock:
            self._pending -= 1
        req, fut, deadline = item
        if not fut.set_running_or_notify_cancel():
            return None  # the caller gave up (its deadline passed while queued)
        if time.monotonic() > deadline:
            fut.set_exception(DeadlineExceeded("deadline passed while queued"))
            return None
        return req, fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = []
            stop = False
            first = self._take(item)
            if first is not None:
                batch.append(first)
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                taken = self._take(nxt)
                if taken is not None:
                    batch.append(taken)
            if batch:
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
        if self.on_batch is not None:
            self.on_batch(len(batch))
        self._answer_isolated(state, batch)
        self.batches += 1
        self.requests += len(batch)

    def _answer_isolated(self, state: Any, batch: list[tuple[RetrievalRequest, concurrent.futures.Future]]) -> None:
        """Answer ``batch`` with one call; if that call fails, answer each half on its own (recursively).

        A bug triggered by one request costs O(log B) extra calls and fails that request only; answers
        of the others do not depend on what they were batched with."""
        try:
            results = state.obj.retrieve_batch([r for r, _ in batch], self.lookup)
        except Exception as exc:
            if len(batch) > 1:
                mid = len(batch) // 2
                self._answer_isolated(state, batch[:mid])
                self._answer_isolated(state, batch[mid:])
                return
            log.exception("retrieval failed for one request: %r", _describe(batch[0][0]))
            self.isolated_failures += 1
            batch[0][1].set_exception(exc)
            return
        for (_, f), res in zip(batch, results):
            if isinstance(res, Exception):
                f.set_exception(res)
            else:
                f.set_result((state.snapshot_id, res))


def _describe(req: RetrievalRequest) -> dict[str, Any]:
    """A bounded summary of a request for logs (never the whole history)."""
    feats = req.user_features or {}
    hist = feats.get("history_item_ids") if isinstance(feats, dict) else None
    return {"user_id": req.user_id, "recent_items": list(req.recent_items)[:5], "n_recent": len(req.recent_items),
            "n_history": len(hist) if isinstance(hist, list) else None, "k": req.k, "mode": req.mode,
            "facet_quotas": req.facet_quotas}


class BodySizeLimit:
    """ASGI middleware: 413 as soon as a request body exceeds ``max_bytes`` (declared or while streaming).

    The body is read here chunk by chunk and never kept past the limit, then replayed to the app; a
    declared ``Content-Length`` over the limit is answered before a byte of the body is read. After the
    413 the rest of the body is read and dropped (never parsed, never kept) up to ``drain_bytes``, so a
    client that writes its whole request before reading gets the 413 rather than a reset connection;
    past that the connection is closed.
    """

    def __init__(self, app: Any, max_bytes: int, on_reject: Callable[[], None] | None = None,
                 drain_factor: int = 16) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = max_bytes * drain_factor
        self.on_reject = on_reject

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._reply(send, 400, "invalid Content-Length header", close=True)
                return
            if size > self.max_bytes:
                await self._too_large(send, receive, 0, close=size > self.drain_bytes)
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(send, receive, total, close=False, more=message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable, receive: Callable, read: int, *, close: bool, more: bool = True) -> None:
        if self.on_reject is not None:
            self.on_reject()
        await self._reply(send, 413, f"request body over the {self.max_bytes}-byte limit", close=close)
        while more and not close and read <= self.drain_bytes:  # drop the rest so the client can read the 413
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            more = message.get("more_body", False)

    @staticmethod
    async def _reply(send: Callable, status: int, detail: str, *, close: bool) -> None:
        import json

        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def create_app(live: LiveRetriever, user_features: UserFeatureLookup | None | Literal[False] = None, *,
               refresh_seconds: float | None = None, max_batch: int | None = None,
               limits: ServiceLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``live``.

    Args:
        live: a :class:`LiveRetriever` whose objects are :class:`~mfli.serve.snapshot_retriever.SnapshotRetriever`
            (e.g. :func:`~mfli.serve.snapshot_retriever.open_live`); it may have nothing loaded yet (503s
            until a refresh succeeds).
        user_features: lookup for requests with only a user id; None: the Feast online store when
            ``MFLI_FEAST_REPO`` is set, else none; False: none.
        refresh_seconds: poll the store this often while the app runs (None: the caller refreshes).
        max_batch: most requests answered by one retriever call (overrides ``limits.max_batch``).
        limits: request limits, deadline and queue bound (default :meth:`ServiceLimits.from_env`).
    """
    limits = (limits or ServiceLimits.from_env()).validated()
    if max_batch is not None:
        limits = limits.with_overrides({"max_batch": max_batch})
    lookup = default_user_features() if user_features is None else (user_features or None)
    batcher: _Batcher
    metrics = ServiceMetrics(live, lambda: batcher.pending)
    batcher = _Batcher(live, lookup, limits.max_batch, limits.max_queue, on_batch=metrics.batch_size.observe)
    body_model, _ = request_models(limits)

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
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes, on_reject=lambda: metrics.error("too_large"))
    app.state.live = live
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.metrics = metrics
    started = time.time()
    no_snapshot = {"detail": "no snapshot loaded yet"}

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = any(e.get("type") == "json_invalid" for e in errors)
        metrics.error("bad_json" if bad_json else "validation")
        detail = [{"loc": list(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")} for e in errors]
        return JSONResponse(status_code=422, content={"detail": detail[:20]})  # bounded: a 10k-item list

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (bad encoding, nesting too deep)
            metrics.error("bad_json")
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)

    async def retrieve(body: Any) -> JSONResponse:
        t0 = time.perf_counter()
        mode = "rejected"
        try:
            response = await _retrieve(body)
            if response.status_code == 200:
                mode = response.mode  # type: ignore[attr-defined]
            return response
        finally:
            metrics.latency.labels(mode).observe(time.perf_counter() - t0)

    async def _retrieve(body: Any) -> JSONResponse:
        if live.state is None:
            metrics.error("no_snapshot")
            return JSONResponse(status_code=503, content=no_snapshot)
        feats = body.user_features.model_dump(exclude_none=True) if body.user_features is not None else None
        req = RetrievalRequest(body.user_id, body.recent_items, feats, body.k, body.facet_quotas, body.mode)
        try:
            fut = batcher.submit(req, time.monotonic() + limits.deadline_s)
        except Overloaded:
            metrics.error("overloaded")
            return JSONResponse(status_code=503, content={"detail": "server busy: request queue full"},
                                headers={"Retry-After": str(limits.retry_after_s)})
        try:
            snapshot_id, res = await asyncio.wait_for(asyncio.wrap_future(fut), limits.deadline_s)
        except (TimeoutError, DeadlineExceeded):
            fut.cancel()  # still queued: the worker skips it
            metrics.error("deadline")
            return JSONResponse(status_code=504, content={"detail": f"not answered within {limits.deadline_s:g} s"})
        except RequestError as exc:
            metrics.error("validation")
            return _unprocessable(exc.field, exc.message)
        except LookupError:
            metrics.error("no_snapshot")
            return JSONResponse(status_code=503, content=no_snapshot)
        except Exception:  # noqa: BLE001 - logged by the batcher; this request only
            metrics.error("internal")
            return JSONResponse(status_code=500, content={"detail": "internal error answering this request"})
        response = JSONResponse({"snapshot_id": snapshot_id, "mode": res["mode"], "items": res["items"]})
        response.mode = res["mode"]  # type: ignore[attr-defined]  # for the latency label
        return response

    retrieve.__annotations__["body"] = body_model  # built from the limits, so OpenAPI shows them
    app.post("/retrieve", response_model=RetrieveResponse, responses={
        413: {"model": ErrorResponse, "description": "body over max_body_bytes"},
        422: {"model": ValidationErrorResponse, "description": "bad request; each entry names its field"},
        500: {"model": ErrorResponse, "description": "this request failed (others are unaffected)"},
        503: {"model": ErrorResponse, "description": "no snapshot loaded yet, or queue full (Retry-After)"},
        504: {"model": ErrorResponse, "description": "not answered within deadline_s"},
    })(retrieve)

    @app.get("/livez", response_model=LiveResponse)
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    def ready() -> JSONResponse:
        state = live.state
        meta = {"snapshot_id": state.snapshot_id if state else None,
                "last_refresh_error": live.metadata().get("last_refresh_error")}
        if state is None:
            return JSONResponse(status_code=503, content={"status": "unavailable", **meta})
        return JSONResponse({"status": "ok", **meta})

    ready_responses = {503: {"model": ReadyResponse, "description": "no verified snapshot loaded yet"}}
    app.get("/readyz", response_model=ReadyResponse, responses=ready_responses)(ready)
    app.get("/health", response_model=ReadyResponse, responses=ready_responses,
            description="Same as /readyz (kept for existing clients).")(ready)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/metadata", response_model=MetadataResponse, responses={503: {"model": MetadataResponse}})
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
                        "requests": batcher.requests, "max_batch": batcher.max_batch, "queued": batcher.pending,
                        "isolated_failures": batcher.isolated_failures,
                        "limits": dataclasses.asdict(limits),
                        "user_features": type(lookup).__name__ if lookup is not None else None},
        }
        return JSONResponse(status_code=200 if meta.get("snapshot_id") else 503, content=out)

    return app


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, with the bound in it where pydantic leaves it out."""
    msg = str(error.get("msg", ""))
    if error.get("type") in ("too_long", "too_short"):
        return f"{msg} (limit: {error.get('ctx', {}).get('max_length', error.get('ctx', {}).get('min_length'))})"
    return msg
