"""The analyst notebooks: each runs top to bottom on a freshly synced warehouse, then lets go."""

import json
import math
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path

import duckdb
import nbformat
import pandas as pd
import pytest
from conftest import REPO, START
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import date2num
from matplotlib.figure import Figure
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from pipelines.analytics.notebooks import (
    DEMO_DB,
    database_path,
    duration,
    load,
    partial_days,
    repo_root,
)
from pipelines.simulator import World

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "sfbatches-notebook-test"
CELL_TIMEOUT_S = 120
# The simulator's day at the second sync (START + 1 h): "today" for the charts' partial day.
TODAY = datetime.fromtimestamp(START + 3600, UTC).date()
# Run before a notebook's own cells: the helpers' clock reads the simulator's day, and every
# figure the notebook shows is kept (the inline backend closes it) for the test to inspect.
KEEP_FIGURES = """
import datetime
import matplotlib.pyplot as plt
import pipelines.analytics.notebooks

pipelines.analytics.notebooks.utc_today = lambda: datetime.date.fromisoformat("{today}")
SHOWN_FIGURES = []
_show = plt.show


def _keep_and_show(*args, **kwargs):
    SHOWN_FIGURES.extend(plt.figure(number) for number in plt.get_fignums())
    return _show(*args, **kwargs)


plt.show = _keep_and_show
"""
MONTH_OF_BATCHES = pytest.param(
    lambda: World(batches=2000, seed=11, now=START), id="month-of-batches"
)


@pytest.fixture(
    params=[
        MONTH_OF_BATCHES,
        # a few minutes of history: batches queued or running, none ended, nothing completed
        pytest.param(
            lambda: World(batches=30, seed=3, now=START, history_days=0.002, future_days=0),
            id="nothing-ended-yet",
        ),
    ]
)
def world(request: pytest.FixtureRequest) -> World:
    return request.param()


@pytest.fixture
def synced_db(simulator, run, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two syncs an hour apart, so open batches have a status history; SFBATCHES_DB names it."""
    assert run("sync", "--db", str(db_path)).code == 0
    simulator.world.advance(3600)
    assert run("sync", "--db", str(db_path)).code == 0
    monkeypatch.setenv("SFBATCHES_DB", str(db_path))
    return db_path


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that runs this very interpreter (the venv's), whatever other Python kernels
    Jupyter knows on this machine: JUPYTER_PATH is searched before the user's and system's."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "sfbatches tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user startup files
    return KERNEL


@pytest.fixture
def run_notebook(kernel_name: str) -> Iterator[Callable[..., tuple[str, Callable]]]:
    """Run every cell of a notebook (after `first`, if given), failing on the first error, in a
    kernel that stays up until the test ends. Returns what the cells printed and a way to run
    one more cell."""
    with ExitStack() as kernels:

        def execute(path: Path, first: str = "") -> tuple[str, Callable[[str], str]]:
            notebook = nbformat.read(path, as_version=4)
            if first:
                notebook.cells.insert(0, new_code_cell(first))
            client = NotebookClient(
                notebook,
                kernel_name=kernel_name,
                timeout=CELL_TIMEOUT_S,
                resources={"metadata": {"path": str(path.parent)}},  # Jupyter's cwd: notebooks/
            )
            kernels.enter_context(client.setup_kernel())
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)  # raises CellExecutionError on an error

            def run_cell(source: str) -> str:
                notebook.cells.append(cell := new_code_cell(source))
                client.execute_cell(cell, len(notebook.cells) - 1)
                return printed([cell])

            return printed(notebook.cells), run_cell

        yield execute


@pytest.fixture
def shown_figures(run_notebook, tmp_path: Path) -> Callable[[Path], list[Figure]]:
    """Run a notebook with today set to the simulator's day; return the figures it showed, drawn
    on an Agg canvas as the inline backend draws them (and saved as PNG next to the test)."""

    def figures_of(path: Path) -> list[Figure]:
        _, run_cell = run_notebook(path, KEEP_FIGURES.format(today=TODAY.isoformat()))
        kept = tmp_path / f"{path.stem}-figures.pickle"
        run_cell(
            f"import pickle\nwith open({str(kept)!r}, 'wb') as out: pickle.dump(SHOWN_FIGURES, out)"
        )
        figures = pickle.loads(kept.read_bytes())
        for index, figure in enumerate(figures):
            FigureCanvasAgg(figure)
            figure.canvas.draw()
            figure.savefig(tmp_path / f"{path.stem}-{index}.png")
        return figures

    return figures_of


def printed(cells: list) -> str:
    return "".join(
        output.get("text", "")
        for cell in cells
        for output in cell.get("outputs", [])
        if output.get("name") == "stdout"
    )


def test_there_are_notebooks_to_run():
    assert {path.name for path in NOTEBOOKS} >= {"turnaround.ipynb", "throughput.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_and_leaves_the_database_unlocked(
    path: Path, synced_db: Path, run_notebook
):
    output, run_cell = run_notebook(path)

    assert run_cell("import sys; print(sys.executable)").strip() == sys.executable
    assert "connection closed" in output
    # The kernel still runs, yet a sync can open the file for writing.
    with duckdb.connect(str(synced_db)) as con:
        (completed,) = con.execute(
            "select count(*) from analytics.batch_turnaround where status = 'completed'"
        ).fetchone()
    if not completed:
        assert "Nothing to plot yet" in output


def test_database_path_is_sfbatches_db_relative_to_the_repo_root(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.duckdb").touch()

    assert database_path({"SFBATCHES_DB": "data/mine.duckdb"}, tmp_path) == (
        tmp_path / "data" / "mine.duckdb"
    )
    assert database_path({"SFBATCHES_DB": str(tmp_path / "data" / "mine.duckdb")}, Path("/")) == (
        tmp_path / "data" / "mine.duckdb"
    )


def test_database_path_defaults_to_siliconflow_duckdb(tmp_path: Path):
    (tmp_path / "siliconflow.duckdb").touch()
    (tmp_path / DEMO_DB).touch()

    assert database_path({}, tmp_path) == tmp_path / "siliconflow.duckdb"


def test_database_path_falls_back_to_the_demo_database_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / DEMO_DB).touch()

    # only while SFBATCHES_DB is not set and siliconflow.duckdb is absent
    assert database_path({}, tmp_path) == tmp_path / DEMO_DB
    out = capsys.readouterr().out
    assert "siliconflow.duckdb not found" in out
    assert DEMO_DB in out


@pytest.mark.parametrize("named", ["absent.duckdb", "data/absent.duckdb", "/no/such/dir/x.duckdb"])
def test_database_path_stops_when_sfbatches_db_names_a_missing_file(
    named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / DEMO_DB).touch()
    (tmp_path / "siliconflow.duckdb").touch()

    with pytest.raises(FileNotFoundError) as stopped:
        database_path({"SFBATCHES_DB": named}, tmp_path)

    message = str(stopped.value)
    missing = named if named.startswith("/") else str(tmp_path / named)
    assert f"no database at {missing}" in message
    assert f"sfbatches sync --db {missing}" in message
    assert "unset SFBATCHES_DB" in message
    assert len(message.splitlines()) == 1
    assert capsys.readouterr().out == ""  # no word of the demo: nothing is shown instead


def test_database_path_without_any_database_says_what_to_do(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="make demo"):
        database_path({}, tmp_path)


def test_repo_root_is_found_from_the_notebooks_folder():
    assert repo_root(REPO / "notebooks") == REPO


@pytest.mark.parametrize(
    ("value_h", "text"),
    [(12 / 3600, "12 s"), (0.075, "4.5 min"), (3.6, "3.6 h"), (50.4, "2.1 d")],
)
def test_durations_read_in_the_largest_sensible_unit(value_h: float, text: str):
    assert duration(value_h) == text


@pytest.mark.parametrize(
    "world",
    [pytest.param(lambda: World(batches=0, seed=5, now=START), id="no-batches")],
    indirect=True,
)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_says_there_are_no_batches_yet_and_runs_on_an_empty_warehouse(
    path: Path, synced_db: Path, run_notebook
):
    with duckdb.connect(str(synced_db), read_only=True) as con:
        assert con.execute("select count(*) from siliconflow.batches").fetchall() == [(0,)]

    output, _ = run_notebook(path)  # raises on the first cell that fails

    assert output.count(f"No batches in {synced_db} yet") == 1
    # said by the first cells, before any chart says it has nothing to plot
    assert output.index("No batches in") < output.index("Nothing to plot yet")
    assert "connection closed" in output


def test_load_says_what_to_do_when_the_database_has_no_analytics_views(tmp_path: Path):
    bare = tmp_path / "bare.duckdb"
    duckdb.connect(str(bare)).close()

    with pytest.raises(LookupError, match=r"no analytics views: run `sfbatches sync --db "):
        load(bare, {"one": "select 1"})


def drawn_tick_labels(axis: Axis) -> list:
    """The major tick labels matplotlib drew on `axis`: inside the view and not blank."""
    low, high = sorted(axis.get_view_interval())
    locations = axis.get_majorticklocs()
    ticks = axis.get_major_ticks(len(locations))
    return [
        tick.label1
        for tick, location in zip(ticks, locations, strict=True)
        if low <= location <= high and tick.label1.get_visible() and tick.label1.get_text()
    ]


def overlapping_tick_labels(figure: Figure) -> list[tuple[str, str, str]]:
    """(axes title, label, next label) for each pair of neighbouring tick labels whose rendered
    boxes overlap, on either axis of every axes drawn."""
    renderer = figure.canvas.get_renderer()
    overlaps = []
    for ax in figure.axes:
        if not ax.axison:
            continue
        for axis, start, end in ((ax.xaxis, "x0", "x1"), (ax.yaxis, "y0", "y1")):
            boxes = [
                (label.get_window_extent(renderer), label.get_text())
                for label in drawn_tick_labels(axis)
            ]
            boxes.sort(key=lambda box: getattr(box[0], start))
            overlaps += [
                (ax.get_title(), text, next_text)
                for (box, text), (next_box, next_text) in pairwise(boxes)
                if getattr(box, end) > getattr(next_box, start)
            ]
    return overlaps


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_histogram_and_axis_tick_labels_do_not_overlap(path: Path, synced_db: Path, shown_figures):
    figures = shown_figures(path)

    assert figures
    for figure in figures:
        assert overlapping_tick_labels(figure) == []
    histograms = [ax for figure in figures for ax in figure.axes if ax.get_title() in HISTOGRAMS]
    for ax in histograms:
        if not ax.axison:  # "no … yet"
            continue
        labels = [label.get_text() for label in drawn_tick_labels(ax.xaxis)]
        assert len(labels) >= 3, (ax.get_title(), labels)
        assert all(re.fullmatch(r"\d+ (s|min|h|d)", label) for label in labels), labels
        assert ax.get_ylabel() == "batches"
        assert ax.get_xlabel()


HISTOGRAMS = {"Turnaround", "Queue wait"}
PER_DAY_CHARTS = {
    "turnaround": {
        "Turnaround, by day created",
        "Queue wait, by day created",
        "Window-miss rate, by day created",
        "Missed batches, by outcome and day created",
    },
    "throughput": {
        "Requests per second, daily average",
        "Failed requests in completed batches, by day completed",
        "Batches that did not complete, by day ended",
        "Requests per second, daily average by endpoint",
    },
}
# charts on which today surely has data in the month of batches (created or completed today)
TODAY_SURELY_PLOTTED = {"Turnaround, by day created", "Requests per second, daily average"}


def plotted_days(ax: Axes) -> dict[int, float]:
    """Each day a point or bar stands for (days since 1970) and where on x it stands."""
    places = {}
    for line in ax.lines:
        for x in line.get_xdata(orig=False):
            places[math.floor(float(x))] = float(x)
    for bar in ax.patches:
        if not bar.get_hatch():
            middle = bar.get_x() + bar.get_width() / 2
            places[math.floor(middle)] = middle
    return places


def marked_days(ax: Axes, places: dict[int, float]) -> set[int]:
    """The plotted days whose point or bar lies under a hatched span."""
    to_data = ax.transData.inverted()
    spans = [patch.get_extents().transformed(to_data) for patch in ax.patches if patch.get_hatch()]
    return {day for day, x in places.items() for span in spans if span.x0 <= x <= span.x1}


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_per_day_charts_mark_today_as_partial(path: Path, synced_db: Path, shown_figures):
    today = math.floor(date2num(datetime(TODAY.year, TODAY.month, TODAY.day)))

    figures = shown_figures(path)

    per_day = [
        ax
        for figure in figures
        for ax in figure.axes
        if re.search(r"\bday\b|\bdaily\b", ax.get_title())
    ]
    assert {ax.get_title() for ax in per_day} == PER_DAY_CHARTS[path.stem]
    for ax in per_day:
        places = plotted_days(ax)
        assert marked_days(ax, places) == ({today} & places.keys()), ax.get_title()
        if today in places:
            legend = [text.get_text() for text in ax.get_legend().get_texts()]
            assert "today (partial)" in legend, ax.get_title()
        if ax.get_title() in TODAY_SURELY_PLOTTED:
            assert today in places, ax.get_title()


def test_partial_days_are_today_and_later_in_utc():
    days = [
        "2025-11-22",
        date(2025, 11, 23),
        pd.Timestamp("2025-11-24 01:00", tz="Asia/Shanghai"),  # 2025-11-23 17:00 UTC
        pd.Timestamp("2025-11-24"),
        datetime(2025, 11, 24, 23, 59, tzinfo=UTC),
        pd.NaT,
    ]

    assert partial_days(days, today=date(2025, 11, 24)) == [date(2025, 11, 24)]
    assert partial_days(days, today=date(2025, 11, 25)) == []
    assert partial_days(days, today=date(2025, 11, 23)) == [date(2025, 11, 23), date(2025, 11, 24)]


@pytest.mark.parametrize(("uid", "as_root"), [("0", True), ("1000", False)])
def test_make_notebooks_lets_jupyter_run_as_root_and_names_the_db_only_when_given(
    uid: str, as_root: bool, tmp_path: Path
):
    # `make -n` prints the commands without running them; a stand-in `id` says who we are.
    (tmp_path / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (tmp_path / "id").chmod(0o755)
    env = {name: value for name, value in os.environ.items() if name != "DB"}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env['PATH']}"

    def jupyter_command(*args: str) -> str:
        done = subprocess.run(
            ["make", "-n", "notebooks", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return next(line for line in done.stdout.splitlines() if "jupyter lab" in line)

    plain = jupyter_command().split()
    assert ("--allow-root" in plain) == as_root
    assert plain[-1] == "notebooks/"
    assert not any(word.startswith("SFBATCHES_DB=") for word in plain)
    named = jupyter_command("DB=mine.duckdb").split()
    assert named[0] == "SFBATCHES_DB=mine.duckdb"
    assert ("--allow-root" in named) == as_root
