"""The terminal report: what it says about a small hand-made warehouse, in 80 columns."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from pipelines.analytics.models import build_models
from pipelines.analytics.report import (
    ReportError,
    duration,
    render_report,
    render_report_at,
    status_lines,
)
from pipelines.errors import ConfigError

NOW = datetime(2025, 3, 13, 12, 0, tzinfo=UTC)
LONG_ID = "batch_" + "x" * 40

TABLES = """
create schema siliconflow;
create table siliconflow.batches (
    id varchar, object varchar, endpoint varchar, completion_window varchar, status varchar,
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
"""

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


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("set TimeZone = 'Asia/Shanghai'")
    connection.execute(TABLES)
    yield connection
    connection.close()


@pytest.fixture
def warehouse(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    for batch_id, status, *moments in BATCHES:
        con.execute(
            f"insert into siliconflow.batches ({COLUMNS}, endpoint, completion_window) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, '/v1/chat/completions', '24h')",
            [batch_id, status, *(literal(moment) for moment in moments)],
        )
    con.executemany(
        "insert into siliconflow.batch_request_counts values (?, ?, ?, ?)", REQUEST_COUNTS
    )
    build_models(con)
    return con


def test_report_summarises_the_last_days(warehouse):
    assert render_report(warehouse, days=7, now=NOW).splitlines() == [
        "sfbatches report: last 7 days, 2025-03-07 to 2025-03-13 (UTC)",
        "",
        "Created     8 batches",
        "  in_queue 1, validating 1, in_progress 1, finalizing 1, completed 2, failed 1,",
        "  cancelling 1",
        # turnarounds 2400 and 4800: p90 = 2400 + 0.9 * 2400 = 4560 s
        "Turnaround  p50 1h00m  p90 1h16m  (2 completed)",
        # queues 30, 60, 300, 600, 1800: p90 = 600 + 0.6 * 1200 = 1320 s
        "Queue wait  p50 5m00s  p90 22m00s  (5 started)",
        "Window met  2 of 3 ended batches (66.7%)",
        # 100 / 4600 failed; 4500 requests over 6.5 days = 561600 s
        "Completed   2 batches: 4,500 requests done, 100 failed (2.17%)",
        "Speed       0.75 req/s per batch (p50), 0.00801 req/s over these days",
        "",
        "Open        6 batches, longest open first",
        "  batch_xxxxxxxxxxxxxxxxxxxxxxx...  in_progress    7d00h  25% (250/1,000)",
        "  o5                                cancelling     5h00m  no counts yet",
        "  o4                                finalizing     4h00m  100% (20/20)",
        "  o3                                in_progress    3h00m  50% (5/10)",
        "  o2                                validating     2h00m  no counts yet",
    ]


def test_report_of_one_day_without_completions(warehouse):
    lines = render_report(warehouse, days=1, now=NOW).splitlines()
    assert lines[0] == "sfbatches report: last 1 day, 2025-03-13 to 2025-03-13 (UTC)"
    assert "Created     5 batches" in lines
    assert "Turnaround  p50 -  p90 -  (0 completed)" in lines
    assert "Window met  0 of 0 ended batches" in lines
    assert "Completed   no batches in these days" in lines


def test_report_of_days_without_batches_still_lists_open_ones(warehouse):
    later = datetime(2025, 6, 1, tzinfo=UTC)
    lines = render_report(warehouse, days=3, now=later).splitlines()
    assert "Created     no batches in these days" in lines
    assert "Open        6 batches, longest open first" in lines


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
    assert render_report(con, now=NOW) == "sfbatches report: no batches yet\n"


def test_report_before_the_models_are_built_says_to_build_them(con):
    with pytest.raises(ReportError, match=r"run `sfbatches models` first"):
        render_report(con, now=NOW)


def test_report_refuses_less_than_a_day(warehouse):
    with pytest.raises(ValueError, match="at least 1"):
        render_report(warehouse, days=0)


def test_render_report_at_reads_the_file(tmp_path: Path):
    db_path = tmp_path / "w.duckdb"
    with duckdb.connect(str(db_path)) as connection:
        connection.execute(TABLES)
        build_models(connection)
    assert render_report_at(db_path, now=NOW) == "sfbatches report: no batches yet\n"
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
