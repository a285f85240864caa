"""What a snapshot is served with: :class:`ServingConfig`, chosen when the snapshot is evaluated.

The daily evaluation and both gates score a snapshot with ``Snapshot.retriever()``, which builds
its retriever from this config; the config is saved in the snapshot (``serving.json``) and the
service builds its retriever the same way, so what is gated is what is served. ``engine`` picks the
user-mode scorer (the reference retriever or the compiled scan engine) and is stored with the rest;
``blend`` (set by the daily evaluation when the snapshot carries a co-engagement table) turns on blend
mode (:mod:`mfli.serve.blend`), which ``mode="auto"`` requests then get.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mfli.serve.blend import BlendConfig, BlendWeights
from mfli.serve.engine import EngineConfig
from mfli.serve.retriever import RetrieverConfig

ENGINES = ("reference", "scan")
#: the engine of a snapshot whose serving.json predates the ``engine`` field: what its gates measured
LEGACY_ENGINE = "reference"


def default_retriever_config() -> RetrieverConfig:
    """The retriever settings snapshots are gated and served with unless a run chooses others.

    ``merge="sum"`` ranks the pooled facet candidates by ``sum_f q_f . e_f``, the score exact search
    and the quality harness use; it is what every gate and benchmark has measured.
    """
    return RetrieverConfig(beam=32, merge="sum")


def default_scan_config() -> EngineConfig:
    """The scan engine settings snapshots are gated and served with unless a run chooses others.

    48 clusters (one budget over both facets) and a short list of 300. The short list is pre-ranked by
    4-bit fast-scan codes (``prerank="fastscan"``) of one sub-quantiser per two dimensions, chosen for
    the score-aware loss (``fastscan_eta=8``: an error along the item's direction weighs 8x). At
    1,000,000 items, in two interleaved runs against one nearest-centroid sub-code per dimension (the
    previous default), that answered 1.00-1.08x the queries/s at equal recall@100 (0.90 and 0.95,
    batch 1 and 256) with half the code bytes (64 MB less); 48 / 300 reached recall 0.927 against
    0.950 (docs/benchmarks_serving.md, "Score-aware fast-scan codes"). Its cost is the encoder at
    engine start: 6.3 s at 1M with the snapshot's lists and quantiser on two threads (3.3 s with
    nearest-centroid codes, on another host).

    Trigger mode is answered from neighbour lists of 100 items (``neighbours=100``; requests with k >
    100 take the reference path): with the user's 10 most recent items as triggers they raised
    trigger-mode recall@100 over the paper's cluster histogram from 0.269 to 0.327 on ml-latest-small /
    last, 0.208 to 0.269 on amazon-scientific / last and 0.265 to 0.295 on its cold split
    (docs/benchmarks.md). Each entry keeps its build-time score in a byte (``list_scores``) and a
    request merges its triggers' lists by them instead of rescoring scattered vectors: at 1M items
    that answers 12.6-63x the requests/s of the fastest per-trigger IVF / ScaNN / HNSW search at
    equal recall with 4 or 16 triggers, 6.3-11.9x with one in batches of 64 and 4.3-7.3x one request at
    a time (two runs; under the 5x target there), for 308 bytes per item (200 of uint16 codes, ``compact_lists``; 108 of scores) and a
    build of 60-120 s on one thread (docs/benchmarks_serving.md, "Trigger mode: stored list scores").
    """
    return EngineConfig(n_clusters=48, shortlist=300, prerank="fastscan", neighbours=100, fastscan_dims=2,
                        fastscan_eta=8.0)


@dataclass
class ServingConfig:
    """Serving settings of a snapshot (stored in it, used by the gates and the service alike)."""

    retriever: RetrieverConfig = field(default_factory=default_retriever_config)  # both modes' search settings
    max_k: int = 1000  # largest k a request may ask for
    quota_views: int = 64  # distinct facet_quotas vectors kept ready (LRU); each is a shallow copy
    # user-mode scorer: "reference" (beam search + cluster scoring, mfli.serve.retriever) or "scan"
    # (mfli.serve.engine: centroid routing, code pre-rank, exact short list; needs merge="sum").
    # "scan" for new snapshots: recall@100 within 0.5% of the reference (ml-latest-small leave-last-out
    # 0.4000 vs 0.3967, synthetic 50k 0.3086 vs 0.3073) at 2-8x its queries/s at 100k items
    # (docs/benchmarks_serving.md). Per-request quotas take the reference path; so does trigger mode
    # unless scan.neighbours > 0 (then the engine's neighbour lists answer it, mfli.serve.neighbours)
    engine: str = "scan"
    scan: EngineConfig = field(default_factory=default_scan_config)  # the scan engine's settings (engine="scan")
    # blend mode (user mode + co-engagement table + trigger lists, fused; mfli.serve.blend): None = off.
    # Needs the snapshot's co-engagement table (coengagement.npz); the daily evaluation chooses it
    blend: BlendConfig | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.engine == "scan" and self.retriever.merge != "sum":
            raise ValueError("engine 'scan' ranks by the summed facet score: it needs retriever.merge='sum', "
                             f"got {self.retriever.merge!r}")
        self.scan.validated()
        if isinstance(self.blend, dict):
            self.blend = _blend_from_dict(self.blend)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not silently serve defaults).

        A dict without ``engine`` (a snapshot saved before the field existed, or no serving.json at all)
        gets :data:`LEGACY_ENGINE`, the scorer its gates measured; a retriever dict without
        ``new_item_facet_weights`` scores new items like every other (the behaviour before the field); a scan
        dict without ``list_scores`` rescores its trigger lists exactly, as the gates of a snapshot saved
        before stored list scores measured (and its stored lists, which carry none, are served as they are); one
        without ``fastscan_dims`` / ``fastscan_eta`` keeps the fast-scan codes its gates measured (one
        nearest-centroid sub-code per dimension)."""
        data = dict(data or {})
        data.setdefault("engine", LEGACY_ENGINE)
        _check_fields(cls, data, "serving config")
        rdata = dict(data.pop("retriever", None) or {})
        _check_fields(RetrieverConfig, rdata, "retriever config")
        for name in ("quotas", "facet_weights", "new_item_facet_weights"):  # JSON lists back to the sequences the dataclass holds
            if rdata.get(name) is not None:
                rdata[name] = list(rdata[name])
        sdata = dict(data.pop("scan", None) or {})
        _check_fields(EngineConfig, sdata, "scan engine config")
        if sdata:
            sdata.setdefault("list_scores", False)
            # fast-scan codes as before these fields: one sub-quantiser per dimension, nearest-centroid codes
            sdata.setdefault("fastscan_dims", 1)
            sdata.setdefault("fastscan_eta", 1.0)
        # fields left out take the serving defaults (default_scan_config), not EngineConfig's
        scan = EngineConfig(**{**dataclasses.asdict(default_scan_config()), **sdata})
        blend = data.pop("blend", None)
        return cls(retriever=RetrieverConfig(**rdata), scan=scan,
                   blend=None if blend is None else _blend_from_dict(blend), **data)


def _check_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """ValueError naming the keys of ``data`` that are not fields of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - known)
    if extra:
        raise ValueError(f"unknown {what} fields {extra}; known: {sorted(known)}")


def _blend_from_dict(data: dict[str, Any]) -> BlendConfig:
    """``BlendConfig.to_dict()`` back; unknown keys are an error."""
    data = dict(data)
    _check_fields(BlendConfig, data, "blend config")
    wdata = dict(data.pop("weights", None) or {})
    _check_fields(BlendWeights, wdata, "blend weight")
    return BlendConfig(weights=BlendWeights(**wdata), **data)
