"""The HTML report's charts: matplotlib figures as SVG data URIs, so that the page needs no
file and no network to show them (text is drawn as paths: no font to fetch either)."""

from __future__ import annotations

import base64
import io
import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DayLocator, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from pipelines.analytics.report import short_count

# Fonts with Chinese glyphs on Debian/Ubuntu (fonts-noto-cjk, fonts-wqy-zenhei), macOS, Windows
CJK_FONTS = ("Noto Sans CJK SC", "WenQuanYi Zen Hei", "PingFang SC", "Microsoft YaHei")
# narrow enough that the text stays legible when a phone shrinks the chart to its width
WIDTH_IN, HEIGHT_IN = 6.4, 3.0
STYLE = {
    "svg.fonttype": "path",
    # model names may be Chinese: each glyph comes from the first of these fonts installed
    "font.family": ["DejaVu Sans", *CJK_FONTS],
    "svg.hashsalt": "sfbatches",  # the same data gives the same page, byte for byte
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
UNKNOWN_MODEL = "(unknown model)"  # the model of a batch whose result lines name none
# a colour per series, in order; the same model keeps its colour within a chart
COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d")
OTHER_COLOUR = "#9d9d9d"  # the band of the models past those a chart names apart
# A chart draws up to this many bars; beyond, one shape per series (filled steps, or one set of
# lines): each bar is a shape of its own, in matplotlib and in the SVG, so a long window of bars
# is slow to draw and heavy to send, and thinner than a pixel anyway.
MOST_BARS = 400
# the longest model name a legend or axis label shows whole
LABEL_WIDTH = 32
# how a per-day chart names the day not over yet, hatched (the notebooks do the same)
PARTIAL_LABEL = "today (partial)"
FEW_DAYS = 10  # a per-day chart of fewer days has a tick on each


@dataclass(frozen=True)
class Bands:
    """The band of the usage charts each model is drawn in, and each band's colour."""

    of: dict[str, str]  # model -> band: the model itself, or the one of the other models
    colours: dict[str, str]

    def colour(self, model: str) -> str:
        return self.colours[self.of[model]]


def model_bands(tokens: Mapping[str, float]) -> Bands:
    """The models with the most tokens a band each, the rest one band together: no two bands
    share a colour and the legend stays short; a model has its colour on every chart (of the
    web page and of the notebooks)."""
    ranked = sorted(tokens, key=lambda model: (-tokens[model], model))
    if len(ranked) <= len(COLOURS):
        return Bands({model: model for model in ranked}, dict(zip(ranked, COLOURS, strict=False)))
    named = ranked[: len(COLOURS) - 1]
    other = f"{len(ranked) - len(named)} other models"
    return Bands(
        {model: model if model in named else other for model in ranked},
        {**dict(zip(named, COLOURS, strict=False)), other: OTHER_COLOUR},
    )


def data_uri(figure: Figure) -> str:
    """The figure as an `<img src>`: an SVG document, base64-encoded."""
    buffer = io.BytesIO()
    with rc_context(STYLE), warnings.catch_warnings():
        # without any of CJK_FONTS a glyph is drawn as a box: the page still reads, and a
        # warning per glyph would only fill cron's mail
        warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        # no date in the SVG's metadata: the machine's local time, not the page's
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def new_figure(rows: int = 1) -> Figure:
    with rc_context(STYLE):
        figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN * rows), layout="constrained")
        figure.subplots(rows, 1, sharex=True, squeeze=False)
    return figure


def hatch_day(axes: Axes, day: date, centred: bool = True, labelled: bool = True) -> None:
    """Hatch `day` on a per-day chart: its figures are not final yet. `centred` for points and
    centred bars, else for bars that start at the day."""
    start = date2num(datetime(day.year, day.month, day.day)) - (0.5 if centred else 0)
    axes.axvspan(
        start,
        start + 1,
        facecolor=(1, 1, 1, 0.5),
        edgecolor="0.55",
        hatch="///",
        linewidth=0,
        zorder=2.5,  # over bars and lines: the day reads faded, not missing
        label=PARTIAL_LABEL if labelled else "_nolegend_",
    )


def day_axis(axes: Axes, first: date, last: date, centred: bool = True) -> None:
    """The x axis from day `first` to day `last` (UTC), each day's marks `centred` on it or
    starting at it: a quiet stretch of the window still shows. Ticked in whole days when there
    are few, labelled concisely: dates never run into each other."""
    start = date2num(first) - (0.5 if centred else 0)
    axes.set_xlim(start, start + (last - first).days + 1)
    few_days = centred and (last - first).days < FEW_DAYS
    locator = DayLocator() if few_days else AutoDateLocator(minticks=3, maxticks=7)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def short_label(name: str, width: int = LABEL_WIDTH) -> str:
    """`name` cut to `width` characters (the last one an ellipsis): a model named at length must
    not squeeze the chart beside its legend or its axis labels."""
    return name if len(name) <= width else name[: width - 1] + "…"


def count_formatter() -> FuncFormatter:
    return FuncFormatter(lambda value, _position: short_count(value))


def turnaround_histogram(hours: Sequence[float]) -> Figure:
    """How long completed batches took, created to completed."""
    figure = new_figure()
    axes = figure.axes[0]
    with rc_context(STYLE):
        axes.hist(hours, bins=min(40, max(5, len(hours) // 5)), color=COLOURS[0])
        axes.set_xlabel("turnaround (hours, created to completed)")
        axes.set_ylabel("batches")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # no half batches
    return figure


def daily_quantiles(
    days: Sequence[date], p50: Sequence[float], p90: Sequence[float], first: date, today: date
) -> Figure:
    """Turnaround p50 and p90 per day the batches were created, over the days from `first` to
    `today`, hatched."""
    figure = new_figure()
    axes = figure.axes[0]
    with rc_context(STYLE):
        axes.plot(days, p50, marker="o", color=COLOURS[0], label="p50", zorder=3)
        # hollow, so a p50 of the same value still shows through
        axes.plot(
            days,
            p90,
            marker="o",
            markerfacecolor="none",
            linestyle="--",
            color=COLOURS[1],
            label="p90",
        )
        if today in days:
            hatch_day(axes, today)
        day_axis(axes, first, today)
        axes.set_ylabel("turnaround (hours)")
        axes.set_ylim(bottom=0)
        # below the chart, as the stacked charts have it: inside, it covered the first days
        figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return figure


def throughput(
    starts: Sequence[datetime],
    requests_per_second: Sequence[float],
    token_starts: Sequence[datetime],
    tokens_per_second: Sequence[float],
    width_days: float,
    days: tuple[date, date],
) -> Figure:
    """Requests per second in each period (an hour, a day) from its start, and completion
    tokens per second when results exist, over `days` (the first and the last)."""
    with_tokens = bool(token_starts)
    figure = new_figure(rows=2 if with_tokens else 1)
    with rc_context(STYLE):
        top = figure.axes[0]
        period_bars(top, starts, requests_per_second, width_days, COLOURS[0])
        top.set_ylabel("requests/s")
        if with_tokens:
            bottom = figure.axes[1]
            period_bars(bottom, token_starts, tokens_per_second, width_days, COLOURS[2])
            bottom.set_ylabel("completion tokens/s")
            bottom.yaxis.set_major_formatter(count_formatter())
        for axes in figure.axes:
            day_axis(axes, *days, centred=False)
    return figure


def period_bars(
    axes: Axes, starts: Sequence[datetime], values: Sequence[float], width_days: float, colour: str
) -> None:
    """A bar over each period from its start; past MOST_BARS periods (then one after the
    other, none left out) the same outline as one filled shape."""
    if len(starts) <= MOST_BARS:
        axes.bar(starts, values, width=width_days, align="edge", color=colour)
        return
    edges = [*date2num(starts), date2num(starts[-1]) + width_days]
    axes.stairs(values, edges, fill=True, color=colour)


def with_data(
    days: Sequence[date], series: dict[str, Sequence[float]]
) -> tuple[Sequence[date], dict[str, Sequence[float]]]:
    """The days from the first with a value to the last (all of them when none has one)."""
    held = [index for index in range(len(days)) if any(v[index] for v in series.values())]
    if not held:
        return days, series
    span = slice(held[0], held[-1] + 1)
    return days[span], {name: values[span] for name, values in series.items()}


def status_mix(statuses: Sequence[str], counts: Sequence[int]) -> Figure:
    """Batches per status, in lifecycle order from the top, each bar with its count: one batch
    beside thousands has no bar to see."""
    figure = new_figure()
    axes = figure.axes[0]
    with rc_context(STYLE):
        bars = axes.barh(list(statuses)[::-1], list(counts)[::-1], color=COLOURS[0])
        axes.bar_label(bars, labels=[f"{count:,}" for count in list(counts)[::-1]], padding=3)
        axes.margins(x=0.12)  # room for the longest bar's count
        axes.set_xlabel("batches")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def stacked_by_model(
    days: Sequence[date],
    series: dict[str, Sequence[float]],
    label: str,
    today: date,
    colour_of: Mapping[str, str] | None = None,
) -> Figure:
    """One bar per day, stacked by model, `today` hatched; a long window from its first day
    with data to its last, as filled steps. Each model in its colour of `colour_of`, else in
    COLOURS' order."""
    if len(days) * len(series) > MOST_BARS:
        days, series = with_data(days, series)
    figure = new_figure()
    axes = figure.axes[0]
    colour_of = colour_of or dict(zip(series, itertools.cycle(COLOURS)))
    colours = [colour_of[model] for model in series]
    with rc_context(STYLE):
        if len(days) * len(series) <= MOST_BARS:
            base = [0.0] * len(days)
            for (model, values), colour in zip(series.items(), colours, strict=True):
                axes.bar(days, values, bottom=base, label=short_label(model), color=colour)
                base = [b + v for b, v in zip(base, values, strict=True)]
        else:
            # each day's value as a step centred on the day, where its bar would stand
            labels = [short_label(model) for model in series]
            axes.stackplot(days, *series.values(), labels=labels, colors=colours, step="mid")
        if today in days:
            hatch_day(axes, today)
        axes.set_ylabel(label)
        axes.set_ylim(bottom=0)  # all zero (every request failed): not -0.04 to 0.04 tokens
        axes.yaxis.set_major_formatter(count_formatter())
        day_axis(axes, days[0], days[-1])
        figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return figure
