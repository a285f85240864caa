"""Would a next-item (transition) table add to blend mode? Measured on one seed, not adopted.

Usage::

    OMP_NUM_THREADS=1 python bench/transition_list.py ../shared/datasets/amazon-scientific last

The co-engagement table (EASE) treats a history as a set. A transition table learns what follows what:
the closed-form ridge regression of each next item on a decayed sum of the (up to) ``window`` items
before it (SLIT, Choi et al. 2021, "Session-aware linear item-item models"),
``W = (S^T S + lambda I)^-1 S^T T`` over every (preceding items, next item) pair of the training
histories. A request scores items by its own decayed recent items times ``W``. Here its list is fused
into the co-engagement list by weighted reciprocal rank (weight ``w``, chosen on the validation split
with the blend weights), so serving would keep three lists. Per seed: the model, index, scan engine and
co-engagement tables of ``mfli bench quality --methods mfli_blend`` (same split, users, exclusions and
metric code), then test recall@100 of blend mode with each ``w`` and the one validation picks.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import scipy.sparse as sp
import torch

from mfli.data.loaders import load_dataset
from mfli.eval.blend_select import fit_tables
from mfli.eval.harness import K_MAX, QualityConfig, _mfli_index, _SeedRun
from mfli.eval.metrics import histories_by_user, recall_at_k
from mfli.index.coengagement import CoEngagementConfig
from mfli.serve.blend import RRF_K, BlendWeights, blend, blend_lists, choose_blend_weights
from mfli.serve.blend_kernels import fuse
from mfli.serve.config import default_scan_config
from mfli.serve.engine_retriever import EngineRetriever
from mfli.serve.retriever import RetrieverConfig

WEIGHTS = (0.0, 0.3, 0.5, 1.0)


def recent_rows(history: np.ndarray, pos: dict[int, int], window: int, decay: float) -> tuple[list[int], list[float]]:
    """The last ``window`` items of ``history`` (oldest first) as table rows, weighted ``decay ** age``."""
    rows, w = [], []
    for age, item in enumerate(history[::-1][:window]):
        r = pos.get(int(item))
        if r is not None:
            rows.append(r)
            w.append(decay**age)
    return rows, w


def transition_weights(train, item_ids: np.ndarray, l2: float, window: int, decay: float) -> np.ndarray:
    """``(N, N)`` float32 ``W``: row i, column j = how much a recent i predicts j next."""
    pos = {int(v): i for i, v in enumerate(item_ids)}
    r, c, v, targets = [], [], [], []
    for h in histories_by_user(train):
        for t in range(1, len(h)):
            rows, w = recent_rows(h[:t], pos, window, decay)
            r += [len(targets)] * len(rows)
            c += rows
            v += w
            targets.append(pos[int(h[t])])
    M, N = len(targets), len(item_ids)
    S = sp.csr_matrix((np.asarray(v, np.float32), (r, c)), shape=(M, N))
    T = sp.csr_matrix((np.ones(M, np.float32), (np.arange(M), targets)), shape=(M, N))
    G = torch.from_numpy((S.T @ S).toarray())
    G.diagonal().add_(float(l2))
    P = torch.cholesky_inverse(torch.linalg.cholesky(G))
    return (P @ torch.from_numpy((S.T @ T).toarray())).numpy()


def transition_list(W: np.ndarray, item_ids: np.ndarray, histories, window: int, decay: float, k: int) -> np.ndarray:
    """``(B, k)`` ids by the decayed recent items' transition scores, history excluded."""
    pos = {int(v): i for i, v in enumerate(item_ids)}
    out = np.full((len(histories), k), -1, np.int64)
    for b, h in enumerate(histories):
        rows, w = recent_rows(h, pos, window, decay)
        if not rows:
            continue
        s = np.asarray(w, np.float32) @ W[rows]
        s[[pos[int(x)] for x in h if int(x) in pos]] = -np.inf
        top = np.argpartition(-s, k)[:k]
        out[b] = item_ids[top[np.argsort(-s[top], kind="stable")]]
    return out


def fused(co: np.ndarray, seq: np.ndarray, w: float) -> np.ndarray:
    """The co-engagement list with the transition list fused in at weight ``w`` (RRF, same length)."""
    if w == 0:
        return co
    none = np.zeros((co.shape[0], 0), np.int64)
    ids, _ = fuse(np.ascontiguousarray(co), np.ascontiguousarray(seq), none, none, float(w), 0.0, 0.0, 0.0,
                  np.zeros(0, np.int64), co.shape[1], RRF_K)
    return ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data")
    p.add_argument("split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l2", type=float, default=100.0, help="the transition table's ridge lambda")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--decay", type=float, default=0.8)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = _SeedRun(load_dataset(a.data), QualityConfig(split=a.split, num_threads=1), a.seed)
    model, _ = run.model("joint")
    _, view, _ = _mfli_index(run, model)
    retriever = EngineRetriever(view, model.codebooks, model.facets,
                                RetrieverConfig(beam=run.cfg.beam, merge="sum", seed=a.seed),
                                dataclasses.replace(default_scan_config(), neighbours=K_MAX))
    vs = run.validation
    table, fit_table = fit_tables(run.split.train, vs, CoEngagementConfig(num_threads=1))

    def lists(train, co_table, users, histories):
        q = model.user_embeddings(users, histories).numpy()
        user, co, trig, _ = blend_lists(retriever, co_table, view, q, histories, K_MAX, run.cfg.triggers)
        W = transition_weights(train, co_table.item_ids, a.l2, a.window, a.decay)
        seq = transition_list(W, co_table.item_ids, histories, a.window, a.decay, K_MAX)
        return user.item_ids, co, trig.item_ids, seq

    u, c, t, s = lists(vs.fit, fit_table, vs.users, vs.histories)
    chosen: dict[float, tuple[float, BlendWeights]] = {}
    for w in WEIGHTS:
        weights, grid = choose_blend_weights(u, fused(c, s, w), t, fit_table.item_ids, vs.positives)
        chosen[w] = (max(grid.values()), weights)
    pick = max(WEIGHTS, key=lambda w: (chosen[w][0] - 1e-12 * w))
    u, c, t, s = lists(run.split.train, table, run.users, run.histories)
    print(f"{a.data} / {a.split}, seed {a.seed}: {len(run.users)} test users; transition table lambda {a.l2:g}, "
          f"window {a.window}, decay {a.decay:g}")
    print(f"test recall@100 of the lists alone: co-engagement {recall_at_k(c, run.positives, 100):.4f}, "
          f"transition {recall_at_k(s, run.positives, 100):.4f}\n")
    print("| transition weight | validation recall@100 | blend weights | test recall@100 | / without |")
    print("|---|---|---|---|---|")
    base = None
    for w in WEIGHTS:
        ids, _ = blend(u, fused(c, s, w), t, chosen[w][1], table.item_ids, K_MAX)
        r = recall_at_k(ids, run.positives, 100)
        base = r if base is None else base
        mark = " (validation's pick)" if w == pick else ""
        bw = chosen[w][1]
        print(f"| {w:g}{mark} | {chosen[w][0]:.4f} | {bw.coengagement:g} / {bw.trigger:g} | {r:.4f} | {r / base:.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
