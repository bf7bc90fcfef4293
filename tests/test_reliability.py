"""Faults, API quirks, crashes, concurrent runs and secrets: the warehouse stays correct."""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import duckdb
import pytest
from conftest import REPO, STOPS_IDS, STOPS_SAID, StopAt, held_open, run_process
from truth import assert_warehouse_equals, expected_latest_history, latest_history

from pipelines.config import resolve_source_config
from pipelines.errors import STOPS, Terminated, exit_code_of
from pipelines.siliconflow import siliconflow
from pipelines.siliconflow.prefetch import worker_pool
from pipelines.warehouse import database, history, plan, sync

TABLES = (
    "batches",
    "batch_request_counts",
    "batch_metadata",
    "batch_errors",
    "batch_status_history",
)


def snapshot(db_path: Path) -> str:
    """A digest of every warehouse table's content, to show a failed sync changed nothing."""
    digest = hashlib.sha256()
    with duckdb.connect(str(db_path), read_only=True) as con:
        for table in TABLES:
            rows = con.execute(
                f"select * exclude (_dlt_load_id) from siliconflow.{table} order by all"
                if table != "batch_status_history"
                else f"select * from siliconflow.{table} order by all"
            ).fetchall()
            digest.update(repr(rows).encode())
    return digest.hexdigest()


def stored_ids(db_path: Path) -> set[str]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return {row[0] for row in con.execute("select id from siliconflow.batches").fetchall()}


@pytest.fixture
def synced(simulator, db_path, run):
    """A warehouse synced once, then the world moved on by two hours."""
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.world.advance(2 * 3600)
    simulator.clear_requests()
    return snapshot(db_path)


# --- transient errors: retried, then either success or exit 4 with nothing changed ---------


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429},
        {"status": 500},
        {"status": 503},
        {"status": 504},
        {"kind": "drop"},
        {"kind": "bad_json"},
        {"kind": "slow", "seconds": 2.0},
    ],
    ids=["429", "500", "503-50505", "504", "dropped-connection", "html-200", "timeout"],
)
def test_transient_fault_is_retried_and_the_sync_completes(
    simulator, db_path, run, synced, monkeypatch, fault
):
    monkeypatch.setenv("RUNTIME__REQUEST_TIMEOUT", "0.5")
    simulator.faults.queue(**fault, times=2, after=1)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert simulator.faults.pending() == 0
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_retry_waits_as_long_as_retry_after_says(simulator, db_path, run, synced, monkeypatch):
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_RETRY_DELAY", "5")
    simulator.faults.queue(status=429, retry_after=1)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    first, second = simulator.requests[0], simulator.requests[1]
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.9


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ({"status": 503}, "HTTP 503, code 50505: Model service overloaded"),
        ({"status": 429}, "HTTP 429, code 50603"),
        ({"status": 500}, "HTTP 500"),
        ({"kind": "bad_json"}, "not JSON"),
    ],
    ids=["503", "429", "500", "html-200"],
)
def test_retries_run_out_exit_4_and_the_database_is_unchanged(
    simulator, db_path, run, synced, fault, said
):
    simulator.faults.queue(**fault, times=50, after=2)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 4
    assert said in outcome.err and outcome.err.count("\n") == 1
    assert snapshot(db_path) == synced
    # the next cron run, with the API healthy again, brings everything current
    simulator.faults.reset()
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert_warehouse_equals(db_path, simulator.world.visible())


# --- permanent errors: no retries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "said"),
    [
        ({"status": 401}, 3, "HTTP 401"),
        ({"status": 403}, 3, "HTTP 403: Forbidden"),
        ({"status": 400}, 4, "HTTP 400, code 20012"),
        ({"status": 404}, 4, "404 page not found"),
        ({"kind": "no_data"}, 4, "without `data`"),
        ({"kind": "malformed"}, 4, "without an id"),
        ({"status": 200, "body": {"data": {"id": "b"}}}, 4, "list of batches (`data` is dict;"),
        ({"status": 200, "body": {"data": "none today"}}, 4, "list of batches (`data` is str;"),
        ({"status": 200, "body": {"id": "b", "object": "batch"}}, 4, "batches (no `data`; keys"),
    ],
    ids=[
        "401",
        "403",
        "400",
        "404",
        "no-data",
        "batch-without-id",
        "data-object",
        "data-text",
        "one-batch",
    ],
)
def test_permanent_error_fails_at_once_and_loads_nothing(
    simulator, db_path, run, synced, fault, code, said
):
    simulator.faults.queue(**fault, times=5, after=1)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == code
    assert said in outcome.err and outcome.err.count("\n") == 1
    asked = [(r.path, sorted(r.query.items())) for r in simulator.requests]
    assert len(asked) == len({repr(a) for a in asked}), "a permanent error must not be retried"
    assert snapshot(db_path) == synced


@pytest.mark.parametrize("status", [400, 422])
def test_a_request_the_api_refuses_says_to_check_the_settings_not_to_wait(
    simulator, db_path, run, status
):
    simulator.faults.queue(status=status, times=5)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 4 and f"HTTP {status}" in outcome.err
    assert "check sources.siliconflow.page_size and base_url" in outcome.err
    assert "retry later" not in outcome.err


def test_wrong_base_url_says_to_check_it(simulator, db_path, run, monkeypatch):
    monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", simulator.base_url.replace("/v1", "/v2"))

    outcome = run("sync", "--db", str(db_path))

    assert outcome.code == 4
    assert "404" in outcome.err and "base_url" in outcome.err


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("http://127.0.0.1:9/v1", "the connection was refused"),
        ("http://nonexistent.invalid/v1", "the host name did not resolve"),
    ],
)
def test_unreachable_api_exits_4_saying_why_in_plain_words(
    db_path, run, monkeypatch, base_url, reason
):
    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-anything")
    monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", base_url)

    outcome = run("sync", "--db", str(db_path))

    assert outcome.code == 4
    assert outcome.err == (
        f"sfbatches: could not reach the SiliconFlow API after retries ({reason} at "
        f"{base_url}/batches?…); check the network and sources.siliconflow.base_url\n"
    )


def test_bad_page_size_is_a_configuration_error(simulator, db_path, run, monkeypatch):
    monkeypatch.setenv("SOURCES__SILICONFLOW__PAGE_SIZE", "lots")

    outcome = run("sync", "--db", str(db_path))

    assert outcome.code == 2 and "page_size" in outcome.err


# --- API quirks -------------------------------------------------------------------------------


@pytest.mark.parametrize("times", ["whole", "fractional", "some-fractional"])
def test_pages_not_newest_first_are_detected_and_every_page_read(
    simulator, db_path, run, synced, times
):
    simulator.faults.oldest_first = True
    visible = simulator.world.visible()
    fractional = {"whole": [], "fractional": visible, "some-fractional": visible[::2]}[times]
    simulator.faults.overrides = {
        b["id"]: {"created_at": b["created_at"] + 0.5} for b in fractional
    }

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0
    assert "newest first" in outcome.err
    assert stored_ids(db_path) == {b["id"] for b in visible}
    simulator.faults.reset()
    assert_warehouse_equals(db_path, visible)


def test_server_ignoring_after_is_detected_and_what_was_read_is_kept(simulator, db_path, run):
    simulator.faults.ignore_after = True

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0
    assert "ignores `after`" in outcome.err
    assert len(simulator.list_requests()) == 2
    first_page = {b["id"] for b in simulator.world.visible()[:100]}
    assert stored_ids(db_path) == first_page


def test_open_batches_are_still_refreshed_when_the_server_ignores_after(
    simulator, db_path, run, synced
):
    simulator.faults.ignore_after = True

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0
    assert "ignores `after`" in outcome.err and "looked up the open batches" in outcome.err
    # every new batch of the last two hours fits on the first page; open ones are looked up
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_a_sweep_of_older_pages_says_when_the_server_ignores_after(simulator, db_path, run):
    simulator.world.advance(60 * 86_400)  # every batch has ended: none is read again as open
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.faults.ignore_after = True

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0
    assert "ignores `after`" in outcome.err and "stopped re-reading older pages" in outcome.err
    assert outcome.err.count("\n") == 1
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_everything_in_one_page_just_works(simulator, db_path, run, synced):
    simulator.faults.single_page = True

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and outcome.err == ""
    assert len(simulator.list_requests()) == 1
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_responses_without_last_id_page_by_the_last_item(simulator, db_path, run):
    simulator.faults.omit_last_id = True

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert_warehouse_equals(db_path, simulator.world.visible())


# --- crashes ----------------------------------------------------------------------------------


def kill_sync_after(simulator, seconds: float, *args: str) -> None:
    """Start a real `sfbatches sync` on a slowed-down API and SIGKILL it after `seconds`."""
    simulator.faults.latency_ms = 20
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "sync", *args],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()
    simulator.faults.latency_ms = 0


def work_files(db_path: Path) -> set[str]:
    """The files in the database's dlt working folder, by path within it."""
    workdir = database.work_dir(db_path)
    return {str(path.relative_to(workdir)) for path in workdir.rglob("*") if path.is_file()}


@pytest.mark.parametrize("kind", [[], ["--full-refresh"]], ids=["incremental", "full-refresh"])
def test_a_sync_killed_while_it_reads_pages_leaves_nothing_in_dlts_folder(
    simulator, db_path, run, kind
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    files_before = work_files(db_path)
    simulator.world.advance(30 * 3600)
    simulator.clear_requests()
    simulator.faults.latency_ms = 100
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path), *kind],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(simulator.list_requests()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    simulator.faults.latency_ms = 0

    assert len(simulator.list_requests()) >= 3, "the kill must land while pages are read"
    assert work_files(db_path) != files_before, "dlt left the killed extract's folder"
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert work_files(db_path) == files_before


@pytest.mark.parametrize("kill_after_s", [0.3, 0.8, 1.5, 2.5, 4.0])
def test_sync_killed_at_any_moment_then_one_sync_brings_it_current(
    simulator, db_path, run, kill_after_s
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    before, files_before = stored_ids(db_path), work_files(db_path)
    simulator.world.advance(30 * 3600)
    kill_sync_after(simulator, kill_after_s, "--db", str(db_path), "--full-refresh")

    assert stored_ids(db_path) >= before, "the previous state or newer"
    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert_warehouse_equals(db_path, simulator.world.visible())
    assert work_files(db_path) == files_before, "nothing the killed sync left stays behind"


@pytest.mark.parametrize("kill_after_s", [0.8, 1.5, 2.5])
def test_first_sync_killed_then_one_sync_brings_it_current(
    simulator, db_path, run, kill_after_s, tmp_path
):
    kill_sync_after(simulator, kill_after_s, "--db", str(db_path))

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert_warehouse_equals(db_path, simulator.world.visible())
    clean = tmp_path / "clean.duckdb"
    assert run("sync", "--db", str(clean), "--no-models").code == 0
    assert work_files(db_path) == work_files(clean), "nothing the killed sync left stays behind"


def leave_extracted_package(db_path: Path, simulator) -> Path:
    """What a sync killed between dlt's extract and normalize steps leaves behind."""
    pipeline = sync.open_pipeline(db_path, progress=False)
    source = siliconflow(api_key=simulator.api_key, base_url=simulator.base_url)
    pipeline.extract(source)
    assert pipeline.list_extracted_load_packages()
    return database.work_dir(db_path)


def test_a_package_left_between_extract_and_normalize_is_loaded_first(simulator, db_path, run):
    leave_extracted_package(db_path, simulator)
    simulator.world.advance(3600)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and outcome.err == ""
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_a_package_dlt_cannot_load_is_discarded_and_everything_reread(
    simulator, db_path, run, synced
):
    workdir = leave_extracted_package(db_path, simulator)
    for job_file in workdir.rglob("*.parquet"):
        job_file.write_bytes(b"cut short by a kill")

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0
    assert "could not load" in outcome.err and "full sync" in outcome.out
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_rows_a_rerun_load_job_appended_twice_are_dropped_after_recovery(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    # As a sync killed after its load and before its bookkeeping, whose load job ran twice.
    with duckdb.connect(str(db_path)) as con:
        for table in TABLES[:4]:
            con.execute(f"insert into siliconflow.{table} select * from siliconflow.{table}")
        con.execute("delete from siliconflow._sfbatches_recorded")
        con.execute("delete from siliconflow.batch_status_history")

    with database.connect_for_sync(db_path) as con:  # as a sync
        history.record_observations(con)

    assert_warehouse_equals(db_path, simulator.world.visible())
    assert latest_history(db_path) == expected_latest_history(simulator.world.visible())


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["the same path", "a link", "a path through .."])
def test_second_sync_waits_then_exits_5_while_one_runs(simulator, db_path, run, via):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    other = {
        "the same path": db_path,
        "a link": db_path.with_name("link.duckdb"),
        "a path through ..": db_path.parent / "sub" / ".." / db_path.name,
    }[via]
    if via == "a link":
        other.symlink_to(db_path)
    (db_path.parent / "sub").mkdir()
    simulator.faults.latency_ms = 250  # 20 pages: the first sync holds the lock for 5 s
    simulator.clear_requests()
    first = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path), "--full-refresh"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while simulator.count() == 0:
        time.sleep(0.05)

    second = run_process("sync", "--db", str(other), env={"SFBATCHES_LOCK_TIMEOUT": "0.5"})
    _, err = first.communicate(timeout=120)

    assert second.code == 5
    assert "another sync" in second.err and second.err.count("\n") == 1
    assert first.returncode == 0, err
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_notebook_holding_the_database_gets_exit_5_not_a_traceback(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    with held_open(db_path, read_only=True):
        outcome = run_process("sync", "--db", str(db_path), env={"SFBATCHES_LOCK_TIMEOUT": "0.5"})

    assert outcome.code == 5
    assert "locked" in outcome.err and "Traceback" not in outcome.err
    assert outcome.err.count("\n") == 1


@pytest.mark.parametrize(
    ("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_a_sync_waiting_for_a_held_database_stops_at_once_when_told(
    simulator, db_path, run, stop, code
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    with held_open(db_path):
        waiting = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "sync", "--verbose", "--db", str(db_path)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "SFBATCHES_LOCK_TIMEOUT": "120"},
        )
        said = []
        for line in waiting.stderr:
            said.append(line)
            if "another process holds" in line:
                break
        assert waiting.poll() is None, "".join(said)  # it waits for the database

        waiting.send_signal(stop)
        # without a second 120 s wait for the database, only to record that it stopped
        _, rest = waiting.communicate(timeout=60)

    assert waiting.returncode == code
    assert rest.splitlines()[-1].startswith("sfbatches: ")


def swallow_as_duckdb_does(stop: int) -> NoReturn:
    """What DuckDB does with a stop signal that arrives during a query: its handler runs, and
    the KeyboardInterrupt it raises becomes an error that does not name it."""
    with contextlib.suppress(KeyboardInterrupt):
        signal.raise_signal(stop)
    raise RuntimeError("Query interrupted")


def last_run(db_path: Path) -> tuple[int, str]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(
            "select exit_code, message from siliconflow.sync_runs order by finished_at desc"
        ).fetchone()


@pytest.mark.parametrize(("stop", "code", "said"), STOPS_SAID, ids=STOPS_IDS)
@pytest.mark.parametrize("step", ["pending_files", "read_plan"])
def test_a_stop_that_duckdb_reports_as_its_own_error_reads_as_the_stop(
    simulator, db_path, run, monkeypatch, step, stop, code, said
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.world.advance(3600)
    monkeypatch.setattr(plan, step, lambda *args, **kwargs: swallow_as_duckdb_does(stop))

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert (outcome.code, outcome.err) == (code, f"sfbatches: {said}\n")
    assert last_run(db_path) == (code, said)
    # the note of the stop ends with the command: a later plain error is no stop
    assert exit_code_of(RuntimeError("Query interrupted")) == 1


@pytest.mark.parametrize(("stop", "code", "said"), STOPS_SAID, ids=STOPS_IDS)
@pytest.mark.parametrize(
    ("module", "step"), [(sync, "load_credentials"), (history, "record_observations")]
)
def test_a_stop_during_a_load_waits_for_its_bookkeeping(
    simulator, db_path, run, monkeypatch, module, step, stop, code, said
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    stored = stored_ids(db_path)
    simulator.world.advance(6 * 3600)
    new = {b["id"] for b in simulator.world.visible()} - stored
    stopper = StopAt(getattr(module, step), stop)
    monkeypatch.setattr(module, step, stopper)

    outcome = run("sync", "--db", str(db_path), "--no-models", "--no-results")

    assert stopper.calls == 1  # stopped at the first load, the batches'
    assert (outcome.code, outcome.err) == (code, f"sfbatches: {said}\n")
    assert last_run(db_path) == (code, said)
    # the load it was stopped in ended whole, its bookkeeping too
    assert_warehouse_equals(db_path, simulator.world.visible())
    assert latest_history(db_path) == expected_latest_history(simulator.world.visible())
    with duckdb.connect(str(db_path), read_only=True) as con:
        recorded = con.execute(
            "select batches_new from siliconflow.sync_runs order by finished_at desc"
        ).fetchone()
    assert new and recorded == (len(new),)  # the run's record counts what it loaded


def test_a_stop_while_a_killed_syncs_data_loads_waits_for_the_load(
    simulator, db_path, run, monkeypatch
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    simulator.world.advance(6 * 3600)
    # a sync killed after reading the pages leaves them to the next one, to load first
    stats = sync.ReadStats()
    pipeline, sync_plan = sync.prepare(db_path, False, False, stats)
    config = resolve_source_config()
    sync.extract(pipeline, sync.source(config, sync_plan, stats, sync.Deadline(60)))
    assert stored_ids(db_path) < {b["id"] for b in simulator.world.visible()}
    original = sync.load_credentials
    monkeypatch.setattr(sync, "load_credentials", StopAt(original, signal.SIGINT))

    outcome = run("sync", "--db", str(db_path), "--no-models", "--no-results")

    assert outcome.code == 130
    assert stored_ids(db_path) == {b["id"] for b in simulator.world.visible()}
    monkeypatch.setattr(sync, "load_credentials", original)
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_a_second_stop_during_a_held_block_stops_at_once():
    went_on = []
    with STOPS.noted(), pytest.raises(KeyboardInterrupt), STOPS.held():
        signal.raise_signal(signal.SIGINT)
        went_on.append("after the first")
        signal.raise_signal(signal.SIGINT)
        went_on.append("after the second")
    assert went_on == ["after the first"]
    assert STOPS.received == []  # the note ends with the command


def test_a_stop_while_a_pool_of_threads_ends_waits_for_its_threads():
    ended = []

    def work() -> None:
        time.sleep(0.2)  # the main thread waits in the pool's shutdown by now
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        ended.append("the task")

    with STOPS.noted(), pytest.raises(Terminated), worker_pool(1) as pool:
        pool.submit(work)
    # raised inside Thread.join, the stop could leave Python waiting for the thread at exit
    assert ended == ["the task"]


def test_a_hold_in_another_thread_leaves_the_main_threads_stops_alone():
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with STOPS.held():
            holding.set()
            done.wait(10)

    other = threading.Thread(target=hold)
    with STOPS.noted(), pytest.raises(KeyboardInterrupt):
        other.start()
        holding.wait(10)
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            done.set()
            other.join()


# --- secrets ----------------------------------------------------------------------------------


def test_api_key_appears_nowhere(tmp_path, world):
    from pipelines.simulator import Simulator

    key = "sk-secret-canary-7c1f0e9d"
    db_path = tmp_path / "secret.duckdb"
    with Simulator(world, api_key=key) as sim:
        env = {"SILICONFLOW_API_KEY": key, "SOURCES__SILICONFLOW__BASE_URL": sim.base_url}
        outputs = [
            run_process("sync", "--db", str(db_path), "--verbose", env=env),
            run_process("sync", "--db", str(db_path), "--verbose", env=env),
        ]
        sim.faults.queue(status=500, times=50)
        outputs.append(run_process("sync", "--db", str(db_path), "--verbose", env=env))
        sim.faults.reset()
        sim.faults.queue(kind="malformed")
        outputs.append(run_process("sync", "--db", str(db_path), "--verbose", env=env))

    assert [o.code for o in outputs] == [0, 0, 4, 4]
    for outcome in outputs:
        assert key not in outcome.out and key not in outcome.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    with duckdb.connect(str(db_path), read_only=True) as con:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall()
        for schema, table in tables:
            dump = repr(con.execute(f'select * from "{schema}"."{table}"').fetchall())
            assert key not in dump, table
