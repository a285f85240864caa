"""Task functions of the daily retrain DAG (Airflow-free: URIs and small dicts in, the same out).

Each function is one DAG task. Artifacts live in the run's work area of the object store
(``<store>/runs/<snapshot_id>/...``); XCom only carries their URIs and small metric dicts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from tasks.artifacts import (
    artifact_uri,
    get_dir,
    get_npz,
    get_parquet,
    open_run_store,
    put_dir,
    put_npz,
    run_dataset,
    scratch_dir,
)
from tasks.params import DailyParams, daily_params

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- data
def ingest_task(run: dict) -> dict:
    """Write the source dataset into the Feast offline store for the run's window; apply; materialise."""
    from tasks.ingest import ingest_dataset

    return ingest_dataset(run)


def extract_task(run: dict, ingested: dict) -> dict:
    """Point-in-time training data from Feast -> canonical parquet artifacts in the work area."""
    from tasks.extract import extract_training

    return extract_training(run, ingested)


def validate_task(run: dict, extracted: dict) -> dict:
    """Great Expectations gates on the extracted tables; raises (nothing downstream runs) on failure."""
    from tasks.validate import validate_training

    return validate_training(run, extracted)


def _train_config(params: DailyParams):
    from mfli.model.config import FacetConfig
    from mfli.model.train_config import TrainConfig

    cfg = TrainConfig(seed=params.seed, epochs=params.epochs, progress=False)
    facets = []
    for name in params.facets:
        if name.startswith("semantic"):
            facets.append(FacetConfig(name=name, kind="semantic", weight=0.5, temperature=0.1))
        elif name.endswith("_high"):
            facets.append(FacetConfig(name=name, kind="engagement", min_label=4.0))
        else:
            facets.append(FacetConfig(name=name, kind="engagement"))
    cfg.model.facets = facets
    return cfg


# ---------------------------------------------------------------------------------------- model
def train_task(run: dict, extracted: dict, validated: dict) -> dict:
    """Train towers and codebooks jointly on events before the holdout cutoff."""
    from mfli.train import train

    ds = run_dataset(run, extracted)
    cutoff = pd.Timestamp(run["cutoff"])
    train_df = ds.interactions[ds.interactions["event_ts"] < cutoff]
    if train_df.empty:
        raise ValueError(f"no training events before the cutoff {run['cutoff']} in {run['dataset_uri']}")
    t0 = time.perf_counter()
    model = train(ds, train_df, _train_config(daily_params(run)))
    seconds = time.perf_counter() - t0
    with scratch_dir() as tmp:
        model.save(tmp / "model")
        uri = put_dir(run["store_uri"], artifact_uri(run, "model"), tmp / "model")
    last = model.history[-1] if getattr(model, "history", None) else {}
    return {
        "model_uri": uri,
        "train_seconds": round(seconds, 2),
        "train_events": int(len(train_df)),
        "facets": list(model.facets),
        "last_epoch": {k: v for k, v in last.items() if isinstance(v, (int, float))},
    }


def _load_model(run_or_store: str, model_uri: str, tmp: Path):
    from mfli.model.trained import TrainedModel

    return TrainedModel.load(get_dir(run_or_store, model_uri, tmp / "model"))


def plan_shards_task(run: dict, extracted: dict) -> list[dict]:
    """One spec per item shard (contiguous row ranges of the items table)."""
    n = int(extracted["n_items"])
    from tasks.runs import shard_ranges

    ranges = shard_ranges(n, daily_params(run).shards)
    return [
        {"store_uri": run["store_uri"], "items_uri": extracted["items_uri"], "shard": i, "of": len(ranges),
         "start": start, "stop": stop, "out_uri": artifact_uri(run, f"encoded/shard-{i:05d}.npz")}
        for i, (start, stop) in enumerate(ranges)
    ]


def encode_shard_task(shard: dict, trained: dict) -> dict:
    """Embed one shard of items and encode their code paths (row-wise: shards add up to a full build)."""
    from mfli.index.build import encode_items

    s = shard["store_uri"]
    items = get_parquet(s, shard["items_uri"]).iloc[shard["start"]:shard["stop"]].reset_index(drop=True)
    with scratch_dir() as tmp:
        model = _load_model(s, trained["model_uri"], tmp)
        enc = encode_items(model, items)
    put_npz(s, shard["out_uri"], enc.to_arrays())
    return {"shard": shard["shard"], "encoded_uri": shard["out_uri"], "items": int(len(items))}


def build_index_task(run: dict, extracted: dict, trained: dict, shards: list[dict]) -> dict:
    """Reduce step: concatenate shards in order, build the CSR index and rebalance it."""
    from mfli.index.build import EncodedItems, build_from_encoded, popularity_score

    s = run["store_uri"]
    parts = [EncodedItems.from_arrays(get_npz(s, sh["encoded_uri"])) for sh in sorted(shards, key=lambda d: d["shard"])]
    enc = EncodedItems.concat(parts)
    inter = get_parquet(s, extracted["interactions_uri"])
    train_df = inter[inter["event_ts"] < pd.Timestamp(run["cutoff"])]
    with scratch_dir() as tmp:
        model = _load_model(s, trained["model_uri"], tmp)
        t0 = time.perf_counter()
        result = build_from_encoded(enc, model.codebooks, model.facets, popularity_score(enc.item_ids, train_df))
        seconds = time.perf_counter() - t0
        result.index.save(tmp / "index")
        uri = put_dir(s, artifact_uri(run, "index"), tmp / "index")
    return {
        "index_uri": uri,
        "items": int(len(enc.item_ids)),
        "build_seconds": round(seconds, 2),
        "balance_before": [b.as_dict() for b in result.before],
        "balance_after": [b.as_dict() for b in result.after],
        "rebalance": result.report,
    }


def coengagement_task(run: dict, extracted: dict, validated: dict) -> dict:
    """Blend mode's co-engagement tables from the events before the cutoff (``params.blend``; runs beside
    training): the served table, its hyper-parameter chosen on the validation split, and the table on
    that split's fit events that the evaluation chooses the blend weights with."""
    from tasks.evaluation import fit_coengagement

    return fit_coengagement(run, extracted)


# ---------------------------------------------------------------------------------------- evaluation
def evaluate_task(run: dict, extracted: dict, trained: dict, index: dict, coengagement: dict | None = None) -> dict:
    """Holdout evaluation: MFLI as served (blend mode when the run has co-engagement tables, else user
    mode) vs exact search over the same embeddings vs popularity, plus codebook/index health, and the
    live snapshot's metrics for the regression gate."""
    from tasks.evaluation import evaluate_run

    return evaluate_run(run, extracted, trained, index, coengagement)


# ---------------------------------------------------------------------------------------- publish
def publish_task(run: dict, trained: dict, index: dict, evaluation: dict, gate: dict) -> dict:
    """Publish the evaluated snapshot (model + index + metrics + the serving config it was evaluated
    with + report) as ``run['snapshot_id']`` and move LATEST to it.

    Idempotent: a snapshot id that already exists (same inputs) is not published again. A run whose
    window ends before the live snapshot's (an old backfill day) publishes its objects only when the
    operator forces it: the live index never moves back in time by accident.
    """
    from mfli.store import read_latest
    from mfli.store.errors import SnapshotNotFound
    from mfli.store.snapshots import read_manifest
    from tasks.evaluation import run_snapshot
    from tasks.runs import ends_later

    s = run["store_uri"]
    store = open_run_store(s)
    sid = run["snapshot_id"]
    params = daily_params(run)
    try:
        read_manifest(store, sid)
        latest = read_latest(store)
        log.info("snapshot %s already published (live: %s); nothing to do", sid, latest and latest.snapshot_id)
        return {"snapshot_id": sid, "published": False, "reason": "already published",
                "store_uri": s, "live": latest.snapshot_id if latest else None}
    except SnapshotNotFound:
        pass
    latest = read_latest(store)
    if latest and ends_later(latest.snapshot_id, sid) and not params.force_publish:
        log.warning("live snapshot %s is newer than %s: not moving LATEST back", latest.snapshot_id, sid)
        return {"snapshot_id": sid, "published": False, "reason": f"newer snapshot {latest.snapshot_id} is live",
                "store_uri": s, "live": latest.snapshot_id}
    with scratch_dir() as tmp:
        snapshot = run_snapshot(run, trained, index, tmp, evaluation["metrics"], evaluation["serving"],
                                evaluation.get("coengagement_uri"),
                                # "lists_uri": an evaluation from before the quantiser was stored
                                evaluation.get("engine_uri", evaluation.get("lists_uri")))
        report = get_dir(s, evaluation["report_uri"], tmp / "report")
        manifest = snapshot.publish(
            store, sid, report_dir=report,
            config=params.to_dict(),
            expected_latest=latest,
            extra={"window": {"start": run["start"], "cutoff": run["cutoff"], "end": run["end"]},
                   "dataset_fingerprint": run["dataset_fingerprint"],
                   "gate": {"passed": gate["passed"], "forced": gate.get("forced", False)}},
        )
    log.info("published snapshot %s (%d files) to %s", sid, len(manifest["files"]), s)
    return {"snapshot_id": sid, "published": True, "store_uri": s, "files": len(manifest["files"]),
            "live": sid}
