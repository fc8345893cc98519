"""The assessment's forecast: which measurement the backfill estimate uses, and the threshold check."""

from __future__ import annotations

import json

from include.migration.assess import bench_throughput, estimate_backfill, forecast


def test_measured_runs_win_and_unmeasured_entities_use_their_average():
    out = estimate_backfill({"users": 1000, "messages": 60_000}, {"users": 500.0}, bench_rate=10_000.0)
    assert out["source"] == "runs"
    assert out["per_entity_seconds"] == {"users": 2.0, "messages": 120.0}
    assert out["seconds"] == 122.0
    assert "users 500 rows/s" in out["basis"] and "average" in out["basis"]


def test_the_benchmark_history_when_nothing_ran(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps({"messages_rows": 60_000, "full_messages_seconds": 3.0}) + "\n"
                       + json.dumps({"messages_rows": 600_000, "full_messages_seconds": 20.0}) + "\n"
                       + "{not json\n")
    rate = bench_throughput(history)
    assert rate == 30_000.0  # the newest complete line
    out = estimate_backfill({"messages": 60_000}, {}, rate)
    assert out["source"] == "benchmark" and out["seconds"] == 2.0


def test_no_measurement_says_so(tmp_path):
    assert bench_throughput(tmp_path / "missing.jsonl") is None
    out = estimate_backfill({"messages": 60_000}, {}, None)
    assert out["source"] == "none" and out["seconds"] is None and "make bench" in out["basis"]


def test_forecast_names_the_entities_over_the_threshold():
    defects = {"users": {"in_scope": 1000, "quarantined": 2, "quarantine_pct": 0.2},
               "messages": {"in_scope": 9000, "quarantined": 0, "quarantine_pct": 0.0}}
    out = forecast(defects, 0.1, {"source": "none"})
    assert out["entities_over_threshold"] == ["users"]
    assert out["quarantine_pct"] == 0.02
