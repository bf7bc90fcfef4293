"""Every analytics view against SPEC §4 worked out in plain Python from the simulator's truth.

A world of 3,000 batches is synced through the CLI (which also builds the views); the views are
then read in a non-UTC session time zone and compared, row for row and column for column, with
values computed directly from the API objects (`World.visible()`), never from the SQL. Each
check runs twice: after a first full sync, and after the clock moved on and a second sync.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines import cli
from pipelines.simulator import Simulator, World

# a fixed world clock (as conftest's START): results do not depend on the day the tests run
WORLD_NOW = 1_764_000_000
MOVED_ON_HOURS = 6
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ENDED_AT_FIELDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
REQUESTS_PER_HOUR = 3600

Row = dict[str, Any]


# --- the synced warehouses ------------------------------------------------------------------


@dataclass
class Warehouse:
    """A database synced from a world, and what the API listed at that sync."""

    db_path: Path
    api: list[dict[str, Any]]
    earlier_api: list[dict[str, Any]] | None = None  # the first sync's truth, if synced twice


def sync(sim: Simulator, db_path: Path) -> None:
    """`sfbatches sync --db PATH` against the simulator, as the `run` fixture does it."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith(("SOURCES__", "SILICONFLOW_", "SFBATCHES_")):
                env.delenv(name)
        env.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        env.setenv("SILICONFLOW_API_KEY", sim.api_key)
        assert cli.main(["sync", "--no-results", "--db", str(db_path)]) == 0


@pytest.fixture(scope="module", params=["after one sync", "after the clock moved on"])
def warehouse(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Warehouse]:
    """Synced once (module-wide, a sync of 3,000 batches takes seconds), or twice with hours
    of batch progress in between."""
    world = World(batches=3000, seed=5, now=WORLD_NOW)
    db_path = tmp_path_factory.mktemp("analytics") / "warehouse.duckdb"
    with Simulator(world) as sim:
        sync(sim, db_path)
        if request.param == "after one sync":
            yield Warehouse(db_path, world.visible())
            return
        earlier = world.visible()
        world.advance(MOVED_ON_HOURS * 3600)
        sync(sim, db_path)
        yield Warehouse(db_path, world.visible(), earlier_api=earlier)


def read_view(db_path: Path, view: str) -> list[Row]:
    """All rows of analytics.VIEW as dicts, read in a session time zone that is not UTC."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.execute("set TimeZone = 'Asia/Shanghai'")
        cursor = con.execute(f"select * from analytics.{view}")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- plain-Python building blocks -----------------------------------------------------------


def instant(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def utc_date(seconds: int) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def utc_hour(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(minute=0, second=0, microsecond=0)


def seconds_between(later: int | None, earlier: int | None) -> float | None:
    return None if later is None or earlier is None else float(later - earlier)


def window_seconds(window: str | None) -> float | None:
    """'24h' -> 86400.0; None when the window cannot be read."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z])\s*", (window or "").lower())
    if not match or match[2] not in WINDOW_UNITS:
        return None
    return float(match[1]) * WINDOW_UNITS[match[2]]


def quantile_linear(values: Iterable[float | None], q: float) -> float | None:
    """quantile_cont: linear interpolation between the closest ranks; nulls are skipped."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def sum_or_none(values: Iterable[int | None]) -> int | None:
    """SQL sum: nulls skipped, null when nothing is left."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def counts_of(batch: dict[str, Any]) -> dict[str, int]:
    """request_counts as a dict: null and {} both mean no counts."""
    return batch.get("request_counts") or {}


# --- expected views, straight from SPEC §4 --------------------------------------------------


def expected_batch_turnaround(api: list[dict[str, Any]]) -> dict[str, Row]:
    rows = {}
    for b in api:
        terminal = b["status"] in TERMINAL
        ended_at = next((b[f] for f in ENDED_AT_FIELDS if b[f] is not None), None)
        ended_at = ended_at if terminal else None
        processing = seconds_between(b["finalizing_at"], b["in_progress_at"])
        counts = counts_of(b)
        completed = counts.get("completed")
        if terminal:
            met_window = b["status"] == "completed" and b["completed_at"] <= b["expires_at"]
        else:
            met_window = None
        rows[b["id"]] = {
            "batch_id": b["id"],
            "endpoint": b["endpoint"],
            "status": b["status"],
            "created_at": instant(b["created_at"]),
            "ended_at": instant(ended_at),
            "completion_window_seconds": window_seconds(b["completion_window"]),
            "queue_seconds": seconds_between(b["in_progress_at"], b["created_at"]),
            "processing_seconds": processing,
            "finalizing_seconds": seconds_between(b["completed_at"], b["finalizing_at"]),
            "turnaround_seconds": seconds_between(ended_at, b["created_at"]),
            "met_window": met_window,
            "requests_total": counts.get("total"),
            "requests_completed": completed,
            "requests_failed": counts.get("failed"),
            "requests_per_second": (
                completed / processing
                if completed is not None and processing is not None and processing > 0
                else None
            ),
        }
    return rows


def expected_daily_turnaround(api: list[dict[str, Any]]) -> dict[tuple, Row]:
    turnaround = expected_batch_turnaround(api)
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for b in api:
        groups[(utc_date(b["created_at"]), b["endpoint"])].append(turnaround[b["id"]])
    rows = {}
    for (created_date, endpoint), group in groups.items():
        statuses = Counter(row["status"] for row in group)
        done = [row["turnaround_seconds"] for row in group if row["status"] == "completed"]
        queued = [row["queue_seconds"] for row in group]  # null unless in_progress_at is set
        terminal = sum(statuses[s] for s in TERMINAL)
        rows[(created_date, endpoint)] = {
            "created_date": created_date,
            "endpoint": endpoint,
            "batches": len(group),
            "completed": statuses["completed"],
            "failed": statuses["failed"],
            "expired": statuses["expired"],
            "cancelled": statuses["cancelled"],
            "in_flight": len(group) - terminal,
            "turnaround_p50_s": quantile_linear(done, 0.5),
            "turnaround_p90_s": quantile_linear(done, 0.9),
            "turnaround_p99_s": quantile_linear(done, 0.99),
            "queue_p50_s": quantile_linear(queued, 0.5),
            "queue_p90_s": quantile_linear(queued, 0.9),
            "window_met_rate": ratio(sum(row["met_window"] is True for row in group), terminal),
        }
    return rows


def completed_batches_by(
    api: list[dict[str, Any]], period: Callable[[int], Any]
) -> dict[tuple, list[dict[str, Any]]]:
    """Completed batches grouped by (period of completed_at, endpoint)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for b in api:
        if b["status"] == "completed":
            groups[(period(b["completed_at"]), b["endpoint"])].append(b)
    return groups


def expected_hourly_throughput(api: list[dict[str, Any]]) -> dict[tuple, Row]:
    rows = {}
    for (hour, endpoint), group in completed_batches_by(api, utc_hour).items():
        completed = sum_or_none(counts_of(b).get("completed") for b in group)
        rows[(hour, endpoint)] = {
            "hour": hour,
            "endpoint": endpoint,
            "batches_completed": len(group),
            "requests_completed": completed,
            "requests_failed": sum_or_none(counts_of(b).get("failed") for b in group),
            "requests_per_second": ratio(completed, REQUESTS_PER_HOUR),
        }
    return rows


def expected_daily_throughput(api: list[dict[str, Any]]) -> dict[tuple, Row]:
    turnaround = expected_batch_turnaround(api)
    rows = {}
    for (completed_date, endpoint), group in completed_batches_by(api, utc_date).items():
        completed = sum_or_none(counts_of(b).get("completed") for b in group)
        failed = sum_or_none(counts_of(b).get("failed") for b in group)
        both = None if completed is None or failed is None else completed + failed
        rates = [turnaround[b["id"]]["requests_per_second"] for b in group]
        rows[(completed_date, endpoint)] = {
            "completed_date": completed_date,
            "endpoint": endpoint,
            "batches_completed": len(group),
            "requests_completed": completed,
            "requests_failed": failed,
            "request_failure_rate": ratio(failed, both),
            "batch_rps_p50": quantile_linear(rates, 0.5),
        }
    return rows


def expected_status_counts(api: list[dict[str, Any]]) -> dict[str, Row]:
    return {
        status: {"status": status, "batches": n}
        for status, n in Counter(b["status"] for b in api).items()
    }


def expected_open_batches(api: list[dict[str, Any]]) -> dict[str, Row]:
    """Everything but age_seconds and last_observed_at, which follow the real clock."""
    rows = {}
    for b in api:
        if b["status"] in TERMINAL:
            continue
        counts = counts_of(b)
        rows[b["id"]] = {
            "batch_id": b["id"],
            "endpoint": b["endpoint"],
            "status": b["status"],
            "created_at": instant(b["created_at"]),
            "in_progress_at": instant(b["in_progress_at"]),
            "requests_total": counts.get("total"),
            "requests_completed": counts.get("completed"),
            "requests_failed": counts.get("failed"),
            "progress": ratio(counts.get("completed"), counts.get("total")),
        }
    return rows


# --- comparing ------------------------------------------------------------------------------


def same(actual: Any, expected: Any) -> bool:
    """Equal as the SPEC means it: null is only null, booleans only booleans, floats close,
    instants equal in UTC."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, float) or isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(actual, datetime) and isinstance(expected, datetime):
        return actual.tzinfo is not None and actual.astimezone(UTC) == expected
    return type(actual) is type(expected) and actual == expected


def assert_view_matches(
    actual_rows: list[Row], expected: dict[Any, Row], key: Callable[[Row], Any]
) -> None:
    """Same keys, no key twice, and every expected column equal in every row."""
    actual = {key(row): row for row in actual_rows}
    assert len(actual) == len(actual_rows), "a key appears twice in the view"
    assert not actual.keys() - expected.keys(), f"unexpected rows: {actual.keys() - expected}"
    assert not expected.keys() - actual.keys(), f"missing rows: {expected.keys() - actual}"
    mismatches = [
        f"{k} {column}: view has {actual[k][column]!r}, expected {value!r}"
        for k, row in expected.items()
        for column, value in row.items()
        if not same(actual[k][column], value)
    ]
    assert not mismatches, f"{len(mismatches)} mismatches, first ones:\n" + "\n".join(
        mismatches[:10]
    )


# --- the views ------------------------------------------------------------------------------


# (view, expected rows from the API objects, the key a row is matched on)
VIEWS_WITH_SPEC_COLUMNS = [
    # one row per batch with SPEC's durations and rates
    ("batch_turnaround", expected_batch_turnaround, lambda row: row["batch_id"]),
    # outcomes and quantiles per UTC creation day
    (
        "daily_turnaround",
        expected_daily_turnaround,
        lambda row: (row["created_date"], row["endpoint"]),
    ),
    # completed batches summed per UTC hour of completion
    (
        "hourly_throughput",
        expected_hourly_throughput,
        lambda row: (row["hour"].astimezone(UTC), row["endpoint"]),
    ),
    # completed batches summed per UTC day of completion
    (
        "daily_throughput",
        expected_daily_throughput,
        lambda row: (row["completed_date"], row["endpoint"]),
    ),
]


@pytest.mark.parametrize(
    ("view", "expected_rows", "key"),
    VIEWS_WITH_SPEC_COLUMNS,
    ids=[view for view, _, _ in VIEWS_WITH_SPEC_COLUMNS],
)
def test_view_has_spec_columns_and_the_rows_worked_out_from_the_api(
    warehouse, view, expected_rows, key
):
    rows = read_view(warehouse.db_path, view)
    expected = expected_rows(warehouse.api)
    assert set(rows[0]) == set(next(iter(expected.values()))), "columns as in SPEC §4"
    assert_view_matches(rows, expected, key=key)


def test_status_counts_count_batches_in_each_current_status(warehouse):
    rows = read_view(warehouse.db_path, "status_counts")
    assert_view_matches(rows, expected_status_counts(warehouse.api), key=lambda r: r["status"])


def test_open_batches_are_the_non_terminal_ones_with_latest_counts_and_progress(warehouse):
    rows = read_view(warehouse.db_path, "open_batches")
    expected = expected_open_batches(warehouse.api)
    assert expected, "the world has open batches to check"
    assert_view_matches(rows, expected, key=lambda row: row["batch_id"])
    assert all(row["last_observed_at"] is not None for row in rows), "every one was observed"


def test_open_batches_age_is_seconds_since_creation_on_the_real_clock(warehouse):
    before = time.time()
    rows = read_view(warehouse.db_path, "open_batches")
    after = time.time()
    for row in rows:
        created = row["created_at"].timestamp()
        assert before - created - 1 <= row["age_seconds"] <= after - created + 1, row["batch_id"]


@pytest.mark.parametrize("warehouse", ["after the clock moved on"], indirect=True)
def test_second_sync_shows_the_batches_that_moved_on(warehouse):
    before = {b["id"]: b["status"] for b in warehouse.earlier_api or []}
    moved = {
        b["id"]: b["status"]
        for b in warehouse.api
        if b["id"] in before and before[b["id"]] != b["status"]
    }
    assert moved, "the clock moved far enough for some batches to change status"
    turnaround = {r["batch_id"]: r for r in read_view(warehouse.db_path, "batch_turnaround")}
    assert {i: turnaround[i]["status"] for i in moved} == moved
    statuses = {r["status"]: r["batches"] for r in read_view(warehouse.db_path, "status_counts")}
    assert statuses != dict(Counter(before.values())), "status counts moved on as well"
