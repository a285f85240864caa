"""The serving object of one published snapshot: model + index + deltas, answering retrieval requests.

A published snapshot folder holds ``model/`` (:meth:`mfli.train.TrainedModel.save`), ``index/``
(:meth:`mfli.index.inverted.MultiFacetIndex.save`), ``report/`` and ``metrics.json``; its deltas are
parquet files of ``(item_id, facet, slot, cluster, embedding)`` rows
(:func:`mfli.index.delta.delta_rows_table`). :class:`SnapshotBuilder` is the
``build(snapshot_dir, delta_paths)`` factory :class:`~mfli.serve.live.LiveRetriever` calls: it loads
both (checksums verified by their loaders, nothing unpickled), applies the deltas in window order and
returns a :class:`SnapshotRetriever`. On a refresh that only brings new deltas it reuses the loaded
model, index and prepared retriever of the same snapshot, so a delta swap costs O(delta).

A :class:`SnapshotRetriever` is immutable once built: the live object is replaced, never modified, so
a request that took it finishes on it.

Two modes (:meth:`SnapshotRetriever.retrieve_batch`):

- **trigger** (the paper's item-to-item serving): the request's ``recent_items`` (oldest first) are the
  triggers; chosen when ``mode="auto"`` and at least one recent item is in the index;
- **user**: the user tower embeds the user (stored attributes or ``user_features``, plus a history of
  ``user_features["history_item_ids"]`` followed by ``recent_items``) and beam search over the
  codebooks finds the clusters. With only a ``user_id``, the features come from a
  :data:`UserFeatureLookup` (the Feast online store by default, see :func:`default_user_features`).

Recent items and the history are never returned; ids unknown to the snapshot are ignored.

Example::

    live = open_live("s3://models/mfli")                           # LiveRetriever over SnapshotRetriever
    obj = live.current
    [res] = obj.retrieve_batch([RetrievalRequest(recent_items=[12, 40], k=50)])
    res["mode"], res["items"][0]   # "trigger", {"item_id", "score", "facet", "cluster", "trigger"}
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfli.index.delta import DeltaIndex, apply_delta, delta_from_table
from mfli.index.inverted import MultiFacetIndex
from mfli.serve.live import LiveRetriever
from mfli.serve.retriever import RetrievalResult, Retriever, RetrieverConfig

log = logging.getLogger(__name__)

MODEL_DIR, INDEX_DIR, METRICS_FILE = "model", "index", "metrics.json"
MODES = ("auto", "trigger", "user")

#: ``lookup(user_ids) -> rows``: one mapping per requested user, in request order. Recognised keys:
#: ``history_item_ids`` (item ids, oldest first), ``user_attrs`` (``"column=value"`` strings) and the
#: model's user feature columns; anything else (activity counts ...) is ignored.
UserFeatureLookup = Callable[[Sequence[int]], Sequence[Mapping[str, Any]]]


class SnapshotLoadError(ValueError):
    """A snapshot or delta folder cannot be turned into a serving object; the message names the file."""


class RequestError(ValueError):
    """A request that cannot be answered as asked (HTTP 422).

    Attributes:
        field: the request field at fault (``"k"``, ``"facet_quotas"``, ``"user_features.history_item_ids"`` ...).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass
class RetrievalRequest:
    """One request, as received (validated against the snapshot when answered)."""

    user_id: int | None = None  # needed for user mode unless user_features or recent_items are given
    recent_items: Sequence[int] = ()  # oldest first; the triggers of trigger mode, never returned
    user_features: Mapping[str, Any] | None = None  # raw user features; skip the lookup when given
    k: int = 100  # results wanted (1..ServingConfig.max_k)
    facet_quotas: Mapping[str, float] | None = None  # {facet: weight}; facets not named get no slots
    mode: str = "auto"  # "auto" | "trigger" | "user"


@dataclass
class ServingConfig:
    """Serving settings of a :class:`SnapshotRetriever`."""

    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)  # both modes' search settings
    max_k: int = 1000  # largest k a request may ask for
    quota_views: int = 64  # distinct facet_quotas vectors kept ready (LRU); each is a shallow copy


# ------------------------------------------------------------------------------------------------
# user features
# ------------------------------------------------------------------------------------------------
class FeastUserFeatures:
    """:data:`UserFeatureLookup` over the Feast online store (feature service ``user_online``).

    Args:
        repo: a :class:`mfli.features.repo.FeatureRepo`; default :func:`mfli.features.repo.open_repo`
            (``MFLI_FEAST_REPO`` / ``MFLI_FEAST_DATA`` / ``MFLI_FEAST_ENV``).
    """

    def __init__(self, repo: Any = None) -> None:
        from mfli.features.repo import open_repo

        self.repo = repo if repo is not None else open_repo()

    def __call__(self, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        from mfli.features.extract import online_user_features

        frame = online_user_features(self.repo, [int(u) for u in user_ids])
        return frame.to_dict("records")


def default_user_features() -> UserFeatureLookup | None:
    """The Feast online store when ``MFLI_FEAST_REPO`` is set, else None (stored user attributes only)."""
    if not os.environ.get("MFLI_FEAST_REPO"):
        return None
    return FeastUserFeatures()


# ------------------------------------------------------------------------------------------------
# request planning
# ------------------------------------------------------------------------------------------------
def _int_list(value: Any, field_name: str) -> np.ndarray:
    """A list of integer ids -> ``(n,)`` int64; RequestError naming the field otherwise."""
    if value is None:
        return np.zeros(0, np.int64)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RequestError(field_name, f"must be a list of integer item ids, got {type(value).__name__}")
    for j, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise RequestError(f"{field_name}[{j}]", f"must be an integer item id, got {v!r}")
    try:
        return np.asarray(value, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise RequestError(field_name, "item ids must fit in 64-bit integers") from None


@dataclass
class _Plan:
    """A validated request bound to one snapshot."""

    pos: int  # position in the batch
    mode: str  # resolved: "trigger" or "user"
    k: int
    quotas: tuple[float, ...] | None  # normalised per facet, None = the configured default
    recent: np.ndarray  # (n,) int64
    user_id: int | None
    features: Mapping[str, Any] | None
    needs_lookup: bool  # user mode with an id and no features: ask the lookup


class SnapshotRetriever:
    """Answers retrieval requests from one snapshot (+ deltas); never modified after construction.

    Args:
        model: the snapshot's :class:`mfli.train.TrainedModel` (CPU).
        index: the snapshot's :class:`MultiFacetIndex`, or a :class:`DeltaIndex` view with its deltas.
        retriever: a :class:`Retriever` over ``index`` with the model's codebooks.
        snapshot_dir: folder it was loaded from (its name is the snapshot id in a store cache).
        delta_paths: delta parquet files applied, in order.
        config: :class:`ServingConfig`.
    """

    def __init__(self, model: Any, index: MultiFacetIndex | DeltaIndex, retriever: Retriever,
                 snapshot_dir: Path, delta_paths: Sequence[Path] = (), config: ServingConfig | None = None,
                 metrics: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.index = index
        self.retriever = retriever
        self.snapshot_dir = Path(snapshot_dir)
        self.delta_paths = tuple(Path(p) for p in delta_paths)
        self.config = config or ServingConfig()
        self.metrics = dict(metrics or {})
        self.base = index.base if isinstance(index, DeltaIndex) else index
        self.facets: list[str] = list(retriever.facet_names)
        self._facet_pos = {name: f for f, name in enumerate(self.facets)}
        self._views: OrderedDict[tuple[float, ...], Retriever] = OrderedDict()
        self._views_lock = threading.Lock()
        fs = model.feature_space
        self._user_columns: list[str] = list(fs.user_columns)
        self._numeric_columns = set(fs.user_numeric_edges)
        uid = model.users.user_ids.cpu().numpy()
        self._user_order = np.argsort(uid, kind="stable")
        self._user_sorted = uid[self._user_order]

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def load(cls, snapshot_dir: str | Path, delta_paths: Sequence[str | Path] = (),
             config: ServingConfig | None = None) -> SnapshotRetriever:
        """Load ``snapshot_dir/model`` and ``snapshot_dir/index`` (checksums verified) and apply the deltas.

        Raises:
            SnapshotLoadError: a missing/corrupt file, model and index that disagree, or a bad delta.
        """
        model, index, metrics = _load_snapshot(Path(snapshot_dir))
        config = config or ServingConfig()
        retriever = Retriever(index, model.codebooks.numpy(), model.facets, config.retriever)
        return cls._with_deltas(model, index, retriever, Path(snapshot_dir), delta_paths, config, metrics)

    @classmethod
    def _with_deltas(cls, model: Any, base: MultiFacetIndex, retriever: Retriever, snapshot_dir: Path,
                     delta_paths: Sequence[str | Path], config: ServingConfig,
                     metrics: Mapping[str, Any]) -> SnapshotRetriever:
        view = apply_delta_files(base, delta_paths)
        if view is not base:
            # a copy sharing the prepared snapshot structures: the object already serving is not touched
            retriever = copy.copy(retriever)
            retriever.update(view)
        return cls(model, view, retriever, snapshot_dir, delta_paths, config, metrics)

    # ----------------------------------------------------------------------------- introspection
    @property
    def snapshot_id(self) -> str:
        return self.snapshot_dir.name

    @property
    def n_items(self) -> int:
        """Live items: the snapshot's, minus replaced ones, plus the deltas'."""
        return int(self.index.n_items)

    def metadata(self) -> dict[str, Any]:
        """JSON-able description: item counts, facets, codebook shape, deltas, retriever settings."""
        base = self.base
        n_delta = int(self.index.item_ids.size) if isinstance(self.index, DeltaIndex) else 0
        return {
            "snapshot_id": self.snapshot_id,
            "n_items": self.n_items,
            "n_snapshot_items": base.n_items,
            "n_delta_items": n_delta,
            "facets": self.facets,
            "clusters_per_facet": {name: base.facets[f].n_clusters for f, name in enumerate(self.facets)},
            "codebook": {"layers": base.L, "codes": base.M, "dim": base.dim, "paths_per_item": base.paths_per_item},
            "delta_files": [p.name for p in self.delta_paths],
            "user_feature_columns": self._user_columns,
            "max_k": self.config.max_k,
            "retriever": dataclasses.asdict(self.config.retriever),
        }

    # ----------------------------------------------------------------------------- answering
    def retrieve(self, request: RetrievalRequest, user_features: UserFeatureLookup | None = None) -> dict[str, Any]:
        """One request; see :meth:`retrieve_batch`. Raises :class:`RequestError` on a bad request."""
        [out] = self.retrieve_batch([request], user_features)
        if isinstance(out, RequestError):
            raise out
        return out

    def retrieve_batch(self, requests: Sequence[RetrievalRequest],
                       user_features: UserFeatureLookup | None = None) -> list[dict[str, Any] | RequestError]:
        """Answer B requests with one vectorised retriever call per (mode, quotas) group.

        Args:
            requests: the batch.
            user_features: lookup used for user-mode requests that carry a ``user_id`` and no
                ``user_features``; None: those users get their stored attributes and no history.

        Returns:
            per request either ``{"mode", "items": [{"item_id", "score", "facet", "cluster",
            "trigger" | "path_rank"}, ...]}`` (at most k items, best first) or the :class:`RequestError`
            that rejected it.
        """
        out: list[dict[str, Any] | RequestError | None] = [None] * len(requests)
        plans: list[_Plan] = []
        for i, req in enumerate(requests):
            try:
                plans.append(self._plan(i, req))
            except RequestError as exc:
                out[i] = exc
        self._lookup_features([p for p in plans if p.needs_lookup], user_features)
        groups: dict[tuple[str, tuple[float, ...] | None], list[_Plan]] = {}
        for p in plans:
            groups.setdefault((p.mode, p.quotas), []).append(p)
        for (mode, quotas), group in groups.items():
            retriever = self._view(quotas)
            kmax = max(p.k for p in group)
            if mode == "trigger":
                recent = [p.recent for p in group]
                res = retriever.retrieve_triggers(recent, kmax, exclude=recent)
            else:
                histories, exclude = [], []
                for p in group:
                    hist = _int_list((p.features or {}).get("history_item_ids"),
                                     "user_features.history_item_ids")
                    histories.append(np.concatenate([hist, p.recent]))
                    exclude.append(histories[-1])
                query = self._user_queries(group, histories)
                res = retriever.retrieve_users(query, kmax, exclude=exclude)
            for j, p in enumerate(group):
                out[p.pos] = {"mode": mode, "items": _items(res, j, p.k)}
        return out  # type: ignore[return-value]

    def _plan(self, pos: int, req: RetrievalRequest) -> _Plan:
        k = req.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.config.max_k:
            raise RequestError("k", f"must be an integer in [1, {self.config.max_k}], got {k!r}")
        if req.mode not in MODES:
            raise RequestError("mode", f"must be one of {list(MODES)}, got {req.mode!r}")
        recent = _int_list(req.recent_items, "recent_items")
        if req.user_id is not None and (isinstance(req.user_id, bool) or not isinstance(req.user_id, (int, np.integer))
                                        or not -(2**63) <= req.user_id < 2**63):  # np.int64 below would overflow
            raise RequestError("user_id", f"must be a 64-bit integer, got {req.user_id!r}")
        feats = req.user_features
        if feats is not None and not isinstance(feats, Mapping):
            raise RequestError("user_features", f"must be an object of feature values, got {type(feats).__name__}")
        if feats is not None:  # type-check now so a bad feature fails this request only
            _int_list(feats.get("history_item_ids"), "user_features.history_item_ids")
            self._attrs(feats)
        quotas = self._quotas(req.facet_quotas)
        has_user = req.user_id is not None or feats is not None
        mode = req.mode
        if mode == "trigger" and recent.size == 0:
            raise RequestError("recent_items", "trigger mode needs at least one recent item")
        if mode == "auto":
            if recent.size and (self.index.rows_of(recent) >= 0).any():
                mode = "trigger"
            elif has_user or recent.size:
                mode = "user"  # no known trigger: the user tower still works from what is known
            else:
                raise RequestError("recent_items", "give recent_items, a user_id or user_features")
        if mode == "user" and not has_user and recent.size == 0:
            raise RequestError("user_id", "user mode needs a user_id, user_features or recent_items")
        return _Plan(pos, mode, int(k), quotas, recent, None if req.user_id is None else int(req.user_id),
                     feats, mode == "user" and feats is None and req.user_id is not None)

    def _quotas(self, facet_quotas: Mapping[str, float] | None) -> tuple[float, ...] | None:
        """``{facet: weight}`` -> normalised ``(F,)`` tuple (unnamed facets 0); None keeps the default."""
        if facet_quotas is None:
            return None
        if not isinstance(facet_quotas, Mapping):
            raise RequestError("facet_quotas", "must be an object {facet: weight}")
        q = np.zeros(len(self.facets))
        for name, w in facet_quotas.items():
            if name not in self._facet_pos:
                raise RequestError(f"facet_quotas.{name}", f"unknown facet {name!r}; this snapshot's facets are "
                                                           f"{self.facets}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
                raise RequestError(f"facet_quotas.{name}", f"must be a finite number >= 0, got {w!r}")
            q[self._facet_pos[name]] = float(w)
        if q.sum() <= 0:
            raise RequestError("facet_quotas", "at least one facet needs a weight > 0")
        return tuple(np.round(q / q.sum(), 6).tolist())

    def _view(self, quotas: tuple[float, ...] | None) -> Retriever:
        """The retriever with per-request facet quotas: a cached shallow copy sharing all index structures.

        ``Retriever`` takes its quotas from its config only; the copy swaps them without re-preparing
        the index (the copy's ``_quotas`` is what ``retrieve_*`` reads)."""
        if quotas is None:
            return self.retriever
        with self._views_lock:
            view = self._views.get(quotas)
            if view is not None:
                self._views.move_to_end(quotas)
                return view
        view = copy.copy(self.retriever)
        view.config = dataclasses.replace(self.retriever.config, quotas=list(quotas))
        view._quotas = np.asarray(quotas, dtype=np.float64) / sum(quotas)
        with self._views_lock:
            self._views[quotas] = view
            while len(self._views) > self.config.quota_views:
                self._views.popitem(last=False)
        return view

    # ----------------------------------------------------------------------------- user mode
    def _lookup_features(self, plans: list[_Plan], lookup: UserFeatureLookup | None) -> None:
        """Fill ``features`` of plans that only carry a user id, with one lookup call for the batch."""
        if not plans or lookup is None:
            return
        try:
            rows = list(lookup([p.user_id for p in plans]))
            if len(rows) != len(plans):
                raise ValueError(f"returned {len(rows)} rows for {len(plans)} users")
        except Exception as exc:  # noqa: BLE001 - an online store outage degrades to stored attributes, no history
            log.warning("user feature lookup failed for %d users, serving without it: %s", len(plans), exc)
            return
        for p, row in zip(plans, rows):
            if isinstance(row, Mapping):
                try:
                    _int_list(row.get("history_item_ids"), "history_item_ids")
                    self._attrs(row)
                except RequestError as exc:
                    log.warning("ignoring looked-up features of user %s: %s", p.user_id, exc)
                    continue
                p.features = row

    def _attrs(self, feats: Mapping[str, Any]) -> dict[str, Any]:
        """The model's user feature columns found in ``feats`` (``user_attrs`` strings and direct keys)."""
        out: dict[str, Any] = {}
        attrs = feats.get("user_attrs")
        if attrs is not None:
            if isinstance(attrs, np.ndarray):
                attrs = attrs.tolist()
            if isinstance(attrs, (str, bytes)) or not isinstance(attrs, Sequence):
                raise RequestError("user_features.user_attrs", "must be a list of 'column=value' strings")
            for j, a in enumerate(attrs):
                if not isinstance(a, str) or "=" not in a:
                    raise RequestError(f"user_features.user_attrs[{j}]", f"must be a 'column=value' string, got {a!r}")
                col, val = a.split("=", 1)
                if col in self._user_columns:
                    out[col] = val
        for col in self._user_columns:
            if col in feats and feats[col] is not None:
                out[col] = feats[col]
        for col in list(out):
            v = out[col]
            if col in self._numeric_columns:
                try:
                    out[col] = float(v)
                except (TypeError, ValueError):
                    raise RequestError(f"user_features.{col}", f"must be a number, got {v!r}") from None
            elif not isinstance(v, (str, int, float)):
                raise RequestError(f"user_features.{col}", f"must be a string or number, got {type(v).__name__}")
        return out

    def _user_queries(self, group: list[_Plan], histories: list[np.ndarray]) -> np.ndarray:
        """``(B, F, d)`` user-tower queries. Given attributes override the stored ones column by column."""
        uids = np.array([-1 if p.user_id is None else p.user_id for p in group], np.int64)
        attrs = [self._attrs(p.features) if p.features is not None else {} for p in group]
        if not any(attrs):
            return self.model.user_embeddings(uids, [h.tolist() for h in histories]).numpy()
        return user_tower_queries(self.model, uids, histories, attrs, self._stored_values(uids))

    def _stored_values(self, uids: np.ndarray) -> np.ndarray:
        """``(B, K)`` encoded attributes the model stored for known users (0 = padding for unknown ones)."""
        values = self.model.users.values.cpu().numpy()
        out = np.zeros((uids.size, values.shape[1]), np.int64)
        if self._user_sorted.size and values.shape[1]:
            pos = np.minimum(np.searchsorted(self._user_sorted, uids), self._user_sorted.size - 1)
            hit = self._user_sorted[pos] == uids
            out[hit] = values[self._user_order[pos[hit]]]
        return out


def user_tower_queries(model: Any, user_ids: np.ndarray, histories: Sequence[np.ndarray],
                       attrs: Sequence[Mapping[str, Any]], stored: np.ndarray) -> np.ndarray:
    """User-tower queries ``(B, F, d)`` from explicit attributes, as ``TrainedModel.user_embeddings`` does
    for stored ones.

    Args:
        user_ids: ``(B,)`` (only used as row labels).
        histories: B arrays of item ids, oldest first (ids outside the training catalogue are skipped).
        attrs: B mappings ``{user column: raw value}`` overriding ``stored``.
        stored: ``(B, K)`` encoded stored attributes (0 = padding).
    """
    import pandas as pd
    import torch

    fs = model.feature_space
    cols = list(fs.user_columns)
    values = np.array(stored, dtype=np.int64, copy=True)
    rows = [i for i, a in enumerate(attrs) if a]
    if rows and cols:
        frame = pd.DataFrame({"user_id": user_ids[rows],
                              **{c: pd.Series([attrs[i].get(c) for i in rows], dtype=object) for c in cols}})
        for c in fs.user_numeric_edges:
            if c in frame:
                frame[c] = pd.to_numeric(frame[c], errors="coerce")
        enc = fs.encode_users(frame).values.numpy()
        for r, i in enumerate(rows):
            for j, c in enumerate(cols):
                if c in attrs[i]:
                    values[i, j] = enc[r, j]
    H = model.model.cfg.history_len
    hist = np.full((len(histories), H), -1, np.int64)
    for b, h in enumerate(histories):
        r = model.catalogue_rows(np.asarray(h, np.int64)) if len(h) else np.zeros(0, np.int64)
        r = r[r >= 0][-H:]
        if r.size:
            hist[b, H - r.size:] = r
    uniq, inv = np.unique(np.maximum(hist, 0), return_inverse=True)
    with torch.no_grad():
        feats = model.catalogue.rows(torch.as_tensor(uniq))
        q = model.model.user_embed(torch.as_tensor(values), feats, torch.as_tensor(inv.reshape(hist.shape)),
                                   torch.as_tensor(hist >= 0), drop_ids=False)
    return q.float().cpu().numpy()


def _items(res: RetrievalResult, j: int, k: int) -> list[dict[str, Any]]:
    """Row j of a batch result as response items, best first, padding dropped, at most k."""
    ids = res.item_ids[j, :k]
    keep = ids >= 0
    key = "trigger" if res.mode == "trigger" else "path_rank"
    names = res.facet_names
    return [
        {"item_id": i, "score": s, "facet": names[f], "cluster": c, key: src}
        for i, s, f, c, src in zip(ids[keep].tolist(), res.scores[j, :k][keep].tolist(),
                                   res.facet[j, :k][keep].tolist(), res.cluster[j, :k][keep].tolist(),
                                   res.source[j, :k][keep].tolist())
    ]


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _load_snapshot(snapshot_dir: Path) -> tuple[Any, MultiFacetIndex, dict[str, Any]]:
    """``(model, index, metrics)`` of a snapshot folder, each checksum verified by its loader."""
    from mfli.train import TrainedModel

    for sub in (MODEL_DIR, INDEX_DIR):
        if not (snapshot_dir / sub).is_dir():
            raise SnapshotLoadError(f"{snapshot_dir}: no {sub}/ folder (a snapshot holds model/ and index/)")
    try:
        index = MultiFacetIndex.load(snapshot_dir / INDEX_DIR)
        model = TrainedModel.load(snapshot_dir / MODEL_DIR, device="cpu")
    except (ValueError, OSError, KeyError) as exc:
        raise SnapshotLoadError(f"{snapshot_dir}: {exc}") from exc
    if list(model.facets) != list(index.facet_names):
        raise SnapshotLoadError(f"{snapshot_dir}: model facets {model.facets} and index facets "
                                f"{index.facet_names} differ")
    cb = tuple(model.codebooks.shape)
    if cb != (index.L, index.n_facets, index.M, index.dim):
        raise SnapshotLoadError(f"{snapshot_dir}: model codebooks {cb} do not match the index "
                                f"(L={index.L}, F={index.n_facets}, M={index.M}, d={index.dim})")
    metrics: dict[str, Any] = {}
    mpath = snapshot_dir / METRICS_FILE
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text())
        except ValueError as exc:
            raise SnapshotLoadError(f"{mpath}: not valid JSON ({exc})") from exc
    return model, index, metrics


def apply_delta_files(base: MultiFacetIndex, delta_paths: Sequence[str | Path]) -> MultiFacetIndex | DeltaIndex:
    """Apply delta parquet files in order (a later window's version of an item replaces an earlier one).

    Returns ``base`` itself when there are none.

    Raises:
        SnapshotLoadError: a file that is not a delta table of this index (names the file).
    """
    import pyarrow.parquet as pq

    view: MultiFacetIndex | DeltaIndex = base
    for path in delta_paths:
        try:
            ids, emb, clusters = delta_from_table(pq.read_table(path), base.facet_names, source=str(path))
            if ids.size:
                view = apply_delta(view, ids, emb, clusters)
        except SnapshotLoadError:
            raise
        except Exception as exc:  # pyarrow, DataError, shape or unknown-cluster errors: name the file
            raise SnapshotLoadError(f"delta {path}: {exc}") from exc
    return view


def _folder_key(snapshot_dir: Path) -> str:
    """Identity of a snapshot folder's content: its path plus the sha256 of both sub-manifests."""
    h = hashlib.sha256(str(snapshot_dir.resolve()).encode())
    for rel in (f"{MODEL_DIR}/manifest.json", f"{INDEX_DIR}/index.json"):
        p = snapshot_dir / rel
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()


class SnapshotBuilder:
    """``build(snapshot_dir, delta_paths) -> SnapshotRetriever`` for :class:`~mfli.serve.live.LiveRetriever`.

    Remembers the last snapshot it loaded: a call for the same folder content (only the deltas
    changed) reuses its model, index and prepared retriever and re-applies the deltas, without
    touching the object already serving.

    Args:
        config: :class:`ServingConfig` for every object built.
    """

    def __init__(self, config: ServingConfig | None = None) -> None:
        self.config = config or ServingConfig()
        self._last: tuple[str, SnapshotRetriever] | None = None

    def __call__(self, snapshot_dir: str | Path, delta_paths: Sequence[str | Path] = ()) -> SnapshotRetriever:
        snapshot_dir = Path(snapshot_dir)
        key = _folder_key(snapshot_dir)
        last = self._last
        if last is not None and last[0] == key:  # same snapshot, new deltas: reuse the delta-free object
            prev = last[1]
            return SnapshotRetriever._with_deltas(prev.model, prev.base, prev.retriever, snapshot_dir, delta_paths,
                                                  self.config, prev.metrics)
        obj = SnapshotRetriever.load(snapshot_dir, (), self.config)
        self._last = (key, obj)
        if delta_paths:
            obj = SnapshotRetriever._with_deltas(obj.model, obj.base, obj.retriever, snapshot_dir, delta_paths,
                                                 self.config, obj.metrics)
        return obj


def build_snapshot_retriever(snapshot_dir: str | Path, delta_paths: Sequence[str | Path] = ()) -> SnapshotRetriever:
    """Stateless build factory: load the snapshot and apply its deltas (no reuse across calls)."""
    return SnapshotRetriever.load(snapshot_dir, delta_paths)


def open_live(uri: Any, cache_dir: str | Path | None = None, config: ServingConfig | None = None,
              **kw: Any) -> LiveRetriever:
    """``Retriever.from_store`` for serving: a :class:`LiveRetriever` on ``uri`` (a store URI or an open
    store) whose objects are :class:`SnapshotRetriever` s; LATEST's snapshot and deltas are downloaded,
    verified and loaded before it returns.

    Raises:
        SnapshotNotFound: nothing published yet; CorruptSnapshot / CorruptDelta: verification failed;
        SnapshotLoadError: the verified files do not make a serving object.
    """
    return LiveRetriever.from_store(uri, cache_dir=cache_dir, build=SnapshotBuilder(config), **kw)
