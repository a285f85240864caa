"""Synthetic catalogue generator: a deterministic, benchmark-grade stand-in for a real catalogue.

What it models (each piece is something a retrieval benchmark relies on):

- **Hierarchical topics.** ``n_topics`` topics, each with ``subtopics_per_topic`` subtopics; an item
  belongs to one leaf and its ``categories`` is the single path ``["topic003>sub02"]``. Topic and
  subtopic sizes follow a mild power law, so some topics are much bigger than others.
- **Text from topic vocabularies.** Every topic owns ``vocab_per_topic`` pseudo-words; each subtopic
  prefers its own slice of them. Titles and texts mix subtopic words, topic words, a shared vocabulary
  (words every topic uses) and a few words of other topics (noise), all Zipf-distributed.
- **Brands correlated with topics.** Brand ``b`` is at home in topic ``b % n_topics``; most items take a
  home brand of their topic, some any brand, some none.
- **Power-law popularity.** Item ``i`` has popularity ``rank_i ** -popularity_exponent`` over a random
  rank permutation (Zipf); events are popularity-weighted within a leaf, so the skew holds within and
  across topics. A ``recency_bias`` share of events picks among items created in the last
  ``recency_window_hours`` (fresh items are popular for a while).
- **Users with drifting interests.** Each user has 1-3 topic interests (the first correlated with
  ``age_bucket``) and a favourite subtopic in each; along the user's time-ordered events the active
  interest switches with probability ``drift_rate`` per event (sticky drift), and an
  ``explore_rate`` share of events goes to a random topic.
- **Time.** Items are created continuously over ``[start, end)``, with a ``fresh_share`` of them in
  the last ``fresh_hours`` (food for the delta pipeline). An event happens strictly after its item's
  ``created_at``. Users are active over a window inside the span; heavy users are log-normal.
- **Weights.** Ratings 1..5 (float32): events on an interest score higher than exploration, higher
  still on the favourite subtopic, shifted by a per-item quality, so "high rating" labels exist.

Determinism: every random draw comes from ``SeedSequence([seed, stream, block])`` where a block is
:data:`BLOCK` consecutive items or users, so the same config gives byte-identical tables whatever
``chunk_size`` is (``chunk_size`` only sets memory use and the number of part files).

Scale: the numeric state is about 40 bytes per item, 80 bytes per user and a <= 64 MB availability
table; item strings, users and interactions are produced and written one chunk at a time, so 10M
items / 100M interactions stay within a few GB (see ``bench/generate_catalogue.py``). ``generate`` builds everything in memory (tests, demos,
up to ~1M events); ``write_synthetic`` streams the ``mfli-parquet`` layout to disk::

    <out_dir>/_dataset.json            {"format": "mfli-parquet", "name": "synthetic", "meta": {config}}
    <out_dir>/items.parquet
    <out_dir>/users.parquet
    <out_dir>/interactions/part-00000.parquet ...
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from mfli.data.dataset import Dataset
from mfli.data.parquet_format import file_checksums
from mfli.data.schema import CATEGORY_SEP, INTERACTIONS_SCHEMA, ITEMS_SCHEMA, TS

#: Rows (items or users) per random-number block. Part of the data's identity: changing it changes
#: the output for every seed, so it is a constant, not configuration.
BLOCK = 1024

#: Users table of the synthetic catalogue: two categorical features beside the id.
USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("age_bucket", pa.string(), nullable=False),
    ]
)

REGIONS = ("us-east", "eu-west", "apac-south", "us-west", "latam", "eu-north", "apac-north", "africa")
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")

# Independent random streams: adding a draw to one never shifts another.
_S_ITEMS, _S_TEXT, _S_USERS, _S_EVENTS, _S_VOCAB = 1, 2, 3, 4, 5

_TABLE_RES = 1 << 18  # resolution of tabulated inverse CDFs (word ranks)
#: Largest (leaves x time buckets) availability table; sets the bucket width for big catalogues.
_AVAIL_CELLS = 1 << 24

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 pronounceable syllables
_BRAND_SUFFIXES = ("tex", "ora", "ix", "on", "ia", "co", "lab", "ware", "ium", "ex")


@dataclass
class SyntheticConfig:
    """Everything that defines a synthetic catalogue; same config -> byte-identical tables."""

    # --- size ---
    n_items: int = 20_000  # catalogue size
    n_users: int = 5_000  # users (every one gets >= min_events_per_user events)
    n_interactions: int = 200_000  # target event count; within-user repeats that survive resampling are dropped
    seed: int = 0  # root of every random stream
    # --- topics and text ---
    n_topics: int = 20  # top-level topics
    subtopics_per_topic: int = 5  # leaves per topic: categories are "topicZZZ>subSS"
    topic_size_exponent: float = 0.7  # Zipf exponent of topic (and subtopic) sizes; 0 = equal sizes
    vocab_per_topic: int = 400  # pseudo-words owned by each topic (split into subtopic slices)
    shared_vocab: int = 300  # pseudo-words every topic uses (function words, generic terms)
    title_min_tokens: int = 3  # title length range in words (brand name prepended when present)
    title_max_tokens: int = 8
    text_min_tokens: int = 15  # description length range in words
    text_max_tokens: int = 40
    shared_token_share: float = 0.25  # share of text words from the shared vocabulary (titles: 0.4x this)
    subtopic_token_share: float = 0.4  # share of text words from the item's subtopic slice
    noise_token_share: float = 0.05  # share of words from a random (usually other) topic
    # --- brands ---
    n_brands: int = 500  # brand b is at home in topic b % n_topics
    brand_topic_affinity: float = 0.85  # share of branded items carrying a home brand of their topic
    no_brand_share: float = 0.1  # share of items without a brand (null)
    # --- popularity and time ---
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity over a random rank order
    recency_bias: float = 0.3  # share of events drawn among items created in the recency window
    recency_window_hours: float = 72.0  # "fresh" for recency_bias
    start: str = "2024-01-01T00:00:00Z"  # first item creation (UTC, ISO 8601)
    end: str = "2024-07-01T00:00:00Z"  # exclusive end of the span; fixed so output never depends on now()
    fresh_share: float = 0.005  # share of items created in the last fresh_hours (delta-pipeline input)
    fresh_hours: float = 6.0
    # --- users ---
    min_interests: int = 1  # topics of interest per user, uniform in [min_interests, max_interests]
    max_interests: int = 3
    drift_rate: float = 0.05  # per-event probability that the active interest switches (~20-event runs)
    explore_rate: float = 0.1  # share of events on a random topic (popularity-weighted)
    subtopic_focus: float = 0.5  # share of on-interest events in the user's favourite subtopic
    age_signal: float = 0.3  # probability that the first interest is one favoured by the age bucket
    min_events_per_user: int = 2  # floor of events per user before resampling repeats
    activity_sigma: float = 1.0  # log-normal sigma of user activity (heavy users)
    min_active_frac: float = 0.1  # shortest user activity window as a share of the span
    # --- ratings ---
    item_quality_std: float = 0.5  # per-item rating offset, N(0, std)
    rating_noise: float = 0.8  # per-event rating noise, N(0, std), before rounding to 1..5
    # --- execution ---
    chunk_size: int = 131_072  # items / users per step and per part file (rounded up to BLOCK)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig: {msg}")

        n_leaves = self.n_topics * self.subtopics_per_topic
        need(self.n_topics >= 1 and self.subtopics_per_topic >= 1, "n_topics and subtopics_per_topic must be >= 1")
        need(self.n_items >= n_leaves, f"n_items ({self.n_items}) must be >= n_topics * subtopics_per_topic "
             f"({n_leaves}): every leaf category starts with one item")
        need(self.n_users >= 1, "n_users must be >= 1")
        need(self.min_events_per_user >= 1, "min_events_per_user must be >= 1")
        need(self.n_interactions >= self.min_events_per_user * self.n_users,
             f"n_interactions ({self.n_interactions}) must be >= min_events_per_user * n_users "
             f"({self.min_events_per_user * self.n_users})")
        need(self.seed >= 0, "seed must be >= 0")
        need(self.vocab_per_topic >= self.subtopics_per_topic, "vocab_per_topic must be >= subtopics_per_topic")
        need(self.shared_vocab >= 1, "shared_vocab must be >= 1")
        need(1 <= self.title_min_tokens <= self.title_max_tokens, "need 1 <= title_min_tokens <= title_max_tokens")
        need(1 <= self.text_min_tokens <= self.text_max_tokens, "need 1 <= text_min_tokens <= text_max_tokens")
        need(self.shared_token_share + self.subtopic_token_share + self.noise_token_share <= 1.0,
             "shared_token_share + subtopic_token_share + noise_token_share must be <= 1")
        need(self.n_brands >= 1, "n_brands must be >= 1")
        need(1 <= self.min_interests <= self.max_interests <= self.n_topics,
             "need 1 <= min_interests <= max_interests <= n_topics")
        for name in ("shared_token_share", "subtopic_token_share", "noise_token_share", "brand_topic_affinity",
                     "no_brand_share", "recency_bias", "fresh_share", "drift_rate", "explore_rate",
                     "subtopic_focus", "age_signal", "min_active_frac"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        need(self.chunk_size >= 1, "chunk_size must be >= 1")
        span = self.span_seconds  # parses start/end
        need(span > 2 * 3600, "end must be more than 2 hours after start")
        need(span < 2**32, "span must be shorter than 2**32 seconds (~136 years)")
        need(0 < self.fresh_hours * 3600 < span, "fresh_hours must be positive and shorter than the span")

    # --- derived ---
    @property
    def start_ts(self) -> pd.Timestamp:
        return _utc(self.start, "start")

    @property
    def end_ts(self) -> pd.Timestamp:
        return _utc(self.end, "end")

    @property
    def span_seconds(self) -> int:
        return int((self.end_ts - self.start_ts).total_seconds())

    @property
    def n_leaves(self) -> int:
        return self.n_topics * self.subtopics_per_topic

    @property
    def chunk_rows(self) -> int:
        """``chunk_size`` rounded up to a multiple of :data:`BLOCK`."""
        return -(-self.chunk_size // BLOCK) * BLOCK

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``meta`` of the written dataset)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SyntheticConfig: unknown field(s) {unknown}")
        return cls(**d)


def _utc(s: str, name: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(s)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"SyntheticConfig: {name}={s!r} is not an ISO 8601 timestamp") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _rng(cfg: SyntheticConfig, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, stream, block]))


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative Zipf weights ``(n + 1,)`` starting at 0, for inverse-CDF sampling of ranks."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return np.concatenate([[0.0], np.cumsum(w)])


def _zipf_table(n: int, exponent: float = 1.0) -> np.ndarray:
    """Inverse CDF of Zipf over ranks ``[0, n)`` tabulated at :data:`_TABLE_RES` points.

    ``rank = table[floor(u * _TABLE_RES)]``: an O(1) gather instead of a binary search per word.
    """
    cdf = _zipf_cdf(n, exponent)
    grid = (np.arange(_TABLE_RES) + 0.5) / _TABLE_RES * cdf[-1]
    return np.minimum(np.searchsorted(cdf, grid, side="right") - 1, n - 1).astype(np.int32)


def _sample_range(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index ``i`` in ``[lo, hi)`` with probability ``∝ cum[i+1] - cum[i]`` (vectorised).

    ``cum`` is a non-decreasing ``(n + 1,)`` cumulative-weight array, ``u`` uniforms in ``[0, 1)``.
    """
    base = cum[lo]
    target = base + u * (cum[hi] - base)
    if len(cum) > 1 << 16 and len(target) > 1:
        # Sorted queries walk a large array almost sequentially: several times faster than random ones.
        o = np.argsort(target)
        idx = np.empty(len(target), dtype=np.int64)
        idx[o] = np.searchsorted(cum, target[o], side="right")
        idx -= 1
    else:
        idx = np.searchsorted(cum, target, side="right") - 1
    return np.clip(idx, lo, hi - 1)


def _words(ids: np.ndarray, n_total: int, multiplier: int) -> list[str]:
    """Pseudo-words for integer ids: a scrambled base-70 spelling in syllables (unique for ids < n_total)."""
    n_syl = max(2, math.ceil(math.log(max(n_total, 2)) / math.log(len(_SYLLABLES))))
    space = len(_SYLLABLES) ** n_syl
    # multiplier is coprime with 70, so this is a bijection on [0, space): neighbours stop looking alike
    code = (ids.astype(np.int64) * multiplier + 12345) % space
    out = []
    for c in code.tolist():
        parts = []
        for _ in range(n_syl):
            c, r = divmod(c, len(_SYLLABLES))
            parts.append(_SYLLABLES[r])
        out.append("".join(parts))
    return out


def vocabulary(cfg: SyntheticConfig) -> np.ndarray:
    """All text words ``(shared_vocab + n_topics * vocab_per_topic,)`` as an object array.

    Layout: ``[0, shared_vocab)`` shared words, then topic ``z`` owns
    ``[shared_vocab + z * vocab_per_topic, shared_vocab + (z + 1) * vocab_per_topic)``; subtopic ``s``
    prefers the ``s``-th of ``subtopics_per_topic`` equal slices of its topic's block.
    """
    n = cfg.shared_vocab + cfg.n_topics * cfg.vocab_per_topic
    return np.array(_words(np.arange(n), n, 7919), dtype=object)


def brand_names(cfg: SyntheticConfig) -> np.ndarray:
    """Brand names ``(n_brands,)``: capitalised pseudo-word + suffix (brand ``b`` at home in topic ``b % n_topics``)."""
    ids = np.arange(cfg.n_brands)
    stems = _words(ids // len(_BRAND_SUFFIXES), -(-cfg.n_brands // len(_BRAND_SUFFIXES)), 4099)
    return np.array([s.capitalize() + _BRAND_SUFFIXES[b % len(_BRAND_SUFFIXES)] for s, b in zip(stems, ids)],
                    dtype=object)


def leaf_names(cfg: SyntheticConfig) -> list[str]:
    """Category path of every leaf ``topic * subtopics_per_topic + sub``: ``"topic003>sub02"``."""
    return [f"topic{z:03d}{CATEGORY_SEP}sub{s:02d}"
            for z in range(cfg.n_topics) for s in range(cfg.subtopics_per_topic)]


# ----------------------------------------------------------------------------------------------
# Global numeric state (O(n_items) and O(n_users) arrays; no strings)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Items:
    created: np.ndarray  # (N,) int64 seconds after start; non-decreasing in item id
    leaf: np.ndarray  # (N,) int32 leaf = topic * S + sub
    quality: np.ndarray  # (N,) float32 rating offset
    brand: np.ndarray  # (N,) int32 brand index, -1 = none
    order: np.ndarray  # (N,) int64 item ids sorted by (leaf, id): each leaf's items by creation time
    cum: np.ndarray  # (N + 1,) float64 cumulative popularity along `order`
    leaf_start: np.ndarray  # (L + 1,) int64 first position of each leaf in `order`
    bucket: int  # seconds per availability bucket
    avail: np.ndarray  # (L * J,) int32: avail[l * J + j] = items of leaf l visible to events in bucket j
    n_buckets: int  # J
    leaf_cum: np.ndarray  # (L + 1,) float64 cumulative leaf popularity mass (topic-major)
    topic_cum: np.ndarray  # (T + 1,) float64 cumulative topic popularity mass


def _build_items(cfg: SyntheticConfig) -> _Items:
    rng = _rng(cfg, _S_ITEMS)
    N, T, S, L = cfg.n_items, cfg.n_topics, cfg.subtopics_per_topic, cfg.n_leaves
    span, fresh = cfg.span_seconds, int(cfg.fresh_hours * 3600)

    # Leaf sizes: Zipf over a random order of topics, and of subtopics within each topic.
    topic_p = (rng.permutation(T) + 1.0) ** -cfg.topic_size_exponent
    sub_p = (np.argsort(rng.random((T, S)), axis=1) + 1.0) ** -cfg.topic_size_exponent
    leaf_p = (topic_p[:, None] * sub_p).ravel()
    leaf_cdf = np.concatenate([[0.0], np.cumsum(leaf_p)])
    leaf = np.empty(N, dtype=np.int32)
    leaf[:L] = np.arange(L)  # one founding item per leaf at t=0, so every leaf can serve any event time
    leaf[L:] = _sample_range(leaf_cdf, np.zeros(N - L, np.int64), np.full(N - L, L, np.int64), rng.random(N - L))

    # Creation times: uniform over the span with a denser tail of fresh items; monotone in id.
    n_fresh = min(round(cfg.fresh_share * N), N - L)
    n_old = N - L - n_fresh
    created = np.zeros(N, dtype=np.int64)
    if n_old:
        pos = (np.arange(n_old) + rng.random(n_old)) / n_old
        created[L:L + n_old] = np.floor(pos * (span - fresh)).astype(np.int64)
    if n_fresh:
        pos = (np.arange(n_fresh) + rng.random(n_fresh)) / n_fresh
        created[L + n_old:] = span - fresh + np.floor(pos * fresh).astype(np.int64)
    np.minimum(created, span - 1, out=created)

    weight = (rng.permutation(N) + 1.0) ** -cfg.popularity_exponent
    quality = (rng.standard_normal(N) * cfg.item_quality_std).astype(np.float32)

    # Brands: a home brand of the item's topic (Zipf-ish via u**2), else any brand, some none.
    topic = leaf // S
    n_home = np.maximum(0, (cfg.n_brands - np.arange(T) + T - 1) // T)  # brands b with b % T == z
    u_home, u_pick, u_any, u_none = rng.random(N), rng.random(N), rng.random(N), rng.random(N)
    home = topic + T * np.floor(n_home[topic] * u_pick**2).astype(np.int64)
    anyb = np.floor(u_any * cfg.n_brands).astype(np.int64)
    brand = np.where((u_home < cfg.brand_topic_affinity) & (n_home[topic] > 0), home, anyb).astype(np.int32)
    brand[u_none < cfg.no_brand_share] = -1

    order = np.argsort(leaf, kind="stable").astype(np.int64)
    cum = np.concatenate([[0.0], np.cumsum(weight[order])])
    leaf_start = np.concatenate([[0], np.cumsum(np.bincount(leaf, minlength=L))]).astype(np.int64)

    # Availability: an event at second t in bucket j = t // bucket sees the items of its leaf created
    # before j * bucket (founding items, created at 0, always). Since ids follow creation time, those
    # are a prefix of the leaf's segment of `order`, of length avail[leaf, j]: one gather per event.
    cells = min(_AVAIL_CELLS, max(1 << 20, 64 * N))  # resolution grows with the catalogue, memory <= 64 MB
    bucket = max(60, -(-span // max(1, cells // L - 2)))
    J = span // bucket + 2
    first_bucket = np.where(created == 0, 0, created // bucket + 1)
    avail = np.bincount(leaf.astype(np.int64) * J + first_bucket, minlength=L * J).reshape(L, J)
    avail = np.cumsum(avail, axis=1, dtype=np.int64).astype(np.int32).ravel()
    leaf_mass = np.bincount(leaf, weights=weight, minlength=L)
    leaf_cum = np.concatenate([[0.0], np.cumsum(leaf_mass)])
    topic_cum = np.concatenate([[0.0], np.cumsum(leaf_mass.reshape(T, S).sum(1))])
    return _Items(created, leaf, quality, brand, order, cum, leaf_start, bucket, avail, J, leaf_cum, topic_cum)


@dataclass
class _Users:
    counts: np.ndarray  # (U,) int64 events per user before repeat removal
    win_lo: np.ndarray  # (U,) int64 first second of the activity window (>= 1)
    win_len: np.ndarray  # (U,) int64 window length in seconds
    n_int: np.ndarray  # (U,) int64 number of interests
    interests: np.ndarray  # (U, max_interests) int64 topics; slot 0 = primary
    fav_sub: np.ndarray  # (U, max_interests) int64 favourite subtopic per interest
    region: np.ndarray  # (U,) int8 index into REGIONS
    age: np.ndarray  # (U,) int8 index into AGE_BUCKETS


def _build_users(cfg: SyntheticConfig, it: _Items) -> _Users:
    rng = _rng(cfg, _S_USERS)
    U, T, S, K = cfg.n_users, cfg.n_topics, cfg.subtopics_per_topic, cfg.max_interests
    span = cfg.span_seconds

    # Events per user: floor + log-normal activity share of the rest (largest remainder -> exact total).
    act = rng.lognormal(0.0, cfg.activity_sigma, U)
    rest = cfg.n_interactions - cfg.min_events_per_user * U
    share = act / act.sum() * rest
    counts = np.floor(share).astype(np.int64)
    left = rest - int(counts.sum())
    if left > 0:
        counts[np.argsort(counts - share, kind="stable")[:left]] += 1
    counts += cfg.min_events_per_user

    # Activity windows inside (0, span): length >= min_active_frac of the span.
    length = np.floor((cfg.min_active_frac + (1 - cfg.min_active_frac) * rng.random(U)) * (span - 2))
    win_len = length.astype(np.int64)
    win_lo = 1 + np.floor(rng.random(U) * (span - 2 - win_len)).astype(np.int64)

    region_p = np.array([0.24, 0.2, 0.16, 0.12, 0.1, 0.08, 0.06, 0.04])
    region = np.searchsorted(np.cumsum(region_p), rng.random(U) * region_p.sum(), side="right").astype(np.int8)
    age_p = np.array([0.15, 0.28, 0.22, 0.16, 0.11, 0.08])
    age = np.searchsorted(np.cumsum(age_p), rng.random(U) * age_p.sum(), side="right").astype(np.int8)
    np.minimum(region, len(REGIONS) - 1, out=region)
    np.minimum(age, len(AGE_BUCKETS) - 1, out=age)

    n_int = rng.integers(cfg.min_interests, cfg.max_interests + 1, U).astype(np.int64)
    zeros, tops = np.zeros(U, np.int64), np.full(U, T, np.int64)
    interests = np.stack([_sample_range(it.topic_cum, zeros, tops, rng.random(U)) for _ in range(K)], 1)
    # Age buckets favour topics z with z % 6 == bucket: user features carry some signal.
    n_age = len(AGE_BUCKETS)
    per_age = np.maximum(0, (T - np.arange(n_age) + n_age - 1) // n_age)
    by_age = age + n_age * np.floor(rng.random(U) * per_age[age]).astype(np.int64)
    use_age = (rng.random(U) < cfg.age_signal) & (per_age[age] > 0)
    interests[:, 0] = np.where(use_age, by_age, interests[:, 0])
    for k in range(1, K):  # make interests distinct by redrawing clashes (bounded: K <= T)
        for _ in range(64):
            clash = (interests[:, k:k + 1] == interests[:, :k]).any(1)
            if not clash.any():
                break
            idx = np.flatnonzero(clash)
            interests[idx, k] = _sample_range(it.topic_cum, zeros[idx], tops[idx], rng.random(len(idx)))
        clash = np.flatnonzero((interests[:, k:k + 1] == interests[:, :k]).any(1))
        if len(clash):  # tiny topic sets: fall back to the next topic not yet taken
            for r in clash:
                taken = set(interests[r, :k].tolist())
                interests[r, k] = next(z for z in range(T) if z not in taken)
    lo = interests * S
    fav_leaf = _sample_range(it.leaf_cum, lo.ravel(), (lo + S).ravel(), rng.random(U * K)).reshape(U, K)
    fav_sub = fav_leaf - lo
    return _Users(counts, win_lo, win_len, n_int, interests, fav_sub, region, age)


# ----------------------------------------------------------------------------------------------
# Chunk producers (arrow tables); `generate` and `write_synthetic` share them, so they agree exactly.
# ----------------------------------------------------------------------------------------------


def _token_matrix(cfg: SyntheticConfig, rng: np.random.Generator, leaf: np.ndarray, n_min: int, n_max: int,
                  p_shared: float, p_sub: float, p_noise: float, tables: dict[str, np.ndarray]) -> np.ndarray:
    """Word ids ``(n, n_max)`` int32 for items of ``leaf`` ``(n,)``; -1 pads beyond each item's length."""
    n, V, S, T = len(leaf), cfg.vocab_per_topic, cfg.subtopics_per_topic, cfg.n_topics
    topic, sub = (leaf // S)[:, None], (leaf % S)[:, None]
    length = rng.integers(n_min, n_max + 1, n)
    kind = rng.random((n, n_max))
    pick = (rng.random((n, n_max)) * _TABLE_RES).astype(np.int64)
    other = rng.integers(0, T, (n, n_max))
    slice_len = V // S
    shared = tables["shared"][pick]
    in_topic = tables["topic"][pick]  # already scrambled: frequent topic words spread over all slices
    in_sub = sub * slice_len + tables["slice"][pick]
    base = cfg.shared_vocab
    tok = np.where(
        kind < p_shared,
        shared,
        np.where(
            kind < p_shared + p_sub,
            base + topic * V + in_sub,
            np.where(kind < p_shared + p_sub + p_noise, base + other * V + in_topic, base + topic * V + in_topic),
        ),
    ).astype(np.int32)
    tok[np.arange(n_max)[None, :] >= length[:, None]] = -1
    return tok


def _join_words(words: pa.Array, tok: np.ndarray) -> pa.Array:
    """Space-join ``words[tok[i, j]]`` over j, skipping -1 pads -> ``(n,)`` strings."""
    valid = tok >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(tok[valid])))
    return pc.binary_join(lists, " ")


def _ts_array(cfg: SyntheticConfig, seconds: np.ndarray) -> pa.Array:
    ns = cfg.start_ts.value + seconds.astype(np.int64) * 1_000_000_000
    return pa.array(ns.view("datetime64[ns]"), type=TS)


def _item_chunks(cfg: SyntheticConfig, it: _Items) -> Iterator[pa.Table]:
    """Items tables of ``chunk_rows`` rows in id order."""
    vocab = vocabulary(cfg)
    # One word list for titles and texts: vocabulary ids, then brand b at len(vocab) + b.
    words = pa.array(np.concatenate([vocab, brand_names(cfg)]), type=pa.string())
    leaves = pa.array(leaf_names(cfg), type=pa.string())
    perm_v = _rng(cfg, _S_VOCAB).permutation(cfg.vocab_per_topic)  # which topic words are frequent
    tables = {
        "shared": _zipf_table(cfg.shared_vocab),
        "topic": perm_v[_zipf_table(cfg.vocab_per_topic)].astype(np.int32),
        "slice": _zipf_table(cfg.vocab_per_topic // cfg.subtopics_per_topic),
    }
    title_shared = 0.4 * cfg.shared_token_share  # titles are more topical than descriptions
    step = cfg.chunk_rows
    for c0 in range(0, cfg.n_items, step):
        c1 = min(cfg.n_items, c0 + step)
        titles, texts = [], []
        for b0 in range(c0, c1, BLOCK):
            b1 = min(c1, b0 + BLOCK)
            rng = _rng(cfg, _S_TEXT, b0 // BLOCK)
            leaf = it.leaf[b0:b1].astype(np.int64)
            titles.append(_token_matrix(cfg, rng, leaf, cfg.title_min_tokens, cfg.title_max_tokens, title_shared,
                                        cfg.subtopic_token_share, cfg.noise_token_share, tables))
            texts.append(_token_matrix(cfg, rng, leaf, cfg.text_min_tokens, cfg.text_max_tokens,
                                       cfg.shared_token_share, cfg.subtopic_token_share, cfg.noise_token_share,
                                       tables))
        brand = it.brand[c0:c1]
        brand_tok = np.where(brand < 0, -1, len(vocab) + brand).astype(np.int32)[:, None]
        brand_col = words.take(pa.array(brand_tok[:, 0], mask=brand < 0))
        cats = pa.ListArray.from_arrays(pa.array(np.arange(c1 - c0 + 1, dtype=np.int32)),
                                        leaves.take(pa.array(it.leaf[c0:c1])))
        yield pa.Table.from_arrays(
            [
                pa.array(np.arange(c0, c1, dtype=np.int64)),
                _ts_array(cfg, it.created[c0:c1]),
                cats,
                _join_words(words, np.concatenate([brand_tok, np.concatenate(titles)], axis=1)),
                _join_words(words, np.concatenate(texts)),
                brand_col,
            ],
            schema=ITEMS_SCHEMA,
        )


def _user_chunks(cfg: SyntheticConfig, us: _Users) -> Iterator[pa.Table]:
    regions, ages = pa.array(REGIONS, type=pa.string()), pa.array(AGE_BUCKETS, type=pa.string())
    step = cfg.chunk_rows
    for c0 in range(0, cfg.n_users, step):
        c1 = min(cfg.n_users, c0 + step)
        yield pa.Table.from_arrays(
            [
                pa.array(np.arange(c0, c1, dtype=np.int64)),
                regions.take(pa.array(us.region[c0:c1])),
                ages.take(pa.array(us.age[c0:c1])),
            ],
            schema=USERS_SCHEMA,
        )


def _pick_items(cfg: SyntheticConfig, it: _Items, leaf: np.ndarray, t: np.ndarray, recent: np.ndarray,
                u: np.ndarray) -> np.ndarray:
    """Popularity-weighted item of ``leaf`` created strictly before ``t`` (all ``(E,)``).

    "Before t" is at availability-bucket resolution (see ``_build_items``). With ``recent`` set, only
    items created in the recency window count (when the leaf has any).
    """
    seg = it.leaf_start[leaf]
    row = leaf * it.n_buckets
    hi = seg + it.avail[row + t // it.bucket]
    window = int(cfg.recency_window_hours * 3600)
    lo_recent = seg + it.avail[row + np.maximum(t - window, 0) // it.bucket]
    lo = np.where(recent & (lo_recent < hi), lo_recent, seg)
    return it.order[_sample_range(it.cum, lo, hi, u)]


def _event_block(cfg: SyntheticConfig, it: _Items, us: _Users, block: int) -> pa.Table | None:
    """Interactions of users ``[block * BLOCK, (block + 1) * BLOCK)``, sorted by (user, time)."""
    rng = _rng(cfg, _S_EVENTS, block)
    T, S = cfg.n_topics, cfg.subtopics_per_topic
    u0, u1 = block * BLOCK, min(cfg.n_users, (block + 1) * BLOCK)
    cnt = us.counts[u0:u1]
    E = int(cnt.sum())
    if E == 0:
        return None
    ul = np.repeat(np.arange(u1 - u0, dtype=np.int64), cnt)  # local user index per event
    starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])

    # Times: uniform in the user's window, then sorted within user (one sort on a packed key).
    lo, ln = us.win_lo[u0:u1][ul], us.win_len[u0:u1][ul]
    t = lo + np.floor(rng.random(E) * (ln + 1)).astype(np.int64)
    key = (ul << 32) | t
    key.sort()
    t = key & 0xFFFFFFFF

    # Sticky interest drift: the active interest advances by a random step at each switch.
    m = us.n_int[u0:u1][ul]
    switch = rng.random(E) < cfg.drift_rate
    switch[starts] = False
    step = switch * (1 + np.floor(rng.random(E) * (m - 1)).astype(np.int64))
    run = np.cumsum(step)
    run -= np.repeat(run[starts] - step[starts], cnt)
    slot = run % m
    topic = us.interests[u0:u1][ul, slot]
    fav = us.fav_sub[u0:u1][ul, slot]

    explore = rng.random(E) < cfg.explore_rate
    zeros = np.zeros(E, np.int64)
    topic = np.where(explore, _sample_range(it.topic_cum, zeros, zeros + T, rng.random(E)), topic)
    on_fav = ~explore & (rng.random(E) < cfg.subtopic_focus)
    sub_draw = _sample_range(it.leaf_cum, topic * S, topic * S + S, rng.random(E)) - topic * S
    leaf = topic * S + np.where(on_fav, fav, sub_draw)

    recent = rng.random(E) < cfg.recency_bias
    item = _pick_items(cfg, it, leaf, t, recent, rng.random(E))
    # A user meets an item once. Repeats are redrawn with a widening scope (same leaf, another
    # subtopic of the topic, any topic) and whatever still repeats is dropped.
    scopes = ("leaf", "leaf", "topic", "topic", "any", "any")
    keep = np.ones(E, dtype=bool)
    for attempt in range(len(scopes) + 1):
        _, first = np.unique(ul * cfg.n_items + item, return_index=True)
        keep[:] = False
        keep[first] = True
        if keep.all() or attempt == len(scopes):
            break
        d = np.flatnonzero(~keep)
        if scopes[attempt] == "any":
            explore[d] = True
            topic[d] = _sample_range(it.topic_cum, zeros[d], zeros[d] + T, rng.random(len(d)))
        if scopes[attempt] != "leaf":
            on_fav[d] = False
            z = topic[d] * S
            leaf[d] = _sample_range(it.leaf_cum, z, z + S, rng.random(len(d)))
        item[d] = _pick_items(cfg, it, leaf[d], t[d], np.zeros(len(d), bool), rng.random(len(d)))

    base = np.where(explore, 2.6, np.where(on_fav, 4.0, 3.6))
    rating = base + it.quality[item] + rng.standard_normal(E) * cfg.rating_noise
    weight = np.clip(np.rint(rating), 1, 5).astype(np.float32)
    return pa.Table.from_arrays(
        [
            pa.array(u0 + ul[keep]),
            pa.array(item[keep]),
            _ts_array(cfg, t[keep]),
            pa.array(weight[keep]),
        ],
        schema=INTERACTIONS_SCHEMA,
    )


def _interaction_chunks(cfg: SyntheticConfig, it: _Items, us: _Users) -> Iterator[pa.Table]:
    """One interactions table per ``chunk_rows`` users (may be empty when all its users have 0 events)."""
    n_blocks = -(-cfg.n_users // BLOCK)
    per_chunk = cfg.chunk_rows // BLOCK
    for b0 in range(0, n_blocks, per_chunk):
        parts = [_event_block(cfg, it, us, b) for b in range(b0, min(n_blocks, b0 + per_chunk))]
        parts = [p for p in parts if p is not None]
        yield pa.concat_tables(parts).combine_chunks() if parts else INTERACTIONS_SCHEMA.empty_table()


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def generate(cfg: SyntheticConfig | None = None) -> Dataset:
    """Build the catalogue in memory and return it as a conformed canonical :class:`Dataset`.

    Meant for tests and small/medium catalogues (up to ~1M events); use :func:`write_synthetic` beyond.
    The tables equal what :func:`write_synthetic` writes for the same config, read back with pyarrow.
    """
    cfg = cfg or SyntheticConfig()
    it = _build_items(cfg)
    us = _build_users(cfg, it)
    items = pa.concat_tables(list(_item_chunks(cfg, it))).to_pandas()
    users = pa.concat_tables(list(_user_chunks(cfg, us))).to_pandas()
    inter = pa.concat_tables(list(_interaction_chunks(cfg, it, us))).to_pandas()
    return Dataset("synthetic", "synthetic", inter, items, users, cfg.to_dict()).conformed()


def write_synthetic(cfg: SyntheticConfig, out_dir: str | Path, *, overwrite: bool = False,
                    progress: bool = True) -> Path:
    """Generate chunk by chunk and write the ``mfli-parquet`` layout to ``out_dir``; returns ``out_dir``.

    Atomic: everything is written to a temporary folder beside ``out_dir`` and renamed at the end, so
    a crash never leaves a half-written dataset. An existing ``out_dir`` is replaced when it is empty
    or an earlier synthetic catalogue (its ``_dataset.json`` says so); anything else needs
    ``overwrite=True``. Peak memory is the O(items + users) numeric state plus one chunk.
    """
    out = Path(out_dir)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    n_item_chunks = -(-cfg.n_items // cfg.chunk_rows)
    n_user_chunks = -(-cfg.n_users // cfg.chunk_rows)
    bar = tqdm(total=n_item_chunks + 2 * n_user_chunks, desc="synthetic", unit="chunk", file=sys.stderr,
               disable=not progress)
    try:
        tmp.mkdir()
        bar.set_postfix_str("state")
        it = _build_items(cfg)
        us = _build_users(cfg, it)
        bar.set_postfix_str("items")
        with pq.ParquetWriter(tmp / "items.parquet", ITEMS_SCHEMA, compression="zstd") as w:
            for table in _item_chunks(cfg, it):
                w.write_table(table)
                bar.update()
        bar.set_postfix_str("users")
        with pq.ParquetWriter(tmp / "users.parquet", USERS_SCHEMA, compression="zstd") as w:
            for table in _user_chunks(cfg, us):
                w.write_table(table)
                bar.update()
        bar.set_postfix_str("interactions")
        (tmp / "interactions").mkdir()
        for i, table in enumerate(_interaction_chunks(cfg, it, us)):
            pq.write_table(table, tmp / "interactions" / f"part-{i:05d}.parquet", compression="zstd")
            bar.update()
        # checksums are checked on load, as for any mfli-parquet folder
        marker = {"format": "mfli-parquet", "name": "synthetic", "meta": cfg.to_dict(), "sha256": file_checksums(tmp)}
        (tmp / "_dataset.json").write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists() or overwrite:
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory; pass overwrite=True to replace it")
    if not any(out.iterdir()):
        return
    marker = out / "_dataset.json"
    try:
        meta = json.loads(marker.read_text())
        if meta.get("format") == "mfli-parquet" and meta.get("name") == "synthetic":
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise FileExistsError(f"{out}: exists and is not an earlier synthetic catalogue; "
                          "pass overwrite=True to replace it")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    aside = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
