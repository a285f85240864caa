"""A trained MFLI model: inference (item and user embeddings) and persistence, for training and serving.

:func:`mfli.train.train` returns one; a snapshot (:mod:`mfli.snapshot`) holds one. Serving imports
this module and never the training loop (``mfli.train``, ``torch.distributed``).

The user tower's input is assembled in one place, :meth:`TrainedModel.user_embeddings`: encoded user
attributes ``(B, K)`` (stored ones, or explicit ones from :meth:`TrainedModel.user_values`) and a
right-aligned history of catalogue rows ``(B, H)``.

Example::

    model = TrainedModel.load("runs/ml")
    q = model.user_embeddings([7], [[12, 40]])                                # (1, F, d)
    v = model.user_values([7], [{"segment": "s0"}])                           # (1, K) with one override
    q2 = model.user_embeddings([7], [[12, 40]], values=v)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mfli.checksums import sha256_file as _sha256
from mfli.data.errors import DataError
from mfli.model.features import FeatureSpace, ItemFeatures, UserFeatures
from mfli.model.mfli_model import MFLIModel
from mfli.model.placement import ContentNeighbours, PlacementConfig, content_matrix
from mfli.model.quantizer import rq_encode
from mfli.model.train_config import TrainConfig

_FORMAT_VERSION = 1
_WEIGHTS, _CONFIG, _FEATURES, _HISTORY, _MANIFEST = (
    "model.safetensors", "config.json", "feature_space.json", "history.json", "manifest.json",
)  # fmt: skip

__all__ = ["TrainedModel", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        placement: PlacementConfig | None = None,
    ) -> None:
        self.model = model.eval()
        self.placement = placement or PlacementConfig()  # mix 0: items without a trained id use the tower
        self._neighbours: ContentNeighbours | None = None
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

        Ids seen in training use their id embedding plus content. Other items are embedded from
        content alone and, when :attr:`placement` has a mix above 0, moved towards their content
        neighbours among the trained items (:mod:`mfli.model.placement`). ``use_ids=False``: every
        item from content alone, the item tower's own answer (no placement).
        """
        feats = self.encode_items(items_df)
        emb = self._embed_features(feats, use_ids)
        if not use_ids or self.placement.mix <= 0:
            return emb
        new = np.flatnonzero(feats.id_index.cpu().numpy() == 0)
        if new.size == 0:
            return emb
        nb = self.content_neighbours()
        placed = nb.place(self._content(feats.rows(torch.as_tensor(new, device=self._device))), emb[new].numpy(),
                          self.placement)
        emb[new] = torch.from_numpy(placed)
        return emb

    def _content(self, feats: ItemFeatures):
        fs = self.feature_space
        return content_matrix(feats, fs.n_categories, fs.n_tokens, fs.n_brands)

    def content_neighbours(self) -> ContentNeighbours:
        """The trained catalogue items' content vectors and embeddings (built once, on first use)."""
        if self._neighbours is None:
            trained = torch.nonzero(self.catalogue.id_index > 0).flatten()
            feats = self.catalogue.rows(trained)
            self._neighbours = ContentNeighbours(self._content(feats), self._embed_features(feats, True).numpy())
        return self._neighbours

    def item_codes(self, items_df: pd.DataFrame, use_ids: bool = True) -> torch.Tensor:
        """Items -> codes ``(N, F, L')`` int64 with the learned codebooks (greedy RQ)."""
        codes, _ = rq_encode(self.item_embeddings(items_df, use_ids), self.codebooks)
        return codes

    def user_values(self, user_ids: Sequence[int] | np.ndarray,
                    attrs: Sequence[Mapping[str, object]] | None = None) -> np.ndarray:
        """Encoded user attributes ``(B, K)`` int64: the stored ones of known users (0 = padding for
        unknown ones), overridden column by column by ``attrs[b]`` (``{user column: raw value}``)."""
        uids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        stored = self.users.values.cpu().numpy()
        values = np.zeros((uids.size, stored.shape[1]), np.int64)
        urows = _lookup(self._user_sorted, self._user_order, uids)
        known = urows >= 0
        if known.any() and stored.shape[1]:
            values[known] = stored[urows[known]]
        if attrs is None:
            return values
        if len(attrs) != uids.size:
            raise ValueError(f"{uids.size} user ids but {len(attrs)} attribute mappings")
        fs = self.feature_space
        cols = list(fs.user_columns)
        rows = [i for i, a in enumerate(attrs) if a]
        if rows and cols:
            frame = pd.DataFrame({"user_id": uids[rows],
                                  **{c: pd.Series([attrs[i].get(c) for i in rows], dtype=object) for c in cols}})
            for c in fs.user_numeric_edges:
                if c in frame:
                    frame[c] = pd.to_numeric(frame[c], errors="coerce")
            enc = fs.encode_users(frame).values.numpy()
            for r, i in enumerate(rows):
                for j, c in enumerate(cols):
                    if c in attrs[i]:
                        values[i, j] = enc[r, j]
        return values

    @torch.no_grad()
    def user_embeddings(
        self,
        user_ids: Sequence[int] | np.ndarray,
        histories: Sequence[Sequence[int]],
        batch: int = 4096,
        values: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Users -> ``(B, F, d)`` float32 L2-normalised query embeddings (CPU).

        Args:
            user_ids: ``(B,)`` ids (unknown users: no feature values).
            histories: per user, item ids oldest first; the last ``history_len`` known items count
                (items absent from the training catalogue are skipped).
            values: ``(B, K)`` encoded attributes (:meth:`user_values`); default the stored ones.
        """
        uids = np.asarray(user_ids, dtype=np.int64)
        if len(uids) != len(histories):
            raise ValueError(f"{len(uids)} user ids but {len(histories)} histories")
        vals = self.user_values(uids) if values is None else np.asarray(values, dtype=np.int64)
        if vals.shape != (len(uids), self.users.values.shape[1]):
            raise ValueError(f"values must be (B={len(uids)}, K={self.users.values.shape[1]}), got {vals.shape}")
        H = self.model.cfg.history_len
        rows = [self.catalogue_rows(np.asarray(h, dtype=np.int64)) if len(h) else np.zeros(0, np.int64)
                for h in histories]  # fmt: skip
        hist = _history_matrix(rows, H)
        out = []
        for s in range(0, len(uids), batch):
            out.append(self._user_batch(vals[s : s + batch], hist[s : s + batch]).float().cpu())
        if not out:
            return torch.zeros(0, len(self.facets), self.model.cfg.dim)
        return torch.cat(out)

    def _user_batch(self, values: np.ndarray, hist: np.ndarray) -> torch.Tensor:
        """The user tower on encoded attributes ``(b, K)`` and right-aligned history rows ``(b, H)`` (-1 empty)."""
        dev = self._device
        uniq, inv = np.unique(np.maximum(hist, 0), return_inverse=True)
        feats = self.catalogue.rows(torch.as_tensor(uniq, device=dev))
        index = torch.as_tensor(inv.reshape(hist.shape), device=dev)
        return self.model.user_embed(torch.as_tensor(values, device=dev), feats, index,
                                     torch.as_tensor(hist >= 0, device=dev), drop_ids=False)

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
               "facets": self.facets, "placement": self.placement.to_dict()}  # fmt: skip
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
        placement = PlacementConfig(**meta["placement"]) if "placement" in meta else None  # older models: none
        return cls(model, fs, config, catalogue, users, res, history, placement)
