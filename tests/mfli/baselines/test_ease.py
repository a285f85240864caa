"""EASE: the closed form against a direct dense solve, the zero diagonal, lambda selection, size refusal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfli.baselines.ease import Ease, EaseConfig, ease_weights


def _events(rows: list[tuple[int, int]]) -> pd.DataFrame:
    u, i = zip(*rows)
    return pd.DataFrame({"user_id": np.array(u, np.int64), "item_id": np.array(i, np.int64),
                         "event_ts": pd.date_range("2024-01-01", periods=len(rows), freq="h", tz="UTC")})


X = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1]], np.float32)


def test_weights_equal_a_direct_dense_solve():
    lam = 2.0
    G = X.T.astype(np.float64) @ X + lam * np.eye(4)
    P = np.linalg.inv(G)
    want = np.eye(4) - P / np.diag(P)[None, :]
    got = ease_weights(X, lam)
    assert got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-5)
    assert np.abs(np.diag(got)).max() == 0.0
    # B is the constrained least-squares solution: column j reconstructs X[:, j] from the other columns
    j = 2
    others = [c for c in range(4) if c != j]
    w = np.linalg.solve(X[:, others].T.astype(np.float64) @ X[:, others] + lam * np.eye(3), X[:, others].T @ X[:, j])
    assert np.allclose(got[others, j], w, atol=1e-5)


def test_retrieve_scores_history_times_b_and_excludes_history():
    rows = [(u, 10 + i) for u in range(5) for i in range(4) if X[u, i]]
    ease = Ease(EaseConfig(l2=2.0)).fit(_events(rows))
    assert ease.item_ids.tolist() == [10, 11, 12, 13]
    ids, sc = ease.retrieve([[10]], k=4)
    B = ease_weights(X, 2.0)
    order = np.argsort(-B[0, 1:], kind="stable") + 1
    assert ids[0, :3].tolist() == [10 + o for o in order]
    assert ids[0, 3] == -1 and sc[0, 3] == -np.inf  # the history item is never returned
    assert np.allclose(sc[0, :3], B[0, order], atol=1e-6)


def test_lambda_is_chosen_on_validation(synthetic_small):
    from mfli.eval.validation import validation_set

    train = synthetic_small.interactions
    vs = validation_set(train, seed=0)
    ease = Ease(EaseConfig(l2_grid=(1.0, 100.0, 10000.0))).fit(train, valid=vs)
    assert set(ease.selection) == {1.0, 100.0, 10000.0}
    assert ease.l2 == max(ease.selection, key=lambda k: (ease.selection[k], k))
    assert all(0.0 <= v <= 1.0 for v in ease.selection.values())


def test_refuses_a_catalogue_too_large_for_dense_matrices():
    rows = [(0, i) for i in range(3000)]
    with pytest.raises(ValueError, match=r"3000 x 3000.*~0\.1 GiB for 3000 items.*max_memory_gb=0\.01"):
        Ease(EaseConfig(l2=10.0, max_memory_gb=0.01)).fit(_events(rows))


@pytest.fixture(scope="module")
def synthetic_small():
    from mfli.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(n_items=300, n_users=120, n_interactions=3000, seed=1))
