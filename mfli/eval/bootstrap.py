"""Paired bootstrap intervals over users for ratios of mean per-user metrics.

Every method of a quality run is evaluated on the same test users, so a ratio such as
``recall@100(mfli) / recall@100(exact)`` has a paired interval: resample the users with replacement
(the same resamples for every method), recompute each method's mean on each resample, and take the
2.5% / 97.5% percentiles of the ratio of means. Several seeds are pooled as (seed, user) units, each
method's units aligned across methods. Users without a positive (nan) are left out of that metric.
Usage::

    boot = PairedBootstrap({"mfli": u_mfli, "exact": u_exact}, n_resamples=1000, seed=0)
    boot.ratio("mfli", "exact")   # RatioCI(ratio=0.99, lo=0.97, hi=1.01)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class RatioCI:
    """Ratio of the means over all units and its percentile bootstrap interval."""

    ratio: float
    lo: float
    hi: float

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """``0.951 [0.932, 0.970]`` (``-`` when undefined)."""
        if math.isnan(self.ratio):
            return "-"
        return f"{self.ratio:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


class PairedBootstrap:
    """Per-method resampled means over shared user resamples.

    Args:
        per_user: ``{method: (n,) float}`` per-unit metric values, aligned across methods (nan = no value).
        n_resamples: bootstrap resamples; seed: their generator seed (fixed: tables are reproducible).
    """

    def __init__(self, per_user: dict[str, np.ndarray], n_resamples: int = N_RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> None:
        arrays = {m: np.asarray(v, dtype=np.float64).ravel() for m, v in per_user.items()}
        sizes = {m: v.size for m, v in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"per-user arrays are not aligned across methods: sizes {sizes}")
        self.level = level
        self.n = next(iter(sizes.values()), 0)
        rng = np.random.default_rng(seed)
        self._idx = rng.integers(0, max(self.n, 1), size=(n_resamples, self.n)) if self.n else None
        self._values = arrays
        self._means: dict[str, np.ndarray] = {}

    def _resampled(self, method: str) -> np.ndarray:
        """``(R,)`` the method's mean over each resample (nan-skipping)."""
        if method not in self._means:
            v = self._values[method]
            ok = ~np.isnan(v)
            vals, cnt = np.where(ok, v, 0.0), ok.astype(np.float64)
            sums = np.zeros(self._idx.shape[0])
            counts = np.zeros(self._idx.shape[0])
            for a in range(0, self._idx.shape[0], 100):  # chunks bound the gathered memory
                sl = self._idx[a:a + 100]
                sums[a:a + 100] = vals[sl].sum(1)
                counts[a:a + 100] = cnt[sl].sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                self._means[method] = sums / counts
        return self._means[method]

    def ratio(self, num: str, den: str) -> RatioCI:
        """``mean(num) / mean(den)`` with its paired percentile interval (nan when undefined)."""
        a, b = self._values[num], self._values[den]
        if self.n == 0 or np.isnan(a).all() or np.isnan(b).all() or np.nanmean(b) == 0:
            return RatioCI(math.nan, math.nan, math.nan)
        point = float(np.nanmean(a) / np.nanmean(b))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self._resampled(num) / self._resampled(den)
        r = r[np.isfinite(r)]
        if r.size == 0:
            return RatioCI(point, math.nan, math.nan)
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(r, [tail, 100 - tail])
        return RatioCI(point, float(lo), float(hi))


def pooled_per_user(results: dict, metric: str = "recall@100") -> dict[str, np.ndarray]:
    """``{method: (n,)}`` per-user values of a harness summary, seeds concatenated (methods with them)."""
    out = {}
    for m, r in results.items():
        seeds = r.get("per_user", {}).get(metric) if isinstance(r, dict) else None
        if seeds:
            out[m] = np.concatenate([np.asarray(s, dtype=np.float64) for s in seeds])
    return out
