"""DAG Params parsed once into typed objects: defaults, normalisation and the errors that name the param."""

from __future__ import annotations

import pytest

from tasks.params import DailyParams, DeltaParams, daily_params
from tasks.runs import resolve_delta_run


def test_defaults_and_normalised_values(caplog):
    p = DailyParams.parse({"epochs": 5.0, "facets": ["engagement"], "end": None, "dataset_uri": "",
                           "min_recall_at_100": 0})
    assert (p.epochs, p.facets, p.end, p.shards, p.min_recall_at_100) == (5, ("engagement",), None, 2, 0.0)
    assert isinstance(p.min_recall_at_100, float)
    assert p.to_dict()["facets"] == ["engagement"] and DailyParams.parse(p.to_dict()) == p
    assert p.gate_thresholds() == {"min_recall_at_100": 0.0, "min_cold_recall_at_100": 0.0,
                                   "min_topic_match_at_100": 0.0, "min_codebook_utilisation": 0.05,
                                   "max_cluster_share": 0.2, "max_regression": 0.1}
    assert daily_params({"params": {"force_publish": True}}).force_publish is True
    assert DailyParams.parse({"epoch": 4}) == DailyParams() and "ignoring params ['epoch']" in caplog.text
    assert DeltaParams.parse({}).shards == DailyParams().shards == 2  # the task default is the DAG's


@pytest.mark.parametrize("params, message", [
    ({"epochs": 2.5}, r"'epochs': expected an integer"),
    ({"epochs": True}, r"'epochs': expected an integer"),
    ({"facets": "engagement"}, r"'facets': expected a list of strings"),
    ({"force_publish": "yes"}, r"'force_publish': expected true/false"),
    ({"max_regression": "a lot"}, r"'max_regression'"),
])
def test_bad_params_fail_naming_the_param(params, message):
    with pytest.raises(ValueError, match=message):
        DailyParams.parse(params)


def test_delta_run_carries_parsed_params(tmp_path):
    run = resolve_delta_run({"shards": 4, "store_uri": tmp_path.as_uri(), "min_self_retrieval_rate": 1},
                            None, "2024-06-30T01:00:00+00:00", "manual")
    assert run["params"]["shards"] == 4 and run["params"]["min_self_retrieval_rate"] == 1.0
    assert run["window"] == "20240630T0000-20240630T0100"
    # a conf written for the daily DAG may trigger this one: its other keys are dropped, not fatal
    assert "epochs" not in resolve_delta_run({"epochs": 4}, None, None, "manual")["params"]
