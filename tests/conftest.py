"""Shared fixtures: paths to the shared datasets and a tiny in-memory canonical dataset.

Also keeps tests independent of the caller's shell and of each other: the session gets its own
``MFLI_HOME`` under a temp dir (settings a developer exported, like ``MFLI_STORE_URI``, are dropped),
and every test's changes to ``os.environ`` and torch's thread count are undone after it, so nothing a
test sets leaks into the next one whatever the order (see docs/development.md, "Testing").
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
ML_SMALL = SHARED_DATASETS / "ml-latest-small"
AMAZON_SCI = SHARED_DATASETS / "amazon-scientific"

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Settings read from the environment by mfli/tasks: a value left in the caller's shell must not steer tests.
for _var in ("MFLI_STORE_URI", "MFLI_CACHE_DIR", "MFLI_FEAST_REPO", "MFLI_FEAST_DATA", "MFLI_FEAST_ENV",
             "MFLI_S3_ENDPOINT_URL", "MFLI_S3_REGION"):
    os.environ.pop(_var, None)
_HOME = tempfile.mkdtemp(prefix="mfli-test-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["MFLI_HOME"] = _HOME  # caches and scratch of code under test, never the checkout's .mfli/


@pytest.fixture(autouse=True)
def _isolate_process_state():
    """Undo what a test (or the library code it ran) did to ``os.environ`` and torch's thread count.

    Wider-scoped fixtures that set variables on purpose (a module's ``MonkeyPatch``) are set up before
    this runs, so their values are the baseline restored here.
    """
    env = dict(os.environ)
    torch = sys.modules.get("torch")  # not imported here: tests that never use torch stay fast
    threads = torch.get_num_threads() if torch else None
    yield
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared dataset not present: {path}")
    return path


@pytest.fixture(scope="session")
def ml_small() -> Path:
    """Path to ../shared/datasets/ml-latest-small (skips when absent)."""
    return _need(ML_SMALL)


@pytest.fixture(scope="session")
def amazon_sci() -> Path:
    """Path to ../shared/datasets/amazon-scientific (skips when absent)."""
    return _need(AMAZON_SCI)


@pytest.fixture()
def tiny_dataset():
    """A 40-user, 60-item canonical Dataset with 3 topics, built by hand (no generator involved)."""
    from mfli.data.dataset import Dataset

    rng = np.random.default_rng(0)
    n_users, n_items = 40, 60
    topics = np.arange(n_items) % 3
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype="int64"),
            "created_at": [t0 + pd.Timedelta(hours=int(h)) for h in np.sort(rng.integers(0, 24 * 20, n_items))],
            "categories": [[f"topic{t}", f"topic{t}>sub{i % 2}"] for i, t in enumerate(topics)],
            "title": [f"item {i} about topic{t}" for i, t in enumerate(topics)],
            "text": [f"word{t}a word{t}b word{t}c" for t in topics],
            "brand": [None if i % 5 == 0 else f"brand{i % 4}" for i in range(n_items)],
        }
    )
    rows = []
    for u in range(n_users):
        fav = u % 3
        cand = np.flatnonzero(topics == fav)
        for k, it in enumerate(rng.choice(cand, size=8, replace=False)):
            ts = max(items.created_at[it], t0 + pd.Timedelta(days=k * 2, minutes=u))
            rows.append((u, int(it), ts + pd.Timedelta(hours=1), float(rng.integers(1, 6))))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "weight"])
    inter["weight"] = inter["weight"].astype("float32")
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype="int64"), "segment": [f"s{u % 2}" for u in range(n_users)]})
    return Dataset("tiny", "memory", inter, items, users).conformed()
