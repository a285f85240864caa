"""Typed configuration of the MFLI model: features, facets, codebook and towers.

Every default is commented with why it is what it is. Configs round-trip through plain dicts
(``to_dict`` / ``from_dict``) so they can be saved as JSON beside the weights and overridden by
small JSON files (``mfli train --config FILE.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

CodebookMode = Literal["joint", "kmeans_after", "none"]
FacetKind = Literal["engagement", "semantic"]


@dataclass
class FeatureConfig:
    """How raw item/user columns become integer ids (see :mod:`mfli.model.features`)."""

    text_vocab_size: int = 20000  # most frequent title/text tokens kept; the rest map to OOV
    text_min_count: int = 2  # a token must occur in >= 2 training items to be learnable at all
    max_text_tokens: int = 32  # unique tokens per item (title first), bounds the EmbeddingBag cost
    max_categories: int = 16  # category ids per item, including hierarchical prefixes
    category_vocab_size: int = 50000  # categories beyond this (rarest) map to OOV
    brand_vocab_size: int = 50000  # brands beyond this (rarest) map to OOV
    brand_min_count: int = 1  # a brand seen once still identifies its items
    user_value_vocab_size: int = 10000  # distinct "column=value" user feature tokens kept
    numeric_bins: int = 10  # numeric user columns with many values are cut into quantile bins
    # item age buckets (days since created_at at the reference time): fresh items behave differently
    age_bucket_days: tuple[float, ...] = (1.0, 7.0, 30.0, 90.0, 365.0, 1095.0, 3650.0)


@dataclass
class FacetConfig:
    """One facet: its own embedding head, labels and loss weight.

    ``kind="engagement"`` trains on user -> item pairs and trigger -> co-engaged item pairs (items
    consecutive in a user's history within ``TrainConfig.co_window``), both with in-batch sampled
    softmax and log-popularity correction. ``kind="semantic"`` trains item -> item pairs that share a
    leaf category or a distinctive text token; its user head is fitted to that item space with the
    item side detached, so user traffic cannot reshape what "semantically close" means.
    """

    name: str = "engagement"
    kind: FacetKind = "engagement"
    weight: float = 1.0  # w_f: multiplies every loss term of the facet; 0 removes it entirely
    temperature: float = 0.05  # softmax temperature on cosine scores; ~0.05 suits unit vectors
    min_label: float | None = None  # keep positives with interaction weight >= this (4.0: high rating)
    # keep positives among the newest share of each user's training events (0.5: the newer half); unlike
    # min_label it needs no explicit ratings, so it works on implicit feedback (weight 1 everywhere)
    recent_share: float | None = None
    user_item_weight: float = 1.0  # weight of the user -> item pairs inside this facet
    item_item_weight: float = 1.0  # weight of trigger -> item (engagement) or semantic pairs
    logq: float = 1.0  # strength of the log-popularity correction (0 off, 1 full); engagement pairs only


def default_facets() -> list[FacetConfig]:
    """F = 2: engagement (any interaction) and semantic (shared category / text)."""
    return [
        FacetConfig(name="engagement", kind="engagement"),
        FacetConfig(name="semantic", kind="semantic", weight=0.5, temperature=0.1),
    ]


def engagement_facet() -> list[FacetConfig]:
    """F = 1: engagement only (the facet-count ablation's smallest model)."""
    return [FacetConfig(name="engagement", kind="engagement")]


def recent_facets() -> list[FacetConfig]:
    """F = 3 on any feedback: engagement, recent engagement (each user's newer half) and semantic.

    The recent facet is an engagement facet restricted to the newer half of every user's history, so it
    specialises in current interests while the first facet keeps the long-run ones. It replaces
    :func:`three_facets`'s high-rating facet where there are no ratings: on implicit data (every weight
    1) ``min_label=4`` keeps no positive, that facet gets no gradient and serves untrained embeddings.
    """
    return [
        FacetConfig(name="engagement", kind="engagement"),
        FacetConfig(name="engagement_recent", kind="engagement", recent_share=0.5),
        FacetConfig(name="semantic", kind="semantic", weight=0.5, temperature=0.1),
    ]


def three_facets() -> list[FacetConfig]:
    """F = 3, the paper's default count: any rating, high rating (>= 4) and semantic.

    Needs explicit ratings: on implicit feedback the high-rating facet learns nothing (see
    :func:`recent_facets`)."""
    return [
        FacetConfig(name="engagement_any", kind="engagement"),
        FacetConfig(name="engagement_high", kind="engagement", min_label=4.0),
        FacetConfig(name="semantic", kind="semantic", weight=0.5, temperature=0.1),
    ]


@dataclass
class CodebookConfig:
    """The multifaceted residual-quantisation codebook (REFERENCE.md 1.2) and its schedule."""

    mode: CodebookMode = "joint"  # "joint": co-trained; "kmeans_after": ablation; "none": plain two-tower
    layers: int = 2  # L; two levels give M^2 clusters per facet, enough for 1e4-1e6 items
    codes: int | None = None  # M; None -> (n_train_items / items_per_cluster) ** (1/L), at least 4
    items_per_cluster: float = 30.0  # target mean cluster size when ``codes`` is None
    start_step: int | None = None  # delayed start; None -> 30% of the planned steps (embeddings warm up)
    layer_interval: int | None = None  # steps between layer switch-ons; None -> 10% of planned steps
    qmf_weight: float = 1.0  # weight of L_QMF (softmax on reconstructions) relative to L_MF
    qmf_warmup: int | None = None  # steps over which L_QMF ramps in after the start; None -> layer_interval
    penalty_weight: float = 0.05  # lambda of the over-utilisation penalty
    penalty_temperature: float = 0.2  # soft-assignment temperature, relative to the batch's mean distance
    commit_weight: float = 0.0  # beta of ||e - sg(e_hat)||^2; 0 keeps the towers driven by retrieval only
    anchor_weight: float = 1.0  # ||sg(e) - e_hat||^2: keeps codewords on their items (error falls per layer)
    straight_through: bool = True  # L_QMF gradients also reach the towers (identity through argmin)
    # L_QMF gradient shares of the query towers (user, trigger) and, through the straight-through
    # estimator, of the item tower. 0 makes co-training cost the towers nothing (+2.9% recall@100 on
    # amazon-scientific / last, one seed) but lets new items drift off the codewords: the daily DAG's demo
    # catalogue fell from 0.281 to 0.036 cold recall@100 and amazon-scientific / cold lost 7.8%. So the
    # default stays 1.0 until a validation-split tuner can choose per dataset (docs/benchmarks.md).
    # Either one float for every facet or one value per facet, in ``ModelConfig.facets`` order, e.g.
    # (0.0, 1.0): the engagement facet trains as a plain two-tower while the semantic facet still
    # feels the codebook. Measured (docs/benchmarks.md, "Per-facet gradient share"): better on warm
    # items, level on amazon-scientific / cold over two seeds, but the daily DAG's demo catalogue fell
    # from 0.260 to 0.027 cold recall@100 (as with 0 everywhere), so it is not a default
    qmf_query_scale: float | tuple[float, ...] = 1.0
    straight_through_scale: float | tuple[float, ...] = 1.0
    normalize: bool = True  # L_QMF scores unit-normalised reconstructions (same scale as the embeddings)
    buffer_size: int = 8192  # recent item embeddings kept for k-means init and dead-code re-seeding
    dead_window: int = 100  # steps; a code unused over a whole window is re-seeded
    kmeans_iters: int = 20  # faiss k-means iterations at layer switch-on

    def __post_init__(self) -> None:
        # JSON gives lists; keep per-facet scales as tuples so a saved config round-trips unchanged
        for name in _PER_FACET_SCALES:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not value or not all(_is_number(v) for v in value):
                    raise ValueError(f"codebook.{name}: expected a number or a non-empty list of numbers, got {value!r}")
                setattr(self, name, tuple(float(v) for v in value))
            elif not _is_number(value):
                raise ValueError(f"codebook.{name}: expected a number or a list of numbers, got {value!r}")

    def facet_scales(self, name: str, n_facets: int) -> list[float]:
        """``name`` (one of the per-facet scales) as one float per facet; a sequence must have ``n_facets`` values."""
        value = getattr(self, name)
        if isinstance(value, (list, tuple)):
            if len(value) != n_facets:
                raise ValueError(f"codebook.{name} has {len(value)} value(s) but the model has {n_facets} "
                                 f"facet(s); give one number for all facets or one per facet, in facet order")
            return [float(v) for v in value]
        return [float(value)] * n_facets


# CodebookConfig fields that take one float for all facets or one float per facet
_PER_FACET_SCALES = ("qmf_query_scale", "straight_through_scale")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class ModelConfig:
    """Towers, facets and codebook."""

    dim: int = 64  # d: size of each facet embedding
    hidden: int = 128  # width of the feature embeddings and the tower trunks
    id_dropout: float = 0.25  # train-time chance an item id embedding is replaced by the "unknown" row
    history_len: int = 50  # most recent history items the user tower pools
    pooling: Literal["mean", "attention", "transformer", "recent"] = "attention"  # recency-aware pooling beat the mean on ml-latest-small
    facets: list[FacetConfig] = field(default_factory=default_facets)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        # a per-facet scale of the wrong length fails when the config is built, not at training time
        for name in _PER_FACET_SCALES:
            self.codebook.facet_scales(name, len(self.facets))

    @property
    def facet_names(self) -> list[str]:
        return [f.name for f in self.facets]


def to_dict(cfg: Any) -> dict:
    """Dataclass -> JSON-ready dict (tuples become lists)."""
    return asdict(cfg)


def from_dict(cls: type, data: dict | None) -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict; nested dataclasses and facet lists too.

    Unknown keys raise ``ValueError`` naming the key, so a typo in a config file is not ignored.
    """
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        current = getattr(defaults, name)
        if is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = from_dict(type(current), value)
        elif name == "facets" and isinstance(value, list):
            kwargs[name] = [v if isinstance(v, FacetConfig) else from_dict(FacetConfig, v) for v in value]
        elif isinstance(current, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
