"""Freshness benchmark: seconds from new items' features to a delta a live retriever serves, against ANN.

    mfli bench delta --items 10000 --base-items 100000 --out docs/results/delta_10k.json

Setting (REFERENCE.md 1.6): a full snapshot (model + rebalanced index over ``base_items`` items) is
live in a local object store and served by a :class:`~mfli.serve.live.LiveRetriever`; ``new_items``
items arrive that the snapshot has never seen (the most recently created items of the synthetic
catalogue; their events are held out of training). Each stage of the MFLI delta path is timed:

1. **encode**: the live model's item tower embeds the new items from their raw features (content
   only: categories, title/text tokens, brand, age), feature encoding included;
2. **assign**: :func:`~mfli.index.delta.assign_paths` with the live codebooks and rebalance maps;
3. **write**: :func:`~mfli.index.delta.delta_rows_table` to parquet, published with
   :func:`~mfli.store.publish_delta` (sha256 manifest) bound to the live snapshot;
4. **reload**: ``LiveRetriever.refresh()`` (list, download and verify the delta, read it,
   :func:`~mfli.index.delta.apply_delta` on the loaded full index, swap the retriever) and one
   user-mode query that returns a new item.

Against it, on the same embeddings: FAISS HNSW (M=32, efConstruction=40) over the concatenated
facets, **full rebuild** over base + new items (and its save + load), and **incremental add** of the
new items to the base graph; FAISS IVF incremental add for reference. The ANN paths need the same
encode stage, so ``paths`` adds it to their figures.

One-time costs of a resident delta worker and server (loading the model, the index, the first
snapshot) are reported apart: they are paid once per snapshot, not per delta.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mfli.eval.serving.config import Log
from mfli.eval.serving.data import train_bench_model
from mfli.eval.serving.machine import machine_info, set_threads


@dataclass
class FreshnessBenchConfig:
    """What the freshness benchmark builds and times."""

    new_items: int = 10_000  # items in the delta
    base_items: int = 100_000  # items in the live full snapshot
    n_users: int = 10_000  # synthetic users
    n_interactions: int = 200_000  # synthetic events (those on new items are held out)
    dim: int = 64  # d per facet
    facets: int = 2  # F
    layers: int = 2  # L
    codes: int | None = None  # M; None: the trainer's rule, (train items / 30) ** (1 / L)
    hidden: int = 128  # tower width
    train_steps: int = 200  # brief training of the live model (optimiser steps, batch 512)
    threads: int = 1  # torch threads (encode, serving)
    build_threads: int = 2  # FAISS build threads (HNSW, IVF, rebalance k-means)
    hnsw_m: int = 32
    ef_construction: int = 40
    probes: int = 256  # new items queried (by their own embedding) after the reload
    probe_k: int = 10  # a probe counts as served when its item is in the top probe_k
    seed: int = 0
    work_dir: str | None = None  # store, cache and snapshot files (default: a temporary folder)


class LiveBuilder:
    """``build(snapshot_dir, delta_paths)`` for :class:`~mfli.serve.live.LiveRetriever`.

    The snapshot is loaded (:meth:`mfli.snapshot.Snapshot.load`) and its serving retriever prepared
    (:meth:`~mfli.snapshot.Snapshot.retriever`) once per snapshot folder; each refresh applies the
    deltas to the loaded index and returns a view of that retriever serving them, so the object in
    flight is never modified and no base structure is rebuilt (O(delta) per refresh).
    """

    def __init__(self) -> None:
        self._base: dict[str, tuple] = {}
        self.load_seconds: dict[str, float] = {}

    def __call__(self, snapshot_dir: Path, delta_paths: list[Path]):
        from mfli.snapshot import Snapshot, apply_delta_files

        key = str(snapshot_dir)
        if key not in self._base:
            t0 = time.perf_counter()
            snapshot = Snapshot.load(snapshot_dir)
            self._base = {key: (snapshot.index, snapshot.retriever())}  # one snapshot at a time
            self.load_seconds[key] = time.perf_counter() - t0
        index, base = self._base[key]
        view = apply_delta_files(index, delta_paths)
        return base if view is index else base.with_index(view)


def _split_catalogue(ds, n_new: int):
    """The ``n_new`` most recently created items are new; events on them, and after the first of them,
    are held out of the snapshot."""
    items = ds.items.sort_values(["created_at", "item_id"], kind="stable").reset_index(drop=True)
    new = items.iloc[len(items) - n_new:].reset_index(drop=True)
    base = items.iloc[: len(items) - n_new].reset_index(drop=True)
    cutoff = new["created_at"].min()
    ev = ds.interactions
    train = ev[(ev["event_ts"] < cutoff) & ev["item_id"].isin(base["item_id"])].reset_index(drop=True)
    return base, new, train, cutoff


def run_freshness_bench(cfg: FreshnessBenchConfig, log: Log = print) -> dict:
    """Run the benchmark; returns the JSON-ready result (see the module docstring)."""
    if cfg.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="mfli-fresh-") as tmp:
            return _run(cfg, Path(tmp), log)
    return _run(cfg, Path(cfg.work_dir), log)


def _run(cfg: FreshnessBenchConfig, work: Path, log: Log) -> dict:
    import pyarrow.parquet as pq

    from mfli.baselines.ann import AnnConfig, AnnIndex, concat_facets
    from mfli.data.dataset import Dataset
    from mfli.data.synthetic import SyntheticConfig, generate
    from mfli.index.build import build_from_encoded, encode_items
    from mfli.index.delta import assign_paths, delta_rows_table
    from mfli.serve.live import LiveRetriever
    from mfli.snapshot import Snapshot
    from mfli.store import open_store, publish_delta

    if cfg.new_items < 1 or cfg.base_items < 1:
        raise ValueError("new_items and base_items must be >= 1")
    t_start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    set_threads(cfg.threads)
    machine = machine_info()
    one: dict[str, float] = {}
    log(f"freshness benchmark: {cfg.base_items:,} base items + {cfg.new_items:,} new items")

    # ---- the live snapshot (not part of the delta latency)
    t0 = time.perf_counter()
    ds = generate(SyntheticConfig(n_items=cfg.base_items + cfg.new_items, n_users=cfg.n_users,
                                  n_interactions=cfg.n_interactions, seed=cfg.seed))
    base_df, new_df, train_ev, cutoff = _split_catalogue(ds, cfg.new_items)
    one["generate"] = time.perf_counter() - t0
    base_ds = Dataset(name="fresh-base", format=ds.format, interactions=train_ev, items=base_df, users=ds.users,
                      meta={})
    model, one["train"], n_train = train_bench_model(
        base_ds, train_ev, dim=cfg.dim, facets=cfg.facets, layers=cfg.layers, codes=cfg.codes, hidden=cfg.hidden,
        steps=cfg.train_steps, threads=cfg.threads, seed=cfg.seed)
    log(f"  trained {cfg.train_steps} steps on {n_train:,} items in {one['train']:.1f}s")
    t0 = time.perf_counter()
    enc = encode_items(model, base_df)
    set_threads(cfg.build_threads)
    built = build_from_encoded(enc, model.codebooks, model.facets)
    set_threads(cfg.threads)
    one["snapshot_index_build"] = time.perf_counter() - t0
    snapshot = Snapshot(model, built.index, {"n_items": len(base_df)})  # default ServingConfig: beam 32, merge sum
    store = open_store(work / "store")
    sid = "fresh-0001"
    t0 = time.perf_counter()
    snapshot.publish(store, sid)
    one["snapshot_publish"] = time.perf_counter() - t0
    log(f"  snapshot {sid}: {len(base_df):,} items, clusters {[f.n_clusters for f in built.index.facets]}, "
        f"index built in {one['snapshot_index_build']:.1f}s")

    # ---- the resident processes: a delta worker (model + index maps) and a live server
    folder = snapshot.save(work / "snapshot")  # what the worker's cache holds after a download
    t0 = time.perf_counter()
    worker = Snapshot.load(folder)
    worker_model, worker_index = worker.model, worker.index
    one["worker_load"] = time.perf_counter() - t0
    builder = LiveBuilder()
    t0 = time.perf_counter()
    live = LiveRetriever.from_store(store, cache_dir=work / "cache", build=builder)
    one["server_first_load"] = time.perf_counter() - t0
    codebooks = worker_model.codebooks
    new_ids = new_df["item_id"].to_numpy(np.int64)
    probe_rows = np.random.default_rng(cfg.seed).choice(len(new_ids), min(cfg.probes, len(new_ids)), replace=False)
    probe_emb = worker_model.item_embeddings(new_df.iloc[probe_rows], use_ids=False).numpy()
    before = live.current.retrieve_users(probe_emb, k=cfg.probe_k)
    served_before = float(np.isin(new_ids[probe_rows], before.item_ids).mean())

    # ---- the delta path, stage by stage
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    emb = worker_model.item_embeddings(new_df, use_ids=False).numpy()
    stages["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clusters = assign_paths(emb, codebooks, worker_index.maps)
    stages["assign"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = delta_rows_table(new_ids, emb, clusters, worker_model.facets)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    manifest = publish_delta(store, sid, "w0001", buf.getvalue(), meta={"n_items": len(new_ids)})
    stages["write"] = time.perf_counter() - t0
    j = int(probe_rows[0])
    t0 = time.perf_counter()
    swapped = live.refresh(raise_errors=True)
    got = live.current.retrieve_users(emb[j : j + 1], k=cfg.probe_k)
    stages["reload"] = time.perf_counter() - t0
    if not swapped or new_ids[j] not in got.item_ids[0]:
        raise RuntimeError(f"the reloaded retriever does not serve new item {new_ids[j]}")
    total = sum(stages.values())
    log("  mfli delta: " + ", ".join(f"{k} {v:.2f}s" for k, v in stages.items()) + f"; total {total:.2f}s")
    res = live.current.retrieve_users(emb[probe_rows], k=cfg.probe_k)
    served = float(np.mean([new_ids[r] in res.item_ids[i] for i, r in enumerate(probe_rows)]))

    # ---- ANN: full rebuild vs incremental add, on the same embeddings
    x_base = concat_facets(built.index.embeddings)
    base_ids = built.index.item_ids
    x_new = concat_facets(emb)
    ann: dict[str, dict] = {}
    hcfg = {"kind": "hnsw", "hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction,
            "num_threads": cfg.build_threads}
    t0 = time.perf_counter()
    hnsw = AnnIndex(AnnConfig(mode="incremental", **hcfg)).build(x_base, base_ids)
    base_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    hnsw.add(x_new, new_ids)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = AnnIndex(AnnConfig(mode="rebuild_at_snapshot", **hcfg)).build(
        np.concatenate([x_base, x_new]), np.concatenate([base_ids, new_ids]))
    rebuild_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full.save(work / "hnsw")
    AnnIndex.load(work / "hnsw")
    save_load_s = time.perf_counter() - t0
    ann["hnsw"] = {"base_build_s": base_build, "incremental_add_s": add_s, "full_rebuild_s": rebuild_s,
                   "rebuild_save_load_s": save_load_s, "params": {"M": cfg.hnsw_m, "ef_construction": cfg.ef_construction,
                                                                  "build_threads": cfg.build_threads}}
    del hnsw, full
    ivf = AnnIndex(AnnConfig(kind="ivf", mode="incremental", num_threads=cfg.build_threads))
    t0 = time.perf_counter()
    ivf.build(x_base, base_ids)
    ivf_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ivf.add(x_new, new_ids)
    ann["ivf"] = {"base_build_s": ivf_build, "incremental_add_s": time.perf_counter() - t0, "nlist": ivf.nlist}
    log(f"  hnsw: full rebuild {rebuild_s:.1f}s (+ save/load {save_load_s:.1f}s), incremental add {add_s:.1f}s")
    enc_s = stages["encode"]
    paths = {
        "mfli_delta": total,
        "hnsw_full_rebuild": enc_s + rebuild_s,
        "hnsw_full_rebuild_save_load": enc_s + rebuild_s + save_load_s,
        "hnsw_incremental_add": enc_s + add_s,
        "ivf_incremental_add": enc_s + ann["ivf"]["incremental_add_s"],
    }
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "config": asdict(cfg),
        "machine": machine,
        "data": {"source": "synthetic catalogue (mfli.data.synthetic); new items = the most recently created, "
                           "their events held out of training",
                 "base_items": len(base_df), "new_items": len(new_df), "train_items": int(n_train),
                 "train_events": len(train_ev), "cutoff": str(cutoff),
                 "clusters_per_facet": [f.n_clusters for f in built.index.facets],
                 "M": int(codebooks.shape[2]), "L": int(codebooks.shape[0])},
        "mfli": {"stages_s": stages, "total_s": total, "delta_rows": table.num_rows,
                 "delta_bytes": int(manifest["size"]), "probe_served_fraction": served,
                 "probe_served_fraction_before_delta": served_before,
                 "probe": f"{len(probe_rows)} new items queried by their own embedding, top {cfg.probe_k}",
                 "reload": "LiveRetriever.refresh (verify + read + apply_delta + swap) and one query"},
        "one_time_s": {**one, "server_snapshot_load": next(iter(builder.load_seconds.values()))},
        "ann": ann,
        "paths_s": paths,
        "speedup": {"hnsw_full_rebuild_over_mfli": paths["hnsw_full_rebuild"] / total,
                    "hnsw_incremental_over_mfli": paths["hnsw_incremental_add"] / total},
        "total_seconds": time.perf_counter() - t_start,
    }


def format_tables(result: dict) -> str:
    """Markdown: the MFLI stages and the paths side by side."""
    m = result["mfli"]
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in m["stages_s"].items()]
    lines += [f"| **total (features -> served)** | **{m['total_s']:.2f}** |", "",
              "| path (new items -> searchable) | seconds |", "|---|---|"]
    names = {"mfli_delta": "MFLI delta (encode + assign + write + reload)",
             "hnsw_full_rebuild": "HNSW full rebuild (encode + build over base + new)",
             "hnsw_full_rebuild_save_load": "HNSW full rebuild + save + load",
             "hnsw_incremental_add": "HNSW incremental add (encode + add)",
             "ivf_incremental_add": "IVF incremental add (encode + add)"}
    lines += [f"| {names[k]} | {v:.2f} |" for k, v in result["paths_s"].items()]
    return "\n".join(lines)


__all__ = ["FreshnessBenchConfig", "LiveBuilder", "format_tables", "run_freshness_bench"]
