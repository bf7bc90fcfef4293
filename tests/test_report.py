"""The terminal report: what it says about a small hand-made warehouse, in 80 columns."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import duckdb
import pytest
from conftest import run_process
from truth import RESULT_TABLES_DDL

from pipelines.analytics.check import Limits, read_facts
from pipelines.analytics.dashboard import render_html
from pipelines.analytics.models import build_models
from pipelines.analytics.report import (
    NO_STATUS,
    WIDTH,
    amount,
    counted,
    duration,
    rate,
    render_report,
    render_report_at,
    status_lines,
)
from pipelines.errors import ConfigError, ReportError

NOW = datetime(2025, 3, 13, 12, 0, tzinfo=UTC)
LONG_ID = "batch_" + "x" * 40

TABLES = """
create schema siliconflow;
create table siliconflow.batches (
    id varchar, object varchar, endpoint varchar, input_file_id varchar, output_file_id varchar,
    error_file_id varchar, file_name varchar, completion_window varchar, status varchar,
    created_at timestamptz, in_progress_at timestamptz, expires_at timestamptz,
    finalizing_at timestamptz, completed_at timestamptz, failed_at timestamptz,
    expired_at timestamptz, cancelling_at timestamptz, cancelled_at timestamptz,
    _dlt_load_id varchar, _dlt_id varchar
);
create table siliconflow.batch_request_counts (
    batch_id varchar, total bigint, completed bigint, failed bigint
);
create table siliconflow.batch_status_history (
    batch_id varchar, observed_at timestamptz, status varchar, requests_total bigint,
    requests_completed bigint, requests_failed bigint
);
-- dlt's own record of each load package, as every dlt warehouse has it
create table siliconflow._dlt_loads (
    load_id varchar, schema_name varchar, status bigint, inserted_at timestamptz,
    schema_version_hash varchar
);
"""
# the table a later sync records each run in (SPEC 3), made by hand where a test needs it
SYNC_RUNS = """
create table siliconflow.sync_runs (
    run_id varchar, started_at timestamptz, finished_at timestamptz, kind varchar,
    outcome varchar, exit_code integer, message varchar, batches_read bigint,
    batches_new bigint, batches_changed bigint, pages bigint, lookups bigint,
    files_loaded bigint, request_lines bigint, warnings bigint
);
"""
NEVER_SYNCED = "Data never synced: no successful sync is recorded in this database"

COLUMNS = (
    "id, status, created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at"
)
# UTC, 2025; NOW is 03-13 12:00, so 7 days cover 03-07 to 03-13
BATCHES = [
    # turnaround 1h20m, queue 10m, 3600 requests in 3600 s
    ("r1", "completed", "03-12 00:00", "03-12 00:10", "03-13 00:00", "03-12 01:10",
     "03-12 01:20", None),
    # turnaround 40m, queue 30s, 900 requests in 1800 s
    ("r2", "completed", "03-12 02:00", "03-12 02:00:30", "03-13 02:00", "03-12 02:30:30",
     "03-12 02:40", None),
    ("r3", "failed", "03-12 03:00", None, "03-13 03:00", None, None, "03-12 03:01"),
    # before the window: counted nowhere but in the total
    ("r4", "completed", "02-01 00:00", "02-01 00:01", "02-02 00:00", "02-01 01:00",
     "02-01 02:00", None),
    ("o1", "in_queue", "03-13 11:00", None, "03-14 11:00", None, None, None),
    ("o2", "validating", "03-13 10:00", None, "03-14 10:00", None, None, None),
    ("o3", "in_progress", "03-13 09:00", "03-13 09:30", "03-14 09:00", None, None, None),
    ("o4", "finalizing", "03-13 08:00", "03-13 08:05", "03-14 08:00", "03-13 11:00",
     None, None),
    ("o5", "cancelling", "03-13 07:00", "03-13 07:01", "03-14 07:00", None, None, None),
    # open for a week, created before the window: still listed first among open batches
    (LONG_ID, "in_progress", "03-06 12:00", "03-06 13:00", "03-09 12:00", None, None, None),
]  # fmt: skip
REQUEST_COUNTS = [
    ("r1", 3600, 3600, 0),
    ("r2", 1000, 900, 100),
    ("r4", 10, 10, 0),
    ("o3", 10, 5, 0),
    ("o4", 20, 20, 0),
    (LONG_ID, 1000, 250, 3),
]


def literal(moment: str | None) -> str | None:
    if moment is None:
        return None
    seconds = ":00" if moment.count(":") == 1 else ""
    return f"2025-{moment}{seconds}+00:00"


def add_batches(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """Insert (id, status, created, in progress, expires, finalizing, completed, failed) rows."""
    for batch_id, status, *moments in rows:
        con.execute(
            f"insert into siliconflow.batches ({COLUMNS}, endpoint, completion_window) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, '/v1/chat/completions', '24h')",
            [batch_id, status, *(literal(moment) for moment in moments)],
        )


def add_load(con: duckdb.DuckDBPyConnection, inserted_at: datetime, status: int = 0) -> None:
    """One dlt load package; status 0 = loaded."""
    con.execute(
        "insert into siliconflow._dlt_loads values (?, 'siliconflow', ?, ?, 'hash')",
        [str(inserted_at.timestamp()), status, inserted_at],
    )


def add_sync_run(con: duckdb.DuckDBPyConnection, finished_at: datetime, outcome: str) -> None:
    con.execute(
        "insert into siliconflow.sync_runs (run_id, started_at, finished_at, kind, outcome) "
        "values (?, ?, ?, 'incremental', ?)",
        [
            f"run-{finished_at.isoformat()}",
            finished_at - timedelta(minutes=1),
            finished_at,
            outcome,
        ],
    )


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("set TimeZone = 'Asia/Shanghai'")
    connection.execute(TABLES + RESULT_TABLES_DDL)
    yield connection
    connection.close()


# r1's output file: three DeepSeek-V3 requests of 400,000 prompt and 100,000 completion tokens,
# and an error file of one; r2's output: two requests of a model with no price
FILES = [("r1", "output"), ("r1", "error"), ("r2", "output")]
REQUESTS = [
    ("r1", "output", 1, "deepseek-ai/DeepSeek-V3", 400_000, 100_000, None),
    ("r1", "output", 2, "deepseek-ai/DeepSeek-V3", 400_000, 100_000, None),
    ("r1", "output", 3, "deepseek-ai/DeepSeek-V3", 400_000, 100_000, None),
    ("r1", "error", 1, None, None, None, "invalid_request"),
    ("r2", "output", 1, "some/unpriced-model", 100, 100, None),
    ("r2", "output", 2, "some/unpriced-model", 100, 100, None),
]


def add_results(con: duckdb.DuckDBPyConnection) -> None:
    con.executemany(
        "insert into siliconflow.batch_files (batch_id, kind, state) values (?, ?, 'loaded')",
        FILES,
    )
    con.executemany(
        "insert into siliconflow.batch_requests (batch_id, kind, line, model, prompt_tokens, "
        "completion_tokens, error_code) values (?, ?, ?, ?, ?, ?, ?)",
        REQUESTS,
    )


@pytest.fixture
def warehouse(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    add_batches(con, BATCHES)
    con.executemany(
        "insert into siliconflow.batch_request_counts values (?, ?, ?, ?)", REQUEST_COUNTS
    )
    add_results(con)
    # synced 12 minutes before NOW
    add_load(con, datetime(2025, 3, 13, 11, 48, tzinfo=UTC))
    build_models(con)
    return con


def test_report_summarises_the_last_days(warehouse):
    assert render_report(warehouse, days=7, now=NOW).splitlines() == [
        "sfbatches report: last 7 days, 2025-03-07 to 2025-03-13 (UTC)",
        "Data as of 2025-03-13 11:48 UTC (last sync 12 min ago)",
        "",
        "Created in these days    8 batches",
        "  in_queue 1, validating 1, in_progress 1, finalizing 1, completed 2, failed 1,",
        "  cancelling 1",
        # turnarounds 2400 and 4800: p90 = 2400 + 0.9 * 2400 = 4560 s
        "  Turnaround  p50 1h00m  p90 1h16m  (2 completed)",
        # queues 30, 60, 300, 600, 1800: p90 = 600 + 0.6 * 1200 = 1320 s
        "  Queue wait  p50 5m00s  p90 22m00s  (5 started)",
        # r1 and r2 completed before expires_at, r3 failed
        "  Window met  2 of 3 ended batches (66.7%) completed by expires_at;",
        "              failed, expired and cancelled ones count as missed",
        "",
        # 100 / 4600 failed
        "Completed in these days  2 batches",
        "  Requests    4,500 done, 100 failed (2.17%)",
        # r1 1 req/s, r2 0.5 req/s: median 0.75 req/s = 45 req/min; 4500 requests over
        # 6.5 days = 561600 s = 156 h: 28.85 req/h
        "  Speed       45 req/min per batch (p50), 28.8 req/h over these days",
        "",
        "Result files             2 ended batches loaded",
        # 6 request lines, r1's error line failed
        "  Requests    6 run, 1 failed (16.67%)",
        # 1,200,200 prompt, 300,200 completion
        "  Tokens      1.2M prompt, 300k completion",
        # r1 300,000 tokens in 3600 s of processing = 83.33/s, r2 200 in 1800 s = 0.111/s:
        # median 41.72; 300,200 over the 561,600 s of these days = 0.5345/s
        "  Tokens/s    41.7 per batch (p50), 0.535 over these days (completion)",
        # (1,200,000 x 1.00 + 300,000 x 4.00) / 1e6 CNY, at the shipped batch price
        "  Cost        CNY 2.40 estimated; 1 batch of models without a price",
        "",
        "Open now                 6 batches, longest open first",
        "  batch_xxxxxxxxxxxxxxxxxxxxxxx...  in_progress    7d00h  25% (250/1,000)",
        "  o5                                cancelling     5h00m  no counts yet",
        "  o4                                finalizing     4h00m  100% (20/20)",
        "  o3                                in_progress    3h00m  50% (5/10)",
        "  o2                                validating     2h00m  no counts yet",
    ]


def test_a_batch_whose_every_request_failed_had_nothing_to_price(warehouse):
    # r3 failed in the window; its error file holds two lines, neither with a model or tokens
    warehouse.execute(
        "insert into siliconflow.batch_files (batch_id, kind, state) "
        "values ('r3', 'error', 'loaded')"
    )
    warehouse.execute(
        "insert into siliconflow.batch_requests (batch_id, kind, line, error_code) "
        "values ('r3', 'error', 1, 'invalid_request'), ('r3', 'error', 2, 'invalid_request')"
    )

    lines = render_report(warehouse, days=7, now=NOW).splitlines()

    assert "Result files             3 ended batches loaded" in lines
    assert "  Cost        CNY 2.40 estimated; 1 batch of models without a price" in lines


def test_a_window_whose_every_request_failed_had_no_cost_not_an_unknown_one(warehouse):
    warehouse.execute(
        "update siliconflow.batch_requests set model = null, prompt_tokens = null, "
        "completion_tokens = null, error_code = 'server_error'"
    )

    lines = render_report(warehouse, days=7, now=NOW).splitlines()

    assert "  Cost        none: no tokens to price" in lines


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (None, "-"),
        (950, "950"),
        (12_300, "12.3k"),
        (4_560_000, "4.56M"),
        (1_200_000_000, "1.2B"),
        (3_400_000_000_000, "3.4T"),
        (125_000_000_000_000, "125T"),
    ],
)
def test_large_counts_read_in_plain_units(count, text):
    assert amount(count) == text


# r1 and r2 ended in the window, r3 failed in it, r4 ended before it
NOT_LOADED = [
    (
        "insert into siliconflow.batch_files (batch_id, kind, state) values "
        "('r2', 'error', 'gone'), ('r3', 'output', 'failed'), ('r4', 'output', 'gone')",
        "  Cost        CNY 2.40 estimated; 1 batch of models without a price",
        "1 file gone (404, expired link), 1 failed (retried next sync)",
    ),
    (
        "update siliconflow.batch_files set state = 'gone'",  # r1's two files and r2's output
        "Result files             none loaded for batches that ended in these days",
        "3 files gone (404, expired link), 0 failed (retried next sync)",
    ),
    (  # r2 and r3 name files no sync fetched yet (r4 ended before the window)
        "update siliconflow.batches set error_file_id = 'file-' || id "
        "where id in ('r2', 'r3', 'r4')",
        "  Cost        CNY 2.40 estimated; 1 batch of models without a price",
        "2 files not fetched yet (later syncs fetch them)",
    ),
]


@pytest.mark.parametrize(
    ("change", "above", "said"), NOT_LOADED, ids=["some", "all", "not fetched yet"]
)
def test_result_files_not_loaded_are_named_under_the_figures_they_leave_out(
    warehouse, change, above, said
):
    warehouse.execute(change)

    lines = render_report(warehouse, days=7, now=NOW).splitlines()

    at = lines.index(above)
    assert lines[at + 1] == f"  Not loaded  {said}; not counted above"


def test_turnaround_says_how_many_completed_batches_it_is_timed_over(warehouse):
    warehouse.execute("update siliconflow.batches set completed_at = null where id = 'r2'")

    lines = render_report(warehouse, days=7, now=NOW).splitlines()

    # r1 alone: 1h20m
    assert "  Turnaround  p50 1h20m  p90 1h20m  (1 of 2 completed timed)" in lines


def test_report_of_one_day_without_completions(warehouse):
    lines = render_report(warehouse, days=1, now=NOW).splitlines()
    assert lines[0] == "sfbatches report: last 1 day, 2025-03-13 to 2025-03-13 (UTC)"
    assert "Created in these days    5 batches" in lines
    assert "  Turnaround  p50 -  p90 -  (0 completed)" in lines
    assert "  Window met  0 of 0 ended batches completed by expires_at;" in lines
    assert "Completed in these days  none" in lines


def test_report_of_days_without_batches_still_lists_open_ones(warehouse):
    later = datetime(2025, 6, 1, tzinfo=UTC)
    lines = render_report(warehouse, days=3, now=later).splitlines()
    assert "Created in these days    none" in lines
    assert "Completed in these days  none" in lines
    assert "Open now                 6 batches, longest open first" in lines


def test_ids_with_control_characters_are_shown_escaped(warehouse):
    add_batches(
        warehouse, [("o\x1b[2J\x07", "in_queue", "03-01 11:30", None, None, None, None, None)]
    )
    build_models(warehouse)

    text = render_report(warehouse, days=3, now=NOW)

    assert "\x1b" not in text and "\x07" not in text
    assert "o\\x1b[2J\\x07" in text


def test_a_completed_batch_without_its_end_time_leaves_the_page_whole(warehouse):
    add_batches(
        warehouse, [("c0", "completed", "03-13 01:00", "03-13 01:10", None, None, None, None)]
    )
    build_models(warehouse)

    page = render_html(warehouse, Limits(), days=3, now=NOW)

    assert 'data-chart="turnaround"' in page


def test_a_batch_the_api_says_ends_tomorrow_has_not_ended_for_check(warehouse):
    before = read_facts(warehouse, NOW)
    ends = ("03-13 11:00", "03-13 11:05", "03-14 11:00", None, None, "03-14 02:00")
    add_batches(
        warehouse, [("f1", "failed", *ends), ("c1", "completed", *ends[:4], "03-14 01:00", None)]
    )
    warehouse.execute("insert into siliconflow.batch_request_counts values ('f1', 10, 1, 9)")
    warehouse.execute(
        "insert into siliconflow.batch_requests (batch_id, kind, line, total_tokens) "
        "values ('c1', 'output', 1, 5000)"
    )

    after = read_facts(warehouse, NOW)

    assert (after.failures, after.tokens_today) == (before.failures, before.tokens_today)
    assert read_facts(warehouse, NOW + timedelta(days=1)).failures.failed >= 9


@pytest.mark.parametrize("days", [1, 7, 30, 365])
def test_every_line_fits_80_columns(warehouse, days):
    text = render_report(warehouse, days=days, now=NOW)
    assert text.endswith("\n")
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_naive_now_is_taken_as_utc(warehouse):
    naive = NOW.replace(tzinfo=None)
    assert render_report(warehouse, now=naive) == render_report(warehouse, now=NOW)


def test_an_empty_warehouse_says_no_batches_yet(con):
    build_models(con)
    assert render_report(con, now=NOW) == f"sfbatches report: no batches yet\n{NEVER_SYNCED}\n"


def test_an_empty_warehouse_still_says_when_it_was_synced(con):
    add_load(con, datetime(2025, 3, 13, 9, 0, tzinfo=UTC))
    build_models(con)
    assert render_report(con, now=NOW).splitlines() == [
        "sfbatches report: no batches yet",
        "Data as of 2025-03-13 09:00 UTC (last sync 3 h ago)",
    ]


def drop_a_column_of_a_view(con: duckdb.DuckDBPyConnection) -> None:
    """As views built by another version of sfbatches would be: one column fewer."""
    columns = [column[0] for column in con.sql("from analytics.batch_turnaround").description]
    kept = ", ".join(name for name in columns if name != "turnaround_seconds")
    con.execute("create or replace table turnaround_copy as from analytics.batch_turnaround")
    con.execute(
        f"create or replace view analytics.batch_turnaround as select {kept} from turnaround_copy"
    )


@pytest.mark.parametrize("views", ["missing", "out of date"])
@pytest.mark.parametrize("page", ["text", "html"])
def test_a_report_without_this_versions_views_says_how_to_build_them(warehouse, views, page):
    if views == "missing":
        warehouse.execute("drop schema analytics cascade")
    else:
        drop_a_column_of_a_view(warehouse)
    render = render_report if page == "text" else partial(render_html, limits=Limits())

    with pytest.raises(ReportError) as raised:
        render(warehouse, now=NOW)

    assert str(raised.value) == (
        "the analytics views are missing or out of date: run `sfbatches sync` (it builds them) "
        "or `sfbatches models`"
    )


def test_report_refuses_less_than_a_day(warehouse):
    with pytest.raises(ValueError, match="at least 1"):
        render_report(warehouse, days=0)


def test_render_report_at_reads_the_file(tmp_path: Path):
    db_path = tmp_path / "w.duckdb"
    with duckdb.connect(str(db_path)) as connection:
        connection.execute(TABLES + RESULT_TABLES_DDL)
        build_models(connection)
    expected = f"sfbatches report: no batches yet\n{NEVER_SYNCED}\n"
    assert render_report_at(db_path, now=NOW) == expected
    # a file's catalog is named after it, not "memory": its sync record is still found
    with duckdb.connect(str(db_path)) as connection:
        add_load(connection, datetime(2025, 3, 11, 9, 30, tzinfo=UTC))
    assert render_report_at(db_path, now=NOW).splitlines()[1] == (
        "Data as of 2025-03-11 09:30 UTC (last sync 2 days ago)"
    )
    with pytest.raises(ConfigError, match="not found: run `sfbatches sync` first"):
        render_report_at(tmp_path / "missing.duckdb")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.4, "0s"),
        (59.9, "59s"),
        (250, "4m10s"),
        (3720, "1h02m"),
        (86400 * 2 + 3 * 3600 + 59, "2d03h"),
        (-5, "0s"),
    ],
)
def test_durations_show_their_two_largest_units(seconds, text):
    assert duration(seconds) == text


def test_status_counts_wrap_without_splitting_a_status_from_its_count():
    counts = {
        "in_queue": 10,
        "in_progress": 39,
        "completed": 1098,
        "failed": 58,
        "expired": 40,
        "cancelled": 60,
        "paused": 1,
    }
    assert status_lines(counts) == [
        "  in_queue 10, in_progress 39, completed 1,098, failed 58, expired 40,",
        "  cancelled 60, paused 1",
    ]


@pytest.mark.parametrize(
    ("odd", "line_two"),
    [
        (NO_STATUS, f"  {NO_STATUS} 1"),  # a batch the API sent without a status
        ("awaiting review", "  awaiting review 1"),  # statuses the API may add: a space, a hyphen
        ("re-queued", "  re-queued 1"),
    ],
)
def test_a_status_with_a_space_or_hyphen_wraps_whole(odd, line_two):
    counts = {"validating": 1444, "in_progress": 874, "finalizing": 452, "cancelling": 1073}
    # each odd status has room for its first part at the end of the first line
    assert len("  validating 1,444, in_progress 874, finalizing 452, cancelling 1,073, ") < WIDTH

    lines = status_lines({**counts, odd: 1})

    assert lines == [
        "  validating 1,444, in_progress 874, finalizing 452, cancelling 1,073,",
        line_two,
    ]


# --- how fresh the data is ------------------------------------------------------------------


def at(hour: int, minute: int = 0, day: int = 13) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def freshness(con: duckdb.DuckDBPyConnection) -> str:
    return render_report(con, days=7, now=NOW).splitlines()[1]


def test_freshness_is_the_newest_load_dlt_finished(warehouse):
    warehouse.execute("delete from siliconflow._dlt_loads")
    add_load(warehouse, at(9, 30))
    add_load(warehouse, at(10, 15))
    add_load(warehouse, at(11, 50), status=1)  # a package dlt did not finish loading
    # 12:00 - 10:15 = 1 h 45 min, said in whole hours
    assert freshness(warehouse) == "Data as of 2025-03-13 10:15 UTC (last sync 1 h ago)"


def test_freshness_prefers_the_newest_successful_sync_run(warehouse):
    warehouse.execute(SYNC_RUNS)
    add_sync_run(warehouse, at(10, 20), "ok")
    add_sync_run(warehouse, at(11, 20), "ok")
    add_sync_run(warehouse, at(11, 55), "failed")
    # dlt's newest load (11:48, from the fixture) is not the sync that finished
    assert freshness(warehouse) == "Data as of 2025-03-13 11:20 UTC (last sync 40 min ago)"


def test_sync_runs_without_a_successful_run_fall_back_to_dlt_loads(warehouse):
    warehouse.execute(SYNC_RUNS)
    assert freshness(warehouse) == "Data as of 2025-03-13 11:48 UTC (last sync 12 min ago)"
    add_sync_run(warehouse, at(11, 55), "failed")
    assert freshness(warehouse) == "Data as of 2025-03-13 11:48 UTC (last sync 12 min ago)"


def test_a_warehouse_without_a_successful_sync_says_it_was_never_synced(warehouse):
    warehouse.execute("delete from siliconflow._dlt_loads")
    assert freshness(warehouse) == NEVER_SYNCED
    add_load(warehouse, at(11, 50), status=1)
    warehouse.execute(SYNC_RUNS)
    add_sync_run(warehouse, at(11, 55), "failed")
    assert freshness(warehouse) == NEVER_SYNCED
    warehouse.execute("drop table siliconflow._dlt_loads")
    warehouse.execute("drop table siliconflow.sync_runs")
    assert freshness(warehouse) == NEVER_SYNCED


@pytest.mark.parametrize(
    ("synced_at", "text"),
    [
        (NOW - timedelta(seconds=30), "2025-03-13 11:59 UTC (last sync just now)"),
        (NOW - timedelta(minutes=12), "2025-03-13 11:48 UTC (last sync 12 min ago)"),
        (NOW - timedelta(minutes=59, seconds=59), "2025-03-13 11:00 UTC (last sync 59 min ago)"),
        (NOW - timedelta(hours=3), "2025-03-13 09:00 UTC (last sync 3 h ago)"),
        (NOW - timedelta(hours=47), "2025-03-11 13:00 UTC (last sync 47 h ago)"),
        (NOW - timedelta(hours=48), "2025-03-11 12:00 UTC (last sync 2 days ago)"),
        (NOW - timedelta(days=10, hours=5), "2025-03-03 07:00 UTC (last sync 10 days ago)"),
        (NOW + timedelta(hours=2), "2025-03-13 14:00 UTC (last sync 2 h after the report's time)"),
    ],
)
def test_the_age_of_the_last_sync_reads_in_plain_words(warehouse, synced_at, text):
    warehouse.execute("delete from siliconflow._dlt_loads")
    add_load(warehouse, synced_at)
    assert freshness(warehouse) == f"Data as of {text}"


# --- what each count counts -----------------------------------------------------------------


def test_sections_say_what_they_count_and_line_up(warehouse):
    text = render_report(warehouse, days=7, now=NOW)
    assert [line for line in text.splitlines()[2:] if line and not line.startswith(" ")] == [
        "Created in these days    8 batches",
        "Completed in these days  2 batches",
        "Result files             2 ended batches loaded",
        "Open now                 6 batches, longest open first",
    ]


def test_window_met_counts_failed_expired_cancelled_and_late_batches_as_missed(con):
    add_batches(
        con,
        [
            # completed before expires_at: the only one that met its window
            ("ok", "completed", "03-12 00:00", "03-12 00:10", "03-13 00:00", "03-12 01:00",
             "03-12 01:10", None),
            # completed 40 minutes after expires_at
            ("late", "completed", "03-11 00:00", "03-11 00:10", "03-12 00:00", "03-12 00:30",
             "03-12 00:40", None),
            ("failed", "failed", "03-12 01:00", None, "03-13 01:00", None, None, "03-12 01:05"),
            ("expired", "expired", "03-11 06:00", None, "03-12 06:00", None, None, None),
            ("cancelled", "cancelled", "03-12 02:00", None, "03-13 02:00", None, None, None),
            # not ended: counted in neither number
            ("open", "in_progress", "03-13 08:00", "03-13 08:05", "03-14 08:00", None, None,
             None),
        ],
    )  # fmt: skip
    con.execute("update siliconflow.batches set expired_at = expires_at where id = 'expired'")
    con.execute(
        "update siliconflow.batches set cancelled_at = '2025-03-12 02:30+00' where id = 'cancelled'"
    )
    build_models(con)
    lines = render_report(con, days=7, now=NOW).splitlines()
    at_window = lines.index("  Window met  1 of 5 ended batches (20.0%) completed by expires_at;")
    assert (
        lines[at_window + 1] == "              failed, expired and cancelled ones count as missed"
    )


# --- one of a kind, and slow ----------------------------------------------------------------


@pytest.fixture
def one_of_each(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """One batch created and completed today, slowly, and one open since before the window."""
    add_batches(
        con,
        [
            # 10 requests in 3600 s of processing: 10 req/h
            ("slow", "completed", "03-13 00:00", "03-13 01:00", "03-14 00:00", "03-13 02:00",
             "03-13 02:10", None),
            ("old", "in_progress", "03-01 12:00", "03-01 13:00", "03-02 12:00", None, None, None),
        ],
    )  # fmt: skip
    con.executemany(
        "insert into siliconflow.batch_request_counts values (?, ?, ?, ?)",
        [("slow", 10, 10, 0), ("old", 4, 1, 0)],
    )
    add_load(con, at(11, 59))
    build_models(con)
    return con


def test_one_of_each_reads_in_the_singular(one_of_each):
    assert render_report(one_of_each, days=1, now=NOW).splitlines() == [
        "sfbatches report: last 1 day, 2025-03-13 to 2025-03-13 (UTC)",
        "Data as of 2025-03-13 11:59 UTC (last sync 1 min ago)",
        "",
        "Created in these days    1 batch",
        "  completed 1",
        "  Turnaround  p50 2h10m  p90 2h10m  (1 completed)",
        "  Queue wait  p50 1h00m  p90 1h00m  (1 started)",
        "  Window met  1 of 1 ended batch (100.0%) completed by expires_at;",
        "              failed, expired and cancelled ones count as missed",
        "",
        "Completed in these days  1 batch",
        "  Requests    10 done, 0 failed (0.00%)",
        # 10 requests over the 12 hours of the day so far: 0.8333 req/h
        "  Speed       10 req/h per batch (p50), 0.833 req/h over these days",
        "",
        "Result files             none loaded for batches that ended in these days",
        "",
        "Open now                 1 batch",
        # open since 03-01 12:00, 12 days before NOW
        "  old  in_progress   12d00h  25% (1/4)",
    ]


@pytest.mark.parametrize(
    ("count", "noun", "text"),
    [
        (1, "batch", "1 batch"),
        (2, "batch", "2 batches"),
        (0, "batch", "0 batches"),
        (1_123, "batch", "1,123 batches"),
        (1, "page", "1 page"),
        (2, "page", "2 pages"),
        (1, "day", "1 day"),
        (7, "day", "7 days"),
        (3, "entry", "3 entries"),
        (1, "ended batch", "1 ended batch"),
        (5, "ended batch", "5 ended batches"),
    ],
)
def test_counts_put_their_noun_in_the_right_number(count, noun, text):
    assert counted(count, noun) == text


def test_an_irregular_plural_can_be_given():
    assert counted(1, "child", "children") == "1 child"
    assert counted(2, "child", "children") == "2 children"


@pytest.mark.parametrize(
    ("per_second", "text"),
    [
        (None, "-"),
        (1234.4, "1,234 req/s"),
        (2.5, "2.5 req/s"),
        (1.0, "1 req/s"),
        # below 1 req/s: per minute, 0.75 * 60
        (0.75, "45 req/min"),
        (0.02, "1.2 req/min"),
        # below 1 req/min too: per hour, 0.0162 * 3600 = 58.32
        (0.0162, "58.3 req/h"),
        (0.0001, "0.36 req/h"),
        (0.0, "0 req/h"),
        # one request in about 31 years
        (1e-9, "<0.001 req/h"),
    ],
)
def test_low_rates_read_per_minute_or_per_hour(per_second, text):
    assert rate(per_second) == text


@pytest.mark.parametrize(
    ("days", "says"),
    [
        ("0", "must be at least 1"),
        ("36501", "must be at most 36,500"),
        ("soon", "not a whole number: 'soon'"),
        ("1.5", "not a whole number: '1.5'"),
    ],
)
def test_a_window_of_no_days_or_of_more_than_a_century_is_a_usage_error(tmp_path, days, says):
    outcome = run_process("report", "--db", str(tmp_path / "w.duckdb"), "--days", days)

    assert outcome.code == 2 and says in outcome.err and "unexpected" not in outcome.err
    assert "_days" not in outcome.err and not (tmp_path / "w.duckdb").exists()
