"""The benchmark's report: ratios, totals, targets, history and scale comparison.

Pure functions over hand-made measurements; nothing here times anything.
"""

from __future__ import annotations

import json

import pytest

from local_runtime.bench import report as bench


def row(step: str, entity: str, seconds: float, rows: int | None = None, **extra) -> dict:
    return {"step": step, "entity": entity, "seconds": seconds, "rows": rows, "error": None, **extra}


@pytest.fixture
def steps() -> list[dict]:
    raw = [
        row(bench.LIMIT, "users", 1.0, 1000, peak_rss_mb=40.0),
        row(bench.LIMIT, "messages", 10.0, 100_000, peak_rss_mb=45.0),
        row(bench.NAIVE, "messages", 20.0, 10_000, peak_rss_mb=50.0),
        row(bench.NAIVE_EXECUTEMANY, "messages", 5.0, 10_000, peak_rss_mb=90.0),
        row(bench.FULL, "users", 2.0, 1000, peak_rss_mb=60.0, written=990),
        row(bench.FULL, "messages", 12.0, 100_000, peak_rss_mb=70.0, written=99_000,
            detail={"extract_seconds": 5.0, "load_seconds": 6.0}),
        row(bench.UNCHANGED, "users", 1.5, 1000, peak_rss_mb=55.0, written=0),
        row(bench.UNCHANGED, "messages", 14.0, 100_000, peak_rss_mb=65.0, written=0),
        row(bench.CHANGED, "messages", 25.0, 100_000, peak_rss_mb=66.0, written=10_000),
        row(bench.INCREMENTAL, "messages", 0.9, 1000, peak_rss_mb=50.0, written=1000),
        row(bench.RECONCILE, "messages", 8.0, 99_000, peak_rss_mb=80.0),
    ]
    return bench.enrich(raw, {"users": 2_000_000, "messages": 50_000_000})


def test_enrich_computes_rates_and_the_ratio_to_the_entitys_own_limit(steps):
    full = bench.find(steps, bench.FULL, "messages")
    assert full["x_limit"] == pytest.approx(1.2)
    assert full["rows_per_s"] == pytest.approx(100_000 / 12)
    assert full["mb_per_s"] == pytest.approx(50 / 12)
    assert bench.find(steps, bench.FULL, "users")["x_limit"] == pytest.approx(2.0)


def test_incremental_and_naive_rows_have_no_table_rate_and_naive_no_limit_ratio(steps):
    assert bench.find(steps, bench.INCREMENTAL, "messages")["mb_per_s"] is None
    naive = bench.find(steps, bench.NAIVE, "messages")
    assert naive["x_limit"] is None
    assert naive["rows_per_s"] == pytest.approx(500)


def test_the_pipeline_is_reported_over_each_baseline_and_judged_on_the_plans(steps):
    pipeline_rate = 100_000 / 12
    ratios = bench.baseline_ratios(steps)
    assert ratios[bench.NAIVE] == pytest.approx(pipeline_rate / 500)
    assert ratios[bench.NAIVE_EXECUTEMANY] == pytest.approx(pipeline_rate / 2000)
    assert bench.target_values(steps)["pipeline_vs_naive"] == ratios[bench.NAIVE]
    assert bench.find(steps, bench.NAIVE_EXECUTEMANY, "messages")["x_limit"] is None
    assert bench.find(bench.totals(steps), bench.NAIVE_EXECUTEMANY, "total") is None
    note = bench.baselines_note(steps)
    assert f"{pipeline_rate / 500:.2f}x" in note and f"{pipeline_rate / 2000:.2f}x" in note
    without = bench.baseline_ratios([r for r in steps if r["step"] != bench.NAIVE_EXECUTEMANY])
    assert without[bench.NAIVE_EXECUTEMANY] is None and without[bench.NAIVE] == ratios[bench.NAIVE]


def test_a_failed_step_gets_no_figures_and_its_total_no_ratio():
    failed_run = {**row(bench.FULL, "messages", 3.0, 100), "error": "boom"}
    raw = [row(bench.LIMIT, "messages", 10.0, 100), failed_run]
    enriched = bench.enrich(raw, {"messages": 1000})
    failed = bench.find(enriched, bench.FULL, "messages")
    assert failed["x_limit"] is None and failed["rows_per_s"] is None
    total = bench.find(bench.totals(enriched), bench.FULL, "total")
    assert total["x_limit"] is None and total["error"]


def test_totals_sum_times_rows_and_writes_against_the_limits_of_the_same_entities(steps):
    total = bench.find(bench.totals(steps), bench.FULL, "total")
    assert total["seconds"] == pytest.approx(14.0)
    assert total["rows"] == 101_000
    assert total["written"] == 99_990
    assert total["peak_rss_mb"] == 70.0
    assert total["x_limit"] == pytest.approx(14.0 / 11.0)
    # The changed run only ran messages: its total compares with the messages limit alone.
    assert bench.find(bench.totals(steps), bench.CHANGED, "total")["x_limit"] == pytest.approx(2.5)


def test_targets_judge_each_figure(steps):
    verdicts = {v["name"]: v for v in bench.judge(bench.TARGETS, bench.target_values(steps))}
    assert verdicts["full_vs_limit"]["verdict"] == "PASS"  # 1.2x <= 1.4x
    assert verdicts["unchanged_vs_limit"]["verdict"] == "MISS"  # 1.4x > 1.2x
    assert verdicts["unchanged_written"]["value"] == 0 and verdicts["unchanged_written"]["verdict"] == "PASS"
    assert verdicts["changed_vs_limit"]["verdict"] == "MISS"  # 2.5x > 2.0x
    assert verdicts["incremental_vs_full"]["value"] == pytest.approx(0.075)
    assert verdicts["incremental_vs_full"]["verdict"] == "PASS"
    assert verdicts["reconcile_vs_limit"]["verdict"] == "PASS"  # 0.8x
    assert verdicts["pipeline_vs_naive"]["value"] == pytest.approx((100_000 / 12) / 500)
    assert verdicts["pipeline_vs_naive"]["verdict"] == "PASS"
    # RSS of the pipeline's steps only (not the limit's or either baseline's).
    assert verdicts["peak_rss"]["value"] == 80.0 and verdicts["peak_rss"]["verdict"] == "PASS"


def test_a_written_row_in_the_unchanged_run_misses_and_a_missing_step_is_not_applicable(steps):
    bench.find(steps, bench.UNCHANGED, "users")["written"] = 3
    values = bench.target_values([r for r in steps if r["step"] != bench.RECONCILE])
    verdicts = {v["name"]: v["verdict"] for v in bench.judge(bench.TARGETS, values)}
    assert verdicts["unchanged_written"] == "MISS"
    assert verdicts["reconcile_vs_limit"] == "n/a"


@pytest.mark.parametrize(("value", "op", "threshold", "expected"), [
    (1.4, "<=", 1.4, True), (1.41, "<=", 1.4, False), (6.0, ">=", 6.0, True),
    (400.0, "<", 400.0, False), (0, "==", 0, True),
])
def test_passes_is_inclusive_except_for_strict_less_than(value, op, threshold, expected):
    assert bench.passes(value, op, threshold) is expected


def report_of(steps: list[dict], scale: str, messages: int) -> dict:
    report = {"timestamp": "2026-01-01T00:00:00+00:00", "scale": scale, "counts": {"messages": messages},
              "steps": steps, "result_file": f"bench-results/x-{scale}.json"}
    report["targets"] = bench.judge(bench.TARGETS, bench.target_values(steps))
    return report


def test_history_record_keeps_what_a_scale_comparison_needs(steps):
    record = bench.history_record(report_of(steps, "medium", 600_000))
    assert record["scale"] == "medium" and record["messages_rows"] == 600_000
    assert record["full_messages_seconds"] == 12.0
    assert record["full_total_seconds"] == pytest.approx(14.0)
    assert record["peak_rss_mb"] == 80.0 and record["peak_rss_step"] == "reconcile messages"
    assert record["targets"]["changed_vs_limit"] == "MISS"
    json.dumps(record)  # one JSON line


def test_last_other_scale_pairs_medium_with_large_and_skips_broken_lines():
    lines = [json.dumps({"scale": "medium", "n": 1}), json.dumps({"scale": "large", "n": 2}), "{not json",
             json.dumps({"scale": "small", "n": 3}), json.dumps({"scale": "medium", "n": 4}), ""]
    assert bench.last_other_scale(lines, "large")["n"] == 4
    assert bench.last_other_scale(lines, "medium")["n"] == 2
    assert bench.last_other_scale(lines, "small") is None
    assert bench.last_other_scale([json.dumps({"scale": "large"})], "large") is None


def test_a_run_of_some_phases_is_not_compared_with_another_scale(steps):
    whole = bench.history_record({**report_of(steps, "medium", 600_000), "phases": "all"})
    partial = bench.history_record({**report_of(steps, "medium", 600_000), "phases": ["limits", "full"]})
    assert whole["complete"] and not partial["complete"]
    lines = [json.dumps({**whole, "n": 1}), json.dumps({**partial, "n": 2})]
    assert bench.last_other_scale(lines, "large")["n"] == 1


def test_scale_values_compare_memory_and_time_against_rows():
    medium = {"peak_rss_mb": 100.0, "messages_rows": 600_000, "full_messages_seconds": 60.0}
    large = {"peak_rss_mb": 108.0, "messages_rows": 3_000_000, "full_messages_seconds": 324.0}
    values = bench.scale_values(large, medium)
    assert values["scale_memory"] == pytest.approx(8.0)
    assert values["row_ratio"] == pytest.approx(5.0) and values["time_ratio"] == pytest.approx(5.4)
    assert values["scale_time"] == pytest.approx(8.0)
    verdicts = {v["name"]: v["verdict"] for v in bench.judge(bench.SCALE_TARGETS, values)}
    assert verdicts == {"scale_memory": "PASS", "scale_time": "PASS"}
    assert bench.scale_values(large, None) == {"scale_memory": None, "scale_time": None}


@pytest.mark.parametrize(("query", "part"), [
    ("COPY (WITH user_base AS (SELECT 1) SELECT 1) TO STDOUT (FORMAT BINARY)", "extract: transform query"),
    ('COPY "migration_stage"."messages_x" ("id") FROM STDIN (FORMAT BINARY)', "extract: stage write"),
    ('WITH m AS (INSERT INTO "public"."messages" AS t ("id") SELECT 1) SELECT 1', "load: chunk merge"),
    ("INSERT INTO migration.before_images (run_id) SELECT $1, $2", "load: before-images"),
    ('INSERT INTO "public"."messages" ("id") SELECT "s"."id" FROM "migration_stage"."m" s',
     "load: chunk insert"),
    ('SELECT EXISTS (SELECT $1 FROM "public"."messages" t WHERE "t"."id" <= $2::bigint)',
     "load: empty-range"),
    ('DELETE FROM "public"."messages" t WHERE t."id" IN (SELECT 1 WHERE NOT EXISTS (SELECT 1))',
     "load: sweep"),
    ('DELETE FROM migration."quarantine" q USING "migration_stage"."m" s WHERE q.entity = $1',
     "load: ledgers"),
    ("UPDATE migration.runs SET \"counts\" = \"counts\" || $1 WHERE run_id = $2", "run bookkeeping"),
    ("SELECT k::text FROM (SELECT id AS k, row_number() OVER (ORDER BY id) AS n) x", "load: chunk bounds"),
    ('UPDATE "migration_stage"."m" s SET _disposition = $1, _reason = $2', "transform: destination checks"),
    ("SELECT 1 + 1", "other"),
])
def test_statement_label_names_the_pipeline_part(query, part):
    assert bench.statement_label(query).startswith(part)


def test_by_part_sums_statements_of_one_part():
    statements = [{"database": "d", "part": "load: chunk merge", "seconds": 2.0, "calls": 1},
                  {"database": "d", "part": "load: chunk merge", "seconds": 1.0, "calls": 3},
                  {"database": "l", "part": "extract", "seconds": 2.5, "calls": 1}]
    assert bench.by_part(statements) == [("d", "load: chunk merge", 3.0, 4), ("l", "extract", 2.5, 1)]


def test_tables_show_every_step_its_ratio_and_each_verdict(steps):
    lines = bench.step_table(steps, bench.totals(steps))
    label = bench.STEP_LABELS[bench.FULL]
    full = next(line for line in lines if line.startswith(label) and "messages" in line)
    assert "1.20x" in full and "100,000" in full
    assert any("total" in line for line in lines)
    verdict_lines = bench.target_table(bench.judge(bench.TARGETS, bench.target_values(steps)))
    assert any(line.endswith("MISS") and "10% edited" in line for line in verdict_lines)
    assert any("<= 1.40x" in line for line in verdict_lines)


def test_breakdown_splits_a_run_by_its_record(steps):
    (line,) = [x for x in bench.breakdown_lines(steps) if x.strip().startswith("(1)")]
    assert "extract    5.00 s" in line and "load    6.00 s" in line and "1.00 s" in line


def test_a_step_kind_added_without_a_label_prints_under_its_own_name_after_the_others(steps):
    added = bench.enrich([*steps, row("storage_reconcile_1m", "media", 30.0, 1_000_000)], {})
    lines = bench.step_table(added, bench.totals(added))
    new = [i for i, line in enumerate(lines) if line.startswith("storage_reconcile_1m")]
    assert len(new) == 2  # the media row and its total
    assert "1,000,000" in lines[new[0]] and "30.00" in lines[new[0]]
    reconcile = bench.STEP_LABELS[bench.RECONCILE]
    assert new[0] > max(i for i, line in enumerate(lines) if line.startswith(reconcile))


def test_the_incremental_run_after_a_tenth_of_the_change_is_judged_against_the_full_run(steps):
    small = bench.enrich([*steps, row(bench.INCREMENTAL_SMALL, "messages", 0.6, 100, written=100)], {})
    verdicts = {v["name"]: v for v in bench.judge(bench.TARGETS, bench.target_values(small))}
    assert verdicts["incremental_small_vs_full"]["value"] == pytest.approx(0.05)
    assert verdicts["incremental_small_vs_full"]["verdict"] == "MISS"  # 0.05x > 0.03x
    assert {v["name"]: v["verdict"] for v in bench.judge(
        bench.TARGETS, bench.target_values(steps))}["incremental_small_vs_full"] == "n/a"
    lines = bench.breakdown_lines([*small, row(bench.INCREMENTAL_LARGE, "messages", 2.0, 10_000)])
    assert any(line.strip().startswith("(4a)") for line in lines)
    assert any(line.strip().startswith("(4b)") for line in lines)
