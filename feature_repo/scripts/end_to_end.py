"""End to end through Feast on a throw-away copy of this repository, with timings.

    .venv/bin/python feature_repo/scripts/end_to_end.py ../shared/datasets/amazon-scientific
    .venv/bin/python feature_repo/scripts/end_to_end.py            # small synthetic catalogue

load -> validate inputs -> write day partitions -> apply -> historical (training) retrieval ->
validate the training frame -> materialise -> online lookup. Prints one JSON document. Kept out of
`feast apply` by .feastignore.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "dataset", nargs="?", help="dataset folder (any format load_dataset detects); default: synthetic"
    )
    ap.add_argument("--keep", help="build the repository copy here instead of a temporary folder")
    args = ap.parse_args()

    from mfli.features.extract import online_user_features, training_frame
    from mfli.features.ingest import write_offline
    from mfli.features.repo import copy_repo
    from mfli.features.window import Window
    from mfli.validation import RunScope, validate

    sec: dict[str, float] = {}
    t = time.perf_counter()
    if args.dataset:
        from mfli.data.loaders import load_dataset

        ds = load_dataset(args.dataset)
    else:
        from mfli.data.synthetic import SyntheticConfig, generate

        ds = generate(SyntheticConfig(n_items=2_000, n_users=1_000, n_interactions=20_000))
    sec["load"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="mfli-feast-") as tmp:
        repo = copy_repo(args.keep or os.path.join(tmp, "repo"))
        window = Window.covering(ds.interactions["event_ts"], ds.items["created_at"])
        t = time.perf_counter()
        validate(ds.interactions, "interactions", repo.path / "validation", RunScope(window=window))
        validate(ds.items, "items", repo.path / "validation")
        sec["validate_inputs"] = time.perf_counter() - t

        t = time.perf_counter()
        report = write_offline(ds, repo.data_root, window)
        sec.update({f"ingest_{k}": v for k, v in report.seconds.items()})
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            repo.apply()
        sec["apply"] = time.perf_counter() - t

        t = time.perf_counter()
        frame = training_frame(repo, window)
        sec["historical_retrieval"] = time.perf_counter() - t
        t = time.perf_counter()
        validate(frame, "training", repo.path / "validation", RunScope(window=window))
        sec["validate_training"] = time.perf_counter() - t

        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            repo.materialize(window.end, start_if_new=window.start)
        sec["materialize"] = time.perf_counter() - t
        users = frame["user_id"].drop_duplicates().head(100).tolist()
        t = time.perf_counter()
        online = online_user_features(repo, users)
        sec["online_lookup_100_users"] = time.perf_counter() - t

    sec["ingest_apply_retrieve"] = (
        sec["ingest_write_sources"] + sec["ingest_derive"] + sec["apply"] + sec["historical_retrieval"]
    )
    print(
        json.dumps(
            {
                "dataset": ds.name,
                "stats": ds.stats(),
                "rows": report.rows,
                "training_frame": list(frame.shape),
                "online_rows": len(online),
                "seconds": {k: round(v, 2) for k, v in sec.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
