"""The SQL models: every analytics view checked against numbers worked out by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from truth import RESULT_TABLES_DDL

from pipelines import cli
from pipelines.analytics.models import (
    build_models,
    build_models_at,
    default_sql_dir,
    discover_models,
)
from pipelines.errors import ConfigError, DatabaseBusy, ModelError
from pipelines.simulator import Simulator, World
from pipelines.warehouse.database import open_database

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"

# the tables as the sync writes them, dlt's bookkeeping and fields the API added included
TABLES = """
create schema if not exists siliconflow;
create table siliconflow.batches (
    id varchar primary key, object varchar, endpoint varchar, input_file_id varchar,
    completion_window varchar, status varchar, output_file_id varchar,
    error_file_id varchar, file_name varchar,
    created_at timestamptz, in_progress_at timestamptz, expires_at timestamptz,
    finalizing_at timestamptz, completed_at timestamptz, failed_at timestamptz,
    expired_at timestamptz, cancelling_at timestamptz, cancelled_at timestamptz,
    model varchar, usage__total_tokens bigint, _dlt_load_id varchar, _dlt_id varchar
);
create table siliconflow.batch_request_counts (
    batch_id varchar, total bigint, completed bigint, failed bigint,
    _dlt_load_id varchar, _dlt_id varchar
);
create table siliconflow.batch_metadata (batch_id varchar, key varchar, value varchar);
create table siliconflow.batch_errors (
    batch_id varchar, position bigint, code varchar, message varchar, param varchar,
    line bigint
);
create table siliconflow.batch_status_history (
    batch_id varchar, observed_at timestamptz, status varchar, requests_total bigint,
    requests_completed bigint, requests_failed bigint, _dlt_load_id varchar, _dlt_id varchar
);
"""

BATCH_COLUMNS = (
    "id, status, endpoint, completion_window, created_at, in_progress_at, expires_at, "
    "finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at"
)
# times are UTC, March 2025; several cross midnight in UTC+8 (Shanghai) but not in UTC
BATCHES = [
    # queue 10m, processing 1h40m, finalizing 30m; created 22:00 UTC is 06:00 next day UTC+8
    ("b_done_a", "completed", CHAT, "24h",
     "03-10 22:00", "03-10 22:10", "03-11 22:00", "03-10 23:50", "03-11 00:20",
     None, None, None, None),
    # a 72h window, completed exactly at expires_at
    ("b_done_b", "completed", CHAT, "72h",
     "03-10 01:00", "03-10 01:30", "03-13 01:00", "03-13 00:00", "03-13 01:00",
     None, None, None, None),
    # zero queue and zero processing time: no requests_per_second
    ("b_done_c", "completed", CHAT, "24h",
     "03-11 18:00", "03-11 18:00", "03-12 18:00", "03-11 18:00", "03-11 18:30",
     None, None, None, None),
    # completes in the same UTC hour as b_done_late
    ("b_done_d", "completed", CHAT, "24h",
     "03-11 12:00:00", "03-11 12:00:30", "03-12 12:00", "03-11 12:30:30", "03-11 12:40:00",
     None, None, None, None),
    # completed one second after expires_at: missed its window
    ("b_done_late", "completed", CHAT, "24h",
     "03-10 12:00", "03-10 20:00", "03-11 12:00:00", "03-11 11:00", "03-11 12:00:01",
     None, None, None, None),
    # another endpoint, and no request counts at all
    ("b_no_counts", "completed", EMBED, "24h",
     "03-11 09:00", "03-11 09:05", "03-12 09:00", "03-11 10:05", "03-11 10:10",
     None, None, None, None),
    # failed validation, never started; a window nobody can parse
    ("b_failed", "failed", CHAT, "bogus",
     "03-10 23:59", None, "03-11 23:59", None, None,
     "03-11 00:01", None, None, None),
    # expired exactly at expires_at
    ("b_expired", "expired", CHAT, "24h",
     "03-09 08:00", "03-09 10:00", "03-10 08:00", None, None,
     None, "03-10 08:00", None, None),
    ("b_cancelled", "cancelled", CHAT, "336h",
     "03-10 05:00", "03-10 05:10", "03-24 05:00", None, None,
     None, None, "03-10 06:00", "03-10 06:05"),
    ("b_cancelling", "cancelling", CHAT, "24h",
     "03-11 20:00", "03-11 20:30", "03-12 20:00", None, None,
     None, None, "03-11 21:00", None),
    ("b_in_progress", "in_progress", CHAT, "72h",
     "03-11 21:00", "03-11 21:15", "03-14 21:00", None, None,
     None, None, None, None),
    ("b_in_queue", "in_queue", CHAT, "24h",
     "03-11 22:00", None, "03-12 22:00", None, None,
     None, None, None, None),
    # OpenAI's name for the queued state, and a window in days
    ("b_validating", "validating", CHAT, "1d",
     "03-12 00:30", None, "03-13 00:30", None, None,
     None, None, None, None),
    ("b_finalizing", "finalizing", CHAT, "24h",
     "03-11 06:00", "03-11 06:10", "03-12 06:00", "03-11 23:00", None,
     None, None, None, None),
]  # fmt: skip

REQUEST_COUNTS = [
    ("b_done_a", 1000, 990, 10),
    ("b_done_b", 500, 500, 0),
    ("b_done_c", 10, 10, 0),
    ("b_done_d", 360, 360, 0),
    ("b_done_late", 2000, 1800, 200),
    ("b_failed", 0, 0, 0),
    ("b_expired", 100, 40, 5),
    ("b_cancelled", 50, 20, 0),
    ("b_cancelling", 80, 30, 2),
    ("b_in_progress", 200, 50, 1),
    ("b_finalizing", 300, 300, 0),
]

STATUS_HISTORY = [
    ("b_done_a", "03-10 22:05", "in_queue", None, None, None),
    ("b_done_a", "03-11 00:30", "completed", 1000, 990, 10),
    ("b_cancelling", "03-11 20:35", "in_progress", 80, 5, 0),
    ("b_cancelling", "03-11 21:01", "cancelling", 80, 30, 2),
    ("b_in_progress", "03-11 21:00", "in_queue", 200, 0, 0),
    ("b_in_progress", "03-11 21:40", "in_progress", 200, 50, 1),
    ("b_in_progress", "03-11 21:20", "in_progress", 200, 20, 0),
    ("b_in_queue", "03-11 22:00", "in_queue", None, None, None),
]


def utc(moment: str) -> datetime:
    """'03-10 22:00' or '03-10 22:00:30' in March 2025, UTC."""
    text = f"2025-{moment}" + (":00" if moment.count(":") == 1 else "")
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def literal(moment: str | None) -> str | None:
    """A timestamptz literal that means the same instant in any session time zone."""
    return None if moment is None else utc(moment).isoformat()


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(TABLES + RESULT_TABLES_DDL)


def load_batches(con: duckdb.DuckDBPyConnection) -> None:
    """The hand-made batches above, with dlt columns and API extras filled in."""
    for row in BATCHES:
        values = [*row[:4], *(literal(moment) for moment in row[4:])]
        con.execute(
            f"insert into siliconflow.batches ({BATCH_COLUMNS}, object, input_file_id, "
            "model, usage__total_tokens, _dlt_load_id, _dlt_id) "
            f"values ({', '.join('?' * 13)}, 'batch', 'file-1', 'm', 7, 'load', ?)",
            [*values, f"dlt-{row[0]}"],
        )
    con.executemany(
        "insert into siliconflow.batch_request_counts values (?, ?, ?, ?, 'load', 'x')",
        REQUEST_COUNTS,
    )
    con.executemany(
        "insert into siliconflow.batch_status_history values (?, ?, ?, ?, ?, ?, 'load', 'x')",
        [(b, literal(at), *rest) for b, at, *rest in STATUS_HISTORY],
    )


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory warehouse whose session time zone is not UTC."""
    connection = duckdb.connect()
    connection.execute("set TimeZone = 'Asia/Shanghai'")
    yield connection
    connection.close()


@pytest.fixture
def synced(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    create_tables(con)
    load_batches(con)
    build_models(con)
    return con


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def same(actual: object, expected: object) -> bool:
    if isinstance(expected, float) and actual is not None:
        return actual == pytest.approx(expected, rel=1e-12)
    return actual == expected and type(actual) is type(expected)


def assert_row(actual: dict, expected: dict) -> None:
    wrong = {
        name: (actual[name], value)
        for name, value in expected.items()
        if not same(actual[name], value)
    }
    assert not wrong, f"(actual, expected) by column: {wrong}"


# --- batch_turnaround -------------------------------------------------------------------

TURNAROUND_COLUMNS = [
    "status",
    "ended_at",
    "completion_window_seconds",
    "queue_seconds",
    "processing_seconds",
    "finalizing_seconds",
    "turnaround_seconds",
    "met_window",
    "requests_total",
    "requests_completed",
    "requests_failed",
    "requests_per_second",
]
EXPECTED_TURNAROUND = {
    "b_done_a": ("completed", utc("03-11 00:20"), 86400.0, 600.0, 6000.0, 1800.0, 8400.0,
                 True, 1000, 990, 10, 990 / 6000),
    "b_done_b": ("completed", utc("03-13 01:00"), 259200.0, 1800.0, 253800.0, 3600.0,
                 259200.0, True, 500, 500, 0, 500 / 253800),
    "b_done_c": ("completed", utc("03-11 18:30"), 86400.0, 0.0, 0.0, 1800.0, 1800.0,
                 True, 10, 10, 0, None),
    "b_done_d": ("completed", utc("03-11 12:40"), 86400.0, 30.0, 1800.0, 570.0, 2400.0,
                 True, 360, 360, 0, 0.2),
    "b_done_late": ("completed", utc("03-11 12:00:01"), 86400.0, 28800.0, 54000.0, 3601.0,
                    86401.0, False, 2000, 1800, 200, 1800 / 54000),
    "b_no_counts": ("completed", utc("03-11 10:10"), 86400.0, 300.0, 3600.0, 300.0, 4200.0,
                    True, None, None, None, None),
    "b_failed": ("failed", utc("03-11 00:01"), None, None, None, None, 120.0,
                 False, 0, 0, 0, None),
    "b_expired": ("expired", utc("03-10 08:00"), 86400.0, 7200.0, None, None, 86400.0,
                  False, 100, 40, 5, None),
    "b_cancelled": ("cancelled", utc("03-10 06:05"), 1209600.0, 600.0, None, None, 3900.0,
                    False, 50, 20, 0, None),
    "b_cancelling": ("cancelling", None, 86400.0, 1800.0, None, None, None,
                     None, 80, 30, 2, None),
    "b_in_progress": ("in_progress", None, 259200.0, 900.0, None, None, None,
                      None, 200, 50, 1, None),
    "b_in_queue": ("in_queue", None, 86400.0, None, None, None, None,
                   None, None, None, None, None),
    "b_validating": ("validating", None, 86400.0, None, None, None, None,
                     None, None, None, None, None),
    "b_finalizing": ("finalizing", None, 86400.0, 600.0, 60600.0, None, None,
                     None, 300, 300, 0, 300 / 60600),
}  # fmt: skip


def test_batch_turnaround_has_one_row_per_batch_with_the_spec_columns(synced):
    cursor = synced.execute("select * from analytics.batch_turnaround")
    assert [column[0] for column in cursor.description] == [
        "batch_id",
        "endpoint",
        "status",
        "created_at",
        "ended_at",
        "completion_window_seconds",
        "queue_seconds",
        "processing_seconds",
        "finalizing_seconds",
        "turnaround_seconds",
        "met_window",
        "requests_total",
        "requests_completed",
        "requests_failed",
        "requests_per_second",
    ]
    assert sorted(row[0] for row in cursor.fetchall()) == sorted(EXPECTED_TURNAROUND)


@pytest.mark.parametrize("batch_id", sorted(EXPECTED_TURNAROUND))
def test_batch_turnaround_values_match_hand_worked_ones(synced, batch_id):
    (actual,) = rows(
        synced, f"select * from analytics.batch_turnaround where batch_id = '{batch_id}'"
    )
    expected = dict(zip(TURNAROUND_COLUMNS, EXPECTED_TURNAROUND[batch_id], strict=True))
    assert_row(actual, expected)


def test_batch_turnaround_seconds_are_double(synced):
    types = dict(
        synced.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'analytics' and table_name = 'batch_turnaround'"
        ).fetchall()
    )
    for name in TURNAROUND_COLUMNS:
        if name.endswith("_seconds") or name == "requests_per_second":
            assert types[name] == "DOUBLE", name
    assert types["created_at"] == types["ended_at"] == "TIMESTAMP WITH TIME ZONE"


# --- int_batch_lifecycle ----------------------------------------------------------------

LIFECYCLE_COLUMNS = [
    "is_terminal",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "ended_at",
]
EXPECTED_LIFECYCLE = {
    "b_done_a": (True, utc("03-10 22:10"), utc("03-10 23:50"), utc("03-11 00:20"),
                 None, None, None, None, utc("03-11 00:20")),
    "b_failed": (True, None, None, None, utc("03-11 00:01"), None, None, None,
                 utc("03-11 00:01")),
    "b_expired": (True, utc("03-09 10:00"), None, None, None, utc("03-10 08:00"), None, None,
                  utc("03-10 08:00")),
    # cancelling is on the way to cancelled, not an end
    "b_cancelling": (False, utc("03-11 20:30"), None, None, None, None, utc("03-11 21:00"),
                     None, None),
    "b_cancelled": (True, utc("03-10 05:10"), None, None, None, None, utc("03-10 06:00"),
                    utc("03-10 06:05"), utc("03-10 06:05")),
    "b_finalizing": (False, utc("03-11 06:10"), utc("03-11 23:00"), None, None, None, None,
                     None, None),
    "b_validating": (False, None, None, None, None, None, None, None, None),
}  # fmt: skip


@pytest.mark.parametrize("batch_id", sorted(EXPECTED_LIFECYCLE))
def test_batch_lifecycle_carries_every_event_and_when_a_terminal_batch_ended(synced, batch_id):
    (actual,) = rows(
        synced, f"select * from analytics.int_batch_lifecycle where batch_id = '{batch_id}'"
    )
    assert_row(actual, dict(zip(LIFECYCLE_COLUMNS, EXPECTED_LIFECYCLE[batch_id], strict=True)))


# --- daily_turnaround -------------------------------------------------------------------

DAILY_TURNAROUND_COLUMNS = [
    "created_date",
    "endpoint",
    "batches",
    "completed",
    "failed",
    "expired",
    "cancelled",
    "in_flight",
    "turnaround_p50_s",
    "turnaround_p90_s",
    "turnaround_p99_s",
    "queue_p50_s",
    "queue_p90_s",
    "window_met_rate",
]
EXPECTED_DAILY_TURNAROUND = [
    (date(2025, 3, 9), CHAT, 1, 0, 0, 1, 0, 0, None, None, None, 7200.0, 7200.0, 0.0),
    # completed turnarounds 8400, 86401, 259200; queues 600, 600, 1800, 28800 (failed none)
    (date(2025, 3, 10), CHAT, 5, 3, 1, 0, 1, 0,
     86401.0, 86401 + 0.8 * 172799, 86401 + 0.98 * 172799,
     1200.0, 1800 + 0.7 * 27000, 2 / 5),
    # completed 1800, 2400; queues 0, 30, 600, 900, 1800 (in_queue none)
    (date(2025, 3, 11), CHAT, 6, 2, 0, 0, 0, 4,
     2100.0, 2340.0, 2394.0, 600.0, 900 + 0.6 * 900, 1.0),
    (date(2025, 3, 11), EMBED, 1, 1, 0, 0, 0, 0, 4200.0, 4200.0, 4200.0, 300.0, 300.0, 1.0),
    (date(2025, 3, 12), CHAT, 1, 0, 0, 0, 0, 1, None, None, None, None, None, None),
]  # fmt: skip


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Kolkata", "America/New_York"])
def test_daily_turnaround_per_utc_day_whatever_the_session_time_zone(synced, zone):
    synced.execute(f"set TimeZone = '{zone}'")
    actual = rows(
        synced, "select * from analytics.daily_turnaround order by created_date, endpoint"
    )
    assert [list(row) for row in actual] == [DAILY_TURNAROUND_COLUMNS] * len(actual)
    assert len(actual) == len(EXPECTED_DAILY_TURNAROUND)
    for row, expected in zip(actual, EXPECTED_DAILY_TURNAROUND, strict=True):
        assert_row(row, dict(zip(DAILY_TURNAROUND_COLUMNS, expected, strict=True)))


# --- hourly_throughput and daily_throughput ---------------------------------------------

HOURLY_COLUMNS = [
    "hour",
    "endpoint",
    "batches_completed",
    "requests_completed",
    "requests_failed",
    "requests_per_second",
]
EXPECTED_HOURLY = [
    (utc("03-11 00:00"), CHAT, 1, 990, 10, 990 / 3600),
    (utc("03-11 10:00"), EMBED, 1, None, None, None),
    (utc("03-11 12:00"), CHAT, 2, 2160, 200, 0.6),
    (utc("03-11 18:00"), CHAT, 1, 10, 0, 10 / 3600),
    (utc("03-13 01:00"), CHAT, 1, 500, 0, 500 / 3600),
]


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Kolkata", "America/New_York"])
def test_hourly_throughput_counts_completed_batches_per_utc_hour(synced, zone):
    synced.execute(f"set TimeZone = '{zone}'")
    actual = rows(synced, "select * from analytics.hourly_throughput order by hour, endpoint")
    assert [list(row) for row in actual] == [HOURLY_COLUMNS] * len(actual)
    assert len(actual) == len(EXPECTED_HOURLY)
    for row, expected in zip(actual, EXPECTED_HOURLY, strict=True):
        assert_row(row, dict(zip(HOURLY_COLUMNS, expected, strict=True)))


DAILY_THROUGHPUT_COLUMNS = [
    "completed_date",
    "endpoint",
    "batches_completed",
    "requests_completed",
    "requests_failed",
    "request_failure_rate",
    "batch_rps_p50",
]
EXPECTED_DAILY_THROUGHPUT = [
    # b_done_a, b_done_c, b_done_d, b_done_late; rps 0.165, none, 0.2, 1/30 -> median 0.165
    (date(2025, 3, 11), CHAT, 4, 3160, 210, 210 / 3370, 0.165),
    (date(2025, 3, 11), EMBED, 1, None, None, None, None),
    (date(2025, 3, 13), CHAT, 1, 500, 0, 0.0, 500 / 253800),
]


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Kolkata", "America/New_York"])
def test_daily_throughput_counts_completed_batches_per_utc_day(synced, zone):
    synced.execute(f"set TimeZone = '{zone}'")
    actual = rows(
        synced, "select * from analytics.daily_throughput order by completed_date, endpoint"
    )
    assert [list(row) for row in actual] == [DAILY_THROUGHPUT_COLUMNS] * len(actual)
    assert len(actual) == len(EXPECTED_DAILY_THROUGHPUT)
    for row, expected in zip(actual, EXPECTED_DAILY_THROUGHPUT, strict=True):
        assert_row(row, dict(zip(DAILY_THROUGHPUT_COLUMNS, expected, strict=True)))


# --- status_counts and open_batches -----------------------------------------------------


def test_status_counts_counts_every_status_that_occurs(synced):
    actual = synced.execute("select status, batches from analytics.status_counts").fetchall()
    assert sorted(actual) == [
        ("cancelled", 1),
        ("cancelling", 1),
        ("completed", 6),
        ("expired", 1),
        ("failed", 1),
        ("finalizing", 1),
        ("in_progress", 1),
        ("in_queue", 1),
        ("validating", 1),
    ]


EXPECTED_OPEN = {
    # latest of three observations (taken out of order), not the 20 seen at 21:20
    "b_in_progress": ("in_progress", 200, 50, 1, 0.25, utc("03-11 21:40")),
    "b_cancelling": ("cancelling", 80, 30, 2, 0.375, utc("03-11 21:01")),
    "b_in_queue": ("in_queue", None, None, None, None, utc("03-11 22:00")),
    "b_validating": ("validating", None, None, None, None, None),
    # never observed: the counts on the batch itself
    "b_finalizing": ("finalizing", 300, 300, 0, 1.0, None),
}
OPEN_COLUMNS = [
    "status",
    "requests_total",
    "requests_completed",
    "requests_failed",
    "progress",
    "last_observed_at",
]


def test_open_batches_lists_non_terminal_batches_with_latest_counts(synced):
    actual = {row["batch_id"]: row for row in rows(synced, "select * from analytics.open_batches")}
    assert sorted(actual) == sorted(EXPECTED_OPEN)
    for batch_id, expected in EXPECTED_OPEN.items():
        assert_row(actual[batch_id], dict(zip(OPEN_COLUMNS, expected, strict=True)))


def test_open_batches_age_is_seconds_since_creation(synced):
    ages = dict(
        synced.execute("select batch_id, age_seconds from analytics.open_batches").fetchall()
    )
    now = time.time()
    assert ages["b_finalizing"] == pytest.approx(now - utc("03-11 06:00").timestamp(), abs=60)
    assert ages["b_validating"] - ages["b_in_queue"] == pytest.approx(-2.5 * 3600)


# --- edge cases of the data -------------------------------------------------------------

ALL_VIEWS = [
    "batch_turnaround",
    "daily_turnaround",
    "hourly_throughput",
    "daily_throughput",
    "status_counts",
    "open_batches",
]


# One output file and one error file of b_done_a: (line, kind, status_code, error_code,
# error_message, failed?) as SPEC 4 counts a failed request.
REQUEST_LINES = [
    (1, "output", 200, None, None, False),
    (2, "output", None, None, None, False),  # SiliconFlow's shape: no status, no error
    (3, "output", 200, None, "Internal error: upstream closed", True),  # an error as text
    (4, "output", None, "rate_limited", None, True),
    (5, "output", 500, None, None, True),
    (6, "output", 429, "50603", "rate limited", True),
    (1, "error", 400, "20012", "bad request", True),
    (2, "error", None, None, None, True),  # an error-file line fails whatever it holds
]


def test_a_request_fails_with_an_error_code_or_message_a_non_2xx_status_or_in_the_error_file(
    synced,
):
    synced.execute(
        "insert into siliconflow.batch_files (batch_id, kind, state) "
        "values ('b_done_a', 'output', 'loaded'), ('b_done_a', 'error', 'loaded')"
    )
    synced.executemany(
        "insert into siliconflow.batch_requests (batch_id, line, kind, status_code, error_code, "
        "error_message) values ('b_done_a', ?, ?, ?, ?, ?)",
        [line[:5] for line in REQUEST_LINES],
    )
    failed = synced.execute(
        "select line, kind, is_failed from analytics.stg_batch_requests"
    ).fetchall()
    assert sorted(failed) == sorted((line[0], line[1], line[5]) for line in REQUEST_LINES)
    usage = rows(
        synced,
        "select requests, requests_succeeded, requests_failed from analytics.batch_usage "
        "where batch_id = 'b_done_a'",
    )
    assert usage == [{"requests": 8, "requests_succeeded": 2, "requests_failed": 6}]


# Rows appended to the shipped prices: DeepSeek-V3 again in other case with a later date, and a
# model listed twice on one date at two prices.
PRICE_EDITS = """\
 DEEPSEEK-AI/deepseek-v3 ,3.00,12.00,cny,an edit,2099-01-01
some/model,1.00,2.00,USD,first,2026-01-01
some/model,1.50,1.00,USD,second,2026-01-01
"""


def test_a_model_priced_twice_or_in_another_case_has_one_price(synced, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    with open(sql_dir / "seeds" / "model_prices.csv", "a") as csv:
        csv.write(PRICE_EDITS)
    synced.execute(
        "insert into siliconflow.batch_files (batch_id, kind, state) "
        "values ('b_done_a', 'output', 'loaded'), ('b_done_b', 'output', 'loaded')"
    )
    synced.executemany(
        "insert into siliconflow.batch_requests (batch_id, kind, line, model, prompt_tokens, "
        "completion_tokens) values (?, 'output', 1, ?, 1000000, 1000000)",
        [("b_done_a", "deepseek-ai/DeepSeek-V3"), ("b_done_b", "Some/Model")],
    )
    build_models(synced, sql_dir=sql_dir)
    prices = rows(
        synced,
        "select model, input_per_million, output_per_million, currency from "
        "analytics.model_prices where lower(model) in ('deepseek-ai/deepseek-v3', 'some/model') "
        "order by model",
    )
    assert prices == [
        {
            "model": "DEEPSEEK-AI/deepseek-v3",
            "input_per_million": 3.0,
            "output_per_million": 12.0,
            "currency": "CNY",
        },
        {
            "model": "some/model",
            "input_per_million": 1.5,
            "output_per_million": 1.0,
            "currency": "USD",
        },
    ]
    usage = rows(
        synced,
        "select batch_id, estimated_cost, currency from analytics.batch_usage order by batch_id",
    )
    # one million tokens each way: 3 + 12 CNY, and 1.5 + 1 USD
    assert usage == [
        {"batch_id": "b_done_a", "estimated_cost": 15.0, "currency": "CNY"},
        {"batch_id": "b_done_b", "estimated_cost": 2.5, "currency": "USD"},
    ]


def test_empty_tables_give_empty_views(con):
    create_tables(con)
    build_models(con)
    for view in ALL_VIEWS:
        assert con.execute(f"select count(*) from analytics.{view}").fetchone() == (0,), view


def test_only_in_flight_batches_have_no_turnaround_and_no_throughput(con):
    create_tables(con)
    con.execute(
        "insert into siliconflow.batches (id, status, endpoint, completion_window, created_at, "
        "in_progress_at) values "
        "('q', 'in_queue', ?, '24h', ?, null), ('p', 'in_progress', ?, '24h', ?, ?)",
        [CHAT, literal("03-11 10:00"), CHAT, literal("03-11 11:00"), literal("03-11 11:30")],
    )
    build_models(con)
    (day,) = rows(con, "select * from analytics.daily_turnaround")
    assert_row(
        day,
        {
            "created_date": date(2025, 3, 11),
            "batches": 2,
            "in_flight": 2,
            "completed": 0,
            "turnaround_p50_s": None,
            "queue_p50_s": 1800.0,
            "window_met_rate": None,
        },
    )
    assert con.execute("select count(*) from analytics.hourly_throughput").fetchone() == (0,)
    assert con.execute("select count(*) from analytics.open_batches").fetchone() == (2,)


def test_events_no_batch_has_reached_read_as_null(con):
    # the sync creates every column from the first sync on, so an account whose only batch is
    # queued has empty columns (not missing ones) for the events still to come
    create_tables(con)
    con.execute(
        "insert into siliconflow.batches (id, endpoint, status, completion_window, created_at)"
        " values ('q', '/v1/chat/completions', 'in_queue', '24h', '2025-03-11 10:00:00+00');"
        "insert into siliconflow.batch_request_counts (batch_id, total) values ('q', 5)"
    )
    build_models(con)
    (row,) = rows(con, "select * from analytics.open_batches")
    assert_row(row, {"batch_id": "q", "requests_total": 5, "requests_completed": None})
    (row,) = rows(con, "select * from analytics.batch_turnaround")
    assert_row(row, {"ended_at": None, "queue_seconds": None, "met_window": None})


def test_a_first_sync_of_an_empty_account_builds_every_view_empty(tmp_path, monkeypatch):
    # the tables exactly as the sync creates them when the API lists no batch at all: the
    # staging models read them as they are, with nothing supplying missing columns
    db_path = tmp_path / "empty.duckdb"
    with Simulator(World(batches=0, seed=1, now=1_764_000_000)) as sim:
        monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        monkeypatch.setenv("SILICONFLOW_API_KEY", sim.api_key)
        assert cli.main(["sync", "--db", str(db_path), "--no-models"]) == 0
    assert "int_batch_lifecycle" in build_models_at(db_path)
    with duckdb.connect(str(db_path), read_only=True) as connection:
        for view in ["int_batch_lifecycle", *ALL_VIEWS]:
            count = connection.execute(f"select count(*) from analytics.{view}").fetchone()
            assert count == (0,), view


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("24h", 86400.0),
        ("72h", 259200.0),
        ("336h", 1209600.0),
        (" 48H ", 172800.0),
        ("1d", 86400.0),
        ("90m", 5400.0),
        ("1.5h", 5400.0),
        ("24", None),
        ("", None),
        (None, None),
        ("soon", None),
    ],
)
def test_completion_window_is_parsed_to_seconds(con, window, seconds):
    create_tables(con)
    con.execute("insert into siliconflow.batches (id, completion_window) values ('b', ?)", [window])
    build_models(con)
    (actual,) = con.execute(
        "select completion_window_seconds from analytics.batch_turnaround"
    ).fetchone()
    assert actual == seconds


# --- the runner -------------------------------------------------------------------------


def test_build_models_builds_staging_then_intermediate_then_marts_in_dependency_order(con):
    create_tables(con)
    assert build_models(con) == [
        "seed_model_prices",
        "stg_batch_files",
        "stg_batch_request_counts",
        "stg_batch_requests",
        "stg_batch_status_history",
        "stg_batches",
        "int_batch_lifecycle",
        "batch_turnaround",
        "daily_throughput",
        "daily_turnaround",
        "hourly_throughput",
        "model_prices",
        # batch_usage reads model_prices, and daily_usage batch_usage
        "batch_usage",
        "daily_usage",
        "open_batches",
        "status_counts",
    ]


def test_marts_read_batches_through_the_lifecycle_model_not_staging():
    models = discover_models(default_sql_dir())
    marts = [model for model in models if model.label.startswith("sql/marts/")]
    assert {model.name for model in marts} >= set(ALL_VIEWS)
    for model in marts:
        assert not model.depends_on & {"stg_batches", "stg_batch_request_counts"}, model.label
        assert not model.sources, f"{model.label} reads synced tables directly"


def test_build_models_can_run_again(synced):
    build_models(synced)
    assert synced.execute("select count(*) from analytics.batch_turnaround").fetchone() == (14,)


def test_build_models_without_synced_tables_says_to_sync_first(con):
    with pytest.raises(ModelError, match=r"^no synced data: run `sfbatches sync` first$"):
        build_models(con)
    assert con.execute(
        "select count(*) from duckdb_views() where schema_name = 'analytics'"
    ).fetchone() == (0,)


def test_build_models_names_a_missing_child_table(con):
    con.execute("create schema siliconflow; create table siliconflow.batches (id varchar)")
    with pytest.raises(ModelError, match=r"siliconflow\.batch_\w+, which is missing: run"):
        build_models(con)


def write_sql(root: Path, files: dict[str, str]) -> Path:
    """A sql/ folder holding `files` (relative path -> text); returns the folder."""
    sql_dir = root / "sql"
    for name, text in files.items():
        path = sql_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sql_dir


def view(name: str, body: str) -> str:
    return f"create or replace view analytics.{name} as\n{body}\n"


def test_files_are_ordered_by_their_references_then_by_layer_and_path(con, tmp_path):
    create_tables(con)
    sql_dir = write_sql(
        tmp_path,
        {
            "marts/a_summary.sql": view("a_summary", "select * from analytics.z_base"),
            "marts/z_base.sql": view("z_base", "select * from analytics.stg_b"),
            "staging/stg_b.sql": view("stg_b", "select * from analytics.stg_c"),
            "staging/stg_c.sql": view("stg_c", "select id from siliconflow.batches"),
            # a reference inside a comment is not a dependency
            "marts/m_other.sql": "-- unlike analytics.a_summary\n" + view("m_other", "select 1"),
        },
    )
    assert build_models(con, sql_dir=sql_dir) == [
        "stg_c",
        "stg_b",
        "m_other",
        "z_base",
        "a_summary",
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {
                "marts/a.sql": view("a", "select * from analytics.b"),
                "marts/b.sql": view("b", "select * from analytics.a"),
            },
            r"^circular references between sql/marts/a\.sql, sql/marts/b\.sql$",
        ),
        (
            {"marts/a.sql": view("a", "select * from analytics.nowhere")},
            r"^sql/marts/a\.sql reads analytics\.nowhere, which no sql file defines$",
        ),
        (
            {"marts/a.sql": view("not_a", "select 1")},
            r"^sql/marts/a\.sql must hold exactly one `create or replace view analytics\.a`$",
        ),
    ],
)
def test_inconsistent_files_are_refused_before_anything_runs(con, tmp_path, files, message):
    create_tables(con)
    with pytest.raises(ModelError, match=message):
        build_models(con, sql_dir=write_sql(tmp_path, files))


def test_a_failing_file_is_named_with_its_line_and_nothing_changes(con, tmp_path):
    create_tables(con)
    first = write_sql(tmp_path / "first", {"staging/stg_a.sql": view("stg_a", "select 1 as v")})
    build_models(con, sql_dir=first)
    broken = write_sql(
        tmp_path / "second",
        {
            "staging/stg_a.sql": view("stg_a", "select 2 as v"),
            "staging/stg_new.sql": view("stg_new", "select 3 as v"),
            "marts/broken.sql": (
                "-- reads a column that does not exist\n"
                "create or replace view analytics.broken as\n"
                "\n"
                "select\n"
                "    v,\n"
                "    no_such_column\n"
                "from analytics.stg_a\n"
            ),
        },
    )
    with pytest.raises(ModelError) as raised:
        build_models(con, sql_dir=broken)
    assert str(raised.value).startswith("sql/marts/broken.sql:6: Binder Error:")
    assert (raised.value.path, raised.value.line) == ("sql/marts/broken.sql", 6)
    assert con.execute("select v from analytics.stg_a").fetchone() == (1,)
    names = con.execute("select view_name from duckdb_views() where schema_name = 'analytics'")
    assert names.fetchall() == [("stg_a",)]


def test_build_models_at_builds_into_the_file(tmp_path):
    db_path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(db_path)) as connection:
        create_tables(connection)
        load_batches(connection)
    assert "open_batches" in build_models_at(str(db_path))
    with duckdb.connect(str(db_path)) as connection:
        count = connection.execute("select count(*) from analytics.open_batches").fetchone()
    assert count == (5,)


def test_build_models_at_a_missing_file_creates_nothing(tmp_path):
    db_path = tmp_path / "nothing.duckdb"
    with pytest.raises(ConfigError, match="not found: run `sfbatches sync` first"):
        build_models_at(db_path)
    assert not db_path.exists()


def test_a_database_held_by_another_process_is_reported_busy(tmp_path):
    db_path = tmp_path / "held.duckdb"
    duckdb.connect(str(db_path)).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(db_path)!r})\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        busy = pytest.raises(DatabaseBusy, match="locked by another process")
        with busy, open_database(db_path, wait_s=0.3):
            pass
    finally:
        holder.communicate("")
