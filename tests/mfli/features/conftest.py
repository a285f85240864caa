"""Fixtures: the hand-built point-in-time dataset and one applied Feast store per test module."""

from __future__ import annotations

import contextlib
import io

import pytest
from pit_data import build_pit_dataset


@pytest.fixture(scope="module")
def pit_dataset():
    return build_pit_dataset()


@pytest.fixture(scope="module")
def feast_store(tmp_path_factory, pit_dataset):
    """A Feast repository copy under tmp, with ``pit_dataset`` ingested, applied and materialised."""
    from mfli.features.ingest import ingest
    from mfli.features.repo import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("feast") / "repo")
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints apply/materialise progress
        report = ingest(pit_dataset, repo)
    return repo, report
