"""Watching the account and the warehouse: `sync_runs`, `sfbatches check` (text, JSON, exit
codes, limits from flags and config), and its node_exporter textfile. The batches each rule must
name are worked out here from the simulator's API objects, not from the warehouse."""

import json
import math
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from conftest import REPO, run_process
from truth import served

from pipelines.analytics import check
from pipelines.analytics.check import hours
from pipelines.simulator import TERMINAL, Simulator, World
from pipelines.warehouse import database

HOUR = 3600
RULES = ("sync_age", "last_sync_failed", "queue", "finalizing", "past_window", "failure_rate")
TIMES = ("completed_at", "failed_at", "expired_at", "cancelled_at")


@pytest.fixture
def world() -> World:
    """A world whose clock is the wall clock, as `check` compares ages with the time it runs."""
    return World(batches=400, seed=23, max_requests=30)


def stuck(sim: Simulator) -> dict[str, str]:
    """Make three batches stuck: one waiting in the queue for 15-22 h (window still open), one
    finalizing for 3 h, one in progress past its window. Returns rule -> batch id."""
    world, now = sim.world, sim.world.now
    batches = sorted(world.visible(), key=lambda b: b["created_at"])

    def created_between(low_h: float, high_h: float, window: str | None = None) -> str:
        return next(
            b["id"]
            for b in batches
            if now - high_h * HOUR <= b["created_at"] <= now - low_h * HOUR
            and (window is None or b["completion_window"] == window)
        )

    # the newest 24h batch at least 15 h old: 15-22 h at any time of day, while the 5-10 h
    # and 30-40 h spans of the others always hold a batch
    queue = max(
        (
            b
            for b in batches
            if b["created_at"] <= now - 15 * HOUR and b["completion_window"] == "24h"
        ),
        key=lambda b: b["created_at"],
    )
    picked = {
        "queue": queue["id"],
        "finalizing": created_between(5, 10),
        "past_window": created_between(30, 40, "24h"),
    }
    world.stick(picked["queue"], "queue", now)
    world.stick(picked["finalizing"], "finalizing", now - 3 * HOUR)
    created = world.get(picked["past_window"])["created_at"]
    world.stick(picked["past_window"], "in_progress", created + HOUR)
    return picked


ODD = "\x1b[2J\x07"  # clears a terminal and rings its bell when printed as it is


def test_what_the_api_sends_never_drives_the_terminal_nor_starts_a_line(simulator, db_path, run):
    queued = stuck(simulator)["queue"]
    simulator.faults.overrides = {queued: {"id": f"{queued}\nsfbatches check: ok{ODD}"}}
    assert run("sync", "--db", str(db_path)).code == 0
    simulator.faults.queue(status=400, body={"code": 20012, "message": f"no{ODD}", "data": None})
    failed = run("sync", "--db", str(db_path))

    checked = run("check", "--db", str(db_path))

    assert failed.code == 4 and failed.err.count("\n") == 1
    assert checked.code == 6
    lines = checked.out.splitlines()
    assert all(line.startswith("sfbatches check: ") for line in lines)
    assert not any(line.startswith("sfbatches check: ok") for line in lines)
    for said in (failed.err, checked.out):
        assert "\x1b" not in said and "\x07" not in said
    assert "\\x1b[2J\\x07" in failed.err and f"{queued}\\nsfbatches" in checked.out


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_ids_the_output_encoding_cannot_hold_are_escaped_not_fatal(
    simulator, db_path, run, encoding
):
    queued = stuck(simulator)["queue"]
    simulator.faults.overrides = {queued: {"id": f"{queued}_中文_🚀"}}
    assert run("sync", "--db", str(db_path)).code == 0
    env = {"PYTHONIOENCODING": encoding}

    checked = run_process("check", "--db", str(db_path), env=env)
    reported = run_process("report", "--db", str(db_path), env=env)

    assert (checked.code, reported.code) == (6, 0), checked.err + reported.err
    assert f"{queued}_\\u4e2d\\u6587_\\U0001f680" in checked.out
    assert "unexpected" not in checked.err + reported.err


def test_check_keeps_its_exit_code_when_the_reader_leaves_early(simulator, db_path, run):
    stuck(simulator)
    assert run("sync", "--db", str(db_path)).code == 0
    checking = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "check", "--db", str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    checking.stdout.close()  # as `sfbatches check | head -0` does, long before check writes

    assert checking.wait(timeout=120) == 6
    assert checking.stderr.read() == b""


# --- what each rule must find, from the API objects ---------------------------------------------


def status(batch: dict) -> str | None:
    """The batch's status as the views read it: ASCII blanks around it dropped, lower case."""
    return None if batch.get("status") is None else batch["status"].strip(" \t\n\r\f\v").lower()


def ended_at(batch: dict) -> int | None:
    if status(batch) not in TERMINAL:
        return None
    return next((batch[name] for name in TIMES if batch.get(name) is not None), None)


def expected_problems(api: list[dict], now: float, limits: dict[str, float]) -> dict[str, dict]:
    """rule -> {"batch_ids": [...], "value": ...} for the account rules that must trip."""
    open_ = [b for b in api if status(b) not in TERMINAL]
    aged = {
        # not started: no in_progress_at, and no status saying it runs all the same
        "queue": [
            (b["id"], (now - b["created_at"]) / HOUR)
            for b in open_
            if b.get("in_progress_at") is None and status(b) not in ("in_progress", "finalizing")
        ],
        "finalizing": [
            (b["id"], (now - b["finalizing_at"]) / HOUR) for b in open_ if status(b) == "finalizing"
        ],
        "past_window": [
            (b["id"], (now - b["expires_at"]) / HOUR) for b in open_ if b["expires_at"] < now
        ],
    }
    limit_of = {
        "queue": limits["max_queue_hours"],
        "finalizing": limits["max_finalizing_hours"],
        "past_window": 0.0,
    }
    found = {}
    for rule, pairs in aged.items():
        over = sorted(
            ((i, age) for i, age in pairs if age > limit_of[rule]), key=lambda p: (-p[1], p[0])
        )
        if over:
            found[rule] = {"batch_ids": [i for i, _ in over], "value": over[0][1]}
    recent = [
        b
        for b in api
        if ended_at(b) is not None
        and ended_at(b) > now - 24 * HOUR
        and b["request_counts"]
        and "completed" in b["request_counts"]
    ]
    completed = sum(b["request_counts"]["completed"] for b in recent)
    failed = sum(b["request_counts"]["failed"] for b in recent)
    if completed + failed and failed / (completed + failed) > limits["max_failure_rate"]:
        failing = sorted(
            (b for b in recent if b["request_counts"]["failed"]),
            key=lambda b: (-b["request_counts"]["failed"], b["id"]),
        )
        found["failure_rate"] = {
            "batch_ids": [b["id"] for b in failing],
            "value": failed / (completed + failed),
        }
    return found


DEFAULTS = {
    "max_sync_age_hours": 1.0,
    "max_queue_hours": 12.0,
    "max_finalizing_hours": 2.0,
    "max_failure_rate": 0.1,
}
FLAGS = {
    "max_sync_age_hours": "--max-sync-age",
    "max_queue_hours": "--max-queue",
    "max_finalizing_hours": "--max-finalizing",
    "max_failure_rate": "--max-failure-rate",
}


def check_json(run, db_path: Path, **limits: float) -> tuple[int, dict]:
    flags = [item for name, value in limits.items() for item in (FLAGS[name], str(value))]
    outcome = run("check", "--db", str(db_path), "--json", *flags)
    return outcome.code, json.loads(outcome.out)


def sync_ok(run, db_path: Path) -> None:
    outcome = run("sync", "--db", str(db_path), "--no-models")
    assert outcome.code == 0, outcome.err


def runs(db_path: Path) -> list[dict]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        cursor = con.execute("select * from siliconflow.sync_runs order by finished_at")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- sync_runs ------------------------------------------------------------------------------------


def test_each_sync_records_its_run_with_its_figures(simulator, db_path, run, monkeypatch):
    monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "true")
    before = datetime.now(UTC)
    sync_ok(run, db_path)
    visible = simulator.world.visible_count()
    # The world is drawn around the real clock: at some hours two pass without a new batch.
    while simulator.world.visible_count() == visible:
        simulator.world.advance(HOUR)
    created = simulator.world.visible_count() - visible
    outcome = run("sync", "--db", str(db_path), "--no-models")
    assert outcome.code == 0
    first, second = runs(db_path)
    with duckdb.connect(str(db_path), read_only=True) as con:
        loaded = con.execute(
            "select count(*) from siliconflow.batch_files where state = 'loaded'"
        ).fetchone()[0]
        lines = con.execute("select count(*) from siliconflow.batch_requests").fetchone()[0]
    assert (first["kind"], first["outcome"], first["exit_code"]) == ("full", "ok", 0)
    assert (first["batches_read"], first["batches_new"], first["batches_changed"]) == (
        visible,
        visible,
        0,
    )
    assert first["pages"] >= 1 and first["lookups"] == 0
    assert first["files_loaded"] + second["files_loaded"] == loaded
    assert first["request_lines"] + second["request_lines"] == lines
    assert before <= first["started_at"] <= first["finished_at"] <= second["started_at"]
    assert (second["kind"], second["outcome"]) == ("incremental", "ok")
    assert second["message"] == outcome.out.splitlines()[0].removeprefix("sfbatches: ")
    assert second["batches_new"] == created


def test_a_failed_sync_records_why_and_keeps_the_data(simulator, db_path, run):
    sync_ok(run, db_path)
    with duckdb.connect(str(db_path), read_only=True) as con:
        kept = con.execute("select count(*), max(id) from siliconflow.batches").fetchone()
    simulator.faults.update({"error_rate": 1.0})
    outcome = run("sync", "--db", str(db_path), "--no-models")
    assert outcome.code == 4
    ok, failed = runs(db_path)
    assert ok["outcome"] == "ok"
    assert (failed["outcome"], failed["exit_code"]) == ("failed", 4)
    assert f"sfbatches: {failed['message']}" == outcome.err.strip().splitlines()[-1]
    with duckdb.connect(str(db_path), read_only=True) as con:
        assert con.execute("select count(*), max(id) from siliconflow.batches").fetchone() == kept


@pytest.mark.parametrize("fault", [{"status": 401}, {"status": 500, "times": 50}])
def test_a_first_sync_that_fails_records_why_and_check_says_so(simulator, db_path, run, fault):
    simulator.faults.queue(**fault)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    (failed,) = runs(db_path)
    assert (failed["kind"], failed["outcome"], failed["exit_code"]) == (
        "full",
        "failed",
        outcome.code,
    )
    assert outcome.code in (3, 4) and f"sfbatches: {failed['message']}" == outcome.err.strip()
    checked = run("check", "--db", str(db_path), "--json")
    assert checked.code == 6
    assert "last_sync_failed" in {
        problem["rule"] for problem in json.loads(checked.out)["problems"]
    }
    simulator.faults.reset()
    sync_ok(run, db_path)
    assert [r["outcome"] for r in runs(db_path)] == ["failed", "ok"]


def test_a_sync_that_cannot_get_the_database_records_nothing(simulator, db_path, run, monkeypatch):
    sync_ok(run, db_path)
    holder = hold_sync_lock(db_path)
    try:
        monkeypatch.setenv(database.LOCK_TIMEOUT_ENV, "0.5")
        outcome = run("sync", "--db", str(db_path), "--no-models")
    finally:
        holder.kill()
        holder.wait()
    assert outcome.code == 5
    assert len(runs(db_path)) == 1


def hold_sync_lock(db_path: Path) -> subprocess.Popen:
    """Another process holding the database's sync lock until killed."""
    code = (
        "import sys, time; from filelock import FileLock; "
        "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, f"{db_path}.lock"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


# --- check: the account rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        {},
        {"max_queue_hours": 30.0, "max_finalizing_hours": 4.0},
        {"max_queue_hours": 0.5, "max_finalizing_hours": 0.25, "max_failure_rate": 0.0},
        {"max_queue_hours": 10_000.0, "max_failure_rate": 1.0},
    ],
    ids=["defaults", "looser", "tight", "queue-quiet"],
)
def test_check_names_exactly_the_batches_the_api_shows_stuck(simulator, db_path, run, limits):
    picked = stuck(simulator)
    sync_ok(run, db_path)
    code, report = check_json(run, db_path, **limits)
    now = datetime.fromisoformat(report["checked_at"]).timestamp()
    wanted = expected_problems(simulator.world.visible(), now, {**DEFAULTS, **limits})
    found = {p["rule"]: p for p in report["problems"]}
    assert set(found) == set(wanted)
    for rule, expected in wanted.items():
        assert found[rule]["batch_ids"] == expected["batch_ids"], rule
        assert found[rule]["value"] == pytest.approx(expected["value"], abs=1e-6), rule
    assert code == (6 if wanted else 0)
    assert report["ok"] is (not wanted)
    # the stuck batches trip their rule unless a limit is above their age
    assert picked["past_window"] in found["past_window"]["batch_ids"]
    overdue = hours(found["past_window"]["value"])  # the one furthest past its window
    assert f", the most overdue by {overdue}: " in found["past_window"]["message"]
    queue_limit = limits.get("max_queue_hours", 12.0)
    assert (picked["queue"] in found.get("queue", {}).get("batch_ids", [])) is (queue_limit < 15)


def test_check_reads_padded_shouted_missing_and_running_statuses_as_the_views_do(
    simulator, db_path, run
):
    now = simulator.world.now
    batches = sorted(simulator.world.visible(), key=lambda b: -b["created_at"])
    ended = [
        b for b in batches if b["status"] == "completed" and b["completed_at"] > now - 20 * HOUR
    ]
    # the counts are set here: whether the world holds a failed request near now depends on the day
    failing, clean = (b["id"] for b in ended[:2])
    old_ended = [b["id"] for b in batches if b["status"] == "completed" and b["expires_at"] < now]
    running = [b["id"] for b in batches if b["status"] == "in_progress"]
    assert len(old_ended) >= 5 and running
    simulator.faults.overrides = {
        # ended: not open, counted in the failure rate, past their window without a problem
        failing: {
            "status": " completed ",
            "request_counts": {"total": 10, "completed": 7, "failed": 3},
        },
        clean: {
            "status": "Completed\t",
            "request_counts": {"total": 4, "completed": 4, "failed": 0},
        },
        old_ended[2]: {"status": "\r\n COMPLETED"},
        # no status at all: open, and past its window
        old_ended[3]: {"status": None},
        old_ended[4]: {"status": None, "in_progress_at": None},
        # running without the time it started: not waiting in a queue
        running[0]: {"in_progress_at": None, "created_at": now - 20 * HOUR},
    }
    sync_ok(run, db_path)
    assert run("models", "--db", str(db_path)).code == 0

    code, report = check_json(run, db_path, max_failure_rate=0.0)

    now = datetime.fromisoformat(report["checked_at"]).timestamp()
    api = served(simulator)
    wanted = expected_problems(api, now, {**DEFAULTS, "max_failure_rate": 0.0})
    found = {p["rule"]: p for p in report["problems"]}
    assert set(found) == set(wanted)
    for rule, expected in wanted.items():
        assert found[rule]["batch_ids"] == expected["batch_ids"], rule
        assert found[rule]["value"] == pytest.approx(expected["value"], abs=1e-6), rule
    assert code == 6
    assert failing in found["failure_rate"]["batch_ids"]
    assert {old_ended[3], old_ended[4]} <= set(found["past_window"]["batch_ids"])
    assert not {failing, clean, old_ended[2]} & set(found["past_window"]["batch_ids"])
    assert running[0] not in found.get("queue", {}).get("batch_ids", [])
    with duckdb.connect(str(db_path), read_only=True) as con:
        viewed = {
            i for (i,) in con.execute("select batch_id from analytics.open_batches").fetchall()
        }
    assert viewed == {b["id"] for b in api if status(b) not in TERMINAL}


def test_a_healthy_account_and_warehouse_check_ok(simulator, db_path, run):
    sync_ok(run, db_path)
    outcome = run("check", "--db", str(db_path), "--max-queue", "10000", "--max-failure-rate", "1")
    assert outcome.code == 0, outcome.out
    (line,) = outcome.out.splitlines()
    open_count = sum(1 for b in simulator.world.visible() if b["status"] not in TERMINAL)
    assert line.startswith("sfbatches check: ok (last sync ")
    assert f"{open_count:,} open batches, none stuck)" in line


def test_each_problem_is_one_line_naming_a_few_batches_and_the_figure(simulator, db_path, run):
    picked = stuck(simulator)
    sync_ok(run, db_path)
    outcome = run("check", "--db", str(db_path), "--max-queue", "0.5")
    _, report = check_json(run, db_path, max_queue_hours=0.5)
    lines = outcome.out.splitlines()
    assert outcome.code == 6
    assert len(lines) == len(report["problems"])
    for line, problem in zip(lines, report["problems"], strict=True):
        assert line == f"sfbatches check: {problem['rule']}: {problem['message']}"
        shown = [i for i in problem["batch_ids"] if i in line]
        assert shown == problem["batch_ids"][:3]
        if len(problem["batch_ids"]) > 3:
            assert f"and {len(problem['batch_ids']) - 3:,} more" in line
    queue = next(p for p in report["problems"] if p["rule"] == "queue")
    assert "for more than 30 min" in queue["message"]
    assert picked["queue"] in queue["batch_ids"]


# --- check: the warehouse rules ------------------------------------------------------------------


def test_sync_age_trips_past_its_limit_and_when_no_sync_is_recorded(simulator, db_path, run):
    sync_ok(run, db_path)
    _, quiet = check_json(run, db_path, max_queue_hours=10_000, max_failure_rate=1)
    assert quiet["ok"], quiet
    time.sleep(1.2)
    code, stale = check_json(
        run, db_path, max_sync_age_hours=0.0003, max_queue_hours=10_000, max_failure_rate=1
    )
    (problem,) = stale["problems"]
    finished = runs(db_path)[-1]["finished_at"]
    age_h = (datetime.fromisoformat(stale["checked_at"]) - finished).total_seconds() / HOUR
    assert (code, problem["rule"], problem["limit"]) == (6, "sync_age", 0.0003)
    assert problem["value"] == pytest.approx(age_h, abs=1e-6)
    assert problem["batch_ids"] == []
    with duckdb.connect(str(db_path)) as con:
        con.execute("delete from siliconflow.sync_runs")
    code, never = check_json(run, db_path, max_queue_hours=10_000, max_failure_rate=1)
    (problem,) = never["problems"]
    assert (code, problem["rule"], problem["value"]) == (6, "sync_age", None)
    assert "no successful sync" in problem["message"]


def test_last_sync_failed_trips_until_a_sync_succeeds(simulator, db_path, run):
    quiet = {"max_queue_hours": 10_000, "max_failure_rate": 1}
    sync_ok(run, db_path)
    simulator.faults.update({"error_rate": 1.0})
    assert run("sync", "--db", str(db_path), "--no-models").code == 4
    code, report = check_json(run, db_path, **quiet)
    (problem,) = report["problems"]
    failed = runs(db_path)[-1]
    assert (code, problem["rule"], problem["value"]) == (6, "last_sync_failed", 4)
    assert problem["message"].endswith(f"with exit 4: {failed['message']}")
    simulator.faults.update({"error_rate": 0.0})
    sync_ok(run, db_path)
    code, report = check_json(run, db_path, **quiet)
    assert (code, report["problems"]) == (0, [])


def test_check_waits_for_a_sync_holding_the_database_then_exits_5(db_path, run, monkeypatch):
    with duckdb.connect(str(db_path)) as con:
        con.execute("create schema siliconflow")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
            "print('open', flush=True); time.sleep(600)",
            str(db_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        monkeypatch.setenv(database.LOCK_TIMEOUT_ENV, "0.5")
        outcome = run("check", "--db", str(db_path))
    finally:
        writer.kill()
        writer.wait()
    assert outcome.code == 5
    assert "locked by another process" in outcome.err


# --- limits --------------------------------------------------------------------------------------


def test_flags_beat_alerts_config_which_beats_the_defaults(simulator, db_path, run, monkeypatch):
    stuck(simulator)
    sync_ok(run, db_path)
    monkeypatch.setenv("ALERTS__MAX_QUEUE_HOURS", "30")
    _, by_config = check_json(run, db_path)
    assert not any(p["rule"] == "queue" for p in by_config["problems"])
    _, by_flag = check_json(run, db_path, max_queue_hours=14.5)
    (queue,) = [p for p in by_flag["problems"] if p["rule"] == "queue"]
    assert queue["limit"] == 14.5
    monkeypatch.setenv("ALERTS__MAX_FINALIZING_HOURS", "2.5")
    _, fractional = check_json(run, db_path)
    (final,) = [p for p in fractional["problems"] if p["rule"] == "finalizing"]
    assert final["limit"] == 2.5


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--max-failure-rate", "1.5"], {}, "must be a fraction from 0 to 1"),
        (["--max-queue", "-1"], {}, "must be hours of 0 or more"),
        (["--max-queue", "soon"], {}, "not a number"),
        (["--max-sync-age", "inf"], {}, "not a finite number"),
        ([], {"ALERTS__MAX_QUEUE_HOURS": "inf"}, "alerts.max_queue_hours must be a number"),
        ([], {"SFBATCHES_LOCK_TIMEOUT": "inf"}, "SFBATCHES_LOCK_TIMEOUT must be a number"),
        ([], {"ALERTS__MAX_QUEUE_HOURS": "soon"}, "alerts.max_queue_hours must be a number"),
        ([], {"ALERTS__MAX_FAILURE_RATE": "2"}, "alerts.max_failure_rate must be a number"),
    ],
)
def test_bad_limits_are_usage_errors(tmp_path, args, env, says):
    db_path = tmp_path / "w.duckdb"
    duckdb.connect(str(db_path)).close()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "check", "--db", str(db_path), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


# --- node_exporter textfile ----------------------------------------------------------------------


def prometheus(path: Path) -> dict[str, float]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_prometheus_file_holds_the_figures_behind_the_rules(simulator, db_path, run, tmp_path):
    picked = stuck(simulator)
    sync_ok(run, db_path)
    target = tmp_path / "sfbatches.prom"
    outcome = run("check", "--db", str(db_path), "--json", "--prometheus", str(target))
    report = json.loads(outcome.out)
    now = datetime.fromisoformat(report["checked_at"]).timestamp()
    api = simulator.world.visible()
    open_ = [b for b in api if b["status"] not in TERMINAL]
    queued = [now - b["created_at"] for b in open_ if b["in_progress_at"] is None]
    finalizing = [now - b["finalizing_at"] for b in open_ if b["status"] == "finalizing"]
    values = prometheus(target)
    assert values["sfbatches_check_ok"] == 0
    assert values["sfbatches_open_batches"] == len(open_)
    assert values["sfbatches_oldest_queue_age_seconds"] == pytest.approx(max(queued), abs=0.01)
    assert values["sfbatches_finalizing_age_seconds"] == pytest.approx(max(finalizing), abs=0.01)
    assert values["sfbatches_past_window_batches"] == sum(1 for b in open_ if b["expires_at"] < now)
    assert 0 <= values["sfbatches_last_sync_age_seconds"] < 120
    assert values["sfbatches_last_sync_failed"] == 0
    rate = next((p["value"] for p in report["problems"] if p["rule"] == "failure_rate"), None)
    if rate is not None:
        assert values["sfbatches_failure_rate_24h"] == pytest.approx(rate)
    for rule in RULES:
        problem = next((p for p in report["problems"] if p["rule"] == rule), None)
        expected = 0 if problem is None else max(len(problem["batch_ids"]), 1)
        assert values[f'sfbatches_check_problems{{rule="{rule}"}}'] == expected
    assert (
        picked["finalizing"]
        in next(p for p in report["problems"] if p["rule"] == "finalizing")["batch_ids"]
    )
    assert stat.S_IMODE(target.stat().st_mode) & 0o444 == 0o444  # node_exporter may read it
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_prometheus_ages_never_negative_when_the_api_dates_ahead(simulator, db_path, run, tmp_path):
    stuck(simulator)
    sync_ok(run, db_path)
    with duckdb.connect(str(db_path)) as con:
        ahead = con.execute(
            """
            update siliconflow.batches
            set created_at = created_at + interval 30 days,
                finalizing_at = finalizing_at + interval 30 days
            where status not in ('completed', 'failed', 'expired', 'cancelled')
            returning id
            """
        ).fetchall()
    assert ahead
    target = tmp_path / "sfbatches.prom"
    run("check", "--db", str(db_path), "--prometheus", str(target))
    values = prometheus(target)
    assert values["sfbatches_oldest_queue_age_seconds"] == 0
    assert values["sfbatches_finalizing_age_seconds"] == 0
    assert values["sfbatches_open_batches"] >= len(ahead)


def test_prometheus_tokens_today_and_no_sync_as_nan(simulator, db_path, run, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "true")
    sync_ok(run, db_path)
    target = tmp_path / "sfbatches.prom"
    before = last_midnight()
    run("check", "--db", str(db_path), "--prometheus", str(target))
    # `check` took "today" at one moment of its run: a UTC midnight may have passed meanwhile
    today = {tokens_ended_since(simulator, midnight) for midnight in (before, last_midnight())}
    assert prometheus(target)["sfbatches_tokens_today"] in today
    with duckdb.connect(str(db_path)) as con:
        con.execute("delete from siliconflow.sync_runs")
    run("check", "--db", str(db_path), "--prometheus", str(target))
    assert math.isnan(prometheus(target)["sfbatches_last_sync_age_seconds"])


def last_midnight() -> float:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def tokens_ended_since(simulator: Simulator, midnight: float) -> int:
    """Total tokens in the served result files of batches that ended at or after `midnight`."""
    ended = {b["id"] for b in simulator.world.visible() if (ended_at(b) or 0) >= midnight}
    return sum(
        line["response"]["body"]["usage"]["total_tokens"]
        for file in simulator.world.result_files()
        if file.batch_id in ended and not file.gone
        for line in map(json.loads, filter(None, file.content().split(b"\n")))
        if isinstance(line, dict)
        and isinstance(line.get("response"), dict)
        and isinstance(line["response"].get("body"), dict)
        and isinstance(line["response"]["body"].get("usage"), dict)
        and isinstance(line["response"]["body"]["usage"].get("total_tokens"), int)
    )


def test_prometheus_leaves_a_pipe_alone(db_path, run, tmp_path):
    duckdb.connect(str(db_path)).close()
    target = tmp_path / "node.prom"
    os.mkfifo(target)

    outcome = run("check", "--db", str(db_path), "--prometheus", str(target))

    assert outcome.code == 2 and "not a plain file" in outcome.err
    assert stat.S_ISFIFO(target.lstat().st_mode)


@pytest.mark.parametrize("content", [b"keep me\n", b"# HELP node_cpu_seconds_total cpu\n", b""])
def test_prometheus_never_overwrites_a_file_it_did_not_write(db_path, run, tmp_path, content):
    duckdb.connect(str(db_path)).close()
    target = tmp_path / "other.prom"
    target.write_bytes(content)
    outcome = run("check", "--db", str(db_path), "--prometheus", str(target))
    assert outcome.code == 2
    assert "was not written by sfbatches" in outcome.err
    assert target.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.prom", "warehouse.duckdb"]


@pytest.mark.parametrize(
    ("value_h", "text"),
    [
        (0.0001, "0.36 s"),  # a limit of a fraction of a second still reads as itself
        (12 / 3600, "12 s"),
        (0.5, "30 min"),
        (3.25, "3.2 h"),
        (60, "2.5 days"),
    ],
)
def test_ages_and_limits_read_in_the_unit_that_shows_them(value_h, text):
    assert check.hours(value_h) == text
