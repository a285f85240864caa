"""The DAGs' Params as typed objects: one default per param (the DAG files read theirs from here).

A run's Params are parsed once, when the run is resolved (:func:`tasks.runs.resolve_daily_run`,
:func:`tasks.runs.resolve_delta_run`): bad values fail there, with the param named.
The run dict then carries the normalised values (JSON through XCom); each task rebuilds the object
with :func:`daily_params` / :func:`delta_params` instead of reading the dict with ``.get(key, default)``.

Imports nothing heavy: the DAG files import it at parse time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

log = logging.getLogger(__name__)


class _Params:
    @classmethod
    def parse(cls, params: Mapping[str, Any] | None) -> Self:
        """Typed params from a DAG run's Params; None values mean the default.

        Names this DAG does not declare are dropped with a warning: Airflow passes a trigger's whole
        ``conf`` through, and one conf may serve both DAGs."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        given = {k: v for k, v in dict(params or {}).items()}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            log.warning("ignoring params %s: not Params of this DAG (known: %s)", unknown, sorted(fields))
            given = {k: v for k, v in given.items() if k in fields}
        values: dict[str, Any] = {}
        for name, v in given.items():
            default = fields[name].default
            if v is None or (v == "" and isinstance(default, str)):
                continue
            try:
                if isinstance(default, bool):
                    if not isinstance(v, bool):
                        raise TypeError(f"expected true/false, got {v!r}")
                elif isinstance(default, int):
                    if isinstance(v, bool) or float(v) != int(float(v)):
                        raise TypeError(f"expected an integer, got {v!r}")
                    v = int(float(v))
                elif isinstance(default, float):
                    v = float(v)
                elif isinstance(default, tuple):
                    if isinstance(v, str) or not all(isinstance(x, str) for x in v):
                        raise TypeError(f"expected a list of strings, got {v!r}")
                    v = tuple(v)
                elif isinstance(default, str) or default is None:
                    v = str(v)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"DAG param {name!r}: {exc}") from None
            values[name] = v
        return cls(**values)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (lists for tuples), the form the run dict carries."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class DailyParams(_Params):
    """Params of ``mfli_daily_retrain``."""

    dataset_uri: str = ""  # dataset folder; empty = the embedded demo catalogue
    store_uri: str = ""  # object store for snapshots; empty = the embedded local store
    end: str | None = None  # window end for manual runs without a data interval (ISO 8601)
    lookback_days: int = 3650  # training window length before the end
    holdout_days: float = 7.0  # last days of the window held out for evaluation
    facets: tuple[str, ...] = ("engagement", "semantic")  # facet names; "semantic*" and "*_high" have kinds
    epochs: int = 3
    seed: int = 0
    shards: int = 2  # item shards encoded in parallel (dynamic task mapping)
    # serve blend mode: user mode + a co-engagement table learned from the events + trigger lists, fused
    # with weights chosen on the validation split (mfli.serve.blend; docs/benchmarks.md, "Blend mode")
    blend: bool = True
    min_recall_at_100: float = 0.02  # quality gate floors and ceilings (mfli.eval.gates.ABSOLUTE_CHECKS)
    min_cold_recall_at_100: float = 0.0
    min_topic_match_at_100: float = 0.0
    min_codebook_utilisation: float = 0.05
    max_cluster_share: float = 0.2
    max_regression: float = 0.1  # largest relative drop allowed against the live snapshot's metrics
    force_publish: bool = False  # publish even when the gate fails (operators only)

    def gate_thresholds(self) -> dict[str, float]:
        """The quality gate's thresholds (``min_*`` / ``max_*``)."""
        return {k: v for k, v in self.to_dict().items() if k.startswith(("min_", "max_"))}


@dataclass(frozen=True)
class DeltaParams(_Params):
    """Params of ``mfli_hourly_delta``."""

    dataset_uri: str = ""  # dataset folder the new items come from; empty = the embedded demo catalogue
    store_uri: str = ""  # object store holding the live snapshot; empty = the embedded local store
    start: str | None = None  # window start for manual runs (ISO 8601)
    end: str | None = None  # window end for manual runs (ISO 8601)
    shards: int = 2  # item shards encoded and assigned in parallel
    min_self_retrieval_rate: float = 0.5  # share of new items a query of their own content must retrieve
    max_cluster_overflow: float = 2.0  # a new item's cluster may grow to at most this times the rebalancing cap


def daily_params(run: Mapping[str, Any]) -> DailyParams:
    """The typed Params of a resolved daily run."""
    return DailyParams.parse(run.get("params"))


def delta_params(run: Mapping[str, Any]) -> DeltaParams:
    """The typed Params of a resolved delta run."""
    return DeltaParams.parse(run.get("params"))
