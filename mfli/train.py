"""Train the MFLI towers and co-trained multifaceted RQ codebook on canonical tables.

    mfli train ../shared/datasets/ml-latest-small --out runs/ml --split time --epochs 10 --seed 0

or from Python::

    from mfli.train import TrainConfig, train
    model = train(ds, split.train, TrainConfig(seed=0))
    model.save("runs/ml"); model = TrainedModel.load("runs/ml")

Deterministic by seed (torch/numpy seeds, seeded batch order, seeded k-means). CPU by default,
CUDA when present (``device="auto"``). Early stopping on validation recall@K of exact search over
the raw embeddings, counted only once the codebook has all its layers on. Checkpoints are
safetensors + JSON with sha256 checksums, never pickle.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mfli import distributed
from mfli.checksums import sha256_file as _sha256
from mfli.data.dataset import Dataset
from mfli.data.errors import DataError
from mfli.model.config import ModelConfig, from_dict, to_dict
from mfli.model.features import FeatureSpace, ItemFeatures, UserFeatures
from mfli.model.mfli_model import Batch, MFLIModel
from mfli.model.pairs import ItemPairBatch, PairSampler, UserItemBatch
from mfli.model.quantizer import rq_encode

_FORMAT_VERSION = 1
_WEIGHTS, _CONFIG, _FEATURES, _HISTORY, _MANIFEST = (
    "model.safetensors", "config.json", "feature_space.json", "history.json", "manifest.json",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Training configuration (model, batches, optimiser, schedule, stopping)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 1024  # user -> item pairs per step; also the in-batch negatives per query
    # contiguous shards of each step's batch, each with its own in-batch negatives, losses averaged.
    # Under torchrun it must be 1 or the world size (one shard per rank, batch_size stays global);
    # a single process with batch_shards=N reproduces an N-rank data-parallel run
    batch_shards: int = 1
    item_item_batch: int | None = None  # trigger -> co-engaged pairs per step; None -> batch_size
    semantic_batch: int | None = None  # semantic pairs per step; None -> batch_size // 2
    # items drawn uniformly from the training items per step as extra negatives of every engagement
    # softmax (mixed negative sampling; the logQ correction becomes the mixture's, see mfli.model.losses),
    # so popularity is learned instead of subtracted. None -> batch_size. Off by default: +1.6% recall on
    # amazon-scientific / last (inside the paired interval) but -32% cold recall on the synthetic
    # catalogue, whose new items then lose to popular warm ones (docs/benchmarks.md)
    uniform_negatives: int | None = 0
    co_window: int = 5  # events at most this far apart in a history count as co-engaged
    semantic_max_df: float = 0.01  # text tokens shared by more than 1% of items are not topics
    lr: float = 3e-3  # Adam; embeddings tables dominate the parameters and like a high rate
    weight_decay: float = 0.0
    epochs: int = 10  # passes over the user -> item events (early stopping may end sooner)
    max_steps: int | None = None  # hard cap on optimiser steps (None: epochs decide)
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    patience: int = 3  # epochs without a better validation recall before stopping
    valid_frac: float = 0.05  # share of each user's latest events held out for early stopping; 0: none
    valid_k: int = 100  # K of the validation recall@K
    valid_max_users: int = 2000  # validation users scored (a seeded sample beyond this)
    # torch CPU threads during training (0: leave the process default). The step's ops are small:
    # on a busy 2-core machine 2 threads ran 2x slower than 1 (spin-waiting); raise it on idle many-core hosts
    num_threads: int = 1
    deterministic: bool = True  # deterministic torch kernels: multi-threaded embedding backward is not
    progress: bool = True  # tqdm bar on stderr with losses and codebook health
    health_max_items: int = 50000  # items embedded for the epoch-end codebook health

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> TrainConfig:
        return from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_codes(cfg: ModelConfig, n_train_items: int) -> int:
    """M: configured, or ``(n_train_items / items_per_cluster) ** (1/L)`` rounded, at least 4."""
    cb = cfg.codebook
    if cb.codes is not None:
        return int(cb.codes)
    return max(4, round((max(n_train_items, 1) / cb.items_per_cluster) ** (1.0 / max(cb.layers, 1))))



def _lookup(sorted_keys: np.ndarray, order: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions (in the original order) of ``values`` among keys; -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == values, order[pos], -1).astype(np.int64)


def _history_matrix(rows: Sequence[np.ndarray], H: int) -> np.ndarray:
    """Right-aligned ``(B, H)`` catalogue rows of the last H entries (-1 = empty)."""
    out = np.full((len(rows), H), -1, dtype=np.int64)
    for b, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64)
        r = r[r >= 0][-H:]
        if len(r):
            out[b, H - len(r):] = r
    return out


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
# the trained model
# --------------------------------------------------------------------------------------------
class TrainedModel:
    """A trained MFLI model with its feature space, encoded catalogue and users.

    Attributes:
        config: the :class:`TrainConfig` it was trained with.
        feature_space: the fitted :class:`FeatureSpace`.
        facets: facet names, in embedding order (F).
        history: per-epoch metrics (losses, validation recall, codebook health, seconds).
        codebooks: ``(L', F, M, d)`` float32, the layers switched on (L' = 0 for mode "none").
    """

    def __init__(
        self,
        model: MFLIModel,
        feature_space: FeatureSpace,
        config: TrainConfig,
        catalogue: ItemFeatures,
        users: UserFeatures,
        resolved: dict,
        history: list[dict] | None = None,
    ) -> None:
        self.model = model.eval()
        self.feature_space = feature_space
        self.config = config
        self.catalogue = catalogue  # on the model's device
        self.users = users
        self.resolved = resolved
        self.history = history or []
        self._device = next(model.parameters()).device
        cid = catalogue.item_ids.cpu().numpy()
        self._cat_order = np.argsort(cid, kind="stable")
        self._cat_sorted = cid[self._cat_order]
        uid = users.user_ids.cpu().numpy()
        self._user_order = np.argsort(uid, kind="stable")
        self._user_sorted = uid[self._user_order]

    @property
    def facets(self) -> list[str]:
        return self.model.cfg.facet_names

    @property
    def codebooks(self) -> torch.Tensor:
        rq = self.model.rq
        return rq.codebooks.detach()[: rq.n_active].cpu().clone()

    # encoding ---------------------------------------------------------------------------------
    def catalogue_rows(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Catalogue rows ``(N,)`` of item ids (-1 for items not in the training catalogue)."""
        return _lookup(self._cat_sorted, self._cat_order, np.asarray(item_ids, dtype=np.int64))

    def encode_items(self, items_df: pd.DataFrame) -> ItemFeatures:
        """Items table -> features. With only an ``item_id`` column, catalogue features are used
        (ids absent from the catalogue get no content: a cold item needs its content columns)."""
        if "item_id" not in items_df.columns:
            raise DataError("items", "missing column 'item_id'", column="item_id")
        if set(items_df.columns) > {"item_id"}:
            return self.feature_space.encode_items(items_df).to(self._device)
        rows = self.catalogue_rows(items_df["item_id"].to_numpy())
        feats = self.catalogue.rows(torch.as_tensor(np.maximum(rows, 0), device=self._device))
        miss = torch.as_tensor(rows < 0, device=self._device)
        if miss.any():  # unknown ids without content columns: nothing but the "unknown" rows
            feats = ItemFeatures(
                torch.as_tensor(items_df["item_id"].to_numpy(dtype=np.int64), device=self._device),
                feats.id_index.masked_fill(miss, 0),
                feats.categories.masked_fill(miss[:, None], 0),
                feats.tokens.masked_fill(miss[:, None], 0),
                feats.brand.masked_fill(miss, 0),
                feats.age.masked_fill(miss, self.feature_space.n_age - 1),
            )
        return feats

    @torch.no_grad()
    def _embed_features(self, feats: ItemFeatures, use_ids: bool, batch: int = 16384) -> torch.Tensor:
        out = []
        for s in range(0, len(feats), batch):
            part = feats.rows(torch.arange(s, min(s + batch, len(feats)), device=self._device))
            if not use_ids:
                part = ItemFeatures(part.item_ids, torch.zeros_like(part.id_index), *part.tensors()[2:])
            out.append(self.model.item_embed(part, drop_ids=False).float().cpu())
        if not out:
            return torch.zeros(0, len(self.facets), self.model.cfg.dim)
        return torch.cat(out)

    def item_embeddings(self, items_df: pd.DataFrame, use_ids: bool = True) -> torch.Tensor:
        """Items -> ``(N, F, d)`` float32 L2-normalised facet embeddings (CPU).

        Ids seen in training use their id embedding plus content; other items (and all items when
        ``use_ids=False``) are embedded from content alone.
        """
        return self._embed_features(self.encode_items(items_df), use_ids)

    def item_codes(self, items_df: pd.DataFrame, use_ids: bool = True) -> torch.Tensor:
        """Items -> codes ``(N, F, L')`` int64 with the learned codebooks (greedy RQ)."""
        codes, _ = rq_encode(self.item_embeddings(items_df, use_ids), self.codebooks)
        return codes

    @torch.no_grad()
    def user_embeddings(
        self,
        user_ids: Sequence[int] | np.ndarray,
        histories: Sequence[Sequence[int]],
        batch: int = 4096,
    ) -> torch.Tensor:
        """Users -> ``(B, F, d)`` float32 L2-normalised query embeddings (CPU).

        Args:
            user_ids: ``(B,)`` ids (unknown users: no feature values).
            histories: per user, item ids oldest first; the last ``history_len`` known items count
                (items absent from the training catalogue are skipped).
        """
        uids = np.asarray(user_ids, dtype=np.int64)
        if len(uids) != len(histories):
            raise ValueError(f"{len(uids)} user ids but {len(histories)} histories")
        H = self.model.cfg.history_len
        rows = [self.catalogue_rows(np.asarray(h, dtype=np.int64)) if len(h) else np.zeros(0, np.int64)
                for h in histories]  # fmt: skip
        hist = _history_matrix(rows, H)
        urows = _lookup(self._user_sorted, self._user_order, uids)
        out = []
        for s in range(0, len(uids), batch):
            out.append(self._user_batch(urows[s : s + batch], hist[s : s + batch]).float().cpu())
        if not out:
            return torch.zeros(0, len(self.facets), self.model.cfg.dim)
        return torch.cat(out)

    def _user_batch(self, urows: np.ndarray, hist: np.ndarray) -> torch.Tensor:
        dev = self._device
        K = self.users.values.shape[1]
        vals = torch.zeros(len(urows), K, dtype=torch.long, device=dev)
        known = urows >= 0
        if known.any() and K:
            vals[torch.as_tensor(known, device=dev)] = self.users.values[torch.as_tensor(urows[known], device=dev)]
        uniq, inv = np.unique(np.maximum(hist, 0), return_inverse=True)
        feats = self.catalogue.rows(torch.as_tensor(uniq, device=dev))
        index = torch.as_tensor(inv.reshape(hist.shape), device=dev)
        return self.model.user_embed(vals, feats, index, torch.as_tensor(hist >= 0, device=dev), drop_ids=False)

    # persistence ------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write weights (safetensors), config, feature space, history and a sha256 manifest."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({k: v.cpu() for k, v in self.catalogue.state("catalogue.").items()})
        tensors["users.user_ids"] = self.users.user_ids.cpu().contiguous()
        tensors["users.values"] = self.users.values.cpu().contiguous()
        save_file(tensors, str(out / _WEIGHTS))
        cfg = {"format_version": _FORMAT_VERSION, "train": self.config.to_dict(), "resolved": self.resolved,
               "facets": self.facets}  # fmt: skip
        (out / _CONFIG).write_text(json.dumps(cfg, indent=2))
        self.feature_space.save(out / _FEATURES)
        (out / _HISTORY).write_text(json.dumps(self.history, indent=1))
        files = {n: _sha256(out / n) for n in (_WEIGHTS, _CONFIG, _FEATURES, _HISTORY)}
        (out / _MANIFEST).write_text(json.dumps({"format_version": _FORMAT_VERSION, "sha256": files}, indent=2))
        return out

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> TrainedModel:
        """Load what :meth:`save` wrote, verifying every checksum (no pickle involved)."""
        from safetensors.torch import load_file

        d = Path(model_dir)
        mpath = d / _MANIFEST
        if not mpath.is_file():
            raise DataError(mpath, "missing model manifest")
        manifest = json.loads(mpath.read_text())
        for name, digest in manifest["sha256"].items():
            if not (d / name).is_file():
                raise DataError(d / name, "missing model file")
            if _sha256(d / name) != digest:
                raise DataError(d / name, "sha256 checksum mismatch (file changed or corrupt)")
        meta = json.loads((d / _CONFIG).read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise DataError(d / _CONFIG, f"unsupported model format {meta.get('format_version')!r}")
        config = TrainConfig.from_dict(meta["train"])
        fs = FeatureSpace.load(d / _FEATURES)
        res = meta["resolved"]
        dev = resolve_device(device)
        model = MFLIModel(config.model, fs, res["n_codes"], res["start_step"], res["layer_interval"], config.seed,
                          res.get("qmf_warmup", 0))  # fmt: skip
        tensors = load_file(str(d / _WEIGHTS))
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(state)
        model.to(dev)
        catalogue = ItemFeatures.from_state(tensors, "catalogue.").to(dev)
        users = UserFeatures(tensors["users.user_ids"], tensors["users.values"]).to(dev)
        history = json.loads((d / _HISTORY).read_text())
        return cls(model, fs, config, catalogue, users, res, history)


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
        history.append(final)
        return TrainedModel(model, self.fs, cfg, self.catalogue, self.users, self.resolved, history)

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
