"""Where the Feast repository and its data live, and the Feast SDK calls on it (apply, materialise).

``FeatureRepo`` pins three things a run must agree on: the repository folder (``feature_repo/`` or a
copy), the parquet data root its sources read, and the environment (``local`` -> feature_store.yaml,
``prod`` -> feature_store.prod.yaml). Defaults come from the environment:

- ``MFLI_FEAST_REPO``: repository folder (default: the checkout's ``feature_repo/``, else the copy the
  wheel installs as the ``feature_repo`` package data);
- ``MFLI_FEAST_DATA``: data root, a local path (relative = inside the repository) or ``s3://...``;
- ``MFLI_FEAST_ENV``: ``local`` (default) or ``prod``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mfli.features.window import utc

os.environ.setdefault("FEAST_USAGE", "False")

if TYPE_CHECKING:
    from feast import FeatureStore

DEFINITIONS = "features.py"
YAML_BY_ENV = {"local": "feature_store.yaml", "prod": "feature_store.prod.yaml"}


def _default_repo() -> Path:
    """The feature repo the code ships with: the checkout's ``feature_repo/`` (source and editable
    installs, the Docker image), else the copy a wheel installs as the top-level ``feature_repo`` package."""
    checkout = Path(__file__).resolve().parents[2] / "feature_repo"
    if (checkout / YAML_BY_ENV["local"]).is_file():
        return checkout
    spec = importlib.util.find_spec("feature_repo")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / YAML_BY_ENV["local"]).is_file():
            return Path(loc)
    return checkout


#: The repository's own feature repo (the source every copy is made from).
DEFAULT_REPO = _default_repo()
# Importing the definitions reads MFLI_FEAST_DATA; serialise that so two repos in one process don't mix.
_IMPORT_LOCK = threading.Lock()


@dataclass
class FeatureRepo:
    """A Feast repository bound to a data root.

    Args:
        path: folder holding ``feature_store*.yaml`` and ``features.py``.
        data_root: parquet root of the sources; relative paths are taken inside ``path``.
        env: ``"local"`` or ``"prod"``; picks the yaml file.
    """

    path: Path
    data_root: str
    env: str = "local"
    _store: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).resolve()
        if self.env not in YAML_BY_ENV:
            raise ValueError(f"MFLI_FEAST_ENV must be one of {sorted(YAML_BY_ENV)}, got {self.env!r}")
        if not self.data_root.startswith("s3://") and not os.path.isabs(self.data_root):
            self.data_root = str(self.path / self.data_root)

    @property
    def yaml_path(self) -> Path:
        return self.path / YAML_BY_ENV[self.env]

    def store(self) -> FeatureStore:
        """The Feast ``FeatureStore`` for this repository (created once, then reused)."""
        if self._store is None:
            from feast import FeatureStore

            self._store = FeatureStore(repo_path=str(self.path), fs_yaml_file=self.yaml_path)
        return self._store

    def definitions(self) -> dict[str, Any]:
        """Name -> Feast object (entities, sources, views, services) of ``features.py`` for this data root.

        The module is loaded under a private name each time so repository copies with different data
        roots in one process never share a cached import.
        """
        from feast import Entity, FeatureService, FeatureView
        from feast.data_source import DataSource

        kinds = (Entity, DataSource, FeatureView, FeatureService)
        with _IMPORT_LOCK:
            saved = os.environ.get("MFLI_FEAST_DATA")
            os.environ["MFLI_FEAST_DATA"] = self.data_root
            try:
                name = f"_mfli_feature_repo_{abs(hash((str(self.path), self.data_root)))}"
                spec = importlib.util.spec_from_file_location(name, self.path / DEFINITIONS)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            finally:
                sys.modules.pop(name, None)
                if saved is None:
                    os.environ.pop("MFLI_FEAST_DATA", None)
                else:
                    os.environ["MFLI_FEAST_DATA"] = saved
        return {k: v for k, v in vars(module).items() if isinstance(v, kinds)}

    def apply(self) -> None:
        """``feast apply`` through the SDK: register the definitions, delete objects no longer defined,
        and create the online tables. Idempotent."""
        from feast import Entity, FeatureService, FeatureView, Project
        from feast.data_source import DataSource
        from feast.repo_contents import RepoContents
        from feast.repo_operations import apply_total_with_repo_instance

        store = self.store()
        objs = list(self.definitions().values())
        contents = RepoContents(
            projects=[Project(name=store.project, description=store.config.project_description or "")],
            data_sources=[o for o in objs if isinstance(o, DataSource)],
            entities=[o for o in objs if isinstance(o, Entity)],
            feature_views=[o for o in objs if isinstance(o, FeatureView)],
            feature_services=[o for o in objs if isinstance(o, FeatureService)],
            on_demand_feature_views=[],
            stream_feature_views=[],
            label_views=[],
            permissions=[],
        )
        apply_total_with_repo_instance(
            store, store.project, store.registry, contents, skip_source_validation=False
        )

    def materialize(
        self, end: pd.Timestamp | str, start_if_new: pd.Timestamp | str | None = None
    ) -> dict[str, str]:
        """Load the latest feature rows up to ``end`` into the online store.

        Feast's ``materialize_incremental`` continues from each view's last materialised end; a view
        never materialised would start at ``now - ttl`` and miss historical data, so it is first
        materialised from ``start_if_new`` (the data's first day) instead.

        Returns:
            view name -> ISO end it is now materialised to.
        """
        store = self.store()
        end_ts = utc(end).to_pydatetime()
        views = [fv for fv in store.list_feature_views() if fv.online]
        fresh = [fv.name for fv in views if fv.most_recent_end_time is None]
        if fresh and start_if_new is not None:
            store.materialize(
                start_date=utc(start_if_new).to_pydatetime(), end_date=end_ts, feature_views=fresh
            )
        store.materialize_incremental(end_date=end_ts)
        self._store = None  # registry changed on disk; re-open to see the new intervals
        return {fv.name: end_ts.isoformat() for fv in views}


def open_repo(
    path: str | Path | None = None, data_root: str | None = None, env: str | None = None
) -> FeatureRepo:
    """A ``FeatureRepo`` from arguments, falling back to MFLI_FEAST_REPO / MFLI_FEAST_DATA / MFLI_FEAST_ENV."""
    return FeatureRepo(
        Path(path or os.environ.get("MFLI_FEAST_REPO") or DEFAULT_REPO),
        data_root or os.environ.get("MFLI_FEAST_DATA") or "data",
        env or os.environ.get("MFLI_FEAST_ENV") or "local",
    )


def copy_repo(
    dst: str | Path, data_root: str | None = None, src: str | Path = DEFAULT_REPO, env: str = "local"
) -> FeatureRepo:
    """Copy the repository's yaml files and definitions to ``dst`` and bind the copy to ``data_root``
    (default ``dst/data``). Data, registry and online store already in ``dst`` are kept, so calling it
    at the start of every run refreshes the definitions without losing state. Used by tasks (the run's
    ``feast_dir``), tests and scratch environments."""
    dst = Path(dst)
    if not (Path(src) / YAML_BY_ENV[env]).is_file():
        # copying nothing would leave a repo Feast cannot open, failing later with a confusing error
        raise FileNotFoundError(f"no Feast repository at {src} ({YAML_BY_ENV[env]} missing); set MFLI_FEAST_REPO "
                                "or install the package with its feature_repo data")
    dst.mkdir(parents=True, exist_ok=True)
    if Path(src).resolve() != dst.resolve():
        for name in [*YAML_BY_ENV.values(), DEFINITIONS, ".feastignore"]:
            if (Path(src) / name).exists():
                shutil.copy2(Path(src) / name, dst / name)
    return FeatureRepo(dst, data_root or str(dst / "data"), env)
