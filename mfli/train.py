"""Train the MFLI towers and co-trained multifaceted RQ codebook on canonical tables.

    mfli train ../shared/datasets/ml-latest-small --out runs/ml --split time --epochs 10 --seed 0

or from Python::

    from mfli.train import TrainConfig, train
    model = train(ds, split.train, TrainConfig(seed=0))
    model.save("runs/ml")   # mfli.model.trained.TrainedModel.load("runs/ml") reads it back

Deterministic by seed (torch/numpy seeds, seeded batch order, seeded k-means). CPU by default,
CUDA when present (``device="auto"``). Early stopping on validation recall@K of exact search over
the raw embeddings, counted only once the codebook has all its layers on. Checkpoints are
safetensors + JSON with sha256 checksums, never pickle.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from mfli import distributed
from mfli.data.dataset import Dataset
from mfli.data.errors import DataError
from mfli.model.config import ModelConfig
from mfli.model.features import FeatureSpace, ItemFeatures
from mfli.model.mfli_model import Batch, MFLIModel
from mfli.model.pairs import ItemPairBatch, PairSampler, UserItemBatch
from mfli.model.train_config import TrainConfig
from mfli.model.trained import TrainedModel, resolve_device

# TrainConfig is re-exported: `from mfli.train import TrainConfig, train` is how training is called
__all__ = ["TrainConfig", "resolve_codes", "train"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def resolve_codes(cfg: ModelConfig, n_train_items: int) -> int:
    """M: configured, or ``(n_train_items / items_per_cluster) ** (1/L)`` rounded, at least 4."""
    cb = cfg.codebook
    if cb.codes is not None:
        return int(cb.codes)
    return max(4, round((max(n_train_items, 1) / cb.items_per_cluster) ** (1.0 / max(cb.layers, 1))))



def _slice_pairs(p: UserItemBatch | ItemPairBatch, lo: int, hi: int) -> UserItemBatch | ItemPairBatch:
    """Rows ``[lo, hi)`` of every array field of a pair batch."""
    return type(p)(**{k: v[lo:hi] for k, v in vars(p).items()})


def health_summary(health: dict[str, list[dict]]) -> str:
    """Compact ``facet: util/ppl/collision per level`` text for the progress bar."""
    parts = []
    for name, levels in health.items():
        if levels:
            u = "/".join(f"{lv['util']:.2f}" for lv in levels)
            p = "/".join(f"{lv['ppl']:.0f}" for lv in levels)
            c = "/".join(f"{lv['collision']:.2f}" for lv in levels)
            parts.append(f"{name[:6]} u{u} p{p} c{c}")
    return " | ".join(parts) if parts else "codebook off"


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
class _Trainer:
    """Builds batches and runs the optimisation; kept private, :func:`train` is the entry point."""

    def __init__(self, ds: Dataset, train_inter: pd.DataFrame, valid_inter: pd.DataFrame | None,
                 cfg: TrainConfig) -> None:  # fmt: skip
        self.cfg = cfg
        self.dev = resolve_device(cfg.device)
        mcfg = cfg.model
        ref = train_inter["event_ts"].max()
        train_ids = np.unique(train_inter["item_id"].to_numpy(dtype=np.int64))
        self.fs = FeatureSpace.fit(ds.items, ds.users, train_ids, ref, mcfg.features)
        self.items = ds.items.reset_index(drop=True)
        self.catalogue = self.fs.encode_items(self.items).to(self.dev)
        users = ds.users[["user_id"] + [c for c in ds.users.columns if c != "user_id"]]
        extra = np.setdiff1d(train_inter["user_id"].unique(), users["user_id"].to_numpy())
        if len(extra):  # users with events but no row in the users table: no feature values
            users = pd.concat([users, pd.DataFrame({"user_id": extra.astype(np.int64)})], ignore_index=True)
        self.users = self.fs.encode_users(users).to(self.dev)
        item_ids = self.catalogue.item_ids.cpu().numpy()
        self.sampler = PairSampler(train_inter, item_ids, self.users.user_ids.cpu().numpy(), self.items,
                                   mcfg.history_len, cfg.semantic_max_df)  # fmt: skip
        self.log_q = torch.as_tensor(self.sampler.log_q, device=self.dev)
        self.n_codes = resolve_codes(mcfg, len(self.sampler.train_rows))
        steps_per_epoch = math.ceil(self.sampler.n_events / cfg.batch_size)
        planned = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            planned = min(planned, cfg.max_steps)
        self.steps_per_epoch, self.planned = steps_per_epoch, planned
        cb = mcfg.codebook
        start = cb.start_step if cb.start_step is not None else int(0.3 * planned)
        interval = cb.layer_interval if cb.layer_interval is not None else max(1, int(0.1 * planned))
        warmup = cb.qmf_warmup if cb.qmf_warmup is not None else interval
        self.resolved = {"n_codes": self.n_codes, "start_step": start, "layer_interval": interval,
                         "qmf_warmup": warmup, "steps_per_epoch": steps_per_epoch, "planned_steps": planned}  # fmt: skip
        self.model = MFLIModel(mcfg, self.fs, self.n_codes, start, interval, cfg.seed, warmup).to(self.dev)
        self.valid = self._valid_set(valid_inter, train_inter)

    def _valid_set(self, valid: pd.DataFrame | None, train: pd.DataFrame) -> dict | None:
        if valid is None or len(valid) == 0:
            return None
        rng = np.random.default_rng(self.cfg.seed + 1)
        users = np.unique(valid["user_id"].to_numpy(dtype=np.int64))
        users = users[np.isin(users, train["user_id"].to_numpy())]
        if len(users) > self.cfg.valid_max_users:
            users = np.sort(rng.choice(users, self.cfg.valid_max_users, replace=False))
        hist = train[train["user_id"].isin(users)].sort_values(["user_id", "event_ts", "item_id"], kind="stable")
        tm = TrainedModel(self.model, self.fs, self.cfg, self.catalogue, self.users, self.resolved)
        self.model.train()
        by_user = {u: g for u, g in hist.groupby("user_id")["item_id"]}
        pos = {u: g for u, g in valid[valid["user_id"].isin(users)].groupby("user_id")["item_id"]}
        seen_rows = [tm.catalogue_rows(by_user[u].to_numpy()) for u in users]
        pos_rows = [np.setdiff1d(tm.catalogue_rows(pos[u].to_numpy()), np.r_[r, -1]) for u, r in zip(users, seen_rows)]
        keep = [i for i, p in enumerate(pos_rows) if len(p)]
        return {"users": users[keep], "seen": [seen_rows[i] for i in keep], "pos": [pos_rows[i] for i in keep],
                "hist": [by_user[users[i]].to_numpy() for i in keep], "tm": tm}  # fmt: skip

    def _batch(self, events: np.ndarray, rng: np.random.Generator) -> Batch:
        return self._shard_batches(events, rng, [0], 1)[0]

    def _shard_batches(self, events: np.ndarray, rng: np.random.Generator, shards: Sequence[int],
                       n_shards: int) -> list[Batch]:  # fmt: skip
        """Sample the global batch (identically on every rank: same rng calls) and cut ``shards`` of
        ``n_shards`` contiguous pieces from each of its three pair kinds."""
        cfg, s = self.cfg, self.sampler
        ui = s.user_item(events)
        ii = s.co_engaged(rng, cfg.item_item_batch or cfg.batch_size, cfg.co_window)
        sem = s.semantic(rng, cfg.semantic_batch or cfg.batch_size // 2)
        # uniform negatives are shared by every shard (each shard's softmax sees all of them)
        n_neg = cfg.batch_size if cfg.uniform_negatives is None else cfg.uniform_negatives
        neg = s.train_rows[rng.integers(0, len(s.train_rows), n_neg)] if n_neg > 0 else None
        out = []
        for k in shards:
            ui_k, ii_k, sem_k = (_slice_pairs(p, *distributed.shard_bounds(len(p.target_rows), k, n_shards))
                                 for p in (ui, ii, sem))  # fmt: skip
            out.append(self._to_batch(ui_k, ii_k, sem_k, neg))
        return out

    def _to_batch(self, ui: UserItemBatch, ii: ItemPairBatch, sem: ItemPairBatch,
                  neg: np.ndarray | None = None) -> Batch:
        """Pair batches (+ optional ``(U,)`` uniform negative rows) -> model tensors."""
        dev, cat = self.dev, self.catalogue
        uniq, inv = np.unique(np.maximum(ui.history, 0), return_inverse=True)

        def rows(r: np.ndarray) -> ItemFeatures:
            return cat.rows(torch.as_tensor(r, device=dev))

        return Batch(
            users=self.users.values[torch.as_tensor(ui.user_rows, device=dev)],
            hist=rows(uniq),
            hist_index=torch.as_tensor(inv.reshape(ui.history.shape), device=dev),
            hist_mask=torch.as_tensor(ui.history >= 0, device=dev),
            ui_items=rows(ui.target_rows),
            ui_weight=torch.as_tensor(ui.weight, device=dev),
            ui_logq=self.log_q[torch.as_tensor(ui.target_rows, device=dev)],
            ii_a=rows(ii.anchor_rows),
            ii_b=rows(ii.target_rows),
            ii_label=torch.as_tensor(ii.label, device=dev),
            ii_logq=self.log_q[torch.as_tensor(ii.target_rows, device=dev)],
            sem_a=rows(sem.anchor_rows),
            sem_b=rows(sem.target_rows),
            neg_items=rows(neg) if neg is not None else None,
            neg_logq=self.log_q[torch.as_tensor(neg, device=dev)] if neg is not None else None,
            neg_pool=len(self.sampler.train_rows),
            ui_recency=torch.as_tensor(ui.recency, device=dev),
            ii_recency=torch.as_tensor(ii.recency, device=dev),
        )

    @torch.no_grad()
    def _train_item_embeddings(self, rng: np.random.Generator) -> torch.Tensor:
        rows = self.sampler.train_rows
        if len(rows) > self.cfg.health_max_items:
            rows = np.sort(rng.choice(rows, self.cfg.health_max_items, replace=False))
        was = self.model.training
        self.model.eval()
        emb = self.model.item_embed(self.catalogue.rows(torch.as_tensor(rows, device=self.dev)), drop_ids=False)
        self.model.train(was)
        return emb

    @torch.no_grad()
    def valid_recall(self) -> float | None:
        """Mean recall@K of exact search (sum over facets of q_f . e_f), training items excluded."""
        v = self.valid
        if v is None or len(v["users"]) == 0:
            return None
        was = self.model.training
        self.model.eval()
        tm: TrainedModel = v["tm"]
        items = self._embed_catalogue()
        q = tm.user_embeddings(v["users"], v["hist"]).to(self.dev)
        k = min(self.cfg.valid_k, items.shape[0])
        recalls = []
        B = 512
        for s in range(0, len(q), B):
            scores = q[s : s + B].flatten(1) @ items.flatten(1).T  # (b, N)
            for j, seen in enumerate(v["seen"][s : s + B]):
                scores[j, torch.as_tensor(seen[seen >= 0], device=self.dev)] = float("-inf")
            top = scores.topk(k, dim=1).indices.cpu().numpy()
            for j, t in enumerate(top):
                p = v["pos"][s + j]
                recalls.append(np.isin(p, t).sum() / len(p))
        self.model.train(was)
        return float(np.mean(recalls))

    def _embed_catalogue(self) -> torch.Tensor:
        out = []
        for s in range(0, len(self.catalogue), 16384):
            idx = torch.arange(s, min(s + 16384, len(self.catalogue)), device=self.dev)
            out.append(self.model.item_embed(self.catalogue.rows(idx), drop_ids=False))
        return torch.cat(out)

    def run(self) -> TrainedModel:
        cfg, model = self.cfg, self.model
        mode = cfg.model.codebook.mode
        if mode not in ("joint", "kmeans_after", "none"):
            raise ValueError(f"codebook mode must be joint|kmeans_after|none, got {mode!r}")
        info = distributed.current()
        n_shards = info.world if info.enabled else cfg.batch_shards
        if n_shards < 1 or (info.enabled and cfg.batch_shards not in (1, info.world)):
            raise ValueError(f"batch_shards must be >= 1 (1 or the world size {info.world} under torchrun), "
                             f"got {cfg.batch_shards}")  # fmt: skip
        my_shards = [info.rank] if info.enabled else list(range(n_shards))
        # DDP averages the ranks' gradients; the codebook's buffer/usage/codewords are synced by hand
        ddp = distributed.wrap(model, info, self.dev) if info.enabled else None
        if ddp is not None:
            model.rq.observe = distributed.gathered_observe(model.rq)
        try:
            return self._run(info, n_shards, my_shards, ddp)
        finally:
            if ddp is not None:
                del model.rq.observe

    def _run(self, info: distributed.DistInfo, n_shards: int, my_shards: list[int],
             ddp: torch.nn.Module | None) -> TrainedModel:  # fmt: skip
        from tqdm.auto import tqdm

        cfg, model = self.cfg, self.model
        mode = cfg.model.codebook.mode
        show = cfg.progress and info.is_main
        rng = np.random.default_rng(cfg.seed)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        history: list[dict] = []
        best, best_state, bad = -1.0, None, 0
        step, t0 = 0, time.time()
        health_text = "codebook off"
        model.train()
        for epoch in range(cfg.epochs):
            if step >= self.planned:
                break
            perm = rng.permutation(self.sampler.n_events)
            n_steps = min(self.steps_per_epoch, self.planned - step)
            sums: dict[str, float] = {}
            bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                       disable=not show, leave=False, dynamic_ncols=True)  # fmt: skip
            for i in bar:
                events = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                batches = self._shard_batches(events, rng, my_shards, n_shards)
                usage_before = model.rq.usage.clone() if ddp is not None else None
                opt.zero_grad(set_to_none=True)
                parts = {}
                for batch in batches:
                    if ddp is not None:
                        loss, p = ddp(batch, quantise=mode == "joint")
                    else:
                        loss, p = model.loss(batch, quantise=mode == "joint")
                    (loss / len(batches)).backward()
                    for k, v in p.items():
                        parts[k] = parts.get(k, 0.0) + v / len(batches)
                if ddp is not None:  # logged losses: the mean over ranks, as a single process reports
                    names = sorted(parts)
                    t = torch.tensor([parts[k] for k in names], dtype=torch.float64, device=self.dev)
                    torch.distributed.all_reduce(t)
                    parts = dict(zip(names, (t / info.world).tolist()))
                opt.step()
                step += 1
                if mode == "joint":
                    if ddp is not None:
                        distributed.sync_usage(model.rq, usage_before)
                    events_cb = model.rq.schedule(step)
                    if ddp is not None:
                        distributed.sync_codebook_state(model.rq)
                    if events_cb or (model.rq.n_active and step % 50 == 0):
                        health_text = health_summary(model.rq.health(model.rq.buffer(), self.fs_names))
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if cfg.progress and (i % 10 == 0 or i == n_steps - 1):
                    bar.set_postfix_str(
                        f"loss {parts['loss']:.3f} mf {parts['mf']:.3f} qmf {parts['qmf']:.3f} "
                        f"pen {parts['pen']:.2f} | {health_text}"
                    )
            bar.close()
            rec = {"epoch": epoch + 1, "step": step, "seconds": round(time.time() - t0, 2)}
            rec.update({k: v / max(n_steps, 1) for k, v in sums.items()})
            rec["active_layers"] = model.rq.n_active
            if mode == "joint" and model.rq.n_active:
                rec["codebook"] = model.rq.health(self._train_item_embeddings(rng), self.fs_names)
            vr = self.valid_recall()
            rec[f"valid_recall@{cfg.valid_k}"] = vr
            history.append(rec)
            if show:
                tail = f" valid recall@{cfg.valid_k} {vr:.4f}" if vr is not None else ""
                print(f"epoch {epoch + 1}: loss {rec.get('loss', 0.0):.4f}{tail} | {health_text}", file=sys.stderr)
            settled = mode != "joint" or model.rq.n_active == model.rq.L
            if vr is not None and settled:
                if vr > best:
                    best, bad = vr, 0
                    best_state = copy.deepcopy(model.state_dict())
                    rec["best"] = True
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
        if mode == "kmeans_after":
            model.rq.fit_kmeans(self._train_item_embeddings(np.random.default_rng(cfg.seed)))
        model.eval()
        final = {"epoch": "final", "seconds": round(time.time() - t0, 2), "best_valid_recall": best if best >= 0 else None}
        if model.rq.n_active:
            final["codebook"] = model.rq.health(self._train_item_embeddings(np.random.default_rng(cfg.seed)), self.fs_names)
        placement = None
        if cfg.new_item_neighbours > 0:
            placement, table = self._choose_placement()
            final["placement"] = {**placement.to_dict(), "valid_recall": table}
        history.append(final)
        return TrainedModel(model, self.fs, cfg, self.catalogue, self.users, self.resolved, history, placement)

    @torch.no_grad()
    def _choose_placement(self, max_items: int = 2000):
        """New-item placement's mix (:func:`mfli.model.placement.choose_mix`): up to ``max_items`` trained
        items among the validation positives are played as new."""
        from mfli.model.placement import PlacementConfig, choose_mix

        v, k = self.valid, self.cfg.new_item_neighbours
        if v is None or len(v["users"]) == 0:
            return PlacementConfig(k, 0.0), {}
        tm: TrainedModel = v["tm"]
        was = self.model.training
        self.model.eval()
        try:
            cat = self._embed_catalogue().float().cpu()  # (N, F, d)
            trained = np.flatnonzero(self.catalogue.id_index.cpu().numpy() > 0)
            pseudo = np.intersect1d(np.concatenate(v["pos"]), trained)
            if len(pseudo) > max_items:
                pseudo = np.sort(np.random.default_rng(self.cfg.seed).choice(pseudo, max_items, replace=False))
            feats = self.catalogue.rows(torch.as_tensor(pseudo, device=self.dev))
            tower = tm._embed_features(feats, use_ids=False)
            q = tm.user_embeddings(v["users"], v["hist"]).float().cpu()
            # the trained model's own neighbour index (its rows are `trained`, in order)
            return choose_mix(q, cat, tower, pseudo, tm.content_neighbours(), tm._content(feats),
                              np.searchsorted(trained, pseudo), v["seen"], v["pos"], k_neighbours=k, k=self.cfg.valid_k)
        finally:
            self.model.train(was)

    @property
    def fs_names(self) -> list[str]:
        return self.cfg.model.facet_names


def train(
    ds: Dataset,
    train_interactions: pd.DataFrame,
    cfg: TrainConfig | None = None,
    valid_interactions: pd.DataFrame | None = None,
) -> TrainedModel:
    """Train towers and codebook on ``train_interactions`` (canonical) with ``ds``'s items/users.

    Args:
        ds: the dataset (its ``items`` are the catalogue; ``users`` give user features).
        train_interactions: training events (e.g. ``split.train``).
        cfg: configuration (default :class:`TrainConfig`).
        valid_interactions: events for early stopping; when None and ``cfg.valid_frac > 0``, each
            user's most recent training events are held out for it
            (:func:`mfli.data.split.train_valid_split`).

    Returns:
        the :class:`TrainedModel` (best validation epoch once the codebook is fully on).

    Launched by torchrun (``WORLD_SIZE`` > 1) the same call trains data-parallel
    (:mod:`mfli.distributed`): each rank takes its shard of the global batch, every rank returns the
    same model, and only rank 0 shows progress (saving is the caller's, on rank 0).
    """
    cfg = cfg or TrainConfig()
    for col in ("user_id", "item_id", "event_ts", "weight"):
        if col not in train_interactions.columns:
            raise DataError("interactions", f"missing column {col!r}", column=col)
    if valid_interactions is None and cfg.valid_frac > 0:
        from mfli.data.split import train_valid_split

        train_interactions, valid_interactions = train_valid_split(train_interactions, cfg.valid_frac, cfg.seed)
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(cfg.deterministic or old_det, warn_only=True)
    try:
        # under torchrun: join the process group; every rank seeds alike, so replicas start equal
        distributed.init(resolve_device(cfg.device))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        trainer = _Trainer(ds, train_interactions, valid_interactions, cfg)
        return trainer.run()
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def main(argv: list[str] | None = None) -> None:
    """Entry point under torchrun (:mod:`mfli.distributed`): ``mfli train``'s arguments; rank 0 saves the
    model and prints the summary."""
    import argparse
    import json
    import time

    import torch.distributed as dist

    from mfli.data.loaders import load_dataset
    from mfli.data.split import make_split

    p = argparse.ArgumentParser(prog="torchrun ... -m mfli.train", description=main.__doc__)
    p.add_argument("data_path")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="time", choices=["time", "last", "cold"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="JSON file of TrainConfig overrides")
    a = p.parse_args(argv)
    from pathlib import Path

    overrides = json.loads(Path(a.config).read_text()) if a.config else {}
    overrides["seed"] = a.seed
    if a.epochs is not None:
        overrides["epochs"] = a.epochs
    cfg = TrainConfig.from_dict(overrides)
    t0 = time.time()
    ds = load_dataset(a.data_path)
    sp = make_split(ds, a.split, seed=a.seed)
    model = train(ds, sp.train, cfg)
    info = distributed.current()
    if info.is_main:
        model.save(a.out)
        print(json.dumps({"out": a.out, "world_size": info.world, "seconds": round(time.time() - t0, 2),
                          "history": model.history[-1]}, default=str))  # fmt: skip
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
