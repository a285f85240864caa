"""Paired bootstrap intervals: exact on constant data, cover the truth, narrow with more users."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfli.eval.bootstrap import PairedBootstrap, pooled_per_user


def test_constant_ratio_has_a_zero_width_interval():
    a = np.array([0.2, 0.4, 0.6, 0.8])
    boot = PairedBootstrap({"a": a, "b": a / 2}, n_resamples=200, seed=0)
    ci = boot.ratio("a", "b")
    assert ci.ratio == pytest.approx(2.0) and ci.lo == pytest.approx(2.0) and ci.hi == pytest.approx(2.0)


def test_interval_contains_the_point_and_shrinks_with_users():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2500):
        base = rng.random(n)
        boot = PairedBootstrap({"m": base * 1.1 + rng.normal(0, 0.05, n), "ref": base}, n_resamples=500, seed=1)
        ci = boot.ratio("m", "ref")
        assert ci.lo < ci.ratio < ci.hi
        assert ci.lo < 1.1 < ci.hi + 0.02
        widths.append(ci.hi - ci.lo)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(25) = 0.2 of the width


def test_pairing_makes_the_interval_narrower_than_unpaired_noise():
    rng = np.random.default_rng(2)
    base = rng.random(400)  # users differ a lot; the methods differ by a constant 5%
    ci = PairedBootstrap({"m": base * 1.05, "ref": base}, n_resamples=300).ratio("m", "ref")
    assert ci.hi - ci.lo < 1e-9


def test_users_without_positives_are_left_out_and_sizes_must_align():
    a = np.array([1.0, math.nan, 0.0, 1.0])
    ci = PairedBootstrap({"a": a, "b": np.array([0.5, math.nan, 0.5, 0.5])}, n_resamples=100).ratio("a", "b")
    assert ci.ratio == pytest.approx((2 / 3) / 0.5)
    with pytest.raises(ValueError, match="not aligned"):
        PairedBootstrap({"a": np.ones(3), "b": np.ones(4)})
    assert math.isnan(PairedBootstrap({"a": a, "z": np.zeros(4)}).ratio("a", "z").ratio)


def test_pooled_per_user_concatenates_seeds():
    res = {"m": {"per_user": {"recall@100": [[0.1, 0.2], [0.3]]}}, "pop": {"recall@100": {"mean": 0.1}}}
    pooled = pooled_per_user(res)
    assert list(pooled) == ["m"] and pooled["m"].tolist() == [0.1, 0.2, 0.3]
