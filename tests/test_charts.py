"""The web page's charts as figures: what their axes and marks show."""

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import date2num
from matplotlib.figure import Figure

from pipelines.analytics import charts

TODAY = date(2025, 3, 13)
WEEK = [TODAY - timedelta(days=n) for n in range(6, -1, -1)]
SCALE = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def drawn_labels(figure: Figure) -> list[tuple[float, str]]:
    """(value, label) of each y tick drawn inside the first axes' view."""
    FigureCanvasAgg(figure).draw()
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    return [
        (tick.get_position()[1], tick.get_text())
        for tick in axes.yaxis.get_majorticklabels()
        if low <= tick.get_position()[1] <= high
    ]


def read_label(text: str) -> float:
    """What a reader takes a label for: 0.15 is 0.15, 1.5M is 1,500,000."""
    text = text.replace("\u2212", "-")
    return float(text[:-1]) * SCALE[text[-1]] if text[-1] in SCALE else float(text)


@pytest.mark.parametrize(
    ("values", "label"),
    [
        ([0.05, 0.17, 0.1, 0.02, 0, 0.08, 0.12], "estimated cost (CNY)"),
        ([1.2e6, 3e6, 0, 2.5e6, 9e5, 1e6, 4e5], "tokens"),
        ([3e-4, 1e-3, 0, 0, 2e-4, 5e-4, 7e-4], "estimated cost (CNY)"),
    ],
    ids=["cents", "millions", "fractions of a cent"],
)
def test_amount_axes_read_as_the_amounts_they_mark(values, label):
    figure = charts.stacked_by_model(WEEK, {"model-a": values}, label, TODAY)

    ticks = drawn_labels(figure)

    assert len(ticks) >= 3
    for value, text in ticks:
        assert read_label(text) == pytest.approx(value, rel=0.01, abs=1e-12), text


def hatched_days(figure: Figure) -> list[float]:
    """The middle of each hatched span on the first axes, as a matplotlib date number."""
    axes = figure.axes[0]
    return [
        patch.get_x() + patch.get_width() / 2
        for patch in axes.patches
        if patch.get_hatch() == "///"
    ]


def legend_texts(figure: Figure) -> list[str]:
    legends = [*figure.legends, *(a.get_legend() for a in figure.axes if a.get_legend())]
    return [text.get_text() for legend in legends for text in legend.get_texts()]


@pytest.mark.parametrize(
    "chart",
    [
        lambda today: charts.daily_quantiles(WEEK, [1.0] * 7, [2.0] * 7, WEEK[0], today),
        lambda today: charts.stacked_by_model(WEEK, {"model-a": [5.0] * 7}, "tokens", today),
    ],
    ids=["turnaround per day", "tokens per day"],
)
def test_per_day_charts_hatch_today_alone(chart):
    marked = chart(TODAY)
    past = chart(TODAY + timedelta(days=30))  # a window that ended: no partial day shown

    assert hatched_days(marked) == [pytest.approx(date2num(TODAY))]
    assert charts.PARTIAL_LABEL in legend_texts(marked)
    assert hatched_days(past) == [] and charts.PARTIAL_LABEL not in legend_texts(past)


def test_a_per_day_chart_spans_its_window_though_one_day_has_data():
    figure = charts.daily_quantiles([TODAY], [7.5], [7.5], WEEK[0], TODAY)

    low, high = figure.axes[0].get_xlim()

    assert (low, high) == (date2num(WEEK[0]) - 0.5, date2num(TODAY) + 0.5)
    FigureCanvasAgg(figure).draw()
    assert [label for _, label in shown_dates(figure)] == [f"{day.day:02}" for day in WEEK]


def shown_dates(figure: Figure) -> list[tuple[object, str]]:
    """(extent, text) of each date label drawn under the last axes, left to right."""
    axes = figure.axes[-1]
    low, high = axes.get_xlim()
    labels = [
        label
        for label in axes.xaxis.get_ticklabels()
        if label.get_text() and low <= label.get_position()[0] <= high
    ]
    return sorted(
        ((label.get_window_extent(), label.get_text()) for label in labels),
        key=lambda shown: shown[0].x0,
    )


@pytest.mark.parametrize("days", [1, 7, 30, 90, 400, 3650])
def test_date_labels_never_run_into_each_other(days):
    first = TODAY - timedelta(days=days - 1)
    window = [first + timedelta(days=n) for n in range(days)]
    starts = [datetime(day.year, day.month, day.day, tzinfo=UTC) for day in window]
    figures = {
        "turnaround": charts.daily_quantiles(window, [1.0] * days, [2.0] * days, first, TODAY),
        "tokens": charts.stacked_by_model(window, {"m": [1.0] * days}, "tokens", TODAY),
        "throughput": charts.throughput(starts, [1.0] * days, [], [], 1.0, (first, TODAY)),
    }

    for name, figure in figures.items():
        FigureCanvasAgg(figure).draw()
        shown = shown_dates(figure)
        assert 1 <= len(shown) <= 10, (name, shown)
        for (left, _), (right, _) in itertools.pairwise(shown):
            assert left.x1 < right.x0, (name, [text for _, text in shown])


def test_a_long_model_name_is_cut_in_the_legend():
    long = "Pro/deepseek-ai/DeepSeek-R1-Distill-Qwen-32B-instruct-2026-preview"
    figure = charts.stacked_by_model(WEEK, {long: [1.0] * 7, "Qwen/QwQ-32B": [2.0] * 7}, "t", TODAY)

    assert sorted(legend_texts(figure)) == sorted(
        [long[:31] + "…", "Qwen/QwQ-32B", charts.PARTIAL_LABEL]
    )


def test_up_to_eight_models_each_have_a_colour_of_their_own():
    bands = charts.model_bands({"b": 5, "a": 5, charts.UNKNOWN_MODEL: 0, "c": 9})

    assert bands.of == {name: name for name in ("a", "b", "c", charts.UNKNOWN_MODEL)}
    assert len(set(bands.colours.values())) == 4


def test_past_eight_models_the_seven_with_most_tokens_are_apart_and_the_rest_one_grey_band():
    tokens = {f"model-{n:02}": 1000 * n for n in range(12)}

    bands = charts.model_bands(tokens)

    most = {f"model-{n:02}" for n in range(5, 12)}
    assert {model for model, band in bands.of.items() if band == model} == most
    assert set(bands.of.values()) - most == {"5 other models"}
    assert len(bands.colours) == 8 and len(set(bands.colours.values())) == 8
    assert bands.colour("model-00") == bands.colour("model-04") == charts.OTHER_COLOUR
    assert bands.colour("model-11") != charts.OTHER_COLOUR


def test_the_turnaround_legend_stands_below_the_plot_not_on_its_points():
    figure = charts.daily_quantiles(WEEK, [1.0] * 7, [9.0] * 7, WEEK[0], TODAY)
    FigureCanvasAgg(figure).draw()

    [legend] = figure.legends
    assert legend.get_window_extent().y1 < figure.axes[0].get_window_extent().y0


def test_each_status_bar_says_its_count_so_one_batch_beside_thousands_shows():
    figure = charts.status_mix(["in_progress", "completed", "failed"], [1, 20_000, 35])
    FigureCanvasAgg(figure).draw()

    axes = figure.axes[0]
    said = {text.get_text() for text in axes.texts}
    assert said == {"1", "20,000", "35"}
    inside = axes.get_window_extent()
    assert all(inside.contains(*text.get_window_extent().p1) for text in axes.texts)
    assert all(float(tick).is_integer() for tick in axes.get_xticks())
