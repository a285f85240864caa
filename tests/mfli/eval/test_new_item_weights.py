"""Choosing the facet weights of new items on the validation split (mfli.eval.new_item_weights): the
coordinate search recovers a planted scale error of the content-only embeddings, and keeps w' = 1 when
content-only embeddings score like the served ones."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.eval.new_item_weights import choose_weights

U, N, F, D = 300, 600, 2, 8


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N, F, D)).astype(np.float32)
    Q = rng.standard_normal((U, F, D)).astype(np.float32)
    ids = np.arange(N, dtype=np.int64) + 10
    score = np.einsum("ufd,nfd->un", Q, emb)
    positives = [ids[np.argsort(-s)[:5]] for s in score]  # each user's 5 best items by the summed score
    histories = [ids[rng.choice(N, 3, replace=False)] for _ in range(U)]
    positives = [p[~np.isin(p, h)] for p, h in zip(positives, histories)]
    simulated = np.zeros(N, bool)
    simulated[rng.choice(N, N // 4, replace=False)] = True
    return Q, emb, ids, simulated, histories, positives


def test_a_planted_scale_error_of_one_facet_is_undone(world):
    Q, emb, ids, simulated, histories, positives = world
    cold = emb.copy()
    cold[:, 0] *= 0.5  # content-only embeddings score facet 0 at half scale: w'_0 = 2 undoes it
    choice = choose_weights(Q, emb, cold, ids, simulated, histories, positives, k=5)
    assert choice.weights == (2.0, 1.0)
    assert choice.recall > choice.recall_equal * 1.05
    assert choice.cold_recall > choice.cold_recall_equal
    assert choice.tried[0] == ((1.0, 1.0), pytest.approx(choice.recall_equal))


def test_content_only_embeddings_like_the_served_ones_keep_the_old_rule(world):
    Q, emb, ids, simulated, histories, positives = world
    choice = choose_weights(Q, emb, emb, ids, simulated, histories, positives, k=5)
    assert choice.weights == (1.0, 1.0)
    assert choice.recall == pytest.approx(1.0 * choice.recall_equal)
    assert choice.recall > 0.9  # the positives are the exact top items: w' = 1 finds most of them
