"""Training pairs from canonical interactions: user -> item, trigger -> co-engaged item, semantic.

Everything is index arithmetic on flat arrays built once (events sorted by user then time), so a
batch costs O(B * H) regardless of the dataset size and nothing per pair is materialised:

- user -> item: an event e of user u; the query is u's features plus the ``H`` events before e
  (causal: the model learns to predict the next item from the past, which is how it is queried).
- trigger -> co-engaged: events e and e + k of the same user, ``1 <= k <= window``, in a random
  direction (co-engagement is symmetric).
- semantic: an anchor training item, one of its keys (a leaf category path, its whole category
  set, or a distinctive title/text token), and another item carrying that key.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfli.data.errors import DataError
from mfli.model.features import leaf_categories, tokenize


def _csr(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(groups) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(g) for g in groups])
    flat = np.fromiter((x for g in groups for x in g), dtype=np.int64, count=int(indptr[-1]))
    return indptr, flat


@dataclass
class UserItemBatch:
    """``user_rows (B,)``, ``history (B, H)`` catalogue rows right-aligned (-1 = empty),
    ``target_rows (B,)``, ``weight (B,)`` interaction labels, ``recency (B,)`` in (0, 1]: the event's
    place in its user's training history (position / length, 1 = the user's latest event)."""

    user_rows: np.ndarray
    history: np.ndarray
    target_rows: np.ndarray
    weight: np.ndarray
    recency: np.ndarray


@dataclass
class ItemPairBatch:
    """``anchor_rows (B,)``, ``target_rows (B,)`` catalogue rows; ``label (B,)`` the smaller of the
    two interaction weights (co-engagement) or 1 (semantic); ``recency (B,)`` the smaller of the two
    events' recencies (co-engagement, see :class:`UserItemBatch`) or 1 (semantic)."""

    anchor_rows: np.ndarray
    target_rows: np.ndarray
    label: np.ndarray
    recency: np.ndarray


class PairSampler:
    """Index structures over training interactions and the sampling of the three pair kinds.

    Args:
        interactions: canonical training interactions.
        item_ids: ``(N_cat,)`` catalogue item ids in catalogue-row order.
        user_ids: ``(U,)`` user ids in user-table-row order (must cover every interaction user).
        items: canonical items table (for semantic keys), same ids as ``item_ids``.
        history_len: H.
        semantic_max_df: a text token is a semantic key only if at most this share of training
            items carries it ("the" is not a topic), and at least 2 do.
    """

    def __init__(
        self,
        interactions: pd.DataFrame,
        item_ids: np.ndarray,
        user_ids: np.ndarray,
        items: pd.DataFrame,
        history_len: int,
        semantic_max_df: float = 0.01,
    ) -> None:
        if len(interactions) == 0:
            raise DataError("interactions", "no training interactions")
        inter = interactions.sort_values(["user_id", "event_ts", "item_id"], kind="stable")
        cat_order = np.argsort(item_ids, kind="stable")
        sorted_ids = item_ids[cat_order]
        ev_items = inter["item_id"].to_numpy(dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ev_items), len(sorted_ids) - 1)
        bad = sorted_ids[pos] != ev_items
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError("interactions", f"item_id {ev_items[row]} is not in the items table",
                            line=int(inter.index[row]), column="item_id")
        self.item_row = cat_order[pos]  # (E,) catalogue row per event
        u_order = np.argsort(user_ids, kind="stable")
        ev_users = inter["user_id"].to_numpy(dtype=np.int64)
        upos = np.minimum(np.searchsorted(user_ids[u_order], ev_users), len(user_ids) - 1)
        if (user_ids[u_order][upos] != ev_users).any():
            raise DataError("interactions", "a user_id is missing from the user table", column="user_id")
        self.user_row = u_order[upos]  # (E,)
        self.weight = inter["weight"].to_numpy(dtype=np.float32)
        self.n_events = len(inter)
        change = np.r_[True, ev_users[1:] != ev_users[:-1]]
        starts = np.flatnonzero(change)
        lengths = np.diff(np.r_[starts, self.n_events])
        self.seq_start = np.repeat(starts, lengths)  # (E,)
        # (E,) position / length in the user's time-ordered history: relative, so a recency facet
        # means "each user's newer events" whatever the dataset's time span or activity level
        self.recency = ((np.arange(self.n_events) - self.seq_start + 1) / np.repeat(lengths, lengths)).astype(np.float32)
        self.history_len = history_len

        counts = np.bincount(self.item_row, minlength=len(item_ids)).astype(np.float64)
        # unseen items get half a count so log Q stays finite if they ever appear as targets
        self.log_q = np.log(np.maximum(counts, 0.5) / counts.sum()).astype(np.float32)  # (N_cat,)
        self.train_rows = np.flatnonzero(counts > 0)
        self._build_semantic(items, item_ids, semantic_max_df)

    # user histories ---------------------------------------------------------------------------
    def histories_for_users(self, user_rows: np.ndarray) -> dict[int, np.ndarray]:
        """Full training history (catalogue rows, oldest first) of each user row."""
        out: dict[int, np.ndarray] = {}
        wanted = {int(u) for u in user_rows}
        starts = np.unique(self.seq_start)
        ends = np.r_[starts[1:], self.n_events]
        for s, e in zip(starts, ends):
            u = int(self.user_row[s])
            if u in wanted:
                out[u] = self.item_row[s:e]
        return out

    def _history(self, events: np.ndarray) -> np.ndarray:
        H = self.history_len
        idx = events[:, None] - H + np.arange(H)[None, :]  # (B, H), last column = previous event
        valid = idx >= self.seq_start[events][:, None]
        return np.where(valid, self.item_row[np.clip(idx, 0, None)], -1)

    # samplers ---------------------------------------------------------------------------------
    def user_item(self, events: np.ndarray) -> UserItemBatch:
        """The user -> item batch for event indices ``events (B,)``."""
        return UserItemBatch(self.user_row[events], self._history(events), self.item_row[events], self.weight[events],
                             self.recency[events])

    def co_engaged(self, rng: np.random.Generator, size: int, window: int) -> ItemPairBatch:
        """``size`` trigger -> co-engaged pairs (events at most ``window`` apart in one history)."""
        e = rng.integers(0, self.n_events, size=2 * size)
        k = rng.integers(1, window + 1, size=2 * size)
        partner = e + k
        ok = partner < self.n_events
        ok[ok] &= self.seq_start[partner[ok]] == self.seq_start[e[ok]]
        e, partner = e[ok][:size], partner[ok][:size]
        flip = rng.random(len(e)) < 0.5
        a = np.where(flip, partner, e)
        b = np.where(flip, e, partner)
        label = np.minimum(self.weight[a], self.weight[b])
        return ItemPairBatch(self.item_row[a], self.item_row[b], label, np.minimum(self.recency[a], self.recency[b]))

    def _build_semantic(self, items: pd.DataFrame, item_ids: np.ndarray, max_df: float) -> None:
        row_of = {int(i): r for r, i in enumerate(item_ids)}
        train_set = {int(x) for x in item_ids[self.train_rows]}
        sub = items[items["item_id"].isin(train_set)]
        per_item: dict[int, list[str]] = {}
        tok_df: dict[str, int] = defaultdict(int)
        toks_of: dict[int, list[str]] = {}
        for iid, cats, title, text in zip(sub["item_id"], sub["categories"], sub["title"], sub["text"]):
            cats = [] if cats is None else [str(c) for c in cats]
            leaves = leaf_categories(cats)
            keys = ["c:" + c for c in leaves]
            if len(leaves) > 1:
                keys.append("s:" + "|".join(sorted(leaves)))  # the whole category set, a finer "leaf"
            per_item[int(iid)] = keys
            toks = sorted(set(tokenize(title) + tokenize(text)))
            toks_of[int(iid)] = toks
            for t in toks:
                tok_df[t] += 1
        cap = max(2, int(max_df * max(len(sub), 1)))
        key_items: dict[str, list[int]] = defaultdict(list)
        for iid, keys in per_item.items():
            keys = keys + ["t:" + t for t in toks_of[iid] if 2 <= tok_df[t] <= cap]
            per_item[iid] = keys
            for key in keys:
                key_items[key].append(row_of[iid])
        usable = {k: v for k, v in key_items.items() if len(v) >= 2}
        key_names = sorted(usable)
        key_index = {k: i for i, k in enumerate(key_names)}
        self.key_indptr, self.key_items = _csr([sorted(usable[k]) for k in key_names])
        anchors, groups = [], []
        for iid, keys in sorted(per_item.items()):
            ks = [key_index[k] for k in keys if k in key_index]
            if ks:
                anchors.append(row_of[iid])
                groups.append(ks)
        self.sem_anchor = np.asarray(anchors, dtype=np.int64)
        self.sem_indptr, self.sem_keys = _csr(groups)

    def semantic(self, rng: np.random.Generator, size: int) -> ItemPairBatch:
        """``size`` (anchor, item sharing a key) pairs; empty when no item shares any key."""
        if len(self.sem_anchor) == 0:
            z = np.zeros(0, dtype=np.int64)
            return ItemPairBatch(z, z, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))
        a = rng.integers(0, len(self.sem_anchor), size=size)
        n_keys = self.sem_indptr[a + 1] - self.sem_indptr[a]
        key = self.sem_keys[self.sem_indptr[a] + (rng.random(size) * n_keys).astype(np.int64)]
        lo, n = self.key_indptr[key], self.key_indptr[key + 1] - self.key_indptr[key]
        j = (rng.random(size) * n).astype(np.int64)
        anchor_rows = self.sem_anchor[a]
        target = self.key_items[lo + j]
        clash = target == anchor_rows  # never pair an item with itself: take the next one on the key
        target = np.where(clash, self.key_items[lo + (j + 1) % n], target)
        return ItemPairBatch(anchor_rows, target, np.ones(size, dtype=np.float32), np.ones(size, dtype=np.float32))
