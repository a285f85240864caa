"""The daily run report shows MFLI's ratios to its baselines with their bootstrap intervals."""

from __future__ import annotations

from tasks.evaluation import write_report


def test_report_lists_the_ratios_with_their_intervals(tmp_path):
    metrics = {"recall@100": 0.31, "test_users": 412,
               "recall@100_vs_exact": 0.9981, "recall@100_vs_exact_lo": 0.9902, "recall@100_vs_exact_hi": 1.0057,
               "recall@100_vs_pop": 1.71, "recall@100_vs_pop_lo": 1.52, "recall@100_vs_pop_hi": 1.93,
               "cold_recall@100_vs_exact": None, "cold_recall@100_vs_exact_lo": None,
               "cold_recall@100_vs_exact_hi": None}
    run = {"snapshot_id": "s1", "start": "a", "end": "b", "cutoff": "c", "dataset_uri": "d"}
    index = {"items": 10, "build_seconds": 1.0, "balance_before": [{"hist_edges": [1, 2, 4], "hist_counts": [3, 1]}],
             "balance_after": [{"hist_edges": [1, 2, 4], "hist_counts": [2, 2]}]}
    write_report(tmp_path, run, metrics, {"mfli": [0.1] * 6}, index, {"f0.l0.utilisation": 0.5}, {}, ["e"])
    text = (tmp_path / "report.md").read_text()
    assert "(412 test users; paired bootstrap 95% intervals)" in text
    assert "| recall@100_vs_exact | 0.998 [0.990, 1.006] |" in text
    assert "| recall@100_vs_pop | 1.710 [1.520, 1.930] |" in text
    assert "| cold_recall@100_vs_exact | - |" in text
