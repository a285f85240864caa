"""What one request may ask of the retrieval service, and how much waiting the service accepts.

Every limit has a default sized for a public catalogue of any size (a legitimate request is a few KB
and a few hundred ids); each can be overridden by an environment variable ``MFLI_SERVE_<FIELD>``
(e.g. ``MFLI_SERVE_MAX_BODY_BYTES=2097152``) or by ``mfli serve --limit field=value``.

Example::

    limits = ServiceLimits.from_env().with_overrides({"deadline_s": "0.5"})
    app = create_app(live, limits=limits)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "MFLI_SERVE_"
#: The int64 range every id must fit in (ids are int64 all the way down: parquet, numpy, torch).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request limits and queueing of ``mfli serve``; anything beyond a limit is refused with a 4xx/5xx."""

    max_body_bytes: int = 1 << 20  # 413 beyond 1 MiB: ~100k ids as JSON, 100x a legitimate request
    max_recent_items: int = 1_000  # ids in recent_items (the triggers; only the last few matter)
    max_history_items: int = 10_000  # ids in user_features.history_item_ids (the model reads the last 50)
    max_k: int = 1_000  # results one request may ask for
    max_facet_quotas: int = 64  # entries in facet_quotas
    max_quota_weight: float = 1e6  # weights are relative; a huge one is a bug and overflows the sum
    max_feature_fields: int = 256  # keys in user_features
    max_user_attrs: int = 1_000  # strings in user_features.user_attrs
    max_string_chars: int = 1_000  # characters in one feature string / facet name
    deadline_s: float = 10.0  # 504 when a request is not answered within this (queue wait included)
    max_queue: int = 1_024  # requests waiting for the batcher; beyond: 503 with Retry-After
    retry_after_s: int = 1  # the Retry-After a 503 for a full queue suggests
    max_batch: int = 64  # most requests answered by one retriever call

    def validated(self) -> ServiceLimits:
        """Self, after checking every field is a positive finite number (ValueError naming the field)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"service limit {f.name} must be a positive number, got {v!r}")
        if self.max_k > 100_000:
            raise ValueError(f"service limit max_k must be <= 100000, got {self.max_k}")
        return self

    def with_overrides(self, values: Mapping[str, str | int | float]) -> ServiceLimits:
        """A copy with ``{field: value}`` applied (strings parsed as the field's type); ValueError on a bad one."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, int | float] = {}
        for name, raw in values.items():
            if name not in types:
                raise ValueError(f"unknown service limit {name!r}; known: {sorted(types)}")
            kind = float if types[name] in ("float", float) else int
            try:
                changes[name] = kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"service limit {name} must be {'a number' if kind is float else 'an integer'}, "
                                 f"got {raw!r}") from None
        return dataclasses.replace(self, **changes).validated()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceLimits:
        """Defaults overridden by ``MFLI_SERVE_<FIELD>`` variables."""
        env = os.environ if env is None else env
        names = [f.name for f in dataclasses.fields(cls)]
        found = {n: env[ENV_PREFIX + n.upper()] for n in names if ENV_PREFIX + n.upper() in env}
        return cls().with_overrides(found)


def parse_limit_options(options: list[str]) -> dict[str, str]:
    """``["deadline_s=0.5", ...]`` -> ``{"deadline_s": "0.5"}``; ValueError for an item without ``=``."""
    out = {}
    for opt in options:
        name, sep, value = opt.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--limit expects field=value, got {opt!r}")
        out[name.strip().replace("-", "_")] = value.strip()
    return out
