"""Why does the summed facet score misrank items without training events? Per-facet score statistics.

Trains MFLI on a split as ``mfli bench quality`` does (or loads a saved model), embeds every catalogue
item (items without training events from content alone), and for the split's test users prints, per
facet f, the distribution of ``q_f . e_f`` over warm items, over new (content-only) items, and over
the test positives of each kind, plus the norms of each facet's embeddings. Then exact search over
the whole catalogue with several facet weights for the new items only (warm items keep weight 1 on
every facet): recall@100 and cold recall@100 of each, so the rule is judged by the ranking it gives,
not by a statistic; the same over new items only (how well each score ranks new items among
themselves); and what :func:`mfli.eval.new_item_weights.choose_new_item_weights` sees on the
validation split (simulated cold items) for the same weights.

    python bench/new_item_scores.py ../shared/datasets/amazon-scientific cold runs/amazon_cold_s0 [USERS]
"""

from __future__ import annotations

import sys

import numpy as np


def _q(x: np.ndarray) -> str:
    p = np.percentile(x, [10, 50, 90])
    return f"mean {x.mean():+.3f} sd {x.std():.3f} p10/50/90 {p[0]:+.3f}/{p[1]:+.3f}/{p[2]:+.3f}"


def main(data: str, split: str, model_dir: str, n_users: int = 0) -> None:
    from mfli.eval.metrics import histories_by_user, positives_by_user, recall_per_user
    from mfli.eval.split_model import split_and_model
    from mfli.index.build import encode_items
    from mfli.serve.exact import exact_search

    ds, sp, model = split_and_model(data, split, model_dir, {"num_threads": 1})
    known = np.sort(sp.train["item_id"].unique())
    enc = encode_items(model, ds.items)
    E, ids = enc.embeddings, enc.item_ids  # (N, F, d)
    new = ~np.isin(ids, known)
    hist = histories_by_user(sp.train)
    users = np.sort(sp.test["user_id"].unique())
    users = users[np.isin(users, hist.index.to_numpy())]
    if n_users and n_users < len(users):  # 0: every test user
        users = np.sort(np.random.default_rng(0).choice(users, n_users, replace=False))
    H = [hist[u] for u in users]
    P = positives_by_user(sp.test, users)
    Q = model.user_embeddings(users, H).numpy()
    F = E.shape[1]
    names = list(model.facets)
    print(f"{len(users)} test users, {int((~new).sum())} warm items, {int(new.sum())} new items")
    row = {int(i): r for r, i in enumerate(ids)}
    rng = np.random.default_rng(0)
    samp = rng.choice(len(ids), min(20000, len(ids)), replace=False)
    for f in range(F):
        nrm = np.linalg.norm(E[:, f], axis=1)
        print(f"facet {names[f]}: |e| warm {nrm[~new].mean():.3f} new {nrm[new].mean():.3f}; "
              f"|q| {np.linalg.norm(Q[:, f], axis=1).mean():.3f}")
        S = Q[:, f] @ E[samp, f].T  # (B, n) random catalogue sample
        print(f"  q.e over warm items : {_q(S[:, ~new[samp]].ravel())}")
        print(f"  q.e over new items  : {_q(S[:, new[samp]].ravel())}")
        pos_w, pos_n = [], []  # scores of each user's test positives
        for b, p in enumerate(P):
            r = np.array([row[int(i)] for i in p if int(i) in row], np.int64)
            if r.size:
                s = E[r, f] @ Q[b, f]
                pos_w.append(s[~new[r]])
                pos_n.append(s[new[r]])
        pw, pn = np.concatenate(pos_w), np.concatenate(pos_n)
        if pw.size:
            print(f"  q.e of warm positives: {_q(pw)}")
        if pn.size:
            print(f"  q.e of new positives : {_q(pn)}")
    # score spread per facet among new items: how much each facet's term reorders them
    cold_ids = np.asarray(sp.cold_items, np.int64)
    P_cold = [p[np.isin(p, cold_ids)] for p in P]
    one = [1.0] * F
    weights = [one, [1.0] + [0.0] * (F - 1), [1.0] + [0.5] * (F - 1), [0.0] + [1.0] * (F - 1),
               [1.25] + [1.0] * (F - 1), [1.5] * F]
    print("exact search over every item, all items scored with facet weights w:")
    for w in (one, [1.0] + [0.0] * (F - 1), [0.0] + [1.0] * (F - 1)):
        got, _ = exact_search(Q, E, 100, ids, weights=w, exclude=H)
        print(f"  w={w}: cold recall@100 {np.nanmean(recall_per_user(got, P_cold, 100)):.4f} "
              f"new items in top-100 {np.isin(got, ids[new]).sum(1).mean():.1f}")
    print("exact search over the new items only (how each score ranks new items among themselves):")
    for w in (one, [1.0] + [0.0] * (F - 1), [0.0] + [1.0] * (F - 1)):
        got, _ = exact_search(Q, E[new], 100, ids[new], weights=w, exclude=H)
        print(f"  w={w}: cold recall@100 {np.nanmean(recall_per_user(got, P_cold, 100)):.4f}")
    print("exact search over every item, new items scored with weights w' (warm items: 1 per facet):")
    for w in weights:
        scale = np.where(new[:, None], np.asarray(w, np.float32)[None, :], 1.0).astype(np.float32)
        got, _ = exact_search(Q, E * scale[:, :, None], 100, ids, exclude=H)
        r = np.nanmean(recall_per_user(got, P, 100))
        rc = recall_per_user(got, P_cold, 100)
        n_new = np.isin(got, ids[new]).sum(1).mean()
        print(f"  w'={w}: recall@100 {r:.4f} cold recall@100 {np.nanmean(rc):.4f} new items in top-100 {n_new:.1f}")
    from mfli.eval.new_item_weights import choose_new_item_weights
    from mfli.eval.validation import validation_set

    choice = choose_new_item_weights(model, ds.items, sp.train, validation_set(sp.train, seed=0), seed=0)
    print(f"validation split, 10% of the items with events embedded content-only: chosen w'={list(choice.weights)} "
          f"recall@100 {choice.recall:.4f} (w'=1: {choice.recall_equal:.4f}); every point tried:")
    for w, r in choice.tried:
        print(f"  w'={list(w)}: validation recall@100 {r:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:5]))
