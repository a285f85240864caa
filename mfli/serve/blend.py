"""Blend mode: user mode, co-engagement, trigger and trending lists fused into one ranked list.

Four ranked candidate lists per request, each cheap to produce without ANN search:

- ``user``: user mode (codebook / scan engine; ``q . e`` over the reached clusters);
- ``coengagement``: the items the request's history points to in the co-engagement table
  (:mod:`mfli.index.coengagement`, learned from events: the item-item signal the towers miss);
- ``trigger``: trigger mode from the engine's neighbour lists (embedding neighbours of the recent items,
  new items included);
- ``trending``: the items most engaged with in the latest 10% of the training events, the same for
  everyone minus the history (:mod:`mfli.index.trending`, carried by the co-engagement table): what
  none of the per-user lists knows, and what a hold-out in time rewards.

They are fused by weighted reciprocal-rank fusion (Cormack et al. 2009): item i scores
``sum_l w_l / (RRF_K + rank_l(i))`` over the lists it appears in (rank 0 = best; ``w_user`` = 1).
Ranks, not scores, because the scores live on unrelated scales. Items without training events have no
co-engagement row and are never trending, so those two weights would always pass them by; they take
both shares at their better rank in the user and trigger lists instead
(:attr:`BlendWeights.new_items_best_rank`), as if those lists agreed with the list that ranks them best,
which keeps new items reachable; :attr:`BlendWeights.new_items` adds more credit where validation
shows that the users' next events reach new items often enough to pay for the warm items they displace.
The weights are chosen on the validation split (:func:`choose_blend_weights`,
:func:`mfli.eval.blend_select.select_blend`).

Serving: :func:`retrieve_blend` produces the three lists from a retriever (user and trigger mode) and a
co-engagement table and fuses them, with :class:`BlendConfig` (stored in the snapshot's
:class:`~mfli.serve.config.ServingConfig`); the daily evaluation, the quality benchmark and the service
all call it, so the gated lists are the served ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

RRF_K = 60  # Cormack et al.'s constant: damps the head so one list's top item cannot decide alone
COENGAGEMENT_GRID = (0.0, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
# up to 2: where most held-out items are new (amazon-scientific / cold) validation picked 0.5, the top of
# the earlier (0, 0.2, 0.5) grid, on every seed; with 1 and 2 it picks 1.0 there (recall@100 0.3611 ->
# 0.3687, seed 0) and the same weights as before on amazon-scientific / last and ml-latest-small / user_time
TRIGGER_GRID = (0.0, 0.2, 0.5, 1.0, 2.0)
# the trending list is one ranking for everyone: at most as strong as user mode
TRENDING_GRID = (0.0, 0.2, 0.5, 1.0)
# extra credit for items without training events, tried after the grid above with its weights fixed
NEW_ITEMS_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)
# a new-item credit is kept only when it raises validation recall by more than this (relative): few
# validation positives are new items, so a smaller gain is as likely noise as a better rule
NEW_ITEMS_MIN_GAIN = 0.005


@dataclass(frozen=True)
class BlendWeights:
    """Weights of the co-engagement, trigger and trending lists, relative to user mode's 1."""

    coengagement: float = 0.5
    trigger: float = 0.2
    # items without training events take the co-engagement and trending weights at their better rank in
    # the user and trigger lists (neither of those two lists can hold them)
    new_items_best_rank: bool = True
    trending: float = 0.0  # 0: blend configs written before the list existed leave it out
    # more credit for items without training events at their better rank in the user and trigger lists,
    # chosen on validation items new to the fitted model (0: configs written before it existed)
    new_items: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BlendConfig:
    """Blend mode as a snapshot serves it (``ServingConfig.blend``)."""

    weights: BlendWeights = field(default_factory=BlendWeights)
    depth: int = 200  # length of each fused list (user, co-engagement, trigger)
    triggers: int = 10  # the history's most recent items used as triggers

    def __post_init__(self) -> None:
        if isinstance(self.weights, Mapping):  # from JSON
            object.__setattr__(self, "weights", BlendWeights(**self.weights))
        w = self.weights
        if not (w.coengagement >= 0 and w.trigger >= 0 and w.trending >= 0 and w.new_items >= 0):
            raise ValueError(f"blend weights must be >= 0, got {w}")
        if self.depth < 1 or self.triggers < 0:
            raise ValueError(f"blend depth must be >= 1 and triggers >= 0, got {self.depth} / {self.triggers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the lists a blended item can come from, as bits of :attr:`BlendResult.sources`
SOURCES = ("user", "coengagement", "trigger", "trending")


@dataclass
class BlendResult:
    """Blended answers of B requests.

    Attributes:
        item_ids: ``(B, k)`` int64, best first, -1 padding; scores: ``(B, k)`` float32 fused scores.
        sources: ``(B, k)`` uint8, bit ``l`` set when list ``SOURCES[l]`` holds the item.
        facet, cluster: ``(B, k)`` the facet index and cluster of the item's best user or trigger
            result, else of its first facet's cluster in the index (-1 padding).
        user: ``(B, depth)`` int64 user mode's own list, as fused (the evaluation reports it beside
            the blend without asking the engine twice); None when not kept.
    """

    item_ids: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    facet: np.ndarray
    cluster: np.ndarray
    user: np.ndarray | None = None

    def source_names(self, b: int, j: int) -> list[str]:
        bits = int(self.sources[b, j])
        return [name for s, name in enumerate(SOURCES) if bits >> s & 1]


def blend_lists(retriever: Any, table: Any, index: Any, queries: np.ndarray, histories: Sequence[np.ndarray],
                depth: int, triggers: int, trending: bool = True) -> tuple[Any, np.ndarray, Any, np.ndarray | None]:
    """The four ranked lists of each request, each ``depth`` long, histories excluded.

    Args:
        retriever: the snapshot's retriever (``retrieve_users`` / ``retrieve_triggers``) over ``index``.
        table: a :class:`~mfli.index.coengagement.CoEngagement`; index: the live index (or delta view):
            co-engagement items it no longer serves (tombstoned, never indexed) are dropped.
        queries: ``(B, F, d)`` user-tower queries; histories: B arrays of item ids, oldest first.

    Returns:
        the user-mode result, co-engagement ids ``(B, depth)`` (-1 padding), the trigger-mode result
        over each history's last ``triggers`` items (None when ``triggers`` is 0) and trending ids
        ``(B, depth)`` (None when the table has no trending list or ``trending`` is False).
    """
    from mfli.index.trending import trending_lists

    B = len(histories)
    user = retriever.retrieve_users(queries, depth, exclude=histories)
    co = _served(index, table.retrieve(histories, depth, exclude=histories)[0])
    trend = None
    if trending and getattr(table, "trending", None) is not None:
        trend = _served(index, trending_lists(table.trending, histories, depth))
    trig = None
    if triggers > 0:
        lists = [np.asarray(h, np.int64)[-triggers:] for h in histories]
        has = np.array([len(t) > 0 for t in lists], bool)
        if has.any():
            # neighbour lists answer up to their length; a deeper list would take the slower reference path
            tk = depth
            engine = getattr(retriever, "engine", None)
            if engine is not None and engine.has_lists:
                tk = min(depth, engine.list_length)
            if has.all():
                trig = retriever.retrieve_triggers(lists, tk, exclude=histories)
            else:
                sel = np.flatnonzero(has)
                part = retriever.retrieve_triggers([lists[b] for b in sel], tk,
                                                   exclude=[histories[b] for b in sel])
                trig = _expand(part, sel, B)
    return user, co, trig, trend


def _served(index: Any, ids: np.ndarray) -> np.ndarray:
    """``ids (B, K)`` with the items ``index`` no longer serves (tombstoned, never indexed) dropped, order kept."""
    live = ids >= 0
    if not live.any():
        return ids
    rows = np.full(ids.shape, -1, np.int64)
    rows[live] = index.rows_of(ids[live])
    removed = index.removed_mask() if hasattr(index, "removed_mask") else None
    ok = rows >= 0
    if removed is not None:
        ok &= ~removed[rows]
    if ok[live].all():
        return ids
    kept = np.full(ids.shape, -1, np.int64)  # keep the order, drop the gaps
    for b in range(ids.shape[0]):
        r = ids[b][ok[b]]
        kept[b, : len(r)] = r
    return kept


def _expand(res: Any, sel: np.ndarray, B: int) -> Any:
    """A result for the requests ``sel`` -> one for all B (the others padded)."""
    import dataclasses

    out = {}
    for name, fill in (("item_ids", -1), ("scores", -np.inf), ("facet", -1), ("cluster", -1), ("source", -1)):
        a = getattr(res, name)
        full = np.full((B, a.shape[1]), fill, a.dtype)
        full[sel] = a
        out[name] = full
    return dataclasses.replace(res, **out)


def retrieve_blend(retriever: Any, table: Any, index: Any, cfg: BlendConfig, queries: np.ndarray,
                   histories: Sequence[np.ndarray], k: int) -> BlendResult:
    """Blend mode for B requests: :func:`blend_lists` fused by :func:`blend` into the top k.

    Lists are ``max(cfg.depth, k)`` long. See :func:`blend_lists` for the arguments.
    """
    from mfli.serve.blend_kernels import first_positions

    depth = max(cfg.depth, k)
    # a zero weight leaves the list out of the answer: not read, and not reported as a source
    user, co, trig, trend = blend_lists(retriever, table, index, queries, histories, depth, cfg.triggers,
                                        trending=cfg.weights.trending > 0)
    ids, scores = blend(user.item_ids, co, None if trig is None else trig.item_ids, cfg.weights,
                        table.item_ids, k, trend)
    B = ids.shape[0]
    sources = np.zeros((B, k), np.uint8)
    facet = np.full((B, k), -1, np.int16)
    cluster = np.full((B, k), -1, np.int64)
    # later lists first, so user mode's explanation wins where an item is on both
    for bit, res in ((2, trig), (0, user)):
        if res is None:
            continue
        pos = first_positions(ids, np.ascontiguousarray(res.item_ids, np.int64))
        hit = pos >= 0
        b, j = np.nonzero(hit)
        sources[b, j] |= np.uint8(1 << bit)
        facet[b, j] = res.facet[b, pos[b, j]]
        cluster[b, j] = res.cluster[b, pos[b, j]]
    sources |= ((first_positions(ids, np.ascontiguousarray(co, np.int64)) >= 0) << 1).astype(np.uint8)
    if trend is not None:
        sources |= ((first_positions(ids, np.ascontiguousarray(trend, np.int64)) >= 0) << 3).astype(np.uint8)
    missing = (ids >= 0) & (facet < 0)
    if missing.any():  # co-engagement or trending only: the item's cluster in the first facet
        facet[missing] = 0
        cluster[missing] = _first_facet_cluster(index, index.rows_of(ids[missing]))
    return BlendResult(ids, scores, sources, facet, cluster, user.item_ids)


def _first_facet_cluster(index: Any, rows: np.ndarray) -> np.ndarray:
    base = getattr(index, "base", index)
    N = base.n_items
    out = np.full(rows.shape, -1, np.int64)
    old = (rows >= 0) & (rows < N)
    out[old] = base.assignments[rows[old], 0, 0]
    new = rows >= N
    if new.any():
        out[new] = index.assignments[rows[new] - N, 0, 0]
    return out


def blend(user: np.ndarray, coengagement: np.ndarray | None, trigger: np.ndarray | None,
          weights: BlendWeights, known: np.ndarray, k: int,
          trending: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked id lists into the top k (one compiled call, :func:`mfli.serve.blend_kernels.fuse`).

    Args:
        user, coengagement, trigger, trending: ``(B, K_l)`` int64 ranked ids, -1 padding (None: list absent).
        known: sorted int64 ids of the items with a co-engagement row (the items with training events).

    Returns:
        ids ``(B, k)`` int64 (-1 padding) and fused scores ``(B, k)`` float32 (-inf padding): each id's
        ``sum_l w_l / (RRF_K + rank_l)``, best first, ties by lower id.
    """
    from mfli.serve.blend_kernels import fuse

    B = user.shape[0]
    none = np.zeros((B, 0), np.int64)
    co = none if coengagement is None else np.ascontiguousarray(coengagement, np.int64)
    trig = none if trigger is None else np.ascontiguousarray(trigger, np.int64)
    trend = none if trending is None else np.ascontiguousarray(trending, np.int64)
    w_trend = float(weights.trending) if trending is not None else 0.0
    w_new = float(weights.new_items)
    if weights.new_items_best_rank:
        w_new = float(weights.coengagement) + w_trend + w_new
    return fuse(np.ascontiguousarray(user, np.int64), co, trig, trend, float(weights.coengagement),
                float(weights.trigger), w_trend, w_new, np.ascontiguousarray(known, np.int64), int(k), RRF_K)


def grid_key(coengagement: float, trigger: float, trending: float | None = None) -> str:
    """The key of a grid point in :func:`choose_blend_weights`' table (``"0/0"``: user mode alone;
    ``"co/trigger/trending"`` when a trending list takes part)."""
    key = f"{coengagement:g}/{trigger:g}"
    return key if trending is None else f"{key}/{trending:g}"


def choose_blend_weights(user: np.ndarray, coengagement: np.ndarray, trigger: np.ndarray | None,
                         known: np.ndarray, positives: Sequence[np.ndarray], k: int = 100,
                         coengagement_grid: Sequence[float] = COENGAGEMENT_GRID,
                         trigger_grid: Sequence[float] = TRIGGER_GRID, trending: np.ndarray | None = None,
                         trending_grid: Sequence[float] = TRENDING_GRID,
                         new_items_grid: Sequence[float] = NEW_ITEMS_GRID) -> tuple[BlendWeights, dict]:
    """The grid point with the best validation recall@k (ties: the smaller weights, user mode first),
    then the new-item credit (:func:`choose_new_item_credit`) on the same lists with those weights.

    The lists are those of the validation users (queries = their fit histories); ``positives`` their
    held-out items. Returns the weights and ``{"coengagement/trigger[/trending]": recall}`` for every
    point, plus ``"new_items:w"`` for every credit tried.
    """
    from mfli.eval.metrics import recall_at_k

    table: dict[str, float] = {}
    best: tuple[float, float, float, float] | None = None
    for wc in coengagement_grid:
        for wt in (trigger_grid if trigger is not None else (0.0,)):
            for wp in (trending_grid if trending is not None else (0.0,)):
                w = BlendWeights(coengagement=wc, trigger=wt, trending=wp)
                ids, _ = blend(user, coengagement, trigger, w, known, k, trending)
                r = recall_at_k(ids, positives, k)
                table[grid_key(wc, wt, None if trending is None else wp)] = r
                if best is None or r > best[0] + 1e-12:
                    best = (r, wc, wt, wp)
    assert best is not None
    weights = BlendWeights(coengagement=best[1], trigger=best[2], trending=best[3])
    weights, tried = choose_new_item_credit(user, coengagement, trigger, known, positives, weights, k,
                                            trending, new_items_grid)
    table.update(tried)
    return weights, table


def choose_new_item_credit(user: np.ndarray, coengagement: np.ndarray | None, trigger: np.ndarray | None,
                           known: np.ndarray, positives: Sequence[np.ndarray], weights: BlendWeights,
                           k: int = 100, trending: np.ndarray | None = None,
                           grid: Sequence[float] = NEW_ITEMS_GRID,
                           min_gain: float = NEW_ITEMS_MIN_GAIN) -> tuple[BlendWeights, dict[str, float]]:
    """``weights`` with :attr:`BlendWeights.new_items` chosen on validation, and ``{"new_items:w": recall}``.

    The new items of a validation split are the items its held-out events reach that the fitted model
    and table never saw (not in ``known``): a model trained without the held-out events embeds them from
    content, as it will the items that arrive after the snapshot. The best credit is kept only when it
    beats no extra credit by more than ``min_gain`` (relative); on a split whose held-out events reach no
    new item every credit ties and it stays 0. An empty ``grid`` leaves ``weights`` as they are.
    """
    from mfli.eval.metrics import recall_at_k

    if not grid:
        return weights, {}
    tried: dict[str, float] = {}
    for w in grid:
        ids, _ = blend(user, coengagement, trigger, replace(weights, new_items=float(w)), known, k, trending)
        tried[f"new_items:{w:g}"] = recall_at_k(ids, positives, k)
    if "new_items:0" in tried:
        base = tried["new_items:0"]
    else:
        base = recall_at_k(blend(user, coengagement, trigger, replace(weights, new_items=0.0), known, k, trending)[0],
                           positives, k)
    chosen, best = 0.0, base
    for w in grid:
        r = tried[f"new_items:{w:g}"]
        if w > 0 and r > base * (1.0 + min_gain) and r > best + 1e-12:
            chosen, best = float(w), r
    return replace(weights, new_items=chosen), tried
