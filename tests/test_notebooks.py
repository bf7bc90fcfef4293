"""The analyst notebooks: each runs top to bottom on a freshly synced warehouse, then lets go."""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import duckdb
import nbformat
import pytest
from conftest import REPO, START
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from pipelines.analytics.notebooks import DEMO_DB, database_path, duration, repo_root
from pipelines.simulator import World

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "sfbatches-notebook-test"
CELL_TIMEOUT_S = 120


@pytest.fixture(
    params=[
        pytest.param(lambda: World(batches=2000, seed=11, now=START), id="month-of-batches"),
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
def run_notebook(kernel_name: str) -> Iterator[Callable[[Path], tuple[str, Callable]]]:
    """Run every cell of a notebook, failing on the first error, in a kernel that stays up
    until the test ends. Returns what the cells printed and a way to run one more cell."""
    with ExitStack() as kernels:

        def execute(path: Path) -> tuple[str, Callable[[str], str]]:
            notebook = nbformat.read(path, as_version=4)
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

    assert database_path({"SFBATCHES_DB": "absent.duckdb"}, tmp_path) == tmp_path / DEMO_DB
    out = capsys.readouterr().out
    assert "absent.duckdb not found" in out
    assert DEMO_DB in out


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
