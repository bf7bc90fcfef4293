"""sfbatches as an operator installs and runs it: a wheel in a fresh venv, from any folder,
under cron for days, and a warehouse that the DuckDB users already have can open."""

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from conftest import REPO, run_process
from filelock import FileLock, Timeout

from pipelines.simulator import TERMINAL

DUCKDB_1X = Path(sys.executable).with_name("duckdb")  # pip's duckdb-cli 1.5, a dev extra


def files_beside(db_path: Path) -> list[str]:
    return sorted(path.name for path in db_path.parent.iterdir())


def files_under(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def test_a_dozen_cron_syncs_leave_no_pile_of_files(simulator, tmp_path, run, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db_path = tmp_path / "data" / "sf.duckdb"
    counts = []
    for _ in range(12):
        simulator.world.advance(300)
        assert run("sync", "--db", str(db_path)).code == 0
        counts.append((files_beside(db_path), files_under(tmp_path / "cache")))

    assert all(names == ["sf.duckdb", "sf.duckdb.lock"] for names, _ in counts), counts
    work_files = [files for _, files in counts]
    assert max(work_files[2:]) == min(work_files[2:]), f"dlt's files grow: {work_files}"


COUNTS = (
    "select (select count(*) from siliconflow.batches), "
    "(select count(*) from analytics.batch_turnaround)"
)


def duckdb_1x(*args: str) -> subprocess.CompletedProcess:
    """pip's DuckDB CLI 1.x with ARGS, its rows as CSV without a header."""
    return subprocess.run(
        [str(DUCKDB_1X), "-csv", "-noheader", *args], capture_output=True, text=True, timeout=60
    )


def test_the_warehouse_opens_in_duckdb_1x(simulator, db_path, run):
    assert run("sync", "--db", str(db_path)).code == 0
    with duckdb.connect(str(db_path), read_only=True) as con:
        wanted = con.execute(COUNTS).fetchone()

    done = duckdb_1x("-readonly", str(db_path), "-c", f"{COUNTS}, version()")

    assert done.returncode == 0, done.stderr
    batches, turnaround, version = done.stdout.strip().split(",")
    assert version.startswith("v1.")
    assert (int(batches), int(turnaround)) == wanted == (len(simulator.world.visible()),) * 2


def test_every_view_reads_the_same_in_duckdb_1x(simulator, db_path, run):
    assert run("sync", "--db", str(db_path)).code == 0
    with duckdb.connect(str(db_path), read_only=True) as con:
        views = [
            name
            for (name,) in con.execute(
                "select view_name from duckdb_views() where schema_name = 'analytics'"
            ).fetchall()
        ]
        counts = " union all ".join(
            f"select '{name}', count(*) from analytics.{name}" for name in views
        )
        wanted = {(name, str(rows)) for name, rows in con.execute(counts).fetchall()}

    done = duckdb_1x("-readonly", str(db_path), "-c", counts)

    assert done.returncode == 0, done.stderr
    assert len(views) >= 15
    assert {tuple(line.split(",")) for line in done.stdout.splitlines()} == wanted


def test_the_warehouse_holds_no_key_constraint_duckdb_1_0_cannot_read(simulator, db_path, run):
    # DuckDB 1.0 refuses a whole file whose catalog holds a PRIMARY KEY or UNIQUE written by
    # DuckDB 2.0 ("Failed to deserialize ... field id: 103"), even in storage version v1.0.0
    assert run("sync", "--db", str(db_path)).code == 0
    simulator.faults.queue(status=401)
    assert run("sync", "--db", str(db_path)).code == 3  # a failed run is recorded too

    with duckdb.connect(str(db_path), read_only=True) as con:
        keys = con.execute(
            "select table_name, constraint_type from duckdb_constraints() "
            "where constraint_type in ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')"
        ).fetchall()
    assert keys == []


def test_a_file_named_like_its_schema_works_with_every_command(simulator, tmp_path):
    # The default file name: opened by its path it names a database `siliconflow`, beside the
    # schema `siliconflow`, and DuckDB refuses `siliconflow.batches` as ambiguous.
    db_path = tmp_path / "siliconflow.duckdb"
    visible = len(simulator.world.visible())

    outcomes = [run_process(command, "--db", str(db_path)) for command in ("sync", "models")]
    outcomes += [
        run_process("report", "--db", str(db_path)),
        run_process("check", "--db", str(db_path)),
    ]

    assert [o.code for o in outcomes[:3]] == [0, 0, 0], [o.err for o in outcomes]
    assert outcomes[3].code in (0, 6) and "unexpected" not in outcomes[3].err
    still_open = sum(batch["status"] not in TERMINAL for batch in simulator.world.visible())
    assert "(last sync just now)" in outcomes[2].out
    assert f"{still_open:,} batches, longest open first" in outcomes[2].out
    # the DuckDB CLI reads it attached under another name, as the README shows
    done = duckdb_1x("-c", f"attach '{db_path}' as wh (read_only); use wh; {COUNTS}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{visible},{visible}"]


def test_demo_starts_from_an_empty_database_every_time(tmp_path):
    db_path = tmp_path / "demo.duckdb"
    first = run_process("demo", "--db", str(db_path), "--batches", "300")
    second = run_process("demo", "--db", str(db_path), "--batches", "300")

    assert first.code == second.code == 0, second.err
    assert "full sync" in second.out
    # the demo's result files hold malformed lines on purpose: it shows how they are reported
    assert all(line.startswith("sfbatches: warning: ") for line in second.err.splitlines())
    read = second.out.split("batches read")[0].split()[-1]
    assert read == first.out.split("batches read")[0].split()[-1]
    # the banner says how many batches the simulator lists, the ones a sync can read
    assert f" listing {read} batches (of 300: the rest are created later" in second.out


def test_a_demo_stopped_with_ctrl_c_is_replaced_by_the_next_one(tmp_path):
    db_path = tmp_path / "demo.duckdb"
    demo = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "demo", "--db", str(db_path), "--batches", "300"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the simulator answers once the demo says where: the sync is about to start
    assert "demo simulator" in demo.stdout.readline()
    time.sleep(0.5)
    assert demo.poll() is None, "the demo ended before Ctrl-C"

    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=120)

    # `python -m` in Python 3.11 ends by SIGINT itself, after our exit code, when the
    # KeyboardInterrupt rose inside exec()'d code (dataclasses make methods so): $? is 130 both ways
    assert demo.returncode in (130, -signal.SIGINT), err
    assert err.splitlines()[-1].startswith("sfbatches: interrupted;"), err
    again = run_process("demo", "--db", str(db_path), "--batches", "300")
    assert again.code == 0, again.err
    assert "models built" in again.out


@contextmanager
def sync_using(db_path: Path, simulator, user: str) -> Iterator[None]:
    """While the block runs, `user` holds the database's sync lock: a slow sync of it, or a
    bare lock as a sync takes it."""
    lock = FileLock(f"{db_path.resolve()}.lock")
    if user == "a bare lock":
        with lock:
            yield
        return
    simulator.faults.latency_ms = 1000
    argv = [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path), "--no-models"]
    sync = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while True:  # until the sync holds its lock
        try:
            lock.acquire(timeout=0)
        except Timeout:
            break
        lock.release()
        assert sync.poll() is None, sync.communicate()
        time.sleep(0.05)
    yield
    _, err = sync.communicate(timeout=300)
    assert sync.returncode == 0, err


@pytest.mark.parametrize("user", ["a sync", "a bare lock"])
def test_a_demo_waits_for_a_sync_of_its_database_and_leaves_it_be(simulator, tmp_path, user):
    db_path = tmp_path / "demo.duckdb"
    assert run_process("demo", "--db", str(db_path), "--batches", "100").code == 0

    with sync_using(db_path, simulator, user):
        outcome = run_process(
            "demo", "--db", str(db_path), "--batches", "100", env={"SFBATCHES_LOCK_TIMEOUT": "1"}
        )

    assert outcome.code == 5 and "unexpected" not in outcome.err, outcome.err
    assert outcome.err.startswith(f"sfbatches: another sync is using {db_path}")
    with duckdb.connect(str(db_path), read_only=True) as con:
        (batches,) = con.execute("select count(*) from siliconflow.batches").fetchone()
    assert batches > 0


def test_demo_refuses_to_replace_a_database_that_is_not_a_demo(simulator, db_path, run):
    assert run("sync", "--db", str(db_path)).code == 0
    before = db_path.read_bytes()

    outcome = run("demo", "--db", str(db_path), "--batches", "100")

    assert outcome.code == 2 and "not a demo database" in outcome.err
    assert db_path.read_bytes() == before


def test_help_tells_the_defaults_of_each_command():
    demo = run_process("demo", "--help")
    sync = run_process("sync", "--help")

    assert "demo.duckdb" in demo.out and "siliconflow.duckdb" in sync.out


@pytest.mark.parametrize(
    "command",
    [["sync", "--no-models"], ["demo", "--batches", "100"]],
    ids=["sync", "demo"],
)
def test_a_run_whose_stderr_is_closed_still_syncs(simulator, db_path, command):
    # a daemon or supervisor may start us with file descriptor 2 closed (`2>&-`)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", *command, "--db", str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=lambda: os.close(2),
    )

    assert done.returncode == 0, done.stdout
    assert "full sync of" in done.stdout and "unexpected" not in done.stdout
    with duckdb.connect(str(db_path), read_only=True) as con:
        assert con.execute("select count(*) from siliconflow.batches").fetchone()[0] > 0


@pytest.mark.parametrize(
    "argv",
    [["--verbose", "models"], ["models", "--verbose"]],
    ids=["before-the-command", "after-it"],
)
def test_verbose_shows_the_traceback_wherever_it_is_given(tmp_path, argv):
    (tmp_path / "a-folder.duckdb").mkdir()  # a folder where the database should be

    said = run_process(*argv, "--db", str(tmp_path / "a-folder.duckdb"))

    assert said.code == 2
    assert "Traceback (most recent call last)" in said.err
    assert said.err.splitlines()[-1].startswith("sfbatches: ")


def test_version_is_the_packages():
    with open(REPO / "pyproject.toml", "rb") as file:
        wanted = tomllib.load(file)["project"]["version"]

    said = run_process("--version")

    assert (said.code, said.out) == (0, f"sfbatches {wanted}\n")


@pytest.fixture(scope="module")
def installed_tool(tmp_path_factory) -> Path:
    """`pip install` of the wheel built from this checkout, into a venv of its own."""
    root = tmp_path_factory.mktemp("tool")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = root.glob("sfbatches-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=1200)
    shutil.rmtree(REPO / "build", ignore_errors=True)
    return root / "venv" / "bin" / "sfbatches"


def test_the_wheel_runs_the_demo_from_any_folder(installed_tool, tmp_path):
    elsewhere = tmp_path / "somewhere else"
    elsewhere.mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def tool(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(installed_tool), *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    demo = tool("demo", "--batches", "400")
    models = tool("models", "--db", "demo.duckdb")
    report = tool("report", "--db", "demo.duckdb")

    assert demo.returncode == 0, demo.stderr
    assert "models built" in demo.stdout and "Created" in demo.stdout
    assert models.returncode == 0 and report.returncode == 0, models.stderr + report.stderr
    assert (elsewhere / "demo.duckdb").is_file()
    where = subprocess.run(
        [
            str(installed_tool.with_name("python")),
            "-c",
            "import pipelines; print(pipelines.__file__)",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(REPO) not in where.stdout, "the tool must run from the wheel, not the checkout"
