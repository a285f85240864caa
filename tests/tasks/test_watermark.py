"""The hourly window after a new snapshot starts at the snapshot's data end (no item falls in the gap)."""

from __future__ import annotations

import types

from tasks.watermark import event_extra, watermark_from_events


def test_newest_event_payload_wins_and_empty_payloads_are_ignored():
    ev = lambda extra: types.SimpleNamespace(extra=extra)
    events = {"mfli_snapshot": [ev(event_extra("20240701T0000-a", "2024-07-01T00:00:00+00:00")),
                                ev({}),  # an event without a publish payload (e.g. emitted by hand)
                                ev(event_extra("20240702T0000-b", "2024-07-02T00:00:00+00:00")),
                                {"extra": event_extra("20240630T0000-c", "2024-06-30T00:00:00+00:00")}]}
    assert watermark_from_events(events) == {"snapshot_id": "20240702T0000-b", "data_end": "2024-07-02T00:00:00+00:00"}
    assert watermark_from_events({"mfli_snapshot": [ev({}), ev(None)]}) is None
    assert watermark_from_events(None) is None and watermark_from_events({}) is None
