"""Snapshot ids and the order LATEST may move in (tasks.runs)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tasks.runs import ends_later, snapshot_id_for, snapshot_window_end


def test_window_end_is_read_back_from_both_id_forms():
    end = datetime(2024, 6, 30, tzinfo=timezone.utc)
    sid = snapshot_id_for(end, "fp", {})
    assert snapshot_window_end(sid) == end
    assert snapshot_window_end("20240630T120501Z-a1b2c3") == datetime(2024, 6, 30, 12, 5, 1, tzinfo=timezone.utc)
    assert snapshot_window_end("not-an-id") is None


@pytest.mark.parametrize(
    ("live", "candidate", "refused"),
    [
        ("20240701T0000-000000000000", "20240630T0000-ffffffffffff", True),  # an older day: never back in time
        ("20240630T0000-000000000000", "20240701T0000-ffffffffffff", False),  # the next day
        # the same day re-run with other code: the hashes carry no order, either may replace the other
        ("20240630T0000-ffffffffffff", "20240630T0000-000000000000", False),
        ("20240630T0000-000000000000", "20240630T0000-ffffffffffff", False),
        ("20240630T235959Z-abcdef", "20240630T0000-000000000000", True),  # mixed forms compare by time
    ],
)
def test_only_a_later_window_end_blocks_a_publish(live, candidate, refused):
    assert ends_later(live, candidate) is refused
