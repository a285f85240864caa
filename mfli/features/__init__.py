"""Feast glue: the offline store's day-partitioned parquet sources, feature time series, apply and
materialisation, point-in-time training extraction, items-in-window and online user features.

Modules (import them directly; this package root stays free of Feast so importing it is instant):

- :mod:`mfli.features.window` -- ``Window``, a half-open UTC time window;
- :mod:`mfli.features.offline` -- parquet layout, partitioned writer/reader;
- :mod:`mfli.features.snapshots` -- item/user feature rows as time series;
- :mod:`mfli.features.repo` -- ``FeatureRepo``: repository copy + data root + apply/materialise;
- :mod:`mfli.features.offline_store` -- the Feast offline store used by ``feature_repo/``;
- :mod:`mfli.features.ingest` -- Dataset -> sources -> apply -> online store;
- :mod:`mfli.features.extract` -- training frame, new items, online user features.
"""
