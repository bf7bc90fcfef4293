"""The analyst notebooks: each runs top to bottom on a freshly synced warehouse, then lets go."""

import json
import logging
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import duckdb
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, START, held_open
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import date2num, num2date
from matplotlib.figure import Figure
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell

from pipelines.analytics.notebooks import (
    DEMO_DB,
    PARTIAL_LABEL,
    UNKNOWN_MODEL,
    NotebookStop,
    count_label,
    database_path,
    duration,
    duration_histogram,
    hours_axis,
    load,
    partial_days,
    repo_root,
    short_label,
    stack_legend,
    use_style,
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
# Batches of up to 60 requests: result files small enough to download in seconds.
MONTH_OF_BATCHES = pytest.param(
    lambda: World(batches=2000, seed=11, now=START, max_requests=60), id="month-of-batches"
)
# a few minutes of history: batches queued or running, none ended, nothing completed
NOTHING_ENDED_YET = pytest.param(
    lambda: World(
        batches=30, seed=3, now=START, history_days=0.002, future_days=0, max_requests=60
    ),
    id="nothing-ended-yet",
)
USAGE = REPO / "notebooks" / "usage.ipynb"
NO_RESULT_FILES = "No result files loaded in"


@pytest.fixture(params=[MONTH_OF_BATCHES, NOTHING_ENDED_YET])
def world(request: pytest.FixtureRequest) -> World:
    return request.param()


@pytest.fixture
def load_results() -> bool:
    """Whether the syncs download the batches' result files (conftest turns that off for other
    tests); a test parametrizes it to False for a warehouse synced as `--no-results` does."""
    return True


@pytest.fixture(scope="session")
def synced_warehouses() -> dict[tuple, Path]:
    """The warehouses synced so far, by world and `load_results`: a world is synced once, and
    each test reads its own copy."""
    return {}


@pytest.fixture
def synced_db(
    request: pytest.FixtureRequest,
    world: World,
    load_results: bool,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    synced_warehouses: dict[tuple, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Two syncs an hour apart, so open batches have a status history, with result files unless
    `load_results` is False; SFBATCHES_DB names it."""
    key = (request.node.callspec.params["world"], load_results)  # the world's factory
    if key not in synced_warehouses:
        monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "true" if load_results else "false")
        simulator = request.getfixturevalue("simulator")
        run = request.getfixturevalue("run")
        assert run("sync", "--db", str(db_path)).code == 0
        simulator.world.advance(3600)
        assert run("sync", "--db", str(db_path)).code == 0
        kept = tmp_path_factory.mktemp("synced") / db_path.name
        shutil.copyfile(db_path, kept)
        synced_warehouses[key] = kept
    else:
        shutil.copyfile(synced_warehouses[key], db_path)
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


class Executed(NamedTuple):
    printed: str  # what the cells printed
    run_cell: Callable[[str], str]  # runs one more cell, returns what it printed
    cells: list  # the notebook's cells with their outputs


@pytest.fixture
def run_notebook(kernel_name: str) -> Iterator[Callable[..., Executed]]:
    """Run every cell of a notebook (after `first`, if given), failing on the first error, in a
    kernel that stays up until the test ends."""
    with ExitStack() as kernels:

        def execute(path: Path, first: str = "") -> Executed:
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

            return Executed(printed(notebook.cells), run_cell, notebook.cells)

        yield execute


class Shown(NamedTuple):
    printed: str
    figures: list[Figure]
    tables: list[pd.DataFrame]  # each table displayed, its cells as the HTML shows them


@pytest.fixture
def shown(run_notebook, tmp_path: Path) -> Callable[[Path], Shown]:
    """Run a notebook with today set to the simulator's day; return what it printed, the
    figures it showed, drawn on an Agg canvas as the inline backend draws them (and saved as
    PNG next to the test), and the tables it displayed."""

    def shown_by(path: Path) -> Shown:
        executed = run_notebook(path, KEEP_FIGURES.format(today=TODAY.isoformat()))
        kept = tmp_path / f"{path.stem}-figures.pickle"
        executed.run_cell(
            f"import pickle\nwith open({str(kept)!r}, 'wb') as out: pickle.dump(SHOWN_FIGURES, out)"
        )
        figures = pickle.loads(kept.read_bytes())
        for index, figure in enumerate(figures):
            FigureCanvasAgg(figure)
            figure.canvas.draw()
            figure.savefig(tmp_path / f"{path.stem}-{index}.png")
        return Shown(executed.printed, figures, displayed_tables(executed.cells))

    return shown_by


class TableCells(HTMLParser):
    """The cells of each <table> in a page, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None


def displayed_tables(cells: list) -> list[pd.DataFrame]:
    """Each DataFrame the cells displayed, as text read back from its HTML (index dropped)."""
    parser = TableCells()
    for cell in cells:
        for output in cell.get("outputs", []):
            parser.feed(output.get("data", {}).get("text/html", ""))
    return [
        pd.DataFrame([row[1:] for row in rows[1:]], columns=rows[0][1:]) for rows in parser.tables
    ]


def printed(cells: list) -> str:
    return "".join(
        output.get("text", "")
        for cell in cells
        for output in cell.get("outputs", [])
        if output.get("name") == "stdout"
    )


def test_there_are_notebooks_to_run():
    assert {path.name for path in NOTEBOOKS} >= {
        "turnaround.ipynb",
        "throughput.ipynb",
        "usage.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_and_leaves_the_database_unlocked(
    path: Path, synced_db: Path, run_notebook
):
    output, run_cell, _ = run_notebook(path)

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


def test_database_path_takes_a_home_folder_as_the_cli_does(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "mine.duckdb").touch()

    assert database_path({"SFBATCHES_DB": "~/mine.duckdb"}, Path("/")) == (
        tmp_path / "home" / "mine.duckdb"
    )


@pytest.mark.parametrize("env", [{}, {"SFBATCHES_DB": ""}, {"SFBATCHES_DB": "  "}])
def test_database_path_defaults_to_siliconflow_duckdb(tmp_path: Path, env):
    (tmp_path / "siliconflow.duckdb").touch()
    (tmp_path / DEMO_DB).touch()

    assert database_path(env, tmp_path) == tmp_path / "siliconflow.duckdb"


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

    with pytest.raises(NotebookStop) as stopped:
        database_path({"SFBATCHES_DB": named}, tmp_path)

    message = str(stopped.value)
    missing = named if named.startswith("/") else str(tmp_path / named)
    assert f"no database at {missing}" in message
    assert f"sfbatches sync --db {missing}" in message
    assert "unset SFBATCHES_DB" in message
    assert len(message.splitlines()) == 1
    assert capsys.readouterr().out == ""  # no word of the demo: nothing is shown instead


def test_database_path_offers_the_demo_only_when_there_is_one(tmp_path: Path):
    with pytest.raises(NotebookStop) as stopped:
        database_path({"SFBATCHES_DB": "absent.duckdb"}, tmp_path)

    assert str(stopped.value).endswith("to create it")


def test_database_path_stops_when_sfbatches_db_names_a_folder(tmp_path: Path):
    (tmp_path / "data").mkdir()

    with pytest.raises(NotebookStop) as stopped:
        database_path({"SFBATCHES_DB": "data"}, tmp_path)

    assert str(stopped.value) == (
        f"{tmp_path / 'data'} (named by SFBATCHES_DB) is a folder: point SFBATCHES_DB at the "
        "DuckDB file `sfbatches sync --db` writes"
    )


def test_database_path_without_any_database_says_what_to_do(tmp_path: Path):
    with pytest.raises(NotebookStop, match="make demo"):
        database_path({}, tmp_path)


@pytest.mark.parametrize("case", ["not a database", "held by another process"])
def test_load_stops_with_the_line_the_cli_would_say(tmp_path: Path, monkeypatch, case):
    db_path = tmp_path / "x.duckdb"
    monkeypatch.setenv("SFBATCHES_LOCK_TIMEOUT", "0.2")
    held = ExitStack()
    if case == "not a database":
        db_path.write_text("my notes, not a warehouse")
    else:
        duckdb.connect(str(db_path)).close()
        held.enter_context(held_open(db_path))
    with held, pytest.raises(NotebookStop) as stopped:
        load(db_path, {"one": "select 1"})

    said = {"not a database": "not a DuckDB", "held by another process": "is locked by"}[case]
    assert said in str(stopped.value) and len(str(stopped.value).splitlines()) == 1
    assert stopped.value.__cause__ is None and stopped.value.__suppress_context__


def test_a_notebook_that_cannot_go_on_shows_one_line_not_a_traceback(
    kernel_name: str, tmp_path: Path
):
    folder = tmp_path / "data"
    folder.mkdir()
    path = REPO / "notebooks" / "turnaround.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(
        0, new_code_cell(f"import os; os.environ['SFBATCHES_DB'] = {str(folder)!r}")
    )
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )

    with pytest.raises(CellExecutionError):
        client.execute()

    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output["output_type"] == "error"
    ]
    assert [error["traceback"] for error in errors] == [
        [
            f"sfbatches: {folder} (named by SFBATCHES_DB) is a folder: point SFBATCHES_DB at the "
            "DuckDB file `sfbatches sync --db` writes"
        ]
    ]


def test_the_committed_notebooks_hold_no_outputs_to_mistake_for_the_users_own():
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        code = [cell for cell in cells if cell.cell_type == "code"]
        assert code and not [cell for cell in code if cell.outputs], path.name
        assert not [cell for cell in code if cell.execution_count], path.name


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

    output, _, _ = run_notebook(path)  # raises on the first cell that fails

    assert output.count(f"No batches in {synced_db} yet") == 1
    # said by the first cells, before any chart says it has nothing to plot
    assert output.index("No batches in") < output.index("Nothing to plot yet")
    assert "connection closed" in output


def test_load_says_what_to_do_when_the_database_has_no_analytics_views(tmp_path: Path):
    bare = tmp_path / "bare.duckdb"
    duckdb.connect(str(bare)).close()

    with pytest.raises(NotebookStop, match=r"no analytics views: run `sfbatches sync --db "):
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
def test_histogram_and_axis_tick_labels_do_not_overlap(path: Path, synced_db: Path, shown):
    printed, figures, _ = shown(path)

    assert figures or NO_RESULT_FILES in printed
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
    "usage": {
        "Prompt tokens, by day ended",
        "Completion tokens, by day ended",
        "Estimated cost, by day ended",
    },
}
# charts on which today surely has data in the month of batches (created, completed or ended
# today)
TODAY_SURELY_PLOTTED = {
    "Turnaround, by day created",
    "Requests per second, daily average",
    "Prompt tokens, by day ended",
    "Estimated cost, by day ended",
}


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
def test_per_day_charts_mark_today_as_partial(path: Path, synced_db: Path, shown):
    today = math.floor(date2num(datetime(TODAY.year, TODAY.month, TODAY.day)))

    figures = shown(path).figures

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
            assert PARTIAL_LABEL in legend, ax.get_title()
        if ax.get_title() in TODAY_SURELY_PLOTTED:
            assert today in places, ax.get_title()


def edited_copy(db_path: Path, folder: Path, sql: str, parameters: list | None = None) -> Path:
    """A copy of `db_path` in `folder` with `sql` run on it (the views read the edit live)."""
    copy = folder / f"edited-{db_path.name}"
    shutil.copy(db_path, copy)
    with duckdb.connect(str(copy)) as con:
        con.execute(sql, parameters or [])
    return copy


# The notebooks that draw per-day lines
PER_DAY_LINES = pytest.mark.parametrize(
    "path", [path for path in NOTEBOOKS if path != USAGE], ids=lambda path: path.stem
)
# The per-day charts drawn as lines, and those whose days without data are none at all (0),
# not unknown (a gap).
LINE_CHARTS = {
    "turnaround": {
        "Turnaround, by day created",
        "Queue wait, by day created",
        "Window-miss rate, by day created",
    },
    "throughput": {
        "Failed requests in completed batches, by day completed",
        "Batches that did not complete, by day ended",
        "Requests per second, daily average by endpoint",
    },
}
IDLE_IS_ZERO = {"Requests per second, daily average by endpoint"}
EVENT_TIMES = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelled_at",
)


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
@PER_DAY_LINES
def test_per_day_lines_never_join_days_around_one_without_data(
    path: Path, synced_db: Path, shown, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    [(first, last)] = query(
        synced_db, "select min(created_at), max(created_at) from siliconflow.batches"
    )
    gap = (first + (last - first) / 2).astimezone(UTC).date()
    happened_on_gap = " or ".join(f"timezone('UTC', {column})::date = ?" for column in EVENT_TIMES)
    gapped = edited_copy(
        synced_db,
        tmp_path,
        f"delete from siliconflow.batches where {happened_on_gap}",
        [gap] * len(EVENT_TIMES),
    )
    monkeypatch.setenv("SFBATCHES_DB", str(gapped))
    gap_day = math.floor(date2num(datetime(gap.year, gap.month, gap.day)))

    figures = shown(path).figures

    lines = [
        (ax.get_title(), line)
        for figure in figures
        for ax in figure.axes
        if ax.get_title() in PER_DAY_CHARTS[path.stem]
        for line in ax.lines
    ]
    assert {title for title, _ in lines} == LINE_CHARTS[path.stem]
    for title, line in lines:
        days = [math.floor(float(x)) for x in line.get_xdata(orig=False)]
        assert days == list(range(days[0], days[-1] + 1)), title  # one point a day, none skipped
        assert days[0] < gap_day < days[-1], title
        on_gap = float(line.get_ydata(orig=False)[days.index(gap_day)])
        if title in IDLE_IS_ZERO:
            assert on_gap == 0, title
        else:
            assert math.isnan(on_gap), title


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
@PER_DAY_LINES
def test_days_filled_in_up_to_a_batch_far_ahead_are_not_hatched_as_partial(
    path: Path, synced_db: Path, shown, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    moved = " , ".join(f"{column} = {column} + interval 30 day" for column in EVENT_TIMES)
    ahead = edited_copy(  # the newest completed batch, dated a month ahead
        synced_db,
        tmp_path,
        f"update siliconflow.batches set {moved} where id = (select id from "
        "siliconflow.batches where status = 'completed' order by created_at desc limit 1)",
    )
    monkeypatch.setenv("SFBATCHES_DB", str(ahead))

    figures = shown(path).figures

    for figure in figures:
        for ax in figure.axes:
            if ax.get_title() in PER_DAY_CHARTS[path.stem]:
                hatched = [patch for patch in ax.patches if patch.get_hatch()]
                assert len(hatched) <= 2, ax.get_title()  # today and the day ahead, no more


THROUGHPUT = REPO / "notebooks" / "throughput.ipynb"


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
def test_progress_panels_count_whole_requests_even_for_a_batch_of_one(
    synced_db: Path, shown, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    [(batch_id,)] = query(
        synced_db,
        "select batch_id from analytics.open_batches where in_progress_at is not null "
        "and progress is not null order by created_at limit 1",
    )
    one = edited_copy(  # the oldest started open batch holds one request
        synced_db,
        tmp_path,
        "update siliconflow.batch_status_history "
        "set requests_total = 1, requests_completed = least(requests_completed, 1) "
        "where batch_id = ?",
        [batch_id],
    )
    monkeypatch.setenv("SFBATCHES_DB", str(one))

    figures = shown(THROUGHPUT).figures

    [panels] = [
        figure.axes
        for figure in figures
        if figure.get_suptitle() == "Open batches: requests completed over time"
    ]
    titles = [ax.get_title() for ax in panels if ax.get_title()]
    assert any(title.startswith(batch_id[:18]) for title in titles)
    for ax in panels:
        if not ax.get_title():
            continue  # an empty place in the grid
        low, high = ax.get_ylim()
        ticks = [tick for tick in ax.get_yticks() if low <= tick <= high]
        assert len(ticks) >= 2, ax.get_title()
        assert all(float(tick).is_integer() for tick in ticks), (ax.get_title(), ticks)


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


# --- the usage notebook: what it shows is what the views hold ---------------------------------

MODELS_TABLE = (
    "model",
    "batches",
    "requests",
    "requests_failed",
    "prompt_tokens",
    "completion_tokens",
    "estimated_cost",
    "currency",
)
REASONS_TABLE = ("error_code", "status", "failed_lines", "share_pct", "batches", "models")
EXPENSIVE_TABLE = (
    "batch_id",
    "model",
    "ended_utc",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "estimated_cost",
    "currency",
)
SLOWEST_TABLE = (
    "batch_id",
    "model",
    "ended_utc",
    "requests",
    "completion_tokens",
    "processing_h",
    "completion_tokens_per_second",
)
# Failed lines as SPEC 3 and 4 define them, read from the loaded lines themselves: error-file
# lines, and output lines with an error (code or message) or a non-2xx status. They seldom name a
# model; the batch's (batch_usage) stands in.
FAILED_LINES = f"""
    select
        coalesce(requests.error_code, '(no code)') as error_code,
        coalesce('HTTP ' || requests.status_code, 'no status') as status,
        coalesce(requests.model, usage.model, '{UNKNOWN_MODEL}') as model,
        requests.batch_id
    from siliconflow.batch_requests as requests
    left join analytics.batch_usage as usage
        on requests.batch_id = usage.batch_id
    where requests.kind = 'error'
        or requests.error_code is not null
        or requests.error_message is not null
        or requests.status_code not between 200 and 299
"""


def query(db_path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def titled(figures: list[Figure], title: str) -> Axes:
    [ax] = [ax for figure in figures for ax in figure.axes if ax.get_title() == title]
    return ax


def tick_labels(axis: Axis) -> dict[int, str]:
    """Each major tick's label by its (rounded) place on the axis."""
    return {
        round(location): label.get_text()
        for location, label in zip(axis.get_majorticklocs(), axis.get_ticklabels(), strict=True)
    }


def bar_segments(ax: Axes, horizontal: bool = False) -> dict[tuple[object, str], float]:
    """Each non-empty segment of a stacked bar chart: (where it stands, its legend label) ->
    its length. Where: the UTC day of a vertical bar, the tick label of a horizontal one."""
    rows = tick_labels(ax.yaxis)
    segments = {}
    for container in ax.containers:
        for bar in container:
            if horizontal:
                place, length = rows[round(bar.get_y() + bar.get_height() / 2)], bar.get_width()
            else:
                place = num2date(round(bar.get_x() + bar.get_width() / 2)).date()
                length = bar.get_height()
            if length:
                segments[(place, container.get_label())] = length
    return segments


def legend_labels(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def number(text: str) -> float | None:
    """A number as a displayed table shows it; None for a missing value."""
    return None if text in ("NaN", "None", "<NA>") else float(text.replace(",", ""))


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
def test_usage_charts_show_the_tokens_cost_speeds_and_failures_the_views_hold(
    synced_db: Path, shown
):
    figures = shown(USAGE).figures

    colors: dict[str, set] = defaultdict(set)
    for title, column in (
        ("Prompt tokens, by day ended", "prompt_tokens"),
        ("Completion tokens, by day ended", "completion_tokens"),
        ("Estimated cost, by day ended", "estimated_cost"),
    ):
        ax = titled(figures, title)
        totals = query(
            synced_db,
            f"select usage_date, coalesce(model, '{UNKNOWN_MODEL}'), sum({column}) "
            f"from analytics.daily_usage group by all having sum({column}) > 0",
        )
        assert bar_segments(ax) == pytest.approx({(day, m): total for day, m, total in totals})
        # the legend lists the stack as it reads, top first, then the partial day
        stack = [container.get_label() for container in ax.containers]
        assert set(stack) == {model for _, model, _ in totals}
        assert legend_labels(ax) == [*stack[::-1], PARTIAL_LABEL]
        for container in ax.containers:
            colors[container.get_label()] |= {bar.get_facecolor()[:3] for bar in container}
    assert titled(figures, "Estimated cost, by day ended").get_ylabel() == "estimated cost (CNY)"

    ax = titled(figures, "Completion tokens per second, by model")
    assert ax.get_xscale() == "log"
    speeds: dict[str, list[float]] = defaultdict(list)
    for model, speed in query(
        synced_db,
        f"select coalesce(model, '{UNKNOWN_MODEL}'), completion_tokens_per_second "
        "from analytics.batch_usage where completion_tokens_per_second > 0",
    ):
        speeds[model].append(speed)
    rows = tick_labels(ax.yaxis)
    plotted = {}
    for points in ax.collections:  # a strip of points per model, along its box
        offsets = np.asarray(points.get_offsets())
        label = rows[round(offsets[:, 1].mean())]
        model, count = re.fullmatch(r"(.+)  \(n=([\d,]+)\)", label).groups()
        assert int(count.replace(",", "")) == len(offsets), label
        plotted[model] = sorted(offsets[:, 0])
        colors[model] |= {tuple(color[:3]) for color in points.get_facecolor()}
    assert plotted.keys() == speeds.keys()
    for model, values in speeds.items():
        assert plotted[model] == pytest.approx(sorted(values)), model

    ax = titled(figures, "Failed request lines, by reason and model")
    failed = query(
        synced_db, f"select error_code, status, model, count(*) from ({FAILED_LINES}) group by all"
    )
    # the month's lines fail for fewer reasons than the 10 the chart has room for
    assert bar_segments(ax, horizontal=True) == {
        (f"{code} ({status})", model): lines for code, status, model, lines in failed
    }
    per_reason: dict[str, int] = defaultdict(int)
    for code, status, _, lines in failed:
        per_reason[f"{code} ({status})"] += lines
    top_down = [label for _, label in sorted(tick_labels(ax.yaxis).items(), reverse=True)]
    assert [per_reason[label] for label in top_down] == sorted(per_reason.values(), reverse=True)

    # a model has one colour on every chart
    assert all(len(shades) == 1 for shades in colors.values()), colors


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
def test_past_seven_models_the_usage_charts_draw_the_rest_as_one_band_in_one_colour(
    synced_db: Path, shown, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    many = edited_copy(  # twelve models, by batch
        synced_db,
        tmp_path,
        "update siliconflow.batch_requests set model = 'vendor/model-' || "
        "(hash(batch_id) % 12)::varchar where model is not null",
    )
    monkeypatch.setenv("SFBATCHES_DB", str(many))
    loaded = "select batch_id from siliconflow.batch_files where state = 'loaded'"
    model_of = {batch_id: None for (batch_id,) in query(many, loaded)}
    tokens: dict[str, int] = defaultdict(int)
    for batch_id, model, total in query(
        many,
        "select batch_id, model, total_tokens from siliconflow.batch_requests "
        f"where kind = 'output' and batch_id in ({loaded})",
    ):
        model_of[batch_id] = model or model_of[batch_id]
        tokens[batch_id] += total or 0
    per_model: dict[str, int] = defaultdict(int)
    for batch_id, model in model_of.items():  # a batch with no output line has no model
        per_model[model or UNKNOWN_MODEL] += tokens[batch_id]
    ranked = sorted(per_model, key=lambda model: -per_model[model])
    assert len(ranked) >= 12

    figures = shown(USAGE).figures

    colour_of: dict[str, tuple] = {}
    for title in (
        "Prompt tokens, by day ended",
        "Completion tokens, by day ended",
        "Failed request lines, by reason and model",
    ):
        ax = titled(figures, title)
        bands = set(legend_labels(ax)) - {PARTIAL_LABEL}
        # the seven models with the most tokens apart (all of them on the tokens charts)
        named = bands - {f"{len(ranked) - 7} other models"}
        assert len(named) == len(bands) - 1 and named <= set(ranked[:7]), title
        assert "tokens" not in title or named == set(ranked[:7])
        for container in ax.containers:
            [colour] = {bar.get_facecolor()[:3] for bar in container}
            assert colour_of.setdefault(container.get_label(), colour) == colour, title
    assert len(set(colour_of.values())) == len(colour_of)  # no two bands share a colour


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
def test_usage_tables_and_totals_are_the_views_numbers(synced_db: Path, shown):
    printed, _, tables = shown(USAGE)

    tables = {tuple(table.columns): table for table in tables}
    assert tables.keys() == {MODELS_TABLE, REASONS_TABLE, EXPENSIVE_TABLE, SLOWEST_TABLE}

    per_model = query(
        synced_db,
        f"""
        select
            coalesce(model, '{UNKNOWN_MODEL}'), count(*), sum(requests), sum(requests_failed),
            coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
            sum(estimated_cost), coalesce(any_value(currency), 'no price')
        from analytics.batch_usage
        group by all
        """,
    )
    shown_models = {
        row[0]: ([number(text) for text in row[1:6]], number(row[6]), row[7])
        for row in tables[MODELS_TABLE].itertuples(index=False)
    }
    assert shown_models.keys() == {row[0] for row in per_model}
    for model, *counts, cost, currency in per_model:
        shown_counts, shown_cost, shown_currency = shown_models[model]
        assert shown_counts == counts, model
        # to the ten-thousandth, as the batches' costs: a model that cost 0.0029 is not 0.00
        assert shown_cost == (None if cost is None else pytest.approx(cost, abs=5e-5)), model
        assert shown_currency == currency, model
    costs = [number(text) for text in tables[MODELS_TABLE].estimated_cost]
    priced = [cost for cost in costs if cost is not None]
    assert costs == sorted(priced, reverse=True) + [None] * (len(costs) - len(priced))

    [(priced_batches, unpriced, batches, spent)] = query(
        synced_db,
        "select count(estimated_cost), "
        "count(*) filter (where estimated_cost is null "
        "and coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) > 0), "
        "count(*), sum(estimated_cost) from analytics.batch_usage",
    )
    assert unpriced > 0  # the simulator's Kimi-K2 batches have no price
    assert f"Estimated cost of the {priced_batches:,} priced batches: {spent:,.2f} CNY." in printed
    assert (
        f"{unpriced:,} of {batches:,} batches have no price (null cost), so the totals are "
        "lower bounds." in printed
    )

    by_model = query(
        synced_db, f"select error_code, status, model, count(*) from ({FAILED_LINES}) group by all"
    )
    by_reason = query(
        synced_db,
        "select error_code, status, count(*), count(distinct batch_id) "
        f"from ({FAILED_LINES}) group by all",
    )
    all_failed = sum(lines for _, _, lines, _ in by_reason)
    expected = {}
    for code, status, lines, batches_hit in by_reason:
        hits = sorted((-n, model) for c, s, model, n in by_model if (c, s) == (code, status))
        models = ", ".join(f"{model} ({-n})" for n, model in hits)
        share = round(100 * lines / all_failed, 1)
        expected[(code, status)] = (lines, share, batches_hit, models)
    reasons = tables[REASONS_TABLE]
    assert {
        (row.error_code, row.status): (
            int(row.failed_lines),
            float(row.share_pct),
            int(row.batches),
            row.models,
        )
        for row in reasons.itertuples(index=False)
    } == expected
    shown_lines = [int(lines) for lines in reasons.failed_lines]
    assert shown_lines == sorted(shown_lines, reverse=True)

    expensive = query(
        synced_db,
        "select batch_id, estimated_cost from analytics.batch_usage "
        "where estimated_cost is not null order by estimated_cost desc, batch_id limit 10",
    )
    table = tables[EXPENSIVE_TABLE]
    assert list(table.batch_id) == [batch_id for batch_id, _ in expensive]
    assert [number(cost) for cost in table.estimated_cost] == pytest.approx(
        [cost for _, cost in expensive], abs=5e-5
    )

    slowest = query(
        synced_db,
        "select batch_id, completion_tokens_per_second from analytics.batch_usage "
        "where completion_tokens_per_second is not null "
        "order by completion_tokens_per_second, batch_id limit 10",
    )
    table = tables[SLOWEST_TABLE]
    assert list(table.batch_id) == [batch_id for batch_id, _ in slowest]
    assert [number(speed) for speed in table.completion_tokens_per_second] == pytest.approx(
        [speed for _, speed in slowest], rel=5e-3
    )


@pytest.mark.parametrize(
    ("world", "load_results"),
    [
        pytest.param(*MONTH_OF_BATCHES.values, False, id="synced-with-no-results"),
        pytest.param(*NOTHING_ENDED_YET.values, True, id="nothing-ended-yet"),
    ],
    indirect=["world"],
)
def test_usage_notebook_says_no_result_files_are_loaded_and_runs_to_the_end(
    synced_db: Path, run_notebook
):
    [(batches, files_loaded)] = query(
        synced_db,
        "select (select count(*) from siliconflow.batches), "
        "(select count(*) from siliconflow.batch_files where state = 'loaded')",
    )
    assert batches > 0
    assert files_loaded == 0

    output, _, cells = run_notebook(USAGE)  # raises on the first cell that fails

    assert output.count(f"{NO_RESULT_FILES} {synced_db} yet") == 1
    assert "--no-results" in output
    assert output.index(NO_RESULT_FILES) < output.index("Nothing to plot yet")
    assert "No batches in" not in output
    assert "connection closed" in output
    kinds = {
        kind for cell in cells for out in cell.get("outputs", []) for kind in out.get("data", {})
    }
    assert not kinds & {"image/png", "text/html"}  # no chart, no table


def test_load_says_what_to_do_when_the_usage_views_are_missing(tmp_path: Path):
    older = tmp_path / "older.duckdb"
    with duckdb.connect(str(older)) as con:
        con.execute("create schema analytics")
        con.execute("create table analytics.batch_turnaround (batch_id varchar)")

    assert "one" in load(older, {"one": "select 1"})  # what the older notebooks need is there
    with pytest.raises(NotebookStop, match=r"no analytics.batch_usage view .*`sfbatches models"):
        load(older, {"one": "select 1"}, result_files=True)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (0.25, "0.25"),
        (950, "950"),
        (12_000, "12k"),
        (1_500_000, "1.5M"),
        (2e9, "2B"),
        (3.4e12, "3.4T"),
    ],
)
def test_counts_read_in_thousands_millions_billions_and_trillions(value: float, text: str):
    assert count_label(value) == text


def test_charts_with_chinese_model_names_draw_without_a_warning_or_log_line(
    caplog: pytest.LogCaptureFixture,
):
    use_style()
    figure = Figure()
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.bar(["深度求索-V3", "通义千问"], [3, 4])
    axes.set_title("模型")

    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.INFO):
        warnings.simplefilter("default")
        use_style()  # as each notebook's first cell does
        figure.canvas.draw()

    assert [str(w.message) for w in warned] == []
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]


@pytest.mark.parametrize("spread_h", [(7.1, 8.1), (0.2, 0.3), (30.0, 40.0)])
def test_a_duration_axis_always_shows_at_least_two_labels(spread_h):
    use_style()
    figure = Figure()
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot([0, 1], list(spread_h), marker="o")
    hours_axis(axes, "turnaround")
    figure.canvas.draw()

    low, high = axes.get_ylim()
    labels = [
        tick.get_text()
        for tick in axes.yaxis.get_majorticklabels()
        if low <= tick.get_position()[1] <= high and tick.get_text()
    ]
    assert len(labels) >= 2, labels
    assert low <= min(spread_h) and max(spread_h) <= high


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
def test_the_missed_batches_chart_says_none_missed_when_none_did(synced_db: Path, shown):
    with duckdb.connect(str(synced_db)) as con:
        con.execute(
            "delete from siliconflow.batches where id in (select batch_id "
            "from analytics.batch_turnaround where not met_window)"
        )
        [(met,)] = con.execute(
            "select count(*) from analytics.batch_turnaround where met_window"
        ).fetchall()
    assert met > 0

    figures = shown(REPO / "notebooks" / "turnaround.ipynb").figures

    [missed] = [
        ax for figure in figures for ax in figure.axes if ax.get_title().startswith("Missed")
    ]
    assert [text.get_text() for text in missed.texts] == ["none: every ended batch met its window"]


def test_long_model_names_are_cut_in_legends_and_labels():
    long = "Pro/deepseek-ai/DeepSeek-R1-Distill-Qwen-32B-instruct-2026-preview"
    figure = Figure()
    axes = figure.subplots()
    axes.bar([0, 1], [1, 2], label=long)
    axes.bar([0, 1], [1, 1], label="Qwen/QwQ-32B")

    stack_legend(axes)

    shown = [text.get_text() for text in axes.get_legend().get_texts()]
    assert shown == ["Qwen/QwQ-32B", long[:31] + "…"]
    assert short_label("短名") == "短名"


@pytest.mark.parametrize(
    "hours",
    [[5.0] * 40, [0.1, 0.5, 1, 2, 2, 3, 3, 3, 4, 5, 8, 12, 24, 30]],
    ids=["one duration", "spread"],
)
def test_the_quantiles_legend_of_a_histogram_covers_no_bar(hours):
    use_style()
    figure = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()

    duration_histogram(axes, pd.Series(hours), "Turnaround", "hours")
    figure.canvas.draw()

    legend = axes.get_legend().get_window_extent()
    bars = [bar.get_window_extent() for bar in axes.patches if bar.get_height() > 0]
    assert bars and not [bar for bar in bars if bar.overlaps(legend)]
    assert all(float(tick).is_integer() for tick in axes.get_yticks())  # no half batches


@pytest.mark.parametrize("world", [MONTH_OF_BATCHES], indirect=True)
def test_the_endpoint_table_shows_each_batch_rate_to_three_figures(synced_db: Path, shown):
    rates: dict[str, list[float]] = defaultdict(list)
    for endpoint, requests, started, finalized in query(
        synced_db,
        "select batches.endpoint, counts.completed, batches.in_progress_at, "
        "batches.finalizing_at from siliconflow.batches "
        "inner join siliconflow.batch_request_counts as counts on counts.batch_id = batches.id "
        "where batches.status = 'completed'",
    ):
        seconds = (finalized - started).total_seconds() if started and finalized else 0
        if seconds > 0 and requests is not None:
            rates[endpoint].append(requests / seconds)  # SPEC's requests_per_second

    tables = shown(THROUGHPUT).tables

    [endpoints] = [table for table in tables if "batch_rps_p50" in table.columns]
    shown_rates = dict(zip(endpoints.endpoint, map(number, endpoints.batch_rps_p50), strict=True))
    assert shown_rates.keys() == rates.keys()
    for endpoint, values in rates.items():
        assert shown_rates[endpoint] == pytest.approx(float(np.median(values)), rel=5e-3)
        assert shown_rates[endpoint] > 0
