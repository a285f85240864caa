"""Why Deep Retrieval loses recall against its own brute force on large catalogues (docs/baselines.md).

Builds the serving benchmark's data (synthetic catalogue, briefly trained towers for the content
vectors DR places untrained items with), fits DR as ``mfli bench serving`` does (D=2, J=3, K for ~30
items per path, one EM round) and splits its recall against the re-ranker's brute-force top-k by
whether the reference item was **trained** (paths from EM) or **placed** (paths from content
neighbours), with the union sizes and path occupancy. ``--events`` controls how many catalogue items
have events: few events on a 100k catalogue reproduce the 1M run's mix (9% trained, 91% placed)
at a tenth of the cost.

    nice -n 5 python bench/dr_scale.py --items 100000 --events 200000 --out docs/results/dr_scale_100k.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def prepare(n_items: int, n_events: int, n_users: int, n_queries: int, seed: int = 0, log=print):
    """The serving benchmark's data (catalogue, content vectors, queries); returns (data, seconds)."""
    from mfli.eval.serving_bench import ServingBenchConfig, prepare_data

    scfg = ServingBenchConfig(n_items=n_items, n_users=n_users, n_interactions=n_events, n_queries=n_queries,
                              methods=("dr",), seed=seed, threads=1)
    t0 = time.perf_counter()
    data, _ = prepare_data(scfg, log)
    return data, time.perf_counter() - t0


def run(data, prep_s: float, beams: tuple[int, ...], placement: str, nodes: int | None, seed: int = 0,
        holdout: bool = False, log=print) -> dict:
    import torch

    from mfli.baselines.deep_retrieval import DeepRetrieval, DRConfig
    from mfli.eval.serving.methods import dr_brute_force
    from mfli.eval.serving_bench import _concat
    inter = data.interactions
    if holdout:
        # the query users' events are left out of DR's fit (EM and placement never see them): their
        # histories are then new users' histories, and the placement E-step cannot fit their queries
        from mfli.eval.serving_bench import user_histories

        hist_keys = {tuple(h) for h in data.histories}
        held = [u for u, h in user_histories(inter).items() if tuple(h) in hist_keys]
        log(f"  holding {len(held):,} query users ({inter['user_id'].isin(held).sum():,} events) out of the fit")
        inter = inter[~inter["user_id"].isin(held)]
    trained_ids = np.unique(inter["item_id"].to_numpy(np.int64))
    N = len(data.item_ids)
    J, D = 3, 2
    K = nodes or max(8, round(math.sqrt(N * J / 30)))
    drc = DRConfig(n_layers=D, n_nodes=K, n_paths=J, em_rounds=1, epochs_per_round=1, final_epochs=1,
                   score_pairs_max=50_000, eval_pairs_max=5_000, num_threads=1, seed=seed, placement=placement)
    dr = DeepRetrieval(drc)
    t0 = time.perf_counter()
    dr.fit(inter, item_ids=data.item_ids, item_content=_concat(data.items))
    fit_s = time.perf_counter() - t0
    log(f"  {N:,} items ({len(trained_ids):,} trained), K={K}, placement={placement}, fit {fit_s:.1f}s")
    torch.set_num_threads(1)
    H = data.histories
    _, ref_rows = dr_brute_force(dr, H, 100)  # internal rows, best first
    ref_trained = dr.trained[ref_rows]
    occ = np.bincount(dr.codes[dr.codes >= 0])
    occ_tr = np.bincount(dr.codes[dr.trained][dr.codes[dr.trained] >= 0], minlength=len(occ))
    used = occ > 0
    out = {"n_items": N, "n_trained": len(trained_ids), "n_events": len(inter), "K": K, "D": D, "J": J,
           "placement": placement, "queries_held_out_of_fit": holdout, "fit_s": fit_s, "prepare_s": prep_s,
           "ref_share_placed": float(1 - ref_trained.mean()),
           "paths_used": int(used.sum()), "paths_total": K**D,
           "items_per_path_mean": float(occ[used].mean()), "items_per_path_max": int(occ.max()),
           "trained_per_used_path_mean": float(occ_tr[used].mean()), "beams": []}
    for beam in beams:
        got = dr.retrieve(H, k=100, beam=beam, exclude=None)[0]
        got_rows = dr._to_idx(got.ravel()).reshape(got.shape)
        hit = np.array([np.isin(r, g) for r, g in zip(ref_rows, got_rows)])
        point = {"beam": beam, "recall": float(hit.mean()),
                 "recall_trained_ref": float(hit[ref_trained].mean()) if ref_trained.any() else None,
                 "recall_placed_ref": float(hit[~ref_trained].mean()) if (~ref_trained).any() else None,
                 "union_mean": float(dr.last_union_sizes.mean()),
                 "union_share_placed": float(np.mean([(~dr.trained[g[g >= 0]]).mean() for g in got_rows]))}
        out["beams"].append(point)
        log(f"    beam {beam}: recall {point['recall']:.3f} (trained ref {point['recall_trained_ref']}, "
            f"placed ref {point['recall_placed_ref']}), union {point['union_mean']:.0f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, nargs="+", default=[200_000])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--beams", type=int, nargs="+", default=[10, 25, 100])
    ap.add_argument("--placement", nargs="+", default=["neighbours"])
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--holdout", action="store_true", help="leave the query users' events out of DR's fit")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = []
    for ev in a.events:
        data, prep_s = prepare(a.items, ev, a.users, a.queries)
        for pl in a.placement:
            res.append(run(data, prep_s, tuple(a.beams), pl, a.nodes, holdout=a.holdout))
            if a.out:
                with open(a.out, "w") as f:
                    json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
