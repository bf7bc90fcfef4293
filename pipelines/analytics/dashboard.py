"""`sfbatches report --html`: the report as one self-contained web page with charts.

The figures come from the analytics views, as the text report's do; the problems are those
`sfbatches check` reports. The page is templates/report.html, filled in by Jinja.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

import duckdb
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from matplotlib.figure import Figure

from pipelines.errors import ViewsOutOfDate
from pipelines.warehouse.database import open_database
from pipelines.wording import counted

from . import charts
from .check import Health, Limits, check
from .report import (
    COMPLETED_SQL,
    COSTS_SQL,
    NO_STATUS,
    USED_SQL,
    Window,
    amount,
    as_utc,
    by_lifecycle,
    cost_amounts,
    created_figures,
    duration,
    fetch_one,
    freshness_line,
    last_sync,
    not_loaded,
    rate,
    shown_statuses,
)

OPEN_SHOWN = 20
HOUR = 3600.0

_TURNAROUNDS = """
    select turnaround_seconds / 3600
    from analytics.batch_turnaround
    where status = 'completed'
        and turnaround_seconds is not null  -- a batch the API sent without its end time
        and cast(timezone('UTC', created_at) as date) between ? and ?
"""
# Every day from the first with a completed batch to the last: a day without one is a gap in
# the lines (null), not a line drawn through values nobody measured.
_DAILY_QUANTILES = """
    with quantiles as (
        select
            cast(timezone('UTC', created_at) as date) as day,
            quantile_cont(turnaround_seconds, 0.5) / 3600 as p50_h,
            quantile_cont(turnaround_seconds, 0.9) / 3600 as p90_h
        from analytics.batch_turnaround
        where status = 'completed'
            and cast(timezone('UTC', created_at) as date) between ? and ?
        group by day
    ),

    days as (
        select cast(unnest(generate_series(min(day), max(day), interval 1 day)) as date) as day
        from quantiles
    )

    select days.day, quantiles.p50_h, quantiles.p90_h
    from days
    left join quantiles on days.day = quantiles.day
    order by days.day
"""
DAILY_COUNTS = ("batches", "completed", "failed", "expired", "cancelled", "in_flight")
_DAILY = f"""
    select
        created_date,
        endpoint,
        {", ".join(DAILY_COUNTS)},
        turnaround_p50_s,
        turnaround_p90_s,
        window_met_rate
    from analytics.daily_turnaround
    where created_date between ? and ?
    order by created_date desc, endpoint
"""
_HOURLY = """
    select hour, coalesce(sum(requests_per_second), 0)
    from analytics.hourly_throughput
    where cast(timezone('UTC', hour) as date) between ? and ?
    group by hour
    order by hour
"""
_HOURLY_TOKENS = """
    select
        timezone('UTC', date_trunc('hour', timezone('UTC', lifecycle.ended_at))) as hour,
        coalesce(sum(usage.completion_tokens), 0) / 3600
    from analytics.batch_usage as usage
    inner join analytics.int_batch_lifecycle as lifecycle
        on usage.batch_id = lifecycle.batch_id
    where cast(timezone('UTC', lifecycle.ended_at) as date) between ? and ?
    group by hour
    order by hour
"""
_STATUS_COUNTS = "select status, batches from analytics.status_counts"
_OPEN = f"""
    select batch_id, status, endpoint, age_seconds, requests_completed, requests_total
    from analytics.open_batches
    order by age_seconds desc, batch_id
    limit {OPEN_SHOWN}
"""
_OPEN_COUNT = "select count(*) from analytics.open_batches"
_USAGE = """
    select
        usage_date,
        model,
        batches,
        requests,
        requests_failed,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        estimated_cost,
        prices.currency
    from analytics.daily_usage
    left join (
        select model, any_value(currency) as currency
        from analytics.batch_usage
        group by model
    ) as prices using (model)
    where usage_date between ? and ?
    order by usage_date desc, model
"""


@dataclass(frozen=True)
class Card:
    """One headline figure: what it is, its value as shown, and a line under it."""

    name: str
    label: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    image: str  # a data: URI
    caption: str


def chart(name: str, title: str, figure: Figure, caption: str) -> Chart:
    """A chart of the page, its figure drawn as a data: URI."""
    return Chart(name, title, charts.data_uri(figure), caption)


def render_html(
    con: duckdb.DuckDBPyConnection, limits: Limits, days: int = 7, now: datetime | None = None
) -> str:
    """The page, as text; `now` defaults to the current time."""
    window = Window.ending(as_utc(now), days)
    try:
        context = page_context(con, window, check(con, limits, window.now))
    except (duckdb.CatalogException, duckdb.BinderException) as error:
        raise ViewsOutOfDate from error
    template = _environment().get_template("report.html")
    return template.render(**context)


def render_html_at(db_path: str | Path, limits: Limits, days: int = 7) -> str:
    """Open the DuckDB file at `db_path` read-only and render the page from it."""
    with open_database(db_path, read_only=True) as con:
        return render_html(con, limits, days)


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("pipelines.analytics", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page_context(con: duckdb.DuckDBPyConnection, window: Window, health: Health) -> dict:
    span = [window.first, window.last]
    usage = usage_rows(con, span)
    (open_count,) = fetch_one(con, _OPEN_COUNT)
    currencies = sorted({row["currency"] for row in usage if row["estimated_cost"] is not None})
    return {
        "title": f"SiliconFlow batches, last {counted(len(window.days), 'day')}",
        "window": f"{window.first.isoformat()} to {window.last.isoformat()} (UTC)",
        "freshness": freshness_line(last_sync(con), window.now),
        "generated": f"{window.now:%Y-%m-%d %H:%M} UTC",
        "problems": health.problems,
        "limits": health.limits,
        "cards": cards(con, window, span, open_count),
        "charts": [
            *turnaround_charts(con, span),
            *throughput_charts(con, window),
            *status_charts(con),
            *usage_charts(usage, window, currencies),
        ],
        "daily": daily_rows(con, span),
        "open_rows": open_rows(con),
        "open_count": open_count,
        "usage": usage_table(usage, several_currencies=len(currencies) > 1),
        # the cost column's heading names the currency when there is one only
        "currency": currencies[0] if len(currencies) == 1 else None,
    }


# --- headline figures --------------------------------------------------------------------------


def cards(
    con: duckdb.DuckDBPyConnection, window: Window, span: list[date], open_now: int
) -> list[Card]:
    created = con.execute(
        "select count(*) from analytics.batch_turnaround "
        "where cast(timezone('UTC', created_at) as date) between ? and ?",
        span,
    ).fetchone()[0]
    made = created_figures(con, span)
    ended, requests, failed, batch_rps = fetch_one(con, COMPLETED_SQL, span)
    found = [
        Card("batches_created", "Batches created", f"{created:,}", f"{made.done:,} completed"),
        Card("turnaround_p50", "Turnaround p50", duration(made.t50), f"p90 {duration(made.t90)}"),
        Card("open_batches", "Open now", f"{open_now:,}", "not yet in a final status"),
        Card(
            "requests_completed",
            "Requests done",
            f"{requests or 0:,}",
            f"{failed or 0:,} failed, in {counted(ended, 'completed batch')}",
        ),
        Card(
            "requests_per_second",
            "Request rate",
            rate(None if requests is None else requests / window.seconds),
            f"over these days; {rate(batch_rps)} per batch (p50)",
        ),
    ]
    used = fetch_one(con, USED_SQL, span)
    if used[0]:
        costs = con.execute(COSTS_SQL, span).fetchall()
        found += [
            Card(
                "completion_tokens",
                "Completion tokens",
                amount(used[4]),
                f"{amount(used[3])} prompt, from {counted(used[0], 'result file batch')}",
            ),
            Card(
                "estimated_cost",
                "Estimated cost",
                cost_amounts(costs) or ("unknown" if used[6] else "none"),
                f"{counted(used[6], 'batch')} without a price"
                if used[6]
                else ("all priced" if costs else "no tokens to price"),
            ),
        ]
    missing, why = not_loaded(con, span)
    if missing:
        found.append(
            Card("files_not_loaded", "Files not loaded", f"{missing:,}", f"{why}: not counted")
        )
    return found


# --- charts ------------------------------------------------------------------------------------


def turnaround_charts(con: duckdb.DuckDBPyConnection, span: list[date]) -> list[Chart]:
    hours = [row[0] for row in con.execute(_TURNAROUNDS, span).fetchall()]
    if not hours:
        return []
    daily = con.execute(_DAILY_QUANTILES, span).fetchall()
    return [
        chart(
            "turnaround",
            "Turnaround of completed batches",
            charts.turnaround_histogram(hours),
            f"{counted(len(hours), 'batch')} created in these days and completed, by hours "
            "from created to completed",
        ),
        chart(
            "daily_turnaround",
            "Turnaround per day created, p50 and p90",
            charts.daily_quantiles(
                [row[0] for row in daily],
                [row[1] for row in daily],
                [row[2] for row in daily],
                first=span[0],
                today=span[-1],
            ),
            "all endpoints together; the table below has them one by one",
        ),
    ]


def throughput_charts(con: duckdb.DuckDBPyConnection, window: Window) -> list[Chart]:
    """Rates per hour, or per day when the window has more hours than a chart has bars."""
    span = [window.first, window.last]
    hourly = con.execute(_HOURLY, span).fetchall()
    if not hourly:
        return []
    tokens = con.execute(_HOURLY_TOKENS, span).fetchall()
    period, width_days = "hour", 1 / 24
    if len(window.days) * 24 > charts.MOST_BARS:
        period, width_days = "day", 1.0
        hourly, tokens = per_day(hourly, window), per_day(tokens, window) if tokens else []
    caption = f"requests of batches completed in each UTC {period}, per second of that {period}"
    if tokens:
        caption += "; below, completion tokens of the batches with result files"
    return [
        chart(
            "throughput",
            f"Throughput per {period}",
            charts.throughput(
                [row[0] for row in hourly],
                [row[1] for row in hourly],
                [row[0] for row in tokens],
                [row[1] for row in tokens],
                width_days,
                shown_days(hourly, window),
            ),
            caption,
        )
    ]


def shown_days(rates: list[tuple], window: Window) -> tuple[date, date]:
    """The window's days, or (past the bars a chart draws) those from the first with a rate
    to the last: a decade's window of a month's data shows the month."""
    if len(window.days) <= charts.MOST_BARS:
        return window.first, window.last
    return rates[0][0].date(), rates[-1][0].date()


def per_day(hourly: list[tuple], window: Window) -> list[tuple[datetime, float]]:
    """For each UTC day from the first with a rate to the last, the mean of its hours' rates
    (an hour without a row is 0), from the day's start: a decade's window of a month's data
    shows the month."""
    sums: dict[date, float] = defaultdict(float)
    for hour, per_second in hourly:
        sums[hour.date()] += per_second
    days = [day for day in window.days if min(sums) <= day <= max(sums)]
    return [(datetime.combine(day, time(0), UTC), sums[day] / 24) for day in days]


def status_charts(con: duckdb.DuckDBPyConnection) -> list[Chart]:
    counts = shown_statuses(con.execute(_STATUS_COUNTS).fetchall())
    if not counts:
        return []
    statuses = by_lifecycle(counts)
    return [
        chart(
            "statuses",
            "Status mix, all batches",
            charts.status_mix(statuses, [counts[s] for s in statuses]),
            ", ".join(f"{status} {counts[status]:,}" for status in statuses),
        )
    ]


def usage_charts(usage: list[dict], window: Window, currencies: list[str]) -> list[Chart]:
    """Tokens per day and model, then the cost in each currency apart: amounts in two
    currencies do not add up. None when no request returned tokens (every one failed): the
    table says so, and the charts would be empty."""
    totals = token_totals(usage)
    if not any(totals.values()):
        return []
    bands = charts.model_bands(totals)
    return [
        chart(
            "tokens",
            "Tokens per day and model",
            charts.stacked_by_model(
                window.days,
                per_model(usage, window, "total_tokens", bands),
                "tokens",
                window.last,
                bands.colours,
            ),
            "prompt and completion tokens of the batches that ended each UTC day",
        ),
        *(cost_chart(usage, window, bands, one, alone=len(currencies) == 1) for one in currencies),
    ]


def cost_chart(
    usage: list[dict], window: Window, bands: charts.Bands, currency: str, alone: bool
) -> Chart:
    priced = [row for row in usage if row["currency"] == currency]
    return chart(
        "cost" if alone else f"cost_{currency.lower()}",
        "Estimated cost per day and model" + ("" if alone else f", in {currency}"),
        charts.stacked_by_model(
            window.days,
            per_model(priced, window, "estimated_cost", bands),
            f"estimated cost ({currency})",
            window.last,
            bands.colours,
        ),
        "from the batch prices in sql/seeds/model_prices.csv; models without a price are left out",
    )


def token_totals(usage: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for row in usage:
        totals[model_of(row)] += row["total_tokens"] or 0
    return totals


def model_of(row: dict) -> str:
    return row["model"] or charts.UNKNOWN_MODEL


def per_model(
    usage: list[dict], window: Window, column: str, bands: charts.Bands
) -> dict[str, list[float]]:
    """Per band, the column's value on each day of the window (0 when none), the bands of the
    most tokens first."""
    by_day: dict[str, dict[date, float]] = {band: {} for band in bands.of.values()}
    for row in usage:
        days = by_day[bands.of[model_of(row)]]
        days[row["usage_date"]] = days.get(row["usage_date"], 0.0) + (row[column] or 0.0)
    return {
        band: [days.get(day, 0.0) for day in window.days] for band, days in by_day.items() if days
    }


# --- tables ------------------------------------------------------------------------------------


def daily_rows(con: duckdb.DuckDBPyConnection, span: list[date]) -> list[dict]:
    return [
        {
            "day": row["created_date"].isoformat(),
            "endpoint": row["endpoint"],
            **{name: f"{row[name]:,}" for name in DAILY_COUNTS},
            "p50": duration(row["turnaround_p50_s"]),
            "p90": duration(row["turnaround_p90_s"]),
            "window_met": "-"
            if row["window_met_rate"] is None
            else f"{row['window_met_rate']:.1%}",
        }
        for row in records(con, _DAILY, span)
    ]


def open_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    return [
        {
            "batch_id": batch_id,
            "status": status or NO_STATUS,
            "endpoint": endpoint or "",
            "age": duration(age),
            "progress": "no counts yet"
            if not total or done is None
            else f"{done / total:.0%} ({done:,} of {total:,})",
        }
        for batch_id, status, endpoint, age, done, total in con.execute(_OPEN).fetchall()
    ]


def usage_rows(con: duckdb.DuckDBPyConnection, span: list[date]) -> list[dict]:
    return records(con, _USAGE, span)


def records(con: duckdb.DuckDBPyConnection, sql: str, parameters: list) -> list[dict]:
    """The rows of a query, each a dict by column name."""
    cursor = con.execute(sql, parameters)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def usage_table(usage: list[dict], several_currencies: bool) -> list[dict]:
    return [
        {
            "day": row["usage_date"].isoformat(),
            "model": model_of(row),
            "batches": f"{row['batches']:,}",
            "requests": f"{row['requests']:,}",
            "failed": f"{row['requests_failed']:,}",
            "prompt": count_or_dash(row["prompt_tokens"]),
            "completion": count_or_dash(row["completion_tokens"]),
            "cost": cost_cell(row, several_currencies),
        }
        for row in usage
    ]


def cost_cell(row: dict, several_currencies: bool) -> str:
    """A day's cost of a model: with its currency when the table holds several; 'no price'
    for a model without one, '-' where there was nothing to price (every request failed)."""
    if row["estimated_cost"] is None:
        return "no price" if row["prompt_tokens"] or row["completion_tokens"] else "-"
    amount = f"{row['estimated_cost']:,.2f}"
    return f"{amount} {row['currency']}" if several_currencies else amount


def count_or_dash(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
