"""Deep Retrieval on amazon-scientific / cold (seed 0): neighbour vs reranker placement of the held-out items.

Same split, users, exclusions and metrics as `mfli bench quality --split cold --methods dr`; writes
docs/results/dr_placement_amazon_cold_seed0.json (see docs/baselines.md).

    OMP_NUM_THREADS=1 nice -n 5 python bench/dr_placement_cold.py
"""
import json
import time

import numpy as np

from mfli.baselines.deep_retrieval import DeepRetrieval, DRConfig
from mfli.data.loaders import load_dataset
from mfli.eval.harness import K_MAX, QualityConfig, _SeedRun, content_matrix

ds = load_dataset("../shared/datasets/amazon-scientific")
run = _SeedRun(ds, QualityConfig(split="cold", seeds=1), 0)
content = content_matrix(ds.items); ids = ds.items["item_id"].to_numpy(np.int64)
out = {}
for pl in ("neighbours", "reranker"):
    t0 = time.perf_counter()
    dr = DeepRetrieval(DRConfig(n_nodes=20, n_layers=2, seed=0, num_threads=1, placement=pl))
    dr.fit(run.split.train, item_ids=ids, item_content=content)
    got, _ = dr.retrieve(run.histories, K_MAX, exclude=run.histories)
    r = run.evaluate(got); r.pop("per_user")
    r["seconds"] = time.perf_counter() - t0
    out[pl] = r
    print(pl, {k: round(v, 4) for k, v in r.items()}, flush=True)
with open("docs/results/dr_placement_amazon_cold_seed0.json", "w") as f:
    json.dump(out, f, indent=2)
