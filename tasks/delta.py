"""Task functions of the hourly delta DAG.

New items of a window are encoded from content with the *live* snapshot's model, assigned code paths
with its codebooks and rebalance map (no retraining, no rebuild), checked by the cold-start gate and
published as an immutable delta bound to that snapshot id.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tasks.artifacts import (
    artifact_uri,
    get_npz,
    get_parquet,
    open_run_store,
    put_npz,
    put_parquet,
    scratch_dir,
    split_uri,
)
from tasks.params import delta_params

log = logging.getLogger(__name__)


def _snapshot_cache() -> Path:
    from tasks.runs import mfli_home

    return mfli_home() / "cache"


def load_live(store_uri: str, snapshot_id: str):
    """The published :class:`~mfli.snapshot.Snapshot` ``snapshot_id``, downloaded once into the local cache
    and verified like the service loads it (checksums, facets, codebook shape)."""
    from mfli.snapshot import Snapshot

    return Snapshot.open(open_run_store(store_uri), snapshot_id, _snapshot_cache())


def extract_new_items_task(run: dict) -> dict | None:
    """Items created in ``[start, end)`` that the live snapshot does not hold; None means skip."""
    from mfli.store import read_latest
    from tasks.extract import extract_new_items

    latest = read_latest(open_run_store(run["store_uri"]))
    if latest is None:
        log.info("no snapshot published yet in %s: nothing to attach a delta to, skipping", run["store_uri"])
        return None
    items = extract_new_items(run)
    if len(items):
        live = load_live(run["store_uri"], latest.snapshot_id)
        items = items[~np.isin(items["item_id"].to_numpy(np.int64), live.index.item_ids)].reset_index(drop=True)
    if items.empty:
        log.info("no new items in window %s for snapshot %s, skipping", run["window"], latest.snapshot_id)
        return None
    uri = put_parquet(run["store_uri"], artifact_uri(run, "new_items.parquet"), items)
    return {"snapshot_id": latest.snapshot_id, "items_uri": uri, "n_items": int(len(items))}


def plan_delta_shards_task(run: dict, new_items: dict) -> list[dict]:
    n = int(new_items["n_items"])
    from tasks.runs import shard_ranges

    return [
        {"store_uri": run["store_uri"], "snapshot_id": new_items["snapshot_id"], "items_uri": new_items["items_uri"],
         "shard": i, "start": start, "stop": stop, "out_uri": artifact_uri(run, f"assigned/shard-{i:05d}.npz")}
        for i, (start, stop) in enumerate(shard_ranges(n, delta_params(run).shards))
    ]


def encode_assign_shard_task(shard: dict) -> dict:
    """Content-only embeddings and rebalanced cluster assignment of one shard of new items."""
    from mfli.index.build import encode_items
    from mfli.index.delta import assign_paths

    s = shard["store_uri"]
    items = get_parquet(s, shard["items_uri"]).iloc[shard["start"]:shard["stop"]].reset_index(drop=True)
    live = load_live(s, shard["snapshot_id"])
    enc = encode_items(live.model, items)
    clusters = assign_paths(enc.embeddings, live.model.codebooks, live.index.maps)
    put_npz(s, shard["out_uri"], {"item_ids": enc.item_ids, "embeddings": enc.embeddings, "clusters": clusters})
    return {"shard": shard["shard"], "assigned_uri": shard["out_uri"], "items": int(len(items))}


def cold_start_gate_task(run: dict, new_items: dict, shards: list[dict]) -> dict:
    """Run :func:`mfli.eval.gates.cold_start_gate` on the window's assigned items; raises
    :class:`~mfli.eval.gates.GateFailed` (nothing published) or writes the delta parquet to the work area."""
    from mfli.eval.gates import GateFailed, cold_start_gate
    from mfli.index.delta import delta_rows_table

    s = run["store_uri"]
    params = delta_params(run)
    parts = [get_npz(s, sh["assigned_uri"]) for sh in sorted(shards, key=lambda d: d["shard"])]
    ids = np.concatenate([p["item_ids"] for p in parts])
    emb = np.concatenate([p["embeddings"] for p in parts])
    clusters = np.concatenate([p["clusters"] for p in parts])
    live = load_live(s, new_items["snapshot_id"])
    report = cold_start_gate(live, ids, emb, clusters, min_self_retrieval_rate=params.min_self_retrieval_rate,
                             max_cluster_overflow=params.max_cluster_overflow)
    if not report.passed:
        raise GateFailed(f"cold-start gate failed for window {run['window']}:\n"
                         + "\n".join(f"  - {x}" for x in report.failures) + "\nno delta was published")
    summary = report.as_dict()
    with scratch_dir() as tmp:
        pq.write_table(delta_rows_table(ids, emb, clusters, live.index.facet_names), tmp / "delta.parquet")
        summary["delta_uri"] = artifact_uri(run, "delta.parquet")
        store, key = split_uri(s, summary["delta_uri"])
        store.put_file(key, tmp / "delta.parquet")
    return summary


def publish_delta_task(run: dict, new_items: dict, gate: dict) -> dict:
    """Publish the window's delta bound to the snapshot it was assigned with (idempotent per window)."""
    from mfli.store import publish_delta

    s = run["store_uri"]
    store, key = split_uri(s, gate["delta_uri"])
    manifest = publish_delta(store, new_items["snapshot_id"], run["window"], store.get_bytes(key),
                             {"items": gate["items"], "self_retrieval_rate": gate["self_retrieval_rate"],
                              "start": run["start"], "end": run["end"]})
    log.info("published delta %s for snapshot %s (%d items)", run["window"], new_items["snapshot_id"], gate["items"])
    return {"snapshot_id": new_items["snapshot_id"], "window": run["window"], "items": gate["items"],
            "manifest": {k: v for k, v in manifest.items() if isinstance(v, (str, int, float))}}
