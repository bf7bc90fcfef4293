"""What the notebooks in notebooks/ share: which database, loading it, and plot conventions.

Needs the `notebooks` (or `dev`) extra for matplotlib. Nothing in the package imports this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.ticker import NullFormatter, PercentFormatter

from pipelines.warehouse.database import DEFAULT_DB, open_database

DEMO_DB = "demo.duckdb"
HOUR_S = 3600.0
# ticks for durations in hours on a log axis: 1 s .. 14 d
DURATION_TICKS_H = {
    1 / 3600: "1 s",
    10 / 3600: "10 s",
    1 / 60: "1 min",
    10 / 60: "10 min",
    0.5: "30 min",
    1: "1 h",
    6: "6 h",
    24: "24 h",
    72: "3 d",
    336: "14 d",
}


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

    When that file does not exist but demo.duckdb does, says so and returns demo.duckdb.
    """
    env = os.environ if env is None else env
    root = root or repo_root()
    wanted = root / (env.get("SFBATCHES_DB") or DEFAULT_DB)
    if wanted.exists():
        return wanted
    demo = root / DEMO_DB
    if demo.exists():
        print(f"Note: {shown(wanted, root)} not found; showing the demo database {DEMO_DB}.")
        print("Set SFBATCHES_DB (or run `make sync`) to look at your own batches.")
        return demo
    raise FileNotFoundError(
        f"no database at {wanted} (nor {demo}): run `make demo` or `make sync`, "
        "or set SFBATCHES_DB to your DuckDB file"
    )


def shown(path: Path, root: Path | None = None) -> str:
    """`path` relative to the repo root when it lies inside it, so outputs carry no home dirs."""
    try:
        return str(path.relative_to(root or repo_root()))
    except ValueError:
        return str(path)


def load(db_path: Path, queries: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """Run each query on a read-only connection in UTC and close it before returning.

    A notebook holds no connection afterwards, so it never blocks the next sync.
    """
    with open_database(db_path, read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        frames = {name: con.sql(sql).df() for name, sql in queries.items()}
    print(f"Read {shown(db_path)} (read-only, times in UTC); connection closed.")
    return frames


def use_style() -> None:
    """Figure defaults the notebooks share: readable sizes, light grids, tight layout."""
    plt.rcParams.update(
        {
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


def hours_axis(ax: Axes, label: str, axis: str = "y") -> None:
    """Log scale for durations given in hours, ticked at 1 s, 10 s, 1 min ... 14 d."""
    if axis == "y":
        ax.set_yscale("log")
        ax.set_ylabel(label)
        target, (low, high) = ax.yaxis, ax.get_ylim()
    else:
        ax.set_xscale("log")
        ax.set_xlabel(label)
        target, (low, high) = ax.xaxis, ax.get_xlim()
    ticks = [tick for tick in DURATION_TICKS_H if low <= tick <= high] or list(DURATION_TICKS_H)
    target.set_ticks(ticks, labels=[DURATION_TICKS_H[tick] for tick in ticks])
    target.set_minor_formatter(NullFormatter())


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
    ax.legend()
