"""Do beam search and exact search over the same MFLI embeddings find the same new items?

Trains MFLI on a split (or loads a saved model), builds the index from the items with training
events as ``mfli bench quality`` does, adds the items without training events through the delta
path, then for a seeded sample of training users compares MFLI's user-mode top-100 with exact search
over the same embeddings: the share of exact's new (cold) items that MFLI also returns, per beam
width and per rule for paths the build never saw (``assign_paths(unseen=...)``). No test labels are
needed, so every user with a history counts (not only the split's test users).

    python bench/cold_reach.py ../shared/datasets/ml-latest-small time runs/ml_time [USERS [CONFIG.json]]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(data: str, split: str, model_dir: str, n_users: int = 1500, config: str | None = None) -> None:
    from mfli.eval.metrics import histories_by_user
    from mfli.eval.split_model import split_and_model
    from mfli.index.build import build_from_encoded, encode_items, popularity_score
    from mfli.index.delta import apply_delta, assign_paths
    from mfli.index.inverted import encode_paths, lookup_sorted, pack_paths
    from mfli.serve.exact import exact_search
    from mfli.serve.retriever import Retriever, RetrieverConfig

    over = json.loads(Path(config).read_text()) if config else {}
    ds, sp, model = split_and_model(data, split, model_dir, {"progress": False, **over})
    known = np.sort(sp.train["item_id"].unique())
    items = ds.items
    known_items = items[items["item_id"].isin(known)].reset_index(drop=True)
    new_items = items[~items["item_id"].isin(known)].reset_index(drop=True)
    enc = encode_items(model, known_items)
    res = build_from_encoded(enc, model.codebooks, model.facets, popularity_score(enc.item_ids, sp.train))
    new = encode_items(model, new_items)
    hist = histories_by_user(sp.train)
    users = np.sort(np.random.default_rng(0).choice(hist.index.to_numpy(), min(n_users, len(hist)), replace=False))
    H = [hist[u] for u in users]
    Q = model.user_embeddings(users, H).numpy()
    print(f"M={res.index.M} L={res.index.L} clusters={[c.n_clusters for c in res.index.facets]} "
          f"items with events={len(known_items)} without={len(new_items)} users={len(users)}")
    codes = encode_paths(new.embeddings, model.codebooks, m=1)
    for f, mp in enumerate(res.maps):
        p = pack_paths(codes, res.index.M)[:, f, 0]
        print(f"facet {model.facets[f]}: new items on paths the build saw {np.mean(lookup_sorted(mp.path_ids, mp.path_node, p) >= 0):.3f}")
    all_emb = np.concatenate([enc.embeddings, new.embeddings])
    all_ids = np.concatenate([enc.item_ids, new.item_ids])
    ex_ids, _ = exact_search(Q, all_emb, 100, all_ids, exclude=H)
    cold = set(new.item_ids.tolist())
    print("| unseen-path rule | beam | overlap@100 with exact | exact's new items also found by MFLI |")
    print("|---|---|---|---|")
    for rule in ("centroid", "path"):
        view = apply_delta(res.index, new.item_ids, new.embeddings,
                           assign_paths(new.embeddings, model.codebooks, res.maps, unseen=rule))
        for beam in (32, 64):
            r = Retriever(view, model.codebooks, model.facets, RetrieverConfig(beam=beam, merge="sum"))
            got = r.retrieve_users(Q, 100, exclude=H).item_ids
            num = den = 0
            for a, b in zip(ex_ids, got):
                ca = [x for x in a if x in cold]
                den += len(ca)
                num += len(set(ca) & set(b.tolist()))
            ov = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(ex_ids, got)])
            print(f"| {rule} | {beam} | {ov:.3f} | {num}/{den} = {num / max(den, 1):.3f} |")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]) if len(a) > 3 else 1500, a[4] if len(a) > 4 else None)
