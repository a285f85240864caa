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


def test_delta_window_after_a_snapshot_starts_at_its_data_end():
    from tasks.runs import resolve_delta_run

    wm = event_extra("20240701T0000-a", "2024-07-01T00:00:00+00:00")
    # published at 05:40 and triggered then: the run's interval (if any) is the last hour only
    run = resolve_delta_run({}, "2024-07-01T05:00:00+00:00", "2024-07-01T06:00:00+00:00", "asset__1", watermark=wm)
    assert (run["start"], run["end"]) == ("2024-07-01T00:00:00+00:00", "2024-07-01T06:00:00+00:00")
    assert run["window"] == "20240701T0000-20240701T0600" and run["watermark"] == wm
    # no watermark: the plain hourly interval, as before
    plain = resolve_delta_run({}, "2024-07-01T05:00:00+00:00", "2024-07-01T06:00:00+00:00", "scheduled__1")
    assert (plain["start"], plain["end"]) == ("2024-07-01T05:00:00+00:00", "2024-07-01T06:00:00+00:00")
    # explicit Params still win over the watermark
    manual = resolve_delta_run({"start": "2024-07-01T02:00:00+00:00", "end": "2024-07-01T03:00:00+00:00"},
                               None, None, "manual__1", watermark=wm)
    assert (manual["start"], manual["end"]) == ("2024-07-01T02:00:00+00:00", "2024-07-01T03:00:00+00:00")
    # no interval at all: from the data end to the current hour
    asset_only = resolve_delta_run({}, None, None, "asset__2", watermark=wm)
    assert asset_only["start"] == "2024-07-01T00:00:00+00:00" and asset_only["end"] > "2024-07-01T01"
