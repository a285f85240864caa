"""Compile the serving kernels into numba's on-disk cache ahead of time.

The scan engine and the neighbour lists are numba kernels cached on disk (``cache=True``). In a fresh
install or container the cache is empty, and the first process to load a snapshot compiles them: about
a minute of one core, more on a busy machine. A service that pays this at start-up is not ready for
that long; a process that pays it on a request answers it late. Running :func:`precompile` once at
install or image-build time (``mfli precompile``) moves that cost there; later processes load the
compiled code in well under a second.

It answers requests in both modes, in batches of one and two, with one kernel thread (the serial kernels)
and two (the parallel ones), on a
small random catalogue and on a delta view of it (new, replaced and tombstoned items), through the same
classes a snapshot serves with, so the compiled signatures are the ones serving uses.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from mfli.index.delta import apply_delta, assign_paths
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve.config import ServingConfig
from mfli.serve.engine import ScanEngine
from mfli.serve.engine_retriever import EngineRetriever


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def precompile(n_items: int = 800, facets: int = 2, dim: int = 8, layers: int = 2, codes: int = 8,
               seed: int = 0) -> float:
    """Build a random ``(n_items, facets, dim)`` catalogue with the served engine settings and answer
    trigger and user requests on it and on a delta view; returns the seconds spent (mostly compiling
    when the cache is empty)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    emb = _unit(rng, (n_items, facets, dim))
    cb = np.empty((layers, facets, codes, dim), np.float32)  # (L, F, M, d): random rows, then small residuals
    cb[0] = emb[rng.choice(n_items, codes, replace=False)].transpose(1, 0, 2)
    cb[1:] = 0.1 * rng.standard_normal(cb[1:].shape).astype(np.float32)
    ids = np.arange(n_items, dtype=np.int64)
    built = rebalance(MultiFacetIndex.build(ids, emb, encode_paths(emb, cb), cb), RebalanceConfig(floor=5, cap=80))
    new = _unit(rng, (20, facets, dim))
    new_ids = np.arange(20, dtype=np.int64) + n_items
    new_ids[0] = ids[1]  # one replaced item
    view = apply_delta(built.index, new_ids, new, assign_paths(new, cb, built.maps), tombstones=ids[2:6])
    served = ServingConfig()  # the defaults new snapshots are served with
    tables = _tables(rng, ids)
    for threads in sorted({served.scan.threads, 2}):  # 1 thread: the serial kernels; more: the parallel ones
        engine_config = dataclasses.replace(served.scan, threads=threads)
        base = EngineRetriever(built.index, cb, config=served.retriever, engine_config=engine_config)
        _answer(rng, base, base.with_index(view), ids, new_ids, facets, dim)
        _blend(rng, base.with_index(view), view, tables[0], ids, new_ids, facets, dim)
        if base.engine.has_lists:  # lists kept as int32 rows (a catalogue whose codes do not fit 16 bits)
            _stored(base.engine, built.index, cb)
            base.engine.config.compact_lists = not base.engine.config.compact_lists
            base.engine.build_lists(base.engine.list_length, base.engine.list_probe)
            for b in (1, 2):
                base.retrieve_triggers([[int(ids[10 + i])] for i in range(b)], 10)
            _stored(base.engine, built.index, cb)
        # routing through the column tree (catalogues of >= 1,024 columns; this one has fewer, so forced)
        tree = ScanEngine(built.index, cb, dataclasses.replace(engine_config, route_groups=4, neighbours=0))
        for b in (1, 2):
            tree.search(_unit(rng, (b, facets, dim)), 10)
    for table in tables:
        table.retrieve([ids[:3], ids[5:6]], 10)
    return time.perf_counter() - t0


def _stored(engine, index: MultiFacetIndex, cb: np.ndarray) -> None:
    """An engine started from ``engine``'s saved lists, as a service starts from a snapshot's
    ``neighbours.npz`` (every entry is checked by a kernel)."""
    from mfli.serve.list_store import load_lists

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_lists(Path(tmp) / "neighbours.npz")
        served = ScanEngine(index, cb, engine.config, lists=load_lists(Path(tmp) / "neighbours.npz"))
    if served.lists_source == "built":
        raise RuntimeError("precompile: the engine did not take the lists it was given")


def _blend(rng: np.random.Generator, retriever: EngineRetriever, view, table, ids: np.ndarray,
           new_ids: np.ndarray, F: int, d: int) -> None:
    """Blend mode's fusion and explanations on a delta view."""
    from mfli.serve.blend import BlendConfig, retrieve_blend

    for b in (1, 2):
        hist = [np.array([ids[3 + i], ids[20 + i], new_ids[1 + i]], np.int64) for i in range(b)]
        retrieve_blend(retriever, table, view, BlendConfig(), _unit(rng, (b, F, d)), hist, 10)


def _tables(rng: np.random.Generator, ids: np.ndarray) -> list:
    """Two dense co-engagement tables over ``ids[:64]``: float16 (what new snapshots store) and float32
    (tables saved before float16); precompile looks items up in both."""
    from mfli.index.coengagement import CoEngagement, to_half

    n = 64
    W = rng.standard_normal((n, n)).astype(np.float32)
    empty = (np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    return [CoEngagement(ids[:n], *empty, "ease", 1.0, dense, scale) for dense, scale in (to_half(W), (W, 1.0))]


def _answer(rng: np.random.Generator, base: EngineRetriever, delta: EngineRetriever, ids: np.ndarray,
            new_ids: np.ndarray, F: int, d: int) -> None:
    """Trigger requests (one trigger, and a snapshot item plus a delta item) and user requests, in
    batches of one and two, on the snapshot and on its delta view."""
    for space in (base, delta):
        for b in (1, 2):
            triggers = [[int(ids[10 + i]), int(new_ids[1 + i])] for i in range(b)]
            space.retrieve_triggers([t[:1] for t in triggers], 10, exclude=[t[:1] for t in triggers])
            space.retrieve_triggers(triggers, 10, exclude=triggers)
            space.retrieve_users(_unit(rng, (b, F, d)), 10, exclude=[t[:1] for t in triggers])
    # a delta over DELTA_EXACT_ITEMS takes the probed pass and its own kernel; this delta is small, so
    # this view's limit is lowered for it
    delta.delta_exact_items = 0
    for b in (1, 2):
        triggers = [[int(ids[10 + i]), int(new_ids[1 + i])] for i in range(b)]
        delta.retrieve_triggers(triggers, 10, exclude=triggers)
