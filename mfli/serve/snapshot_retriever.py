"""The serving object of one published snapshot: model + index + deltas, answering retrieval requests.

A published snapshot folder is a :class:`mfli.snapshot.Snapshot` (model, index, metrics and the
:class:`~mfli.serve.config.ServingConfig` its gates measured); its deltas are parquet files of
``(item_id, facet, slot, cluster, embedding)`` rows (:func:`mfli.index.delta.delta_rows_table`).
:class:`SnapshotBuilder` is the ``build(snapshot_dir, delta_paths)`` factory
:class:`~mfli.serve.live.LiveRetriever` calls: it loads the snapshot (:meth:`Snapshot.load`: every
checksum verified, nothing unpickled), applies the deltas in window order and returns a
:class:`SnapshotRetriever` whose retriever is :meth:`Snapshot.retriever`, the one the gates scored. On a refresh that only brings new deltas it reuses the loaded
model, index and prepared retriever of the same snapshot, so a delta swap costs O(delta).

A :class:`SnapshotRetriever` is immutable once built: the live object is replaced, never modified, so
a request that took it finishes on it.

Three modes (:meth:`SnapshotRetriever.retrieve_batch`):

- **trigger** (the paper's item-to-item serving): the request's ``recent_items`` (oldest first) are the
  triggers; chosen when ``mode="auto"`` and at least one recent item is in the index;
- **user**: the user tower embeds the user (stored attributes or ``user_features``, plus a history of
  ``user_features["history_item_ids"]`` followed by ``recent_items``) and beam search over the
  codebooks finds the clusters. With only a ``user_id``, the features come from a
  :data:`UserFeatureLookup` (the Feast online store by default, see :func:`default_user_features`);
- **blend** (snapshots whose serving config sets ``blend``, with a co-engagement table): the user-mode
  list, the co-engagement table's list for the history and the trigger list of the history's latest
  items, fused by weighted reciprocal rank (:func:`mfli.serve.blend.retrieve_blend`); what the daily
  evaluation gated. On such a snapshot ``mode="auto"`` means blend.

Recent items and the history are never returned; ids unknown to the snapshot are ignored.

Example::

    live = open_live("s3://models/mfli")                           # LiveRetriever over SnapshotRetriever
    obj = live.current
    [res] = obj.retrieve_batch([RetrievalRequest(recent_items=[12, 40], k=50)])
    res["mode"], res["items"][0]   # "trigger", {"item_id", "score", "facet", "cluster", "trigger"}
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfli.index.delta import DeltaIndex
from mfli.index.inverted import MultiFacetIndex
from mfli.serve.blend import BlendResult, retrieve_blend
from mfli.serve.config import ServingConfig
from mfli.serve.live import LiveRetriever
from mfli.serve.retriever import RetrievalResult, Retriever
from mfli.snapshot import Snapshot, SnapshotLoadError, apply_delta_files, content_key  # noqa: F401 - SnapshotLoadError: raised by load

log = logging.getLogger(__name__)

MODES = ("auto", "trigger", "user", "blend")

#: ``lookup(user_ids) -> rows``: one mapping per requested user, in request order. Recognised keys:
#: ``history_item_ids`` (item ids, oldest first), ``user_attrs`` (``"column=value"`` strings) and the
#: model's user feature columns; anything else (activity counts ...) is ignored.
UserFeatureLookup = Callable[[Sequence[int]], Sequence[Mapping[str, Any]]]


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
    mode: str = "auto"  # "auto" | "trigger" | "user" | "blend" (auto: blend where configured, else trigger/user)


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
    mode: str  # resolved: "trigger", "user" or "blend"
    k: int
    quotas: tuple[float, ...] | None  # normalised per facet, None = the configured default
    recent: np.ndarray  # (n,) int64
    user_id: int | None
    features: Mapping[str, Any] | None
    needs_lookup: bool  # user mode with an id and no features: ask the lookup


class SnapshotRetriever:
    """Answers retrieval requests from one snapshot (+ deltas); never modified after construction.

    Args:
        snapshot: the loaded :class:`Snapshot` (model, index, metrics, serving config).
        delta_paths: delta parquet files to apply, in window order.
        base_retriever: ``snapshot.retriever()`` already prepared (reused when only the deltas changed).
    """

    def __init__(self, snapshot: Snapshot, delta_paths: Sequence[str | Path] = (),
                 base_retriever: Retriever | None = None) -> None:
        self.snapshot = snapshot
        self.model = snapshot.model
        self.base = snapshot.index
        self.config: ServingConfig = snapshot.serving
        self.metrics = dict(snapshot.metrics)
        self.snapshot_dir = Path(snapshot.path) if snapshot.path is not None else Path(".")
        self.delta_paths = tuple(Path(p) for p in delta_paths)
        self.base_retriever = base_retriever if base_retriever is not None else snapshot.retriever()
        self.index: MultiFacetIndex | DeltaIndex = apply_delta_files(self.base, self.delta_paths)
        # a view sharing the prepared snapshot structures: the object already serving is not touched
        self.retriever = self.base_retriever if self.index is self.base else self.base_retriever.with_index(self.index)
        self.facets: list[str] = list(self.retriever.facet_names)
        self._facet_pos = {name: f for f, name in enumerate(self.facets)}
        self._views: OrderedDict[tuple[float, ...], Retriever] = OrderedDict()
        self._views_lock = threading.Lock()
        fs = self.model.feature_space
        self._user_columns: list[str] = list(fs.user_columns)
        self._numeric_columns = set(fs.user_numeric_edges)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def load(cls, snapshot_dir: str | Path, delta_paths: Sequence[str | Path] = ()) -> SnapshotRetriever:
        """Load a snapshot folder (:meth:`Snapshot.load`, checksums verified) and apply the deltas.

        Raises:
            SnapshotLoadError: a missing/corrupt file, model and index that disagree, or a bad delta.
        """
        return cls(Snapshot.load(snapshot_dir), delta_paths)

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
            "engine": self.config.engine,  # user-mode scorer (ServingConfig.engine)
            "scan": dataclasses.asdict(self.config.scan) if self.config.engine == "scan" else None,
            "blend": self.config.blend.to_dict() if self.config.blend is not None else None,
            "coengagement": None if (co := self.snapshot.coengagement) is None else {
                "method": co.method, "param": co.param, "items": len(co), "mb": round(co.nbytes / 2**20, 1)},
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
            "trigger" | "path_rank" | "sources"}, ...]}`` (at most k items, best first; blend mode's
            ``sources`` names the lists that held the item) or the :class:`RequestError` that rejected it.
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
            elif mode == "blend":
                histories = self._histories(group)
                query = self._user_queries(group, histories)
                blended = retrieve_blend(retriever, self.snapshot.coengagement, self.index, self.config.blend,
                                         query, histories, kmax)
                for j, p in enumerate(group):
                    out[p.pos] = {"mode": mode, "items": _blend_items(blended, j, p.k, self.facets)}
                continue
            else:
                histories = self._histories(group)
                query = self._user_queries(group, histories)
                res = retriever.retrieve_users(query, kmax, exclude=histories)
            for j, p in enumerate(group):
                out[p.pos] = {"mode": mode, "items": _items(res, j, p.k)}
        return out  # type: ignore[return-value]

    @staticmethod
    def _histories(group: list[_Plan]) -> list[np.ndarray]:
        """Per plan the history (``history_item_ids`` then ``recent_items``): the user tower's input and
        what is never returned."""
        return [np.concatenate([_int_list((p.features or {}).get("history_item_ids"),
                                          "user_features.history_item_ids"), p.recent]) for p in group]

    def warm_up(self) -> float:
        """Answer a few throw-away requests so that compiled kernels and lazy structures are ready
        before this object serves: with an empty compile cache the first trigger request otherwise
        takes seconds, which a live request would pay (or time out on). Covers batches of one and
        two (serial and parallel kernels) in trigger mode (a snapshot item, and a delta item when
        there are deltas) and user mode. Never raises: a failure is logged and left to real requests.

        Returns:
            seconds spent.
        """
        t0 = time.perf_counter()
        snap = [[int(i)] for i in self.base.item_ids[:2]]
        new = [[int(i)] for i in self.index.item_ids[:2]] if isinstance(self.index, DeltaIndex) else []
        both = snap + new  # the delta batches end on delta items (a mixed pair when there is only one)
        batches = [snap[:1], snap] + ([both[-1:], both[-2:]] if new else [])
        k = min(10, self.config.max_k)
        for batch in filter(None, batches):
            for mode, reqs in (("trigger", [RetrievalRequest(recent_items=t, k=k, mode="trigger") for t in batch]),
                               *[(m, [RetrievalRequest(user_features={"history_item_ids": t}, k=k, mode=m)
                                       for t in batch]) for m in self._user_modes()]):
                try:
                    outs = self.retrieve_batch(reqs)
                except Exception as exc:  # noqa: BLE001 - warm-up must not fail a load; real requests report it
                    outs = [exc]
                failed = next((o for o in outs if isinstance(o, Exception)), None)  # RequestError included
                if failed is not None:
                    log.warning("warm-up %s request failed on %s: %s: %s", mode, self.snapshot_id,
                                type(failed).__name__, failed)
        return time.perf_counter() - t0

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
        if mode == "blend" and self.config.blend is None:
            raise RequestError("mode", "this snapshot has no blend mode (no co-engagement table); "
                                       "use auto, trigger or user")
        if mode == "auto" and self.config.blend is not None:
            if not (has_user or recent.size):
                raise RequestError("recent_items", "give recent_items, a user_id or user_features")
            mode = "blend"
        if mode == "auto":
            if recent.size and (self.index.rows_of(recent) >= 0).any():
                mode = "trigger"
            elif has_user or recent.size:
                mode = "user"  # no known trigger: the user tower still works from what is known
            else:
                raise RequestError("recent_items", "give recent_items, a user_id or user_features")
        if mode in ("user", "blend") and not has_user and recent.size == 0:
            raise RequestError("user_id", f"{mode} mode needs a user_id, user_features or recent_items")
        return _Plan(pos, mode, int(k), quotas, recent, None if req.user_id is None else int(req.user_id),
                     feats, mode in ("user", "blend") and feats is None and req.user_id is not None)

    def _user_modes(self) -> tuple[str, ...]:
        """The modes that embed the user: user, and blend where this snapshot serves it."""
        return ("user",) if self.config.blend is None else ("user", "blend")

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
        """The retriever for per-request facet quotas: a cached view sharing all index structures.

        A request naming quotas asks for a share of the k slots per facet, which only the quota merge
        gives; without quotas the snapshot's stored config (what the gates scored) answers."""
        if quotas is None:
            return self.retriever
        with self._views_lock:
            view = self._views.get(quotas)
            if view is not None:
                self._views.move_to_end(quotas)
                return view
        view = self.retriever.with_config(dataclasses.replace(self.retriever.config, quotas=list(quotas),
                                                              merge="quota"))
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
        values = self.model.user_values(uids, attrs) if any(attrs) else None
        return self.model.user_embeddings(uids, [h.tolist() for h in histories], values=values).numpy()


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


def _blend_items(res: BlendResult, j: int, k: int, facets: list[str]) -> list[dict[str, Any]]:
    """Row j of a blended batch as response items, best first, padding dropped, at most k."""
    ids = res.item_ids[j, :k]
    n = int((ids >= 0).sum())
    return [
        {"item_id": int(ids[i]), "score": float(res.scores[j, i]), "facet": facets[int(res.facet[j, i])],
         "cluster": int(res.cluster[j, i]), "sources": res.source_names(j, i)}
        for i in range(n)
    ]


class SnapshotBuilder:
    """``build(snapshot_dir, delta_paths) -> SnapshotRetriever`` for :class:`~mfli.serve.live.LiveRetriever`.

    Remembers the last snapshot it loaded: a call for the same folder content (only the deltas
    changed) reuses its model, index and prepared retriever and re-applies the deltas, without
    touching the object already serving.

    Every object serves with the :class:`ServingConfig` stored in its snapshot, and is warmed up
    (:meth:`SnapshotRetriever.warm_up`) before it is returned, so no live request pays a compile.
    """

    def __init__(self, warm_up: bool = True) -> None:
        self._last: tuple[str, SnapshotRetriever] | None = None
        self.warm_up = warm_up  # answer throw-away requests before the object serves (SnapshotRetriever.warm_up)

    def __call__(self, snapshot_dir: str | Path, delta_paths: Sequence[str | Path] = ()) -> SnapshotRetriever:
        snapshot_dir = Path(snapshot_dir)
        key = content_key(snapshot_dir)
        last = self._last
        if last is not None and last[0] == key:  # same snapshot, new deltas: reuse the delta-free object
            prev = last[1]
            return self._warm(SnapshotRetriever(prev.snapshot, delta_paths, prev.base_retriever))
        obj = SnapshotRetriever.load(snapshot_dir)
        self._last = (key, obj)
        return self._warm(SnapshotRetriever(obj.snapshot, delta_paths, obj.base_retriever) if delta_paths else obj)

    def _warm(self, obj: SnapshotRetriever) -> SnapshotRetriever:
        if self.warm_up:
            spent = obj.warm_up()
            if spent > 1.0:  # compiled kernels this time (an empty compile cache): say where the time went
                log.info("warm-up of %s took %.1fs", obj.snapshot_id, spent)
        return obj


def build_snapshot_retriever(snapshot_dir: str | Path, delta_paths: Sequence[str | Path] = ()) -> SnapshotRetriever:
    """Stateless build factory: load the snapshot and apply its deltas (no reuse across calls)."""
    return SnapshotRetriever.load(snapshot_dir, delta_paths)


def open_live(uri: Any, cache_dir: str | Path | None = None, **kw: Any) -> LiveRetriever:
    """``Retriever.from_store`` for serving: a :class:`LiveRetriever` on ``uri`` (a store URI or an open
    store) whose objects are :class:`SnapshotRetriever` s; LATEST's snapshot and deltas are downloaded,
    verified and loaded before it returns.

    Raises:
        SnapshotNotFound: nothing published yet; CorruptSnapshot / CorruptDelta: verification failed;
        SnapshotLoadError: the verified files do not make a serving object.
    """
    return LiveRetriever.from_store(uri, cache_dir=cache_dir, build=SnapshotBuilder(), **kw)
