"""What the notebooks in notebooks/ share: which database, loading it, and plot conventions.

Needs the `notebooks` (or `dev`) extra for matplotlib. Nothing in the package imports this.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

import duckdb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.textpath import text_to_path
from matplotlib.ticker import (
    FuncFormatter,
    Locator,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    PercentFormatter,
)

from pipelines.analytics.charts import (
    CJK_FONTS,
    PARTIAL_LABEL,
    Bands,
    hatch_day,
    model_bands,
    short_label,
)
from pipelines.analytics.charts import (
    UNKNOWN_MODEL as UNKNOWN_MODEL,  # the notebooks' name for a batch no output line names
)
from pipelines.analytics.report import short_count
from pipelines.errors import SfBatchesError
from pipelines.warehouse.database import DEFAULT_DB, open_database

Table = TypeVar("Table", pd.DataFrame, pd.Series)

DEMO_DB = "demo.duckdb"
HOUR_S = 3600.0
# Tick candidates for durations in hours on a log axis, the most telling first: an axis shows
# those that fit in this order, and a later one only where it leaves every label room.
DURATION_TICKS_H = {
    1 / 60: "1 min",
    1: "1 h",
    24: "24 h",
    1 / 3600: "1 s",
    10 / 3600: "10 s",
    10 / 60: "10 min",
    6: "6 h",
    72: "3 d",
    336: "14 d",
    0.5: "30 min",
    30 / 3600: "30 s",
    3: "3 h",
    12: "12 h",
    168: "7 d",
    5 / 60: "5 min",
    2: "2 h",
    48: "2 d",
    5 / 3600: "5 s",
    2 / 60: "2 min",
    720: "30 d",
}
# space between two tick labels, in multiples of the label font size
TICK_GAP_EM = 1.0
# a histogram's height over its highest bar: room for a one-row legend above the bars
LEGEND_ROOM = 1.3


class NotebookStop(Exception):
    """Why a notebook cannot go on: Jupyter shows its one line instead of a traceback through
    sfbatches' internals (IPython's documented `_render_traceback_` hook)."""

    def _render_traceback_(self) -> list[str]:
        return [f"sfbatches: {self}"]


def repo_root(start: Path | None = None) -> Path:
    """The checkout holding the notebooks: the nearest folder up from `start` (default: the
    current one, which Jupyter sets to notebooks/) with pyproject.toml and sql/, else the
    checkout this package was installed from, else `start` itself."""
    start = (start or Path.cwd()).resolve()
    package_checkout = Path(__file__).resolve().parent.parent
    for folder in (start, *start.parents, package_checkout):
        if (folder / "pyproject.toml").is_file() and (folder / "sql").is_dir():
            return folder
    return start


def database_path(env: Mapping[str, str] | None = None, root: Path | None = None) -> Path:
    """`$SFBATCHES_DB`, else siliconflow.duckdb; relative paths are taken from the repo root.

    A file SFBATCHES_DB names must exist. Only when it is not set and siliconflow.duckdb does
    not exist either does this say so and return demo.duckdb, if that exists.
    """
    env = os.environ if env is None else env
    root = root or repo_root()
    named = env.get("SFBATCHES_DB", "").strip()  # blank counts as unset, as for the CLI
    demo = root / DEMO_DB
    if named:
        wanted = root / Path(named).expanduser()
        if wanted.is_file():
            return wanted
        if wanted.is_dir():
            raise NotebookStop(
                f"{wanted} (named by SFBATCHES_DB) is a folder: point SFBATCHES_DB at the DuckDB "
                "file `sfbatches sync --db` writes"
            )
        or_demo = ", or unset SFBATCHES_DB to see the demo database" if demo.is_file() else ""
        raise NotebookStop(
            f"no database at {wanted} (named by SFBATCHES_DB): run `sfbatches sync --db {wanted}` "
            f"to create it{or_demo}"
        )
    wanted = root / DEFAULT_DB
    if wanted.is_file():
        return wanted
    if demo.is_file():
        print(f"Note: {shown(wanted, root)} not found; showing the demo database {DEMO_DB}.")
        print("Set SFBATCHES_DB (or run `make sync`) to look at your own batches.")
        return demo
    raise NotebookStop(
        f"no database at {wanted} (nor {demo}): run `make demo` or `make sync`, "
        "or set SFBATCHES_DB to your DuckDB file"
    )


def shown(path: Path, root: Path | None = None) -> str:
    """`path` relative to the repo root when it lies inside it, so outputs carry no home dirs."""
    try:
        return str(path.relative_to(root or repo_root()))
    except ValueError:
        return str(path)


def load(
    db_path: Path, queries: Mapping[str, str], *, result_files: bool = False
) -> dict[str, pd.DataFrame]:
    """Run each query on a read-only connection in UTC and close it before returning.

    A notebook holds no connection afterwards, so it never blocks the next sync. Says so when
    the database holds no batches yet; the frames are then empty and the charts stay blank.
    With `result_files`, for a notebook built on the batches' result files, it also says so
    when batches are there but none of their result files is loaded.
    """
    try:
        return _load(db_path, queries, result_files)
    except SfBatchesError as error:  # not ours, busy, unreadable: its line says what to do
        raise NotebookStop(str(error)) from None


def _load(db_path: Path, queries: Mapping[str, str], result_files: bool) -> dict[str, pd.DataFrame]:
    with open_database(db_path, read_only=True) as con:  # in UTC
        views = ("batch_turnaround", "batch_usage") if result_files else ("batch_turnaround",)
        for view in views:
            require_view(con, db_path, view)
        [(batch_count,)] = con.execute("select count(*) from analytics.batch_turnaround").fetchall()
        files_loaded = 0
        if result_files:
            [(files_loaded,)] = con.execute(
                "select count(*) from analytics.stg_batch_files where state = 'loaded'"
            ).fetchall()
        frames = {name: con.sql(sql).df() for name, sql in queries.items()}
    print(f"Read {shown(db_path)} (read-only, times in UTC); connection closed.")
    if not batch_count:
        print(
            f"No batches in {shown(db_path)} yet: the charts below stay empty until "
            f"`sfbatches sync --db {shown(db_path)}` finds some."
        )
    elif result_files and not files_loaded:
        print(
            f"No result files loaded in {shown(db_path)} yet: the charts below stay empty until "
            f"`sfbatches sync --db {shown(db_path)}` downloads some. A batch has them once it "
            "ended; a sync skips them with --no-results or SOURCES__SILICONFLOW__RESULTS=false."
        )
    return frames


def require_view(con: duckdb.DuckDBPyConnection, db_path: Path, view: str) -> None:
    """Stop with what to run when the database lacks `analytics.<view>`."""
    [(has_view,)] = con.execute(
        "select count(*) > 0 from information_schema.tables "
        "where table_schema = 'analytics' and table_name = ?",
        [view],
    ).fetchall()
    if has_view:
        return
    if view == "batch_turnaround":
        raise NotebookStop(
            f"{shown(db_path)} has no analytics views: run `sfbatches sync --db {db_path}` "
            "(or `sfbatches models` if it already holds batches)"
        )
    raise NotebookStop(
        f"{shown(db_path)} has no analytics.{view} view yet (an older sfbatches built its "
        f"models): run `sfbatches models --db {db_path}`"
    )


def use_style() -> None:
    """Figure defaults the notebooks share: readable sizes, light grids, tight layout, and
    Chinese model names drawn in a CJK font where one is installed."""
    installed = {font.name for font in fontManager.ttflist}
    # Only installed families: matplotlib logs a line for each one it cannot find, at each draw.
    cjk = [name for name in CJK_FONTS if name in installed]
    # Without one, a Chinese glyph is drawn as a box; a warning per glyph would bury the charts.
    warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
    plt.rcParams.update(
        {
            "font.family": ["DejaVu Sans", *cjk],
            "figure.figsize": (10, 4),
            "figure.dpi": 90,
            "figure.constrained_layout.use": True,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.titleweight": "bold",
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "legend.frameon": False,
            "timezone": "UTC",
        }
    )


def nothing_to_plot(data: pd.DataFrame | pd.Series, what: str) -> bool:
    """True, after printing a note, when `data` has no rows; plot only when this is False."""
    if data.empty:
        print(f"Nothing to plot yet: no {what} in this database.")
        return True
    return False


def no_data(ax: Axes, what: str = "data") -> None:
    """Mark an empty panel instead of drawing axes without data."""
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def date_axis(ax: Axes, label: str, max_ticks: int = 10, min_days: float = 2) -> None:
    """Compact date ticks on x, labelled e.g. 'created date (UTC)'; call it after plotting.

    Data spanning less than `min_days` gets a day of room either side.
    """
    locator = AutoDateLocator(minticks=2, maxticks=max_ticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel(label)
    # matplotlib widens a single date to years around it; a few days read better
    shared = ax.get_shared_x_axes().get_siblings(ax)
    low = min(other.dataLim.x0 for other in shared)
    high = max(other.dataLim.x1 for other in shared)
    if np.isfinite(low) and np.isfinite(high) and high - low < min_days:
        ax.set_xlim(low - 1, high + 1)


def utc_today() -> date:
    """The current day in UTC, the day whose numbers are still coming in."""
    return datetime.now(UTC).date()


def partial_days(days: Iterable[object], today: date | None = None) -> list[date]:
    """The days among `days` (dates, datetimes or strings) that have not ended yet in UTC:
    today, and any later one. A per-day chart marks them, as their numbers still grow."""
    today = today or utc_today()
    dates = {utc_date(value) for value in days if pd.notna(value)}
    return sorted(day for day in dates if day >= today)


def utc_date(value: object) -> date:
    """The UTC day of a date, a datetime (a naive one is taken as UTC) or an ISO string."""
    stamp = pd.Timestamp(value)
    return (stamp.tz_convert("UTC") if stamp.tzinfo else stamp).date()


def every_day(table: Table, fill: float = np.nan) -> Table:
    """`table`, indexed by day, with a row for every day from its first to its last. A line
    drawn straight from one day with data to the next one would show values nobody measured in
    between: the added rows hold NaN, which breaks the line, or `fill` (0 for a count or a rate,
    where a day without data is a day with none)."""
    if table.empty:
        return table
    days = pd.DatetimeIndex(table.index)
    every = pd.date_range(days.min(), days.max(), name=table.index.name)
    return table.set_axis(days).reindex(every, fill_value=fill)


def mark_partial_days(ax: Axes, days: Iterable[object], align: str = "center") -> list[date]:
    """Hatch each of `days` that is not over yet on a per-day chart, with the legend label
    'today (partial)'; returns those days. `align` is how the chart places a day: "center" for
    points and centred bars, "edge" for bars that start at the day (`bar(align="edge")`)."""
    partial = partial_days(days)
    for index, day in enumerate(partial):
        hatch_day(ax, day, centred=align == "center", labelled=index == 0)
    return partial


class DurationLocator(Locator):
    """Major ticks from DURATION_TICKS_H inside the view, as many as fit without labels touching.

    It measures at draw time, on the final size of the axes, so labels never overlap however
    wide the figure or the range of the data.
    """

    def __call__(self) -> list[float]:
        return self.tick_values(*self.axis.get_view_interval())

    def view_limits(self, vmin: float, vmax: float) -> tuple[float, float]:
        """Autoscaled limits, widened to the nearest ticks around the data when fewer than two
        fall inside (7 h to 8 h would show no label at all; 6 h to 12 h shows two)."""
        low, high = sorted((vmin, vmax))
        ticks = sorted(DURATION_TICKS_H)
        if sum(low <= tick <= high for tick in ticks) >= 2:
            return vmin, vmax
        below = max((tick for tick in ticks if tick <= low), default=low)
        above = min((tick for tick in ticks if tick >= high), default=high)
        return (below, above) if vmin <= vmax else (above, below)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        low, high = sorted((vmin, vmax))
        inside = [tick for tick in DURATION_TICKS_H if low <= tick <= high]
        axis = self.axis
        if axis is None or len(inside) < 2:
            return sorted(inside)
        scale = axis.get_transform().transform
        start, end = scale([low, high])
        pixels = axis.axes.bbox.width if axis.axis_name == "x" else axis.axes.bbox.height
        per_unit = pixels / (end - start) if end > start else 0.0
        font = axis.get_major_ticks(1)[0].label1.get_fontproperties()
        gap = TICK_GAP_EM * font.get_size_in_points() * axis.figure.dpi / 72
        kept: dict[float, tuple[float, float]] = {}  # tick: (pixels from start, half its label)
        for tick in inside:
            position = (scale([tick])[0] - start) * per_unit
            half = label_extent(axis, DURATION_TICKS_H[tick], font) / 2
            if all(abs(position - at) >= half + reach + gap for at, reach in kept.values()):
                kept[tick] = (position, half)
        return sorted(kept)


def label_extent(axis: Axis, text: str, font: FontProperties) -> float:
    """How far a horizontal tick label reaches along `axis`, in pixels."""
    width, height, _ = text_to_path.get_text_width_height_descent(text, font, ismath=False)
    return (width if axis.axis_name == "x" else height) * axis.figure.dpi / 72


def duration_label(value_h: float, _position: int | None = None) -> str:
    """The label of a DURATION_TICKS_H tick ('' for any other value)."""
    for tick, label in DURATION_TICKS_H.items():
        if np.isclose(value_h, tick, rtol=1e-9, atol=0):
            return label
    return ""


def _log_scaled(ax: Axes, axis: str) -> Axis:
    """Put `axis` ("x" or "y") of `ax` on a log scale; that axis."""
    if axis == "y":
        ax.set_yscale("log")
        return ax.yaxis
    ax.set_xscale("log")
    return ax.xaxis


def hours_axis(ax: Axes, label: str, axis: str = "y") -> None:
    """Log scale for durations given in hours, ticked 1 s, 1 min, 1 h, 24 h ... as room allows."""
    target = _log_scaled(ax, axis)
    target.set_major_locator(DurationLocator())
    target.set_major_formatter(FuncFormatter(duration_label))
    target.set_minor_formatter(NullFormatter())
    target.set_label_text(label)
    # Limits already fitted to the data (unless set by hand) take the locator's view limits.
    ax.autoscale_view(scalex=axis == "x", scaley=axis == "y")


def requests_axis(ax: Axes, total: int) -> None:
    """A y axis of whole requests from 0 to a little above `total`: a batch of one request is
    not counted in quarters."""
    ax.set_ylim(0, total * 1.1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def percent_axis(ax: Axes, label: str) -> None:
    """Fractions 0..1 on y shown as percent."""
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(label)


def hours(seconds: pd.Series) -> pd.Series:
    """Seconds (nullable) as float hours, missing values as NaN."""
    return seconds.astype("float64") / HOUR_S


def duration(value_h: float) -> str:
    """Hours as a short duration: 45 s, 4.5 min, 3.6 h, 2.1 d."""
    seconds = value_h * HOUR_S
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < HOUR_S:
        return f"{seconds / 60:.1f} min"
    if value_h < 48:
        return f"{value_h:.1f} h"
    return f"{value_h / 24:.1f} d"


def duration_histogram(
    ax: Axes, values_h: pd.Series, title: str, label: str, what: str = "data"
) -> None:
    """Histogram of durations in hours on log bins, with p50/p90/p99 marked; a note if empty."""
    ax.set_title(title)
    values_h = values_h.dropna().clip(lower=1 / HOUR_S)  # a 0 s wait shows as 1 s on a log axis
    if values_h.empty:
        no_data(ax, what)
        return
    low, high = values_h.min(), max(values_h.max(), values_h.min() * 10)
    ax.hist(values_h, bins=np.geomspace(low, high, 40), color="tab:blue", alpha=0.7)
    for q, style in ((0.5, "-"), (0.9, "--"), (0.99, ":")):
        value = values_h.quantile(q)
        ax.axvline(value, color="black", linestyle=style, label=f"p{q * 100:g} {duration(value)}")
    hours_axis(ax, label, axis="x")
    ax.set_ylabel("batches")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    # the quantiles in one row over room kept free above the bars, which they never cover
    ax.set_ylim(top=ax.get_ylim()[1] * LEGEND_ROOM)
    ax.legend(loc="upper center", ncols=3, handlelength=1.5, columnspacing=1.0)


def usage_bands(batches: pd.DataFrame, failures: pd.DataFrame) -> Bands:
    """The bands of the usage charts, as the web page draws them (`charts.model_bands`): the
    models of `batches` by their tokens, and those only `failures` name, with none."""
    tokens = batches.groupby("model").total_tokens.sum()
    return model_bands(dict.fromkeys(failures.model, 0.0) | tokens.to_dict())


def stacked_bars(ax: Axes, table: pd.DataFrame, colours: Mapping[str, object]) -> list[str]:
    """One bar per row of `table` (index: day), stacked from its columns (bands of models), the
    largest column at the bottom; columns with nothing in them are left out. Returns the
    columns drawn, in stacking order, each labelled for the legend."""
    totals = table.fillna(0).sum().sort_values(ascending=False, kind="stable")
    drawn = [column for column, total in totals.items() if total > 0]
    base = np.zeros(len(table))
    for column in drawn:
        values = table[column].fillna(0).to_numpy(dtype="float64")
        ax.bar(table.index, values, bottom=base, width=0.8, label=column, color=colours[column])
        base += values
    return drawn


def count_label(value: float, _position: int | None = None) -> str:
    """A count as a short label: 950, 12k, 1.5M, 2B, 3T."""
    return short_count(value)


def count_axis(ax: Axes, label: str, axis: str = "y") -> None:
    """Counts (tokens, lines) labelled 12k, 1.5M ... on `axis`, starting at 0."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(count_label))
    target.set_label_text(label)
    if axis == "y":
        ax.set_ylim(bottom=0)
    else:
        ax.set_xlim(left=0)


def rate_label(value: float, _position: int | None = None) -> str:
    """A rate on a log axis as a plain number: 0.001, 0.1, 10, 1000."""
    return f"{value:g}" if value < 1e5 else f"{value:.0e}"


def log_axis(ax: Axes, label: str, axis: str = "x") -> None:
    """Log scale for rates spanning decades, ticked at powers of ten with plain labels."""
    target = _log_scaled(ax, axis)
    target.set_major_locator(LogLocator(base=10, numticks=12))
    target.set_major_formatter(FuncFormatter(rate_label))
    target.set_minor_formatter(NullFormatter())
    target.set_label_text(label)


def stack_legend(ax: Axes) -> None:
    """A legend right of the axes listing a bar stack top to bottom, as it reads on the chart;
    the partial-day entry, if any, comes last."""
    handles, labels = ax.get_legend_handles_labels()
    entries = list(zip(handles, labels, strict=True))
    stack = [entry for entry in entries if entry[1] != PARTIAL_LABEL][::-1]
    rest = [entry for entry in entries if entry[1] == PARTIAL_LABEL]
    ordered = stack + rest
    ax.legend(
        [handle for handle, _ in ordered],
        [short_label(label) for _, label in ordered],
        loc="upper left",
        bbox_to_anchor=(1, 1),
    )
