"""Time and memory of the synthetic catalogue generator (write_synthetic, chunked parquet output).

    .venv/bin/python bench/generate_catalogue.py --items 1000000 --interactions 10000000
    .venv/bin/python bench/generate_catalogue.py --items 2000000 --interactions 20000000 --json

Prints wall seconds, events/s, peak RSS (resource.getrusage, whole process) and the size on disk.
Peak memory grows with items + users (numeric state) and with --chunk-size (one chunk in flight);
use two runs of different size to extrapolate to 10M items / 100M interactions.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from mfli.data.synthetic import SyntheticConfig, write_synthetic


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=None, help="default: interactions / 20")
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--subtopics", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=SyntheticConfig.chunk_size)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temp dir, deleted)")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = ap.parse_args(argv)

    cfg = SyntheticConfig(
        n_items=args.items,
        n_users=args.users or max(1, args.interactions // 20),
        n_interactions=args.interactions,
        n_topics=args.topics,
        subtopics_per_topic=args.subtopics,
        n_brands=max(args.topics, args.items // 200),
        chunk_size=args.chunk_size,
        seed=args.seed,
    )
    tmp = None
    out = args.out
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="mfli-gen-bench-"))
        out = tmp / "synthetic"
    try:
        t0 = time.perf_counter()
        write_synthetic(cfg, out, overwrite=True)
        seconds = time.perf_counter() - t0
        n_events = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "interactions").glob("*.parquet"))
        result = {
            "items": cfg.n_items,
            "users": cfg.n_users,
            "interactions_target": cfg.n_interactions,
            "interactions_written": n_events,
            "parts": len(list((out / "interactions").glob("*.parquet"))),
            "seconds": round(seconds, 1),
            "events_per_s": round(n_events / seconds),
            # ru_maxrss is in KiB on Linux
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "disk_mib": round(_dir_bytes(out) / 2**20, 1),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
