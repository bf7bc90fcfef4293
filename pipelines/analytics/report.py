"""Terminal summary of batch turnaround and throughput, read from the analytics views."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb

from pipelines.errors import ReportError
from pipelines.warehouse.database import open_database

WIDTH = 80
OPEN_SHOWN = 5
ID_WIDTH = 32
# statuses in the order a batch lives through them; others follow alphabetically
LIFECYCLE = (
    "in_queue",
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)

_CREATED = """
    select
        count(*) filter (where status = 'completed'),
        quantile_cont(turnaround_seconds, 0.5) filter (where status = 'completed'),
        quantile_cont(turnaround_seconds, 0.9) filter (where status = 'completed'),
        count(queue_seconds),
        quantile_cont(queue_seconds, 0.5),
        quantile_cont(queue_seconds, 0.9),
        count(*) filter (where met_window),
        -- met_window is null exactly while a batch is not terminal (SPEC 4)
        count(met_window)
    from analytics.batch_turnaround
    where cast(timezone('UTC', created_at) as date) between ? and ?
"""

_STATUSES = """
    select
        status,
        count(*)
    from analytics.batch_turnaround
    where cast(timezone('UTC', created_at) as date) between ? and ?
    group by status
"""

_COMPLETED = """
    select
        count(*),
        sum(requests_completed),
        sum(requests_failed),
        median(requests_per_second)
    from analytics.batch_turnaround
    where status = 'completed'
        and cast(timezone('UTC', ended_at) as date) between ? and ?
"""

_OPEN = """
    select
        batch_id,
        status,
        epoch(created_at),
        requests_total,
        requests_completed
    from analytics.open_batches
    order by created_at, batch_id
"""


@dataclass(frozen=True)
class Window:
    """The UTC days the report covers: `days` days ending with the day of `now`."""

    first: date
    last: date
    now: datetime

    @property
    def seconds(self) -> float:
        start = datetime.combine(self.first, time(0), UTC)
        return max((self.now - start).total_seconds(), 1.0)


def render_report(
    con: duckdb.DuckDBPyConnection, days: int = 7, now: datetime | None = None
) -> str:
    """The summary as text, no line over 80 characters; `now` defaults to the current time."""
    if days < 1:
        raise ValueError("days must be at least 1")
    now = as_utc(now)
    last = now.date()
    window = Window(first=last - timedelta(days=days - 1), last=last, now=now)
    try:
        lines = report_lines(con, window, days)
    except duckdb.CatalogException as error:
        raise ReportError("analytics views not found: run `sfbatches models` first") from error
    return "\n".join(lines) + "\n"


def render_report_at(db_path: str | Path, days: int = 7, now: datetime | None = None) -> str:
    """Open the DuckDB file at `db_path` read-only and render the report from it."""
    with open_database(db_path, read_only=True) as con:
        return render_report(con, days, now)


def report_lines(con: duckdb.DuckDBPyConnection, window: Window, days: int) -> list[str]:
    """Every line of the report, in order."""
    (total,) = fetch_one(con, "select coalesce(sum(batches), 0) from analytics.status_counts")
    if not total:
        return ["sfbatches report: no batches yet"]
    span = f"{window.first.isoformat()} to {window.last.isoformat()}"
    plural = "day" if days == 1 else "days"
    lines = [f"sfbatches report: last {days} {plural}, {span} (UTC)", ""]
    lines += created_lines(con, window)
    lines += completed_lines(con, window)
    lines += ["", *open_lines(con, window.now)]
    return lines


def created_lines(con: duckdb.DuckDBPyConnection, window: Window) -> list[str]:
    """Statuses, turnaround, queue wait and window met for batches created in the window."""
    days = [window.first, window.last]
    counts = dict(con.execute(_STATUSES, days).fetchall())
    created = sum(counts.values())
    if not created:
        return ["Created     no batches in these days"]
    done, t50, t90, started, q50, q90, met, ended = fetch_one(con, _CREATED, days)
    return [
        f"Created     {created:,} {batches(created)}",
        *status_lines(counts),
        f"Turnaround  p50 {duration(t50)}  p90 {duration(t90)}  ({done:,} completed)",
        f"Queue wait  p50 {duration(q50)}  p90 {duration(q90)}  ({started:,} started)",
        f"Window met  {met:,} of {ended:,} ended {batches(ended)}{percent_in(met, ended, 1)}",
    ]


def status_lines(counts: dict[str, int]) -> list[str]:
    """'status count' pairs in lifecycle order, wrapped to the width, never split apart."""
    pairs = ", ".join(
        f"{status}\N{NO-BREAK SPACE}{counts[status]:,}" for status in by_lifecycle(counts)
    )
    wrapped = textwrap.wrap(pairs, WIDTH, initial_indent="  ", subsequent_indent="  ")
    return [line.replace("\N{NO-BREAK SPACE}", " ") for line in wrapped]


def completed_lines(con: duckdb.DuckDBPyConnection, window: Window) -> list[str]:
    """Requests done and failed, and speed, for batches completed in the window."""
    count, done, failed, batch_rps = fetch_one(con, _COMPLETED, [window.first, window.last])
    if not count:
        return ["Completed   no batches in these days"]
    if done is None:
        requests = "no request counts"
    else:
        failed = failed or 0
        requests = f"{done:,} requests done, {failed:,} failed{percent_in(failed, done + failed)}"
    average = None if done is None else done / window.seconds
    return [
        f"Completed   {count:,} {batches(count)}: {requests}",
        f"Speed       {rate(batch_rps)} per batch (p50), {rate(average)} over these days",
    ]


def open_lines(con: duckdb.DuckDBPyConnection, now: datetime) -> list[str]:
    """How many batches are open, and the ones open longest with age and progress."""
    rows = con.execute(_OPEN).fetchall()
    if not rows:
        return ["Open        none"]
    lines = [f"Open        {len(rows):,} {batches(len(rows))}, longest open first"]
    shown = rows[:OPEN_SHOWN]
    id_width = min(max(len(row[0]) for row in shown), ID_WIDTH)
    for batch_id, status, created_epoch, total, completed in shown:
        age = None if created_epoch is None else now.timestamp() - created_epoch
        lines.append(open_line(batch_id, status, age, total, completed, id_width))
    return lines


def open_line(
    batch_id: str,
    status: str | None,
    age: float | None,
    total: int | None,
    done: int | None,
    id_width: int = ID_WIDTH,
) -> str:
    """One open batch: id, status, age and progress, shortened to fit the width."""
    shown_id = batch_id if len(batch_id) <= id_width else batch_id[: id_width - 3] + "..."
    head = f"  {shown_id:<{id_width}}  {(status or '?')[:11]:<11}  {duration(age):>7}"
    if not total or done is None:
        return f"{head}  no counts yet"
    line = f"{head}  {done / total:.0%} ({done:,}/{total:,})"
    return line if len(line) <= WIDTH else f"{head}  {done / total:.0%}"


def as_utc(moment: datetime | None) -> datetime:
    """`moment` in UTC (a naive one is taken as UTC), or the current time."""
    if moment is None:
        return datetime.now(UTC)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def fetch_one(
    con: duckdb.DuckDBPyConnection, sql: str, parameters: list[object] | None = None
) -> tuple:
    """The single row of an aggregate query."""
    row = con.execute(sql, parameters or []).fetchone()
    assert row is not None, "an aggregate query returns one row"
    return row


def by_lifecycle(statuses: dict[str, int]) -> list[str]:
    """Statuses in lifecycle order, unknown ones last."""
    known = [status for status in LIFECYCLE if status in statuses]
    return known + sorted((status for status in statuses if status not in LIFECYCLE), key=str)


def batches(count: int) -> str:
    return "batch" if count == 1 else "batches"


def percent_in(part: int, whole: int, digits: int = 2) -> str:
    """' (12.50%)', or nothing when there is no whole."""
    return f" ({part / whole:.{digits}%})" if whole else ""


def duration(seconds: float | None) -> str:
    """Seconds as the two largest units: 45s, 4m10s, 1h02m, 2d06h."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def rate(per_second: float | None) -> str:
    """Requests per second with about three significant digits."""
    if per_second is None:
        return "- req/s"
    if per_second >= 100:
        return f"{per_second:,.0f} req/s"
    if per_second >= 1:
        return f"{per_second:.1f} req/s"
    return f"{per_second:.3g} req/s"
