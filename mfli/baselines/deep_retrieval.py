"""Deep Retrieval (DR, Gao et al. 2020), the learnable-index baseline: fit, serve, place new items, save.

Usage::

    dr = DeepRetrieval(DRConfig(n_nodes=20, n_layers=2, beam=25))
    history = dr.fit(train_interactions, item_ids=items.item_id, item_content=content)
    ids, scores = dr.retrieve(user_histories, k=100)          # (B, 100) catalogue ids
    dr.assign_new_items(new_ids, new_content)                 # unseen items take neighbours' paths
    dr.save("out/dr"); dr = DeepRetrieval.load("out/dr")

The model (:mod:`mfli.baselines.dr_model`) and the discrete EM machinery (:mod:`mfli.baselines.dr_em`)
live in their own files; this one holds the configuration, the training loop and serving.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from mfli.baselines.dr_em import (
    ScoreTable,
    kmeans_paths,
    m_step,
    neighbour_paths,
    pack_paths,
    path_stats,
    random_paths,
    unpack_paths,
)
from mfli.baselines.dr_model import DRNet
from mfli.checksums import sha256_file as _sha256
from mfli.data.errors import DataError

FORMAT = "mfli-deep-retrieval"
VERSION = 1


class _Optimizers:
    """Several optimisers stepped as one (dense Adam for the networks, SparseAdam for item tables)."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.opts:
            o.step()


@dataclass
class DRConfig:
    """Deep Retrieval settings. Defaults are the paper's MovieLens-20M ones where it publishes them.

    For catalogues of ~10k items use fewer, fuller paths, e.g. ``n_layers=2, n_nodes=20`` (400 paths,
    ~70 items each with J=3), so that a beam of 25 reaches 5-10x the final k (see docs/baselines.md).
    """

    n_layers: int = 3  # D, depth of a path (paper: 3)
    n_nodes: int = 50  # K, nodes per layer (paper: 50 on MovieLens-20M, 100 on Amazon Books)
    n_paths: int = 3  # J, paths per item (paper: 3)
    beam: int = 25  # B, prefixes kept per layer in serving and in the E-step (paper: 25 / 50)
    alpha: float = 3e-5  # weight of the path-size penalty alpha * |c|^4 / 4 (paper: 3e-5 / 3e-7)
    top_s: int = 16  # S, candidate paths per item kept for the M-step (plus its current J paths)
    encoder: str = "mean"  # "mean" or "gru" over the history (paper: GRU)
    history_len: int = 50  # most recent items the encoder reads (paper: 69)
    min_history: int = 1  # an event is a training pair only with at least this many earlier items
    item_dim: int = 64  # item-id embedding size in the encoder
    user_dim: int = 64  # size of the user vector x
    node_dim: int = 32  # node embedding size fed to deeper layers
    hidden: int = 128  # hidden width of each layer's MLP
    rerank_dim: int = 64  # re-ranker embedding size
    rerank_temperature: float = 0.1  # softmax temperature on cosine scores
    softmax_weight: float = 1.0  # weight of Q_softmax in Q = Q_structure + w * Q_softmax
    logq_correction: bool = True  # subtract log popularity from in-batch logits
    em_rounds: int = 4  # E-step + M-step rounds (paper: converges in 3-5 M-steps offline)
    epochs_per_round: int = 2  # SGD epochs over the training pairs in each E-step
    final_epochs: int = 1  # SGD epochs after the last M-step so the model fits the final paths
    batch_size: int = 512
    lr: float = 3e-3  # Adam
    score_pairs_max: int | None = 200_000  # subsample of pairs whose beams feed s[v, c] (None = all)
    eval_pairs_max: int = 20_000  # pairs used for the log-likelihood reported per round
    path_init: str = "random"  # "random" (paper) or "kmeans" (residual k-means of item content)
    n_neighbors: int = 5  # trained content neighbours that place an unseen item
    # how untrained catalogue items get paths in fit: "neighbours" (their content neighbours' paths) or
    # "reranker" (then an E-step on pseudo-pairs: sampled training queries x paired with the items the
    # re-ranker ranks in their top placement_topk; s[v, c] += p(c | x) over x's beam, penalised M-step)
    placement: str = "neighbours"
    placement_queries: int = 20_000  # training pairs whose windows act as queries for "reranker"
    placement_topk: int = 100  # each query's re-ranker top-k among untrained items become its pseudo-pairs
    knn_exact_max: int = 20_000  # trained items up to which placement's k-NN is exact; above, faiss IVF
    knn_nlist: int = 0  # IVF lists for placement (0: 4 * sqrt(trained items))
    knn_nprobe: int = 16  # IVF lists scanned per placed item
    # lazy Adam (sparse gradients) for the two per-item tables; dense Adam touches every row each step,
    # which dominates training on large catalogues. None: on above sparse_items_above catalogue items
    sparse_items: bool | None = None
    sparse_items_above: int = 200_000
    valid_k: int = 100  # recall@k reported per round when ``valid`` is given
    seed: int = 0
    num_threads: int | None = None  # torch.set_num_threads when set


def _ts_key(ts: pd.Series) -> np.ndarray:
    """Event times as sortable int64 (datetimes, tz-aware or not, or plain numbers)."""
    if pd.api.types.is_numeric_dtype(ts):
        return ts.to_numpy()
    return pd.to_datetime(ts, utc=True).astype("int64").to_numpy()



class DeepRetrieval:
    """Deep Retrieval index: J paths of D nodes per item, beam search serving and a softmax re-ranker.

    Attributes (after :meth:`fit` or :meth:`load`):
        item_ids: ``(N,)`` int64 catalogue ids in internal order.
        codes: ``(N, J)`` int64 packed paths (-1 = none; such an item is not retrievable).
        trained: ``(N,)`` bool, the item had training pairs (its paths come from EM).
        history: one dict per EM round (log-likelihoods, losses, path occupancy, seconds).
    """

    def __init__(self, cfg: DRConfig | None = None) -> None:
        self.cfg = cfg or DRConfig()
        if self.cfg.path_init not in ("random", "kmeans"):
            raise ValueError(f"path_init must be 'random' or 'kmeans', got {self.cfg.path_init!r}")
        self.item_ids = np.zeros(0, dtype=np.int64)
        self.codes = np.zeros((0, self.cfg.n_paths), dtype=np.int64)
        self.trained = np.zeros(0, dtype=bool)
        self.content: np.ndarray | None = None
        self.net: DRNet | None = None
        self.history: list[dict] = []
        self._id_index = pd.Index([], dtype="int64")
        self.last_union_sizes = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ properties
    @property
    def n_total_paths(self) -> int:
        return self.cfg.n_nodes**self.cfg.n_layers

    @property
    def paths(self) -> np.ndarray:
        """``(N, J, D)`` int64 node indices (-1 rows for missing paths)."""
        return unpack_paths(self.codes, self.cfg.n_nodes, self.cfg.n_layers)

    def path_stats(self) -> dict:
        """Path occupancy: used paths, max/mean items per used path, Gini."""
        return path_stats(self.codes, self.n_total_paths)

    # ------------------------------------------------------------------ data helpers
    def _to_idx(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue ids -> internal indices (-1 for unknown ids)."""
        return self._id_index.get_indexer(np.asarray(ids, dtype=np.int64))

    def _hist_tensor(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Histories (catalogue ids, oldest first) -> ``(B, L)`` index + 1, the last L known items, right-padded."""
        L = self.cfg.history_len
        out = np.zeros((len(histories), L), dtype=np.int64)
        for r, h in enumerate(histories):
            idx = self._to_idx(np.asarray(list(h), dtype=np.int64)) if len(h) else np.zeros(0, dtype=np.int64)
            idx = idx[idx >= 0][-L:]
            out[r, : len(idx)] = idx + 1
        return torch.from_numpy(out)

    @staticmethod
    def _windows(seq: np.ndarray, start: np.ndarray, pos: np.ndarray, L: int) -> torch.Tensor:
        """The (up to) L items before each position of a flat per-user sequence -> ``(B, L)`` index + 1."""
        n = np.minimum(L, pos - start)
        ar = np.arange(L)
        idx = pos[:, None] - n[:, None] + ar[None, :]
        valid = ar[None, :] < n[:, None]
        return torch.from_numpy(np.where(valid, seq[np.clip(idx, 0, len(seq) - 1)] + 1, 0))

    def _sequences(self, train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat per-user sequences ordered by time: (seq internal idx, user start offset per row, user ids)."""
        for col in ("user_id", "item_id"):
            if col not in train.columns:
                raise DataError("train_interactions", "missing column", column=col)
        df = train[["user_id", "item_id"] + (["event_ts"] if "event_ts" in train.columns else [])]
        idx = self._to_idx(df["item_id"].to_numpy())
        if (idx < 0).any():
            row = int(np.flatnonzero(idx < 0)[0])
            raise DataError(
                "train_interactions", f"item_id {int(df['item_id'].iloc[row])} is not in the catalogue",
                line=row, column="item_id",
            )
        user_key = df["user_id"].to_numpy()
        if "event_ts" in df:
            order = np.lexsort((_ts_key(df["event_ts"]), user_key))  # by user, then time (stable)
        else:
            order = np.argsort(user_key, kind="stable")
        users = df["user_id"].to_numpy()[order]
        seq = idx[order].astype(np.int64)
        first = np.r_[True, users[1:] != users[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
        return seq, start, users

    # ------------------------------------------------------------------ training
    def _structure_loss(self, x: torch.Tensor, target: torch.Tensor, codes_t: torch.Tensor) -> torch.Tensor:
        """-log sum over the target's paths of p(c | x), averaged: x ``(B, dx)``, target ``(B,)``."""
        paths = codes_t[target]  # (B, J, D), -1 where the item has fewer paths
        ok = paths[:, :, 0] >= 0
        lp = self.net.paths.path_logp(x, paths.clamp(min=0))
        lp = lp.masked_fill(~ok, float("-inf"))
        return -torch.logsumexp(lp, dim=1).mean()

    def _paths_tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.paths)

    @torch.no_grad()
    def _loglik(self, hist: torch.Tensor, target: torch.Tensor) -> float:
        self.net.eval()
        codes_t = self._paths_tensor()
        out = []
        for a in range(0, len(target), 4096):
            x = self.net.encoder(hist[a : a + 4096])
            out.append(-self._structure_loss(x, target[a : a + 4096], codes_t).item() * len(x))
        return float(sum(out) / max(len(target), 1))

    def fit(
        self,
        train_interactions: pd.DataFrame,
        item_ids: Sequence[int] | np.ndarray | int | None = None,
        item_content: np.ndarray | None = None,
        valid: pd.DataFrame | None = None,
    ) -> list[dict]:
        """Train the structure model, the paths (EM) and the re-ranker.

        Args:
            train_interactions: rows (user_id, item_id[, event_ts]); each event with >= ``min_history``
                earlier events of its user is a training pair (history -> item).
            item_ids: the catalogue: ids ``(N,)``, an int N meaning ids 0..N-1, or None for the ids
                in ``train_interactions``. Catalogue items without training pairs are placed from
                content neighbours when ``item_content`` is given, else left without paths.
            item_content: ``(N, C)`` float content vectors aligned with ``item_ids`` (content
                embeddings, TF-IDF, category one-hots...), or None.
            valid: optional later interactions (user_id, item_id); recall@valid_k of their users
                (queried with their training history) is recorded after each round.

        Returns:
            one dict per EM round: ``loglik`` (mean log sum_j p(path_j | x) on training pairs after
            the E-step), ``loglik_after_m`` (same with the new paths), losses, path stats, seconds.
        """
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if item_ids is None:
            ids = np.unique(train_interactions["item_id"].to_numpy()).astype(np.int64)
        elif isinstance(item_ids, (int, np.integer)):
            ids = np.arange(int(item_ids), dtype=np.int64)
        else:
            ids = np.asarray(item_ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise DataError("item_ids", "duplicate item ids in the catalogue")
        self.item_ids = ids
        self._id_index = pd.Index(ids)
        N = len(ids)
        if item_content is not None:
            item_content = np.asarray(item_content, dtype=np.float32)
            if item_content.ndim != 2 or len(item_content) != N:
                raise DataError("item_content", f"expected shape (N={N}, C), got {item_content.shape}")
        self.content = item_content

        seq, start, _ = self._sequences(train_interactions)
        pos = np.flatnonzero(np.arange(len(seq)) - start >= cfg.min_history)
        if len(pos) == 0:
            raise DataError("train_interactions", f"no user has more than min_history={cfg.min_history} events")
        target_all = seq[pos]
        pair_count = np.bincount(target_all, minlength=N)
        self.trained = pair_count > 0
        log_q_all = torch.from_numpy(np.log(pair_count / pair_count.sum() + 1e-12).astype(np.float32))

        sparse = cfg.sparse_items if cfg.sparse_items is not None else N > cfg.sparse_items_above
        self.net = DRNet(
            N, item_dim=cfg.item_dim, user_dim=cfg.user_dim, encoder=cfg.encoder, n_nodes=cfg.n_nodes,
            n_layers=cfg.n_layers, node_dim=cfg.node_dim, hidden=cfg.hidden, rerank_dim=cfg.rerank_dim,
            rerank_temperature=cfg.rerank_temperature, sparse_items=sparse,
        )
        if cfg.path_init == "kmeans":
            if item_content is None:
                raise ValueError("path_init='kmeans' needs item_content")
            self.codes = kmeans_paths(item_content, cfg.n_paths, cfg.n_nodes, cfg.n_layers, cfg.seed)
        else:
            self.codes = random_paths(N, cfg.n_paths, cfg.n_nodes, cfg.n_layers, rng)
        # items without pairs play no part in EM; they are placed from content at the end
        self.codes[~self.trained] = -1
        if sparse:
            opt = _Optimizers(torch.optim.Adam(self.net.dense_parameters(), lr=cfg.lr),
                              torch.optim.SparseAdam(self.net.item_parameters(), lr=cfg.lr))
        else:
            opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)

        eval_sel = rng.choice(len(pos), size=min(cfg.eval_pairs_max, len(pos)), replace=False)
        eval_hist = self._windows(seq, start[pos[eval_sel]], pos[eval_sel], cfg.history_len)
        eval_target = torch.from_numpy(target_all[eval_sel])
        valid_q = self._valid_queries(train_interactions, valid) if valid is not None else None

        self.history = []
        for r in range(cfg.em_rounds + 1):
            t0 = time.perf_counter()
            last = r == cfg.em_rounds
            losses = self._sgd(seq, start, pos, target_all, log_q_all, opt, rng,
                               cfg.final_epochs if last else cfg.epochs_per_round)
            rec = {"round": r, "loglik": self._loglik(eval_hist, eval_target), **losses,
                   "seconds_sgd": time.perf_counter() - t0}
            if not last:
                t1 = time.perf_counter()
                table = self._score_pairs(seq, start, pos, target_all, rng)
                t2 = time.perf_counter()
                res = m_step(*table.top(cfg.top_s, self.codes), table.n_visits, self.codes, cfg.alpha, rng)
                rec["seconds_scores"], rec["seconds_m_step"] = t2 - t1, time.perf_counter() - t2
                rec["paths_changed"] = float((np.sort(res.codes, 1) != np.sort(self.codes, 1)).any(1)[self.trained].mean())
                self.codes = res.codes
                rec["loglik_after_m"] = self._loglik(eval_hist, eval_target)
            rec.update({f"paths_{k}": v for k, v in self.path_stats().items()})
            self._build_index()
            if valid_q is not None:
                rec[f"valid_recall@{cfg.valid_k}"] = self._valid_recall(*valid_q)
            rec["seconds"] = time.perf_counter() - t0
            self.history.append(rec)

        untrained = np.flatnonzero(~self.trained)
        if len(untrained) and item_content is not None and self.trained.any():
            self._place_from_content(untrained, item_content[untrained])
            if cfg.placement == "reranker":
                self._place_by_reranker(untrained, seq, start, pos, rng)
        self._build_index()
        return self.history

    def _sgd(self, seq, start, pos, target_all, log_q_all, opt, rng, epochs: int) -> dict:
        cfg, net = self.cfg, self.net
        net.train()
        codes_t = self._paths_tensor()
        s_sum = m_sum = 0.0
        n_b = 0
        for _ in range(epochs):
            perm = rng.permutation(len(pos))
            for a in range(0, len(perm), cfg.batch_size):
                sel = perm[a : a + cfg.batch_size]
                if len(sel) < 2:
                    continue
                hist = self._windows(seq, start[pos[sel]], pos[sel], cfg.history_len)
                target = torch.from_numpy(target_all[sel])
                x = net.encoder(hist)
                q_struct = self._structure_loss(x, target, codes_t)
                q_soft = net.reranker.in_batch_loss(x, target, log_q_all[target] if cfg.logq_correction else None)
                loss = q_struct + cfg.softmax_weight * q_soft
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                s_sum += q_struct.item()
                m_sum += q_soft.item()
                n_b += 1
        return {"q_structure": s_sum / max(n_b, 1), "q_softmax": m_sum / max(n_b, 1)}

    @torch.no_grad()
    def _score_pairs(self, seq, start, pos, target_all, rng) -> ScoreTable:
        """E-step scores: each pair's beam paths and its item's current paths add p(c | x) to s[v, c]."""
        cfg, net = self.cfg, self.net
        net.eval()
        sel = np.arange(len(pos))
        if cfg.score_pairs_max is not None and len(sel) > cfg.score_pairs_max:
            sel = rng.choice(sel, size=cfg.score_pairs_max, replace=False)
        table = ScoreTable(len(self.item_ids), self.n_total_paths)
        codes_t = self._paths_tensor()
        for a in range(0, len(sel), 2048):
            s = sel[a : a + 2048]
            hist = self._windows(seq, start[pos[s]], pos[s], cfg.history_len)
            target = target_all[s]
            x = net.encoder(hist)
            bp, blp = net.paths.beam_search(x, cfg.beam)
            cur = codes_t[torch.from_numpy(target)]
            clp = net.paths.path_logp(x, cur.clamp(min=0))
            codes = np.concatenate([pack_paths(bp.numpy(), cfg.n_nodes), self.codes[target]], axis=1)
            probs = np.concatenate([blp.exp().numpy(), clp.exp().numpy()], axis=1)
            probs[codes < 0] = 0.0
            codes[codes < 0] = 0
            table.add(target, codes, probs)
        return table

    # ------------------------------------------------------------------ new items
    def _place_from_content(self, idx: np.ndarray, content: np.ndarray) -> np.ndarray:
        """Give items ``idx`` the paths of their nearest trained neighbours; returns their codes ``(n, J)``."""
        if self.content is None:
            raise ValueError("this model was fitted without item_content; new items cannot be placed")
        ref = np.flatnonzero(self.trained)
        self.codes[idx] = -1
        c = self.codes[self.codes >= 0]
        u, cnt = np.unique(c, return_counts=True)
        codes, nb, w = neighbour_paths(
            self.content[ref], self.codes[ref], content, self.cfg.n_neighbors, self.cfg.alpha,
            dict(zip(u.tolist(), cnt.tolist())), np.random.default_rng(self.cfg.seed),
            exact_max=self.cfg.knn_exact_max, nlist=self.cfg.knn_nlist, nprobe=self.cfg.knn_nprobe,
        )
        self.codes[idx] = codes
        # embeddings of placed items: the neighbours' weighted mean, so the re-ranker can score them;
        # in batches, since (n, n_neighbors, dim) for a million items would be gigabytes
        with torch.no_grad():
            rr, enc = self.net.reranker.item_emb, self.net.encoder.item_emb
            step = 65_536
            for a in range(0, len(idx), step):
                sl = slice(a, a + step)
                wt = torch.from_numpy(w[sl].astype(np.float32)).unsqueeze(2)
                nbt = torch.from_numpy(ref[nb[sl]])
                it = torch.from_numpy(idx[sl])
                rr.weight[it] = (rr(nbt) * wt).sum(1)
                enc.weight[it + 1] = (enc(nbt + 1) * wt).sum(1)
        return codes

    @torch.no_grad()
    def _place_by_reranker(self, idx: np.ndarray, seq, start, pos, rng: np.random.Generator) -> None:
        """Re-place untrained items ``idx`` by an E-step on pseudo-pairs (see ``DRConfig.placement``).

        Untrained items have no events, so EM never sees them; their content-neighbour paths need not be
        where the beam goes for the users whose re-ranker top-k they enter. Here sampled training queries
        x stand in for their missing pairs: each x adds p(c | x) for its beam paths c to s[v, c] of the
        untrained items v in x's re-ranker top ``placement_topk``; the penalised M-step then picks v's
        paths among those and its neighbour paths (items no query ranks keep their neighbour paths).
        """
        import faiss

        cfg, net = self.cfg, self.net
        net.eval()
        sel = rng.choice(len(pos), size=min(cfg.placement_queries, len(pos)), replace=False)
        vecs = np.ascontiguousarray(net.reranker.items(torch.from_numpy(idx)).numpy(), dtype=np.float32)
        flat = faiss.IndexFlatIP(vecs.shape[1])
        flat.add(vecs)
        table = ScoreTable(len(idx), self.n_total_paths)
        T = min(cfg.placement_topk, len(idx))
        for a in range(0, len(sel), 1024):
            s = sel[a : a + 1024]
            x = net.encoder(self._windows(seq, start[pos[s]], pos[s], cfg.history_len))
            bp, blp = net.paths.beam_search(x, cfg.beam)
            codes = pack_paths(bp.numpy(), cfg.n_nodes)  # (b, B)
            probs = blp.exp().numpy()
            _, top = flat.search(np.ascontiguousarray(net.reranker.user(x).numpy()), T)  # (b, T) rows of idx
            q = np.repeat(np.arange(len(s)), T)
            table.add(top.ravel(), codes[q], probs[q])
        keep = self.codes[idx]
        items, cand, scores = table.top(cfg.top_s, keep)
        trained_codes = self.codes[self.trained]
        u, cnt = np.unique(trained_codes[trained_codes >= 0], return_counts=True)
        res = m_step(items, cand, scores, table.n_visits, keep, cfg.alpha, rng, dict(zip(u.tolist(), cnt.tolist())))
        self.codes[idx] = res.codes

    def assign_new_items(self, item_ids: Sequence[int] | np.ndarray, content: np.ndarray) -> np.ndarray:
        """Place items never seen in training on their content neighbours' paths (no retraining).

        Args:
            item_ids: ``(n,)`` ids; ids already in the catalogue without training pairs are re-placed,
                unknown ids are appended to the catalogue. Trained items are rejected.
            content: ``(n, C)`` content vectors in the same space as ``fit``'s ``item_content``.

        Returns:
            ``(n, J, D)`` the paths given to the items (a -1 row where fewer than J distinct paths
            were available among the neighbours).
        """
        if self.net is None:
            raise RuntimeError("fit or load the model first")
        ids = np.asarray(item_ids, dtype=np.int64)
        content = np.asarray(content, dtype=np.float32)
        if content.ndim != 2 or len(content) != len(ids):
            raise DataError("content", f"expected shape ({len(ids)}, C), got {content.shape}")
        if self.content is None or content.shape[1] != self.content.shape[1]:
            raise DataError("content", "content width differs from the item_content given to fit")
        idx = self._to_idx(ids)
        if (idx >= 0).any() and self.trained[idx[idx >= 0]].any():
            bad = int(ids[(idx >= 0)][self.trained[idx[idx >= 0]]][0])
            raise ValueError(f"item {bad} was trained; its paths come from EM, not from neighbours")
        new = idx < 0
        if new.any():
            n_new = int(new.sum())
            new_idx = np.arange(len(self.item_ids), len(self.item_ids) + n_new)
            self.item_ids = np.concatenate([self.item_ids, ids[new]])
            self._id_index = pd.Index(self.item_ids)
            self.codes = np.concatenate([self.codes, np.full((n_new, self.cfg.n_paths), -1, dtype=np.int64)])
            self.trained = np.concatenate([self.trained, np.zeros(n_new, dtype=bool)])
            self.content = np.concatenate([self.content, content[new]])
            self.net.grow_items(
                torch.zeros(n_new, self.cfg.item_dim), torch.zeros(n_new, self.cfg.rerank_dim)
            )
            idx[new] = new_idx
        self.content[idx] = content
        codes = self._place_from_content(idx, content)
        self._build_index()
        return unpack_paths(codes, self.cfg.n_nodes, self.cfg.n_layers)

    # ------------------------------------------------------------------ serving
    def _build_index(self) -> None:
        """Inverted index path code -> internal item indices (CSR over the sorted used codes)."""
        it = np.repeat(np.arange(len(self.codes)), self.codes.shape[1])
        c = self.codes.ravel()
        ok = c >= 0
        it, c = it[ok], c[ok]
        order = np.lexsort((it, c))
        self._members = it[order]
        self._codes_sorted, first = np.unique(c[order], return_index=True)
        self._offsets = np.r_[first, len(c)].astype(np.int64)

    @torch.no_grad()
    def user_vectors(self, user_histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Histories (catalogue ids, oldest first) -> ``(B, user_dim)`` x."""
        self.net.eval()
        return self.net.encoder(self._hist_tensor(user_histories))

    @torch.no_grad()
    def retrieve(
        self,
        user_histories: Sequence[Sequence[int]],
        k: int = 100,
        beam: int | None = None,
        exclude: str | Sequence[Iterable[int]] | None = "history",
        rerank: bool = True,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search, union of the items on the final paths, re-rank, drop excluded items, top-k.

        Args:
            user_histories: B lists of catalogue ids, oldest first (the last ``history_len`` are read).
            k: results per query.
            beam: B per layer (default ``cfg.beam``); the union holds up to B paths' items.
            exclude: ``"history"`` (drop each user's history items), None, or B iterables of ids.
            rerank: score by the re-ranker (True) or by the best path's log p(c | x) (False).

        Returns:
            ids ``(B, k)`` int64 (-1 padding when the union is smaller than k) and scores ``(B, k)``
            float32 (-inf padding), best first.
        """
        if self.net is None:
            raise RuntimeError("fit or load the model first")
        self.net.eval()
        beam = beam or self.cfg.beam
        Bq = len(user_histories)
        if exclude == "history":
            excl = user_histories
        elif exclude is None:
            excl = None
        else:
            if len(exclude) != Bq:
                raise ValueError(f"exclude has {len(exclude)} entries for {Bq} queries")
            excl = exclude
        out_ids = np.full((Bq, k), -1, dtype=np.int64)
        out_sc = np.full((Bq, k), -np.inf, dtype=np.float32)
        item_vecs = self.net.reranker.items().numpy() if rerank else None
        union = np.zeros(Bq, dtype=np.int64)
        for a in range(0, Bq, batch_size):
            hists = user_histories[a : a + batch_size]
            x = self.net.encoder(self._hist_tensor(hists))
            bp, blp = self.net.paths.beam_search(x, beam)
            codes = pack_paths(bp.numpy(), self.cfg.n_nodes)  # (Q, b)
            q_idx, items, plp = self._gather(codes, blp.numpy())
            if len(items) == 0:
                continue
            # one row per (query, item): keep the best path's log-probability
            key = q_idx * len(self.item_ids) + items
            order = np.lexsort((-plp, key))
            key, q_idx, items, plp = key[order], q_idx[order], items[order], plp[order]
            first = np.r_[True, key[1:] != key[:-1]]
            q_idx, items, plp, key = q_idx[first], items[first], plp[first], key[first]
            union[a : a + len(hists)] = np.bincount(q_idx, minlength=len(hists))
            if excl is not None:
                ex = [(q, i) for q, e in enumerate(excl[a : a + batch_size]) for i in e]
                if ex:
                    eq = np.array([q for q, _ in ex], dtype=np.int64)
                    ei = self._to_idx(np.array([i for _, i in ex], dtype=np.int64))
                    drop = np.isin(key, eq[ei >= 0] * len(self.item_ids) + ei[ei >= 0])
                    q_idx, items, plp = q_idx[~drop], items[~drop], plp[~drop]
            if rerank:
                u = self.net.reranker.user(x).numpy()
                score = np.einsum("nd,nd->n", u[q_idx], item_vecs[items])
            else:
                score = plp
            order = np.lexsort((-score, q_idx))
            q_idx, items, score = q_idx[order], items[order], score[order]
            rank = np.arange(len(q_idx)) - np.searchsorted(q_idx, q_idx, side="left")
            keep = rank < k
            out_ids[a + q_idx[keep], rank[keep]] = self.item_ids[items[keep]]
            out_sc[a + q_idx[keep], rank[keep]] = score[keep]
        # items on the beam's paths per query, before exclusion: the re-ranker's work per request
        self.last_union_sizes = union
        return out_ids, out_sc

    def _gather(self, codes: np.ndarray, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Beam codes ``(Q, b)`` -> flat (query index, internal item, path log p) over the paths' members."""
        Q, b = codes.shape
        if len(self._codes_sorted) == 0:
            e = np.zeros(0, dtype=np.int64)
            return e, e, np.zeros(0)
        pos_c = np.minimum(np.searchsorted(self._codes_sorted, codes), len(self._codes_sorted) - 1)
        found = self._codes_sorted[pos_c] == codes
        lo = np.where(found, self._offsets[pos_c], 0).ravel()
        n = np.where(found, self._offsets[pos_c + 1] - self._offsets[pos_c], 0).ravel()
        total = int(n.sum())
        q = np.repeat(np.repeat(np.arange(Q), b), n)
        lp = np.repeat(logp.ravel(), n)
        within = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
        return q, self._members[np.repeat(lo, n) + within], lp

    # ------------------------------------------------------------------ validation
    def _valid_queries(self, train: pd.DataFrame, valid: pd.DataFrame) -> tuple[list, list]:
        t = train.sort_values("event_ts", kind="stable") if "event_ts" in train else train
        hist = t.groupby("user_id")["item_id"].apply(list)
        pos = valid.groupby("user_id")["item_id"].apply(set)
        users = [u for u in pos.index if u in hist.index]
        return [hist[u] for u in users], [pos[u] for u in users]

    def _valid_recall(self, histories: list, positives: list) -> float:
        if not histories:
            return float("nan")
        ids, _ = self.retrieve(histories, k=self.cfg.valid_k)
        rec = []
        for row, p, h in zip(ids, positives, histories):
            p = p - set(h)
            if p:
                rec.append(len(p & set(row.tolist())) / len(p))
        return float(np.mean(rec)) if rec else float("nan")

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> Path:
        """Write ``model.safetensors`` (weights, paths, ids, content) and ``deep_retrieval.json``."""
        if self.net is None:
            raise RuntimeError("nothing to save: fit the model first")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        tensors["item_ids"] = torch.from_numpy(self.item_ids.copy())
        tensors["codes"] = torch.from_numpy(self.codes.copy())
        tensors["trained"] = torch.from_numpy(self.trained.astype(np.uint8))
        if self.content is not None:
            tensors["content"] = torch.from_numpy(np.ascontiguousarray(self.content))
        save_file(tensors, str(out / "model.safetensors"))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "config": asdict(self.cfg),
            "n_items": len(self.item_ids),
            "history": self.history,
            "sha256": {"model.safetensors": _sha256(out / "model.safetensors")},
        }
        (out / "deep_retrieval.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> DeepRetrieval:
        """Read a directory written by :meth:`save`; checks format, version and the sha256."""
        d = Path(in_dir)
        meta_path = d / "deep_retrieval.json"
        if not meta_path.exists():
            raise DataError(meta_path, "missing: not a Deep Retrieval model directory")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(meta_path, f"unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
        weights = d / "model.safetensors"
        if _sha256(weights) != meta["sha256"]["model.safetensors"]:
            raise DataError(weights, "sha256 mismatch: the file is corrupt or was changed")
        t = load_file(str(weights))
        self = cls(DRConfig(**meta["config"]))
        cfg = self.cfg
        self.item_ids = t["item_ids"].numpy().astype(np.int64)
        self._id_index = pd.Index(self.item_ids)
        self.codes = t["codes"].numpy().astype(np.int64)
        self.trained = t["trained"].numpy().astype(bool)
        self.content = t["content"].numpy() if "content" in t else None
        self.net = DRNet(
            len(self.item_ids), item_dim=cfg.item_dim, user_dim=cfg.user_dim, encoder=cfg.encoder,
            n_nodes=cfg.n_nodes, n_layers=cfg.n_layers, node_dim=cfg.node_dim, hidden=cfg.hidden,
            rerank_dim=cfg.rerank_dim, rerank_temperature=cfg.rerank_temperature,
        )
        self.net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
        self.net.eval()
        self.history = meta.get("history", [])
        self._build_index()
        return self
