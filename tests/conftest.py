"""Fixtures: a simulator on 127.0.0.1 with a clock the test drives, and ways to run the CLI."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from pipelines import cli
from pipelines.simulator import Simulator, World

# A fixed clock: results do not depend on the day the tests run.
START = 1_764_000_000
REPO = Path(__file__).resolve().parent.parent
# Each stop signal, the CLI's exit code for it and what it says
STOPS_SAID = [
    (signal.SIGINT, 130, "interrupted; the database keeps its last complete sync"),
    (signal.SIGTERM, 143, "stopped by SIGTERM; the database keeps its last complete sync"),
]
STOPS_IDS = ["ctrl-c", "sigterm"]


@pytest.fixture(autouse=True, scope="session")
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """dlt's working folders (one per database, under the user's cache) go to a folder of the
    test run's own, not by the thousand into the cache of whoever runs the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def no_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the real API: unless a test says otherwise, key and URL lead nowhere."""
    for name in list(os.environ):
        if name.startswith(("SOURCES__", "SILICONFLOW_", "SFBATCHES_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0.01")
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_RETRY_DELAY", "0.05")
    # Result files are what tests/test_results.py is about; elsewhere they would only slow a
    # sync down (the default world's batches run up to 50,000 requests each).
    monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "false")


@pytest.fixture
def api(sim: Simulator) -> Iterator[requests.Session]:
    """A session that sends the key of `sim`, the simulator fixture of the test's module."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        yield session


@pytest.fixture
def world() -> World:
    return World(batches=2000, seed=11, now=START)


@pytest.fixture
def simulator(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with Simulator(world) as sim:
        monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        monkeypatch.setenv("SILICONFLOW_API_KEY", sim.api_key)
        yield sim


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """Run `sfbatches ARGS` in this process (fast); returns exit code and output."""

    def run_cli(*args: str) -> Outcome:
        capsys.readouterr()
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run_cli


def run_process(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
    """Run `sfbatches ARGS` as a real process, as cron would."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


class StopAt:
    """`original`, with `stop` sent to this process just before its `call`-th call: a user's
    Ctrl-C or `timeout`'s SIGTERM landing at that step."""

    def __init__(self, original: Any, stop: int, call: int = 1) -> None:
        self.original, self.stop, self.call = original, stop, call
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.call:
            signal.raise_signal(self.stop)
        return self.original(*args, **kwargs)


@contextmanager
def held_open(db_path: Path, read_only: bool = False) -> Iterator[None]:
    """Another process holding `db_path` open while the block runs: read-only as a notebook
    does, else for writing as a DuckDB shell does."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro'); "
            "print('open', flush=True); sys.stdin.read()",
            str(db_path),
            "ro" if read_only else "rw",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "open"
        yield
    finally:
        holder.kill()
        holder.wait()
