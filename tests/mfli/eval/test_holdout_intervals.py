"""The daily evaluation's ratios carry paired bootstrap intervals over the test users."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.eval.holdout import RATIOS, ratio_intervals


def _lists(hit_rate: float, positives: list[np.ndarray], rng) -> np.ndarray:
    """``(U, 100)`` lists holding each user's first positive with probability ``hit_rate``, filler otherwise."""
    out = np.arange(1000, 1100, dtype=np.int64)[None, :].repeat(len(positives), 0)
    for u, p in enumerate(positives):
        if rng.random() < hit_rate:
            out[u, 0] = p[0]
    return out


def test_ratios_are_ratios_of_means_with_an_interval_around_them():
    rng = np.random.default_rng(0)
    positives = [np.array([u % 50]) for u in range(400)]
    retrieved = {"mfli": _lists(0.6, positives, rng), "exact": _lists(0.6, positives, rng),
                 "pop": _lists(0.2, positives, rng)}
    cold = np.arange(0, 10)  # users 0-9, 50-59, ... have a cold positive
    got = ratio_intervals(retrieved, positives, cold)
    # every ratio whose two methods ran (no mfli_user here: user mode is reported apart only in blend mode)
    assert set(got) == {f"{n}{s}" for n, a, b, _ in RATIOS if b in retrieved for s in ("", "_lo", "_hi")}
    assert "recall@100_vs_user" not in got
    hit = {m: (r[:, 0] < 1000).mean() for m, r in retrieved.items()}
    assert got["recall@100_vs_exact"] == pytest.approx(hit["mfli"] / hit["exact"])
    assert got["recall@100_vs_pop"] == pytest.approx(hit["mfli"] / hit["pop"])
    for name, _, den, _ in RATIOS:
        if den in retrieved:
            assert got[f"{name}_lo"] <= got[name] <= got[f"{name}_hi"]
    assert got["recall@100_vs_exact_lo"] < 1 < got["recall@100_vs_exact_hi"]  # same hit rate: interval spans 1
    assert got["recall@100_vs_pop_lo"] > 2  # three times the hits: clearly above
    assert ratio_intervals(retrieved, positives, cold) == got  # fixed resamples: reproducible


def test_undefined_ratios_are_none_and_missing_methods_are_left_out():
    positives = [np.array([1]), np.array([2])]
    pad = np.full((2, 98), -1)
    retrieved = {"mfli": np.hstack([[[1, 5], [7, 8]], pad]), "exact": np.hstack([[[1, 5], [2, 8]], pad])}
    got = ratio_intervals(retrieved, positives, cold=np.array([], np.int64))
    assert got["recall@100_vs_exact"] == pytest.approx(0.5)
    assert got["cold_recall@100_vs_exact"] is None  # no user has a cold positive
    assert "recall@100_vs_pop" not in got  # popularity was not run
