"""Airflow-free task functions: each takes URIs/paths and small JSON-able dicts, calls :mod:`mfli`, and
returns a small JSON-able dict that the DAGs pass on through XCom."""
