"""The validation split every method of the quality benchmark selects hyper-parameters on.

One function, :func:`validation_set`: each user's most recent training events are held out with
:func:`mfli.data.split.train_valid_split` (the same hold-out ``mfli.train`` uses for early stopping,
same ``valid_frac`` and seed), queries are the users' remaining (``fit``) histories and positives the
held-out items, and :meth:`ValidationSet.recall` scores a ``(U, K)`` retrieved matrix with the
benchmark's own recall. The test split is never read. Usage::

    vs = validation_set(split.train, seed=seed)
    model.fit(vs.fit); ids, _ = model.retrieve(vs.histories, 100)   # exclude="history"
    vs.recall(ids, 100)                                              # select on this
    model.fit(split.train)                                           # then refit on all of train
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfli.eval.metrics import histories_by_user, positives_by_user, recall_at_k

VALID_FRAC = 0.05  # as TrainConfig.valid_frac: share of each user's latest training events held out


@dataclass
class ValidationSet:
    """A validation split carved from the training events.

    Attributes:
        fit: training events minus the held-out ones (what a model selects on is fitted here).
        valid: the held-out events (each user's latest).
        users: ``(U,)`` sorted ids of users with >= 1 held-out event and >= 1 fit event.
        histories: U arrays, each user's fit items, oldest first (the queries; also what to exclude).
        positives: U arrays, each user's distinct held-out items.
    """

    fit: pd.DataFrame
    valid: pd.DataFrame
    users: np.ndarray
    histories: list[np.ndarray]
    positives: list[np.ndarray]

    def recall(self, retrieved: np.ndarray, k: int = 100) -> float:
        """Mean recall@k of ``retrieved (U, >= k)`` (rows aligned with :attr:`users`)."""
        return recall_at_k(retrieved, self.positives, k)


def validation_set(train: pd.DataFrame, valid_frac: float = VALID_FRAC, seed: int = 0,
                   max_users: int | None = None) -> ValidationSet:
    """Hold out each user's latest ``valid_frac`` of training events (see ``train_valid_split``).

    ``max_users`` evaluates a seeded sample of the validation users (selection cost on large data).
    """
    from mfli.data.split import train_valid_split

    fit, valid = train_valid_split(train, valid_frac, seed)
    hist = histories_by_user(fit)
    users = np.sort(valid["user_id"].unique()).astype(np.int64)
    users = users[np.isin(users, hist.index.to_numpy())]
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return ValidationSet(fit, valid, users, [hist[u] for u in users], positives_by_user(valid, users))
