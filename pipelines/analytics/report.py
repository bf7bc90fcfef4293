"""Terminal summary of batch turnaround and throughput, read from the analytics views."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import NamedTuple

import duckdb

from pipelines.errors import ViewsOutOfDate, printable
from pipelines.vocabulary import DATASET, FAILED, GONE, LIFECYCLE, NAMES_A_FILE
from pipelines.warehouse.database import open_database
from pipelines.wording import counted

WIDTH = 80
OPEN_SHOWN = 5
ID_WIDTH = 32
# the columns where figures start: after "Completed in these days  " on a section's first
# line, after "  Turnaround  " on a detail line under it
SECTION_COLUMN = 25
DETAIL_COLUMN = 14
# a rate below 1 in one unit moves to the next, so that it reads as a plain number
RATE_UNITS = ((1.0, "req/s"), (60.0, "req/min"), (3600.0, "req/h"))
# Short suffixes of large counts (tokens run into the trillions), largest first.
COUNT_SCALES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))

CREATED_SQL = """
    select
        count(*) filter (where status = 'completed'),
        count(turnaround_seconds) filter (where status = 'completed'),
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

# How a batch the API sent without a status is shown (it counts as open)
NO_STATUS = "(no status)"
STATUSES_SQL = """
    select
        status,
        count(*)
    from analytics.batch_turnaround
    where cast(timezone('UTC', created_at) as date) between ? and ?
    group by status
"""

COMPLETED_SQL = """
    select
        count(*),
        sum(requests_completed),
        sum(requests_failed),
        median(requests_per_second)
    from analytics.batch_turnaround
    where status = 'completed'
        and cast(timezone('UTC', ended_at) as date) between ? and ?
"""

# Where the time of the last successful sync is kept, best first: our own record of each
# sync, then dlt's record of each load package (status 0 = loaded).
_LAST_SYNC = (
    ("sync_runs", f"select max(epoch(finished_at)) from {DATASET}.sync_runs where outcome = 'ok'"),
    ("_dlt_loads", f"select max(epoch(inserted_at)) from {DATASET}._dlt_loads where status = 0"),
)

USED_SQL = """
    select
        count(*),
        sum(usage.requests),
        sum(usage.requests_failed),
        sum(usage.prompt_tokens),
        sum(usage.completion_tokens),
        median(usage.completion_tokens_per_second),
        -- a batch with tokens of a model without a price; one whose every request failed
        -- had nothing to price
        count(*) filter (
            where usage.estimated_cost is null
            and coalesce(usage.prompt_tokens, 0) + coalesce(usage.completion_tokens, 0) > 0
        )
    from analytics.batch_usage as usage
    inner join analytics.int_batch_lifecycle as lifecycle
        on usage.batch_id = lifecycle.batch_id
    where cast(timezone('UTC', lifecycle.ended_at) as date) between ? and ?
"""

COSTS_SQL = """
    select
        usage.currency,
        sum(usage.estimated_cost)
    from analytics.batch_usage as usage
    inner join analytics.int_batch_lifecycle as lifecycle
        on usage.batch_id = lifecycle.batch_id
    where cast(timezone('UTC', lifecycle.ended_at) as date) between ? and ?
        and usage.estimated_cost is not null
    group by usage.currency
    order by usage.currency
"""

# Result files of the batches that ended in a window which hold no lines in the warehouse:
# gone, failed, or not fetched yet (a first sync of a long history takes 10,000)
MISSING_SQL = f"""
    with

    ended as (
        select batch_id, output_file_id, error_file_id
        from analytics.int_batch_lifecycle
        where is_terminal and cast(timezone('UTC', ended_at) as date) between ? and ?
    ),

    named as (
        select batch_id, 'output' as kind
        from ended
        where {NAMES_A_FILE.format(column="output_file_id")}
        union all
        select batch_id, 'error'
        from ended
        where {NAMES_A_FILE.format(column="error_file_id")}
    ),

    tried as (
        select files.*
        from analytics.stg_batch_files as files
        inner join ended on files.batch_id = ended.batch_id
    )

    select
        (select count(*) from tried where state = '{GONE}'),
        (select count(*) from tried where state = '{FAILED}'),
        (select count(*) from named anti join tried using (batch_id, kind))
"""

TABLES_SQL = f"""
    select table_name
    from information_schema.tables
    where table_catalog = current_database()
        and table_schema = '{DATASET}'
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

    @classmethod
    def ending(cls, now: datetime, days: int) -> Window:
        if days < 1:
            raise ValueError("days must be at least 1")
        last = now.date()
        return cls(first=last - timedelta(days=days - 1), last=last, now=now)

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    @property
    def seconds(self) -> float:
        start = datetime.combine(self.first, time(0), UTC)
        return max((self.now - start).total_seconds(), 1.0)


def render_report(
    con: duckdb.DuckDBPyConnection, days: int = 7, now: datetime | None = None
) -> str:
    """The summary as text, no line over 80 characters; `now` defaults to the current time."""
    window = Window.ending(as_utc(now), days)
    try:
        lines = report_lines(con, window, days)
    except (duckdb.CatalogException, duckdb.BinderException) as error:
        raise ViewsOutOfDate from error
    return "\n".join(map(printable, lines)) + "\n"


def render_report_at(db_path: str | Path, days: int = 7, now: datetime | None = None) -> str:
    """Open the DuckDB file at `db_path` read-only and render the report from it."""
    with open_database(db_path, read_only=True) as con:
        return render_report(con, days, now)


def report_lines(con: duckdb.DuckDBPyConnection, window: Window, days: int) -> list[str]:
    """Every line of the report, in order."""
    (total,) = fetch_one(con, "select coalesce(sum(batches), 0) from analytics.status_counts")
    freshness = freshness_line(last_sync(con), window.now)
    if not total:
        return ["sfbatches report: no batches yet", freshness]
    span = f"{window.first.isoformat()} to {window.last.isoformat()}"
    lines = [f"sfbatches report: last {counted(days, 'day')}, {span} (UTC)", freshness, ""]
    lines += created_lines(con, window)
    lines += ["", *completed_lines(con, window)]
    lines += ["", *usage_lines(con, window)]
    lines += ["", *open_lines(con, window.now)]
    return lines


def last_sync(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """When the newest successful sync finished, from the best record this database has."""
    tables = {name for (name,) in con.execute(TABLES_SQL).fetchall()}
    for table, sql in _LAST_SYNC:
        if table in tables:
            (epoch,) = fetch_one(con, sql)
            if epoch is not None:
                return datetime.fromtimestamp(epoch, UTC)
    return None


def freshness_line(synced_at: datetime | None, now: datetime) -> str:
    """'Data as of 2025-03-13 11:48 UTC (last sync 12 min ago)', or that there was none."""
    if synced_at is None:
        return "Data never synced: no successful sync is recorded in this database"
    return f"Data as of {synced_at:%Y-%m-%d %H:%M} UTC (last sync {ago(now - synced_at)})"


def ago(age: timedelta) -> str:
    """An age in plain words: 'just now', '12 min ago', '3 h ago', '2 days ago'."""
    seconds = age.total_seconds()
    if abs(seconds) < 60:
        return "just now"
    if seconds < 0:
        # the sync's clock runs ahead of the report's (or `now` was set in the past)
        return f"{elapsed(-seconds)} after the report's time"
    return f"{elapsed(seconds)} ago"


def elapsed(seconds: float) -> str:
    """A span of at least a minute, rounded down to one plain unit: 12 min, 3 h, 2 days."""
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return counted(int(seconds // 86400), "day")


def created_lines(con: duckdb.DuckDBPyConnection, window: Window) -> list[str]:
    """Statuses, turnaround, queue wait and window met for batches created in the window."""
    days = [window.first, window.last]
    counts = shown_statuses(con.execute(STATUSES_SQL, days).fetchall())
    created = sum(counts.values())
    if not created:
        return [section("Created in these days", "none")]
    made = created_figures(con, days)
    # a completed batch the API sent without its end time has no turnaround to count
    basis = (
        f"{made.done:,} completed"
        if made.timed == made.done
        else f"{made.timed:,} of {made.done:,} completed timed"
    )
    return [
        section("Created in these days", counted(created, "batch")),
        *status_lines(counts),
        detail("Turnaround", f"p50 {duration(made.t50)}  p90 {duration(made.t90)}  ({basis})"),
        detail(
            "Queue wait",
            f"p50 {duration(made.q50)}  p90 {duration(made.q90)}  ({made.started:,} started)",
        ),
        *window_met_lines(made.met, made.ended),
    ]


class Created(NamedTuple):
    """CREATED_SQL's figures of the batches created in a window, by name."""

    done: int  # completed
    timed: int  # completed with an end time: what the turnaround quantiles cover
    t50: float | None
    t90: float | None
    started: int
    q50: float | None
    q90: float | None
    met: int
    ended: int


def created_figures(con: duckdb.DuckDBPyConnection, days: list[date]) -> Created:
    return Created(*fetch_one(con, CREATED_SQL, days))


def window_met_lines(met: int, ended: int) -> list[str]:
    """How many ended batches met their window, then the rule that decides it (SPEC 4)."""
    first = detail("Window met", "")
    indent = " " * len(first)
    text = f"{met:,} of {counted(ended, 'ended batch')}{percent_in(met, ended, 1)}"
    lines = textwrap.wrap(
        f"{text} completed by expires_at;",
        WIDTH,
        initial_indent=first,
        subsequent_indent=indent,
    )
    return [*lines, f"{indent}failed, expired and cancelled ones count as missed"]


def status_lines(counts: dict[str, int]) -> list[str]:
    """'status count' pairs in lifecycle order, wrapped to the width, never split apart: not at
    the space before the count, nor inside a status such as "(no status)" or one the API
    spells with a space or a hyphen."""
    pairs = ", ".join(
        re.sub(r"\s", "\N{NO-BREAK SPACE}", f"{status} {counts[status]:,}")
        for status in by_lifecycle(counts)
    )
    wrapped = textwrap.wrap(
        pairs, WIDTH, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
    )
    return [line.replace("\N{NO-BREAK SPACE}", " ") for line in wrapped]


def completed_lines(con: duckdb.DuckDBPyConnection, window: Window) -> list[str]:
    """Requests done and failed, and speed, for batches completed in the window."""
    count, done, failed, batch_rps = fetch_one(con, COMPLETED_SQL, [window.first, window.last])
    if not count:
        return [section("Completed in these days", "none")]
    if done is None:
        requests = "no request counts"
    else:
        failed = failed or 0
        requests = f"{done:,} done, {failed:,} failed{percent_in(failed, done + failed)}"
    average = None if done is None else done / window.seconds
    return [
        section("Completed in these days", counted(count, "batch")),
        detail("Requests", requests),
        detail("Speed", f"{rate(batch_rps)} per batch (p50), {rate(average)} over these days"),
    ]


def usage_lines(con: duckdb.DuckDBPyConnection, window: Window) -> list[str]:
    """What the result files of batches that ended in the window say: requests, tokens, token
    speed and estimated cost."""
    days = [window.first, window.last]
    used = fetch_one(con, USED_SQL, days)
    count, requests, failed, prompt, completion, batch_tps, unpriced = used
    missing = missing_lines(con, days)
    if not count:
        none = section("Result files", "none loaded for batches that ended in these days")
        return [none, *missing]
    cost, priced = cost_figures(con.execute(COSTS_SQL, days).fetchall(), unpriced)
    average = None if completion is None else completion / window.seconds
    return [
        section("Result files", f"{counted(count, 'ended batch')} loaded"),
        detail("Requests", f"{requests:,} run, {failed:,} failed{percent_in(failed, requests)}"),
        detail("Tokens", f"{amount(prompt)} prompt, {amount(completion)} completion"),
        detail(
            "Tokens/s",
            f"{per_second(batch_tps)} per batch (p50), {per_second(average)} over these days "
            "(completion)",
        ),
        detail("Cost", f"{cost}; {priced}" if priced else cost),
        *missing,
    ]


def cost_amounts(costs: list[tuple[str, float]]) -> str:
    """'CNY 2.40, USD 1.25': the estimated cost in each currency."""
    return ", ".join(f"{currency} {total:,.2f}" for currency, total in costs)


def cost_figures(costs: list[tuple[str, float]], unpriced: int) -> tuple[str, str]:
    """The estimated cost per currency, and what it leaves out (empty when nothing): a window
    whose batches had no tokens at all (every request failed) had nothing to price."""
    if costs:
        cost = f"{cost_amounts(costs)} estimated"
    else:
        cost = "unknown" if unpriced else "none: no tokens to price"
    return cost, f"{counted(unpriced, 'batch')} of models without a price" if unpriced else ""


def missing_lines(con: duckdb.DuckDBPyConnection, days: list[date]) -> list[str]:
    """Files of these days' batches whose requests the figures above leave out, if any."""
    count, said = not_loaded(con, days)
    return [detail("Not loaded", f"{said}; not counted above")] if count else []


def not_loaded(con: duckdb.DuckDBPyConnection, days: list[date]) -> tuple[int, str]:
    """How many result files of these days' ended batches hold no lines in the warehouse, and
    why."""
    gone, failed, unfetched = fetch_one(con, MISSING_SQL, days)
    parts = []
    if unfetched:
        parts.append(f"{counted(unfetched, 'file')} not fetched yet (later syncs fetch them)")
    if gone or failed:
        parts.append(
            f"{counted(gone, 'file')} gone (404, expired link), {failed:,} failed (retried next "
            "sync)"
        )
    return gone + failed + unfetched, ", ".join(parts)


def short_count(value: float) -> str:
    """A count or amount as a short axis label: 0.15, 950, 12k, 1.5M, 2B, 3T (never SI's
    milli, which reads as millions: 0.15 CNY is not "150m")."""
    for size, suffix in COUNT_SCALES:
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def amount(count: int | None) -> str:
    """A large count in plain words: 950, 12.3k, 4.56M, 1.2B, 3.4T."""
    if count is None:
        return "-"
    for scale, suffix in COUNT_SCALES:
        if count >= scale:
            return f"{figure(count / scale)}{suffix}"
    return f"{count:,}"


def per_second(value: float | None) -> str:
    return "-" if value is None else figure(value)


def open_lines(con: duckdb.DuckDBPyConnection, now: datetime) -> list[str]:
    """How many batches are open, and the ones open longest with age and progress."""
    rows = con.execute(_OPEN).fetchall()
    if not rows:
        return [section("Open now", "none")]
    heading = counted(len(rows), "batch") + (", longest open first" if len(rows) > 1 else "")
    lines = [section("Open now", heading)]
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
    head = f"  {shown_id:<{id_width}}  {(status or NO_STATUS)[:11]:<11}  {duration(age):>7}"
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


def shown_statuses(rows: list[tuple[str | None, int]]) -> dict[str, int]:
    """Batches per status as shown: a batch the API sent without a status under NO_STATUS."""
    counts: dict[str, int] = {}
    for status, batches in rows:
        shown = status or NO_STATUS
        counts[shown] = counts.get(shown, 0) + batches
    return counts


def by_lifecycle(statuses: dict[str, int]) -> list[str]:
    """Statuses in lifecycle order, unknown ones last."""
    known = [status for status in LIFECYCLE if status in statuses]
    return known + sorted((status for status in statuses if status not in LIFECYCLE), key=str)


def section(label: str, text: str) -> str:
    """A section's first line: what it counts, then the figures, aligned with the others."""
    return f"{label:<{SECTION_COLUMN - 2}}  {text}"


def detail(label: str, text: str) -> str:
    """A line under a section: indented, its figures aligned with the other details."""
    return f"  {label:<{DETAIL_COLUMN - 4}}  {text}"


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
    """Requests per second, minute or hour, whichever is the first to reach 1: 2.5 req/s,
    45 req/min, 28.8 req/h; about three significant digits."""
    if per_second is None:
        return "-"
    seconds, unit = next(
        ((seconds, unit) for seconds, unit in RATE_UNITS if per_second * seconds >= 1),
        RATE_UNITS[-1],
    )
    return f"{figure(per_second * seconds)} {unit}"


def figure(value: float) -> str:
    """About three significant digits, thousands separated, never in e-notation."""
    if value >= 99.95:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    if value < 0.001:
        return "<0.001"
    return f"{value:.3g}"
