"""Result files: each served line in `batch_requests` once, files tried once and never partly
loaded, signed links fetched without the key, failures retried by the next sync, and usage,
tokens/s and cost computed here independently of the SQL."""

import csv
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import duckdb
import pytest
from conftest import REPO, START, STOPS_IDS, STOPS_SAID, StopAt
from truth import assert_warehouse_equals, expected_requests, request_row
from truth import served as served_batches

from pipelines.siliconflow.client import BatchApi, Deadline, RetryPolicy
from pipelines.siliconflow.results import (
    LONGEST_LINE,
    READER,
    SHORT_LINE,
    Download,
    Fetcher,
    NotAResultFile,
    Numbered,
    ResultFile,
    ResultStats,
    check_is_result_file,
    groups,
    rows_of,
)
from pipelines.siliconflow.settings import FILE_DOWNLOADS
from pipelines.simulator import Simulator, World
from pipelines.simulator.server import STORAGE_ERRORS
from pipelines.warehouse import database, history, sync

REQUEST_COLUMNS = (
    "batch_id, kind, line, custom_id, status_code, request_id, model, finish_reason, "
    "prompt_tokens, completion_tokens, total_tokens, reasoning_tokens, cached_tokens, "
    "error_code, error_message"
)


@pytest.fixture
def world() -> World:
    return World(batches=300, seed=5, now=START, max_requests=60)


@pytest.fixture(autouse=True)
def with_results(monkeypatch):
    monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "true")


def query(db_path: Path, sql: str, timezone: str = "UTC") -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.execute(f"set TimeZone = '{timezone}'")
        return con.execute(sql).fetchall()


def files_by_state(db_path: Path) -> dict[str, set[tuple[str, str]]]:
    states: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for batch_id, kind, state in query(
        db_path, "select batch_id, kind, state from siliconflow.batch_files"
    ):
        states[state].add((batch_id, kind))
    return states


def served(sim: Simulator) -> list:
    return sim.world.result_files()


def keys(files) -> set[tuple[str, str]]:
    return {(file.batch_id, file.kind) for file in files}


def assert_results_equal(db_path: Path, sim: Simulator) -> None:
    """batch_requests holds every line of every served file once, batch_files says so."""
    files = served(sim)
    rows, bad = expected_requests(files)
    stored = query(db_path, f"select {REQUEST_COLUMNS} from siliconflow.batch_requests")
    assert len(stored) == len(set(stored)), "a line stored twice"
    assert set(stored) == rows
    state = files_by_state(db_path)
    assert state["loaded"] == keys(f for f in files if not f.gone)
    assert state["gone"] == keys(f for f in files if f.gone)
    counted = {
        (batch_id, kind): (lines, bad_lines)
        for batch_id, kind, lines, bad_lines in query(
            db_path,
            "select batch_id, kind, lines, bad_lines from siliconflow.batch_files "
            "where state = 'loaded'",
        )
    }
    for file in files:
        if not file.gone:
            lines = sum(1 for raw in file.content().split(b"\n") if raw.strip())
            assert counted[file.batch_id, file.kind] == (lines, bad[file.batch_id, file.kind])


def test_every_line_of_every_served_file_is_stored_once(simulator, db_path, run):
    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    files = served(simulator)
    assert any(f.gone for f in files) and any(f.signed for f in files)
    assert_results_equal(db_path, simulator)
    assert f"{sum(not f.gone for f in files):,} result files" in outcome.out


@pytest.mark.parametrize(
    "doubled",
    [
        "true",  # a whole file's rows, as its one load job run twice
        "line % 3 = 0",  # a third of a file's lines, as one of its several jobs run twice
    ],
)
def test_request_lines_a_rerun_load_job_stored_twice_are_dropped_after_recovery(
    simulator, db_path, run, doubled
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    (file,) = query(
        db_path,
        "select batch_id, kind from siliconflow.batch_files where state = 'loaded' "
        "order by lines desc limit 1",
    )
    # As a sync killed after its load and before its bookkeeping.
    with duckdb.connect(str(db_path)) as con:
        con.execute(
            "insert into siliconflow.batch_requests select * from siliconflow.batch_requests "
            f"where batch_id = ? and kind = ? and {doubled}",
            list(file),
        )
        con.execute("delete from siliconflow._sfbatches_recorded")
    stored = query(db_path, "select count(*) from siliconflow.batch_requests")[0][0]
    assert stored > len(expected_requests(served(simulator))[0])

    with database.connect_for_sync(db_path) as con:  # as the next sync
        history.record_observations(con)

    assert_results_equal(db_path, simulator)


def test_files_of_long_lines_are_stored_whole(simulator, db_path, run):
    # long completions: lines the reader takes as they are, and lines cut down before it
    done = [f.batch_id for f in served(simulator) if f.kind == "output" and not f.gone]
    for batch_id, lines, pad_bytes in zip(
        done, (3_000, 1_500, 100), (3_000, 20_000, 300_000), strict=False
    ):
        simulator.world.enlarge(batch_id, lines=lines, pad_bytes=pad_bytes)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert_results_equal(db_path, simulator)
    counts = dict(
        query(db_path, "select batch_id, count(*) from siliconflow.batch_requests group by 1")
    )
    assert [counts[batch_id] for batch_id in done[:3]] == [3_000, 1_500, 100]


def test_bad_lines_are_counted_and_named_in_one_warning(simulator, db_path, run):
    outcome = run("sync", "--db", str(db_path), "--no-models")

    _, bad = expected_requests(served(simulator))
    assert sum(bad.values()) > 0, "the world should hold malformed lines"
    warnings = [line for line in outcome.err.splitlines() if "not JSON objects" in line]
    assert len(warnings) == 1 and outcome.code == 0
    first = next(key for key, count in bad.items() if count)
    assert first[0] in warnings[0] or len(bad) > 5


def test_a_loaded_or_gone_file_is_never_fetched_again(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    before = keys(served(simulator))
    stored = query(db_path, f"select {REQUEST_COLUMNS} from siliconflow.batch_requests")
    simulator.world.advance(12 * 3600)
    simulator.clear_requests()

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    new = [f for f in served(simulator) if (f.batch_id, f.kind) not in before]
    assert new, "the clock should end more batches in 12 hours"
    fetched = {r.path for r in simulator.file_requests()}
    assert len(fetched) == len(simulator.file_requests()) == len(new)
    # files loaded before stay as they were, even those whose links have expired since
    new_rows, _ = expected_requests(new)
    now = query(db_path, f"select {REQUEST_COLUMNS} from siliconflow.batch_requests")
    assert len(now) == len(set(now)) and set(now) == set(stored) | new_rows


def test_full_refresh_asks_for_gone_files_again_and_only_for_them(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    gone = [f for f in served(simulator) if f.gone]
    simulator.clear_requests()

    assert run("sync", "--db", str(db_path), "--no-models", "--full-refresh").code == 0

    assert gone and len(simulator.file_requests()) == len(gone)
    assert_results_equal(db_path, simulator)


def test_a_gone_file_is_asked_for_again_once_its_batch_names_another(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    files = served(simulator)
    gone = next(f for f in files if f.gone and f.kind == "output" and not f.signed)
    signed = next(f for f in files if f.gone and f.signed)
    other = next(f for f in files if not f.gone and f.kind == "output" and not f.signed)
    simulator.faults.overrides = {
        gone.batch_id: {"output_file_id": other.file_id},  # another file
        signed.batch_id: {f"{signed.kind}_file_id": f"{signed.file_id}&renewed=1"},  # the same
    }
    simulator.clear_requests()

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert len(simulator.file_requests()) == 1
    states = {
        (batch_id, kind): (file_id, state, attempts)
        for batch_id, kind, file_id, state, attempts in query(
            db_path, "select batch_id, kind, file_id, state, attempts from siliconflow.batch_files"
        )
    }
    assert states[gone.batch_id, "output"] == (other.file_id, "loaded", 1)
    assert states[signed.batch_id, signed.kind][1:] == ("gone", 1)
    rows, _ = expected_requests([other])
    stored = query(
        db_path,
        f"select {REQUEST_COLUMNS} from siliconflow.batch_requests "
        f"where batch_id = '{gone.batch_id}' and kind = 'output'",
    )
    assert rows and set(stored) == {(gone.batch_id, *row[1:]) for row in rows}


def lines_of(file) -> int:
    return sum(1 for raw in file.content().split(b"\n") if raw.strip())


@pytest.mark.parametrize("new_is", ["shorter", "longer"])
def test_a_loaded_file_its_batch_trades_for_another_leaves_only_the_new_lines(
    simulator, db_path, run, new_is
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    plain = [f for f in served(simulator) if not f.gone and f.kind == "output" and not f.signed]
    old, new = next(
        (a, b)
        for a in plain
        for b in plain
        if (lines_of(b) < lines_of(a) if new_is == "shorter" else lines_of(b) > lines_of(a))
    )
    linked = [f for f in served(simulator) if not f.gone and f.signed]
    [(before,)] = query(db_path, "select count(*) from siliconflow.batch_requests")
    simulator.faults.overrides = {
        old.batch_id: {"output_file_id": new.file_id},
        # a signed link that moved to another path may lead to the same file: not fetched again
        linked[0].batch_id: {f"{linked[0].kind}_file_id": linked[1].file_id},
    }
    simulator.clear_requests()

    assert run("sync", "--db", str(db_path), "--no-models", "--full-refresh").code == 0

    fetched = {r.path for r in simulator.file_requests()}
    assert any(new.file_id in path for path in fetched)
    assert urlsplit(linked[1].file_id).path not in fetched
    [state] = query(
        db_path,
        "select file_id, state, lines from siliconflow.batch_files "
        f"where batch_id = '{old.batch_id}' and kind = 'output'",
    )
    assert state == (new.file_id, "loaded", lines_of(new))
    rows, _ = expected_requests([new])
    stored = query(
        db_path,
        f"select {REQUEST_COLUMNS} from siliconflow.batch_requests "
        f"where batch_id = '{old.batch_id}' and kind = 'output'",
    )
    assert sorted(stored) == sorted((old.batch_id, *row[1:]) for row in rows)
    [(after,)] = query(db_path, "select count(*) from siliconflow.batch_requests")
    old_rows, _ = expected_requests([old])
    assert after == before - len(old_rows) + len(rows)


def test_signed_links_are_fetched_without_the_key_and_the_api_with_it(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    storage = simulator.storage_requests()
    api = [r for r in simulator.file_requests() if r not in storage]
    assert storage and api
    assert {r.authorization for r in storage} == {None}
    assert {r.authorization for r in api} == {f"Bearer {simulator.api_key}"}


def test_a_file_is_asked_for_by_its_whole_name_and_a_blank_name_names_none(simulator, db_path, run):
    named = [batch for batch in simulator.world.visible() if batch["output_file_id"]]
    plain = [batch["id"] for batch in named if batch["output_file_id"].startswith("file-")]
    signed = next(batch for batch in named if batch["output_file_id"].startswith("http://"))
    odd = "file-odd/../b?c=d#e f"  # asked for as it is: not as file-odd, not as b?c=d
    upper = signed["output_file_id"].replace("http://", "HTTP://", 1)  # still a link
    names = {plain[0]: "", plain[1]: " \t ", plain[2]: odd, signed["id"]: upper}
    simulator.faults.overrides = {batch_id: {"output_file_id": n} for batch_id, n in names.items()}

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    outputs = {
        batch_id: rest
        for batch_id, *rest in query(
            db_path,
            "select batch_id, file_id, state, message from siliconflow.batch_files "
            "where kind = 'output'",
        )
    }
    assert plain[0] not in outputs and plain[1] not in outputs
    assert outputs[plain[2]] == [odd, "gone", "the API no longer has it (HTTP 404)"]
    assert outputs[signed["id"]][:2] == [upper, "loaded"]
    requests = simulator.file_requests()
    assert len(requests) == len(query(db_path, "select * from siliconflow.batch_files"))
    assert [r.path for r in requests if "odd" in r.path] == [
        "/v1/files/file-odd%2F..%2Fb%3Fc%3Dd%23e%20f/content"
    ]
    assert {r.authorization for r in simulator.storage_requests()} == {None}
    stored = query(
        db_path,
        f"select {REQUEST_COLUMNS} from siliconflow.batch_requests "
        f"where batch_id = '{signed['id']}' and kind = 'output'",
    )
    rows, _ = expected_requests([simulator.world.result_file(signed["id"], "output")])
    assert rows and set(stored) == rows


def test_downloads_the_api_redirects_to_its_storage_load_and_never_take_the_key_there(
    simulator, db_path, run
):
    simulator.faults.files_via_storage = True

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert_results_equal(db_path, simulator)
    files = served(simulator)
    api = [r for r in simulator.file_requests() if r.host == "api"]
    storage = simulator.storage_requests()
    assert len(api) == sum(not f.signed for f in files) and {r.status for r in api} == {302}
    assert len(storage) == len(files) and {r.authorization for r in storage} == {None}
    assert {r.status for r in storage} == {200, 403}  # 403: a gone file's link has expired


@pytest.mark.parametrize(
    "fault",
    [
        "file_error",
        "cut_short",
        "cut_unsized",  # no length given, and the connection closed inside a line
        "envelope",  # HTTP 200, but SiliconFlow's overload envelope instead of the file
        "bad_json",  # HTTP 200, but a proxy's HTML page
    ],
)
def test_files_that_fail_keep_no_rows_and_load_with_the_next_sync(
    simulator, db_path, run, fault, monkeypatch, tmp_path
):
    archive = tmp_path / "archive"
    monkeypatch.setenv("SOURCES__SILICONFLOW__ARCHIVE_DIR", str(archive))
    simulator.faults.queue(kind=fault, times=100_000, files=True)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and "could not be fetched" in outcome.err
    served_files = keys(f for f in served(simulator) if not f.gone)
    assert files_by_state(db_path)["failed"] >= served_files - files_by_state(db_path)["gone"]
    said = query(
        db_path, "select distinct message from siliconflow.batch_files where state = 'failed'"
    )
    assert said and all(message.isprintable() and message[0].isalpha() for (message,) in said), said
    assert query(db_path, "select count(*) from siliconflow.batch_requests") == [(0,)]
    assert not [path for path in archive.rglob("*") if path.is_file()]
    simulator.faults.reset()

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert_results_equal(db_path, simulator)
    archived = {(p.parent.name, p.name) for p in archive.rglob("*") if p.is_file()}
    assert archived == {(batch_id, f"{kind}.jsonl.gz") for batch_id, kind in served_files}
    assert query(
        db_path, "select distinct attempts from siliconflow.batch_files where state = 'loaded'"
    ) == [(2,)]


@pytest.mark.parametrize("status", [401, 403])
def test_the_api_refusing_the_key_for_result_files_exits_3_with_the_batches_stored(
    simulator, db_path, run, status
):
    simulator.faults.queue(kind="file_error", status=status, times=100_000)

    outcome = run("sync", "--db", str(db_path))

    assert outcome.code == 3
    said = outcome.err.strip().splitlines()[-1]
    assert said.startswith("sfbatches: result files not downloaded, authentication refused")
    assert f"HTTP {status}" in said and "the key from SILICONFLOW_API_KEY" in said
    assert simulator.api_key not in outcome.err + outcome.out
    assert "batches read" in outcome.out  # the summary, then the failure
    (batches,) = query(db_path, "select count(*) from siliconflow.batches")
    assert batches == (len(simulator.world.visible()),)
    # a file or two at a time were asked for when the first refusal came; none after
    plain = [f for f in served(simulator) if not f.signed]
    asked = [r for r in simulator.file_requests() if r.host == "api"]
    assert 1 <= len(asked) <= 2 * FILE_DOWNLOADS < len(plain)
    assert query(db_path, "select outcome, exit_code, message from siliconflow.sync_runs") == [
        ("failed", 3, said.removeprefix("sfbatches: "))
    ]
    assert query(db_path, "select count(*) from siliconflow.batch_requests") == [(0,)]
    simulator.faults.reset()

    # (a storage's 403 is an expired link: a file gone, until a full refresh)
    assert run("sync", "--db", str(db_path), "--no-models", "--full-refresh").code == 0

    assert_results_equal(db_path, simulator)


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("drop", "the server closed the connection without answering"),
        ("cut_short", "the connection broke off in the middle of the answer"),
    ],
)
def test_a_download_without_a_whole_answer_says_why_in_plain_words(
    simulator, db_path, run, fault, said
):
    simulator.faults.queue(kind=fault, times=100_000, files=True)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    failed = "select message from siliconflow.batch_files where state = 'failed'"
    messages = [message for (message,) in query(db_path, failed)]
    assert messages and all(message.startswith(f"{said} at http") for message in messages)
    assert f"output: {said} at http" in outcome.err


def test_a_download_that_fails_once_is_fetched_again_within_the_sync(simulator, db_path, run):
    # one of each transient trouble, on the API or the storage, whichever file comes first
    for kind in ("file_error", "cut_short", "cut_unsized", "envelope", "drop"):
        simulator.faults.queue(kind=kind, files=True)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and "could not be fetched" not in outcome.err
    assert_results_equal(db_path, simulator)
    assert query(db_path, "select distinct attempts from siliconflow.batch_files") == [(1,)]
    assert len(simulator.file_requests()) == len(served(simulator)) + 5
    assert simulator.faults.pending() == 0


def test_a_failing_storage_is_named_by_its_host_and_code_never_by_the_signed_link(
    simulator, db_path, run
):
    simulator.faults.queue(kind="file_error", times=100_000)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    signed = {(f.batch_id, f.kind) for f in served(simulator) if f.signed and not f.gone}
    said = {
        (batch_id, kind): (state, message)
        for batch_id, kind, state, message in query(
            db_path, "select batch_id, kind, state, message from siliconflow.batch_files"
        )
    }
    host = urlsplit(simulator.storage_origin).netloc
    assert signed and {said[key] for key in signed} == {
        ("failed", f"the storage at {host} answered HTTP 503 {STORAGE_ERRORS[503][0]}")
    }
    assert "X-Amz" not in outcome.err and "/results/" not in outcome.err


def test_a_signed_link_that_cannot_be_reached_is_named_without_its_signature(
    simulator, db_path, run
):
    signed = "X-Amz-Signature=do-not-show-7f3a"
    batch_id = next(f.batch_id for f in served(simulator) if f.kind == "output" and not f.gone)
    simulator.faults.overrides = {
        batch_id: {"output_file_id": f"http://127.0.0.1:9/{batch_id}.jsonl?{signed}"}
    }
    # and downloads from the API sent on to a storage nobody answers at
    simulator.faults.queue(
        kind="redirect",
        files=True,
        times=100_000,
        location=f"http://127.0.0.1:9/moved.jsonl?{signed}",
    )

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and "could not be fetched" in outcome.err
    said = query(db_path, "select message from siliconflow.batch_files where state = 'failed'")
    assert len(said) >= 2 and any("moved.jsonl" in message for (message,) in said)
    assert signed not in outcome.err + outcome.out + repr(said)


@pytest.mark.parametrize(("stop", "code", "said"), STOPS_SAID, ids=STOPS_IDS)
@pytest.mark.parametrize("during", ["listing", "downloads"])
def test_a_stopped_sync_says_so_and_the_next_sync_brings_it_current(
    simulator, db_path, run, during, stop, code, said
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    simulator.world.advance(6 * 3600)
    simulator.faults.latency_ms = 30
    started = {"listing": lambda: len(simulator.list_requests()), "downloads": lambda: 0}[during]()
    reached = {
        "listing": lambda: len(simulator.list_requests()) >= started + 2,
        "downloads": lambda: len(simulator.file_requests()) >= 3,
    }[during]
    args = ["--full-refresh"] if during == "listing" else []
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path), "--no-models", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not reached() and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the sync ended before it was stopped"

    process.send_signal(stop)
    out, err = process.communicate(timeout=120)

    assert process.returncode == code and err.splitlines()[-1] == f"sfbatches: {said}", err
    assert "unexpected" not in err and "sync of" not in out
    last = query(
        db_path, "select exit_code, message from siliconflow.sync_runs order by finished_at"
    )
    assert last[-1] == (code, said)
    simulator.faults.latency_ms = 0
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert_warehouse_equals(db_path, served_batches(simulator))
    assert_results_equal(db_path, simulator)


@pytest.mark.parametrize(("stop", "code", "said"), STOPS_SAID, ids=STOPS_IDS)
def test_a_stop_does_not_wait_for_the_rest_of_the_files_being_downloaded(
    simulator, db_path, run, stop, code, said
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    # every file 16 bytes every half second: minutes for the smallest
    simulator.faults.queue(kind="trickle", seconds=0.5, files=True, times=100_000)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path), "--no-models"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while len(simulator.file_requests()) < 2 and process.poll() is None:
            time.sleep(0.02)
        assert process.poll() is None, "the sync ended before it was stopped"
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)  # the downloads under way would take minutes
    finally:
        process.kill()

    assert process.returncode == code and err.splitlines()[-1] == f"sfbatches: {said}", err
    assert query(db_path, "select count(*) from siliconflow.batch_files") == [(0,)]
    assert not list((database.work_dir(db_path) / "results").glob("*.lines"))


def test_copies_a_killed_sync_left_go_with_the_next_fetch(simulator, db_path, run):
    simulator.faults.queue(kind="file_error", times=100_000)
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.faults.reset()
    scratch = database.work_dir(db_path) / "results"
    # as a sync killed while it downloaded: one copy it would fetch again, one it never will
    (file,) = query(db_path, "select batch_id from siliconflow.batch_files limit 1")
    leftovers = [scratch / f"{file[0]}.output.lines", scratch / "batch_none.error.lines"]
    for path in leftovers:
        path.write_bytes(b'1\x1f{"custom_id": "stale"}\n' * 1_000)
    theirs = scratch / "notes.txt"
    theirs.write_text("not ours")

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert sorted(path.name for path in scratch.iterdir()) == ["notes.txt"]
    assert_results_equal(db_path, simulator)


def test_batch_ids_that_are_no_plain_file_names_get_copies_and_archives_of_their_own(
    simulator, tmp_path
):
    # ids the API might send: two that differ only where a file name cannot, and two that
    # would name the folder itself or the one above it
    ids = ["batch/1", "batch_1", "..", "."]
    served_files = [f for f in served(simulator) if not f.gone and not f.signed][: len(ids)]
    api = BatchApi(simulator.base_url, simulator.api_key, RetryPolicy(), Deadline(None))
    archive = tmp_path / "home" / "archive"
    fetcher = Fetcher(api, tmp_path / "home" / "scratch", archive)
    files = [ResultFile(i, "output", f.file_id) for i, f in zip(ids, served_files, strict=True)]

    downloads = list(fetcher.downloads(files, ResultStats()))

    assert [d.state for d in downloads] == ["loaded"] * len(ids)
    for download, file in zip(downloads, served_files, strict=True):
        content = file.content()
        assert download.path.parent == tmp_path / "home" / "scratch"
        assert download.path.read_bytes().count(b"\n") == download.lines == content.count(b"\n")
    kept = sorted(archive.glob("*/output.jsonl.gz"))
    assert len(kept) == len(ids) and all(path.parent.parent == archive for path in kept)
    assert sorted(gzip.decompress(path.read_bytes()) for path in kept) == sorted(
        f.content() for f in served_files
    )
    assert sorted(path.name for path in (tmp_path / "home").iterdir()) == ["archive", "scratch"]


def test_an_id_spelled_as_the_file_name_another_id_got_gets_its_own(simulator, tmp_path):
    served_files = [f for f in served(simulator) if not f.gone and not f.signed][:4]
    api = BatchApi(simulator.base_url, simulator.api_key, RetryPolicy(), Deadline(None))

    def fetch(ids: list[str], home: Path) -> list:
        fetcher = Fetcher(api, home / "scratch", home / "archive")
        files = [
            ResultFile(i, "output", f.file_id) for i, f in zip(ids, served_files, strict=False)
        ]
        return list(fetcher.downloads(files, ResultStats()))

    odd = ["batch/1", "a b"]
    fetch(odd, tmp_path / "first")
    names = sorted(path.name for path in (tmp_path / "first" / "archive").iterdir())
    assert len(names) == 2 and not set(names) & set(odd)

    downloads = fetch([*odd, *names], tmp_path / "second")

    assert [d.state for d in downloads] == ["loaded"] * 4
    assert len({d.path for d in downloads}) == 4
    archive = tmp_path / "second" / "archive"
    assert sorted(gzip.decompress(p.read_bytes()) for p in archive.glob("*/output.jsonl.gz")) == (
        sorted(f.content() for f in served_files)
    )


def test_archive_keeps_each_served_file_gzipped_whole(
    simulator, db_path, run, monkeypatch, tmp_path
):
    archive = tmp_path / "archive"
    monkeypatch.setenv("SOURCES__SILICONFLOW__ARCHIVE_DIR", str(archive))

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    files = served(simulator)
    for file in files:
        path = archive / file.batch_id / f"{file.kind}.jsonl.gz"
        if file.gone:
            assert not path.exists()
        else:
            assert gzip.decompress(path.read_bytes()) == file.content()
    assert not list(archive.rglob("*.part"))


# --- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A file system of 64 MB of its own, to fill up: a tmpfs, which only root may mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        os.geteuid() == 0
        and not subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
        ).returncode
    )
    if not mounted:
        pytest.skip("filling a disk of its own needs root, to mount a tmpfs")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all but `leave` bytes of the disk's free space; the file that holds them."""
    filler = disk / "filler"
    with open(filler, "wb") as file:
        os.posix_fallocate(file.fileno(), 0, shutil.disk_usage(disk).free - leave)
    return filler


def assert_full_disk_said(outcome, disk: Path) -> None:
    """One line that the disk is full, naming a folder or file on it: which disk to clear."""
    assert outcome.code == 2 and outcome.err.count("\n") == 1, outcome.err
    assert "is full" in outcome.err and "free some space" in outcome.err
    assert str(disk) in outcome.err and "unexpected" not in outcome.err


# The database's own disk: full before DuckDB wrote the file's header, before the first load
# commits, before its checkpoint; dlt's working folder; the archive.
@pytest.mark.parametrize(
    ("where", "leave"),
    [
        ("database", 0),
        ("database", 60_000),
        ("database", 300_000),
        ("work", 20_000),
        ("archive", 20_000),
    ],
)
def test_a_first_sync_on_a_full_disk_exits_2_and_the_next_one_loads_everything(
    simulator, tmp_path, small_disk, run, monkeypatch, where, leave
):
    db_path = (small_disk if where == "database" else tmp_path) / "w.duckdb"
    monkeypatch.setenv("XDG_CACHE_HOME", str((small_disk if where == "work" else tmp_path) / "c"))
    archive = (small_disk if where == "archive" else tmp_path) / "archive"
    monkeypatch.setenv("SOURCES__SILICONFLOW__ARCHIVE_DIR", str(archive))
    filler = fill(small_disk, leave)

    assert_full_disk_said(run("sync", "--db", str(db_path), "--no-models"), small_disk)

    filler.unlink()
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert_warehouse_equals(db_path, served_batches(simulator))
    assert_results_equal(db_path, simulator)
    for file in served(simulator):
        path = archive / file.batch_id / f"{file.kind}.jsonl.gz"
        assert file.gone or gzip.decompress(path.read_bytes()) == file.content()


def test_a_database_half_made_by_a_killed_sync_is_made_anew(simulator, tmp_path, run):
    db_path = tmp_path / "w.duckdb"
    (tmp_path / "w.duckdb.new").write_bytes(b"\0" * 4096)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert sorted(path.name for path in tmp_path.iterdir()) == ["w.duckdb", "w.duckdb.lock"]
    assert_warehouse_equals(db_path, served_batches(simulator))


def test_a_full_disk_later_keeps_the_warehouse_as_it_was(simulator, small_disk, run):
    db_path = small_disk / "w.duckdb"
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    tables = ("batches", "batch_requests", "batch_files", "sync_runs")
    before = {t: query(db_path, f"select * from siliconflow.{t} order by all") for t in tables}
    simulator.world.advance(6 * 3600)
    filler = fill(small_disk, 20_000)

    assert_full_disk_said(
        run("sync", "--db", str(db_path), "--full-refresh", "--no-models"), small_disk
    )

    after = {t: query(db_path, f"select * from siliconflow.{t} order by all") for t in tables}
    assert after == before
    filler.unlink()
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert_warehouse_equals(db_path, served_batches(simulator))
    assert_results_equal(db_path, simulator)


def test_a_page_for_a_full_disk_exits_2_and_leaves_no_file(simulator, db_path, small_disk, run):
    assert run("sync", "--db", str(db_path)).code == 0
    fill(small_disk, 20_000)

    assert_full_disk_said(
        run("report", "--db", str(db_path), "--html", str(small_disk / "r.html")), small_disk
    )

    assert sorted(path.name for path in small_disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("served_as", ["served", "failing"])
def test_parts_a_killed_sync_left_in_the_archive_go_whatever_becomes_of_the_file(
    simulator, db_path, run, monkeypatch, tmp_path, served_as
):
    archive = tmp_path / "archive"
    monkeypatch.setenv("SOURCES__SILICONFLOW__ARCHIVE_DIR", str(archive))
    files = served(simulator)
    for file in files:  # as a sync killed while archiving every file would leave them
        part = archive / file.batch_id / f"{file.kind}.jsonl.gz.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(gzip.compress(b'{"custom_id": "half')[:-8])
    if served_as == "failing":
        simulator.faults.queue(kind="file_error", times=100_000)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert not list(archive.rglob("*.part"))
    archived = {(p.parent.name, p.name) for p in archive.rglob("*.gz")}
    loaded = {(f.batch_id, f"{f.kind}.jsonl.gz") for f in files if not f.gone}
    assert archived == (loaded if served_as == "served" else set())


@pytest.mark.parametrize("how", ["flag", "config"])
def test_results_can_be_skipped_and_the_tables_still_exist(
    simulator, db_path, run, monkeypatch, how
):
    args = ["--no-results"] if how == "flag" else []
    if how == "config":
        monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "false")

    outcome = run("sync", "--db", str(db_path), *args)

    assert outcome.code == 0, outcome.err
    assert simulator.file_requests() == []
    assert query(db_path, "select count(*) from analytics.batch_usage") == [(0,)]


def test_result_files_past_the_deadline_wait_for_the_next_sync(
    simulator, db_path, run, monkeypatch
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    simulator.faults.latency_ms = 40
    monkeypatch.setenv("SOURCES__SILICONFLOW__SYNC_TIMEOUT", "2")

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert "left for the next sync" in outcome.err
    loaded = files_by_state(db_path)["loaded"]
    assert 0 < len(loaded) < len(served(simulator))
    simulator.faults.latency_ms = 0
    monkeypatch.delenv("SOURCES__SILICONFLOW__SYNC_TIMEOUT")
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert_results_equal(db_path, simulator)


# --- usage, tokens/s and cost, worked out here from the files and the shipped prices ----------


def prices() -> dict[str, tuple[float, float, str]]:
    with open(REPO / "sql" / "seeds" / "model_prices.csv", newline="") as file:
        return {
            row["model"]: (
                float(row["input_per_million"]),
                float(row["output_per_million"]),
                row["currency"],
            )
            for row in csv.DictReader(file)
        }


def is_failed(row: tuple) -> bool:
    kind, status_code, error_code, error_message = row[1], row[4], row[13], row[14]
    return (
        kind == "error"
        or error_code is not None
        or error_message is not None
        or (status_code is not None and not 200 <= status_code <= 299)
    )


def expected_usage(sim: Simulator) -> dict[str, dict]:
    rows, _ = expected_requests(served(sim))
    batches = {b["id"]: b for b in sim.world.visible()}
    price = prices()
    usage: dict[str, dict] = {}
    loaded = {f.batch_id for f in served(sim) if not f.gone}
    for batch_id in loaded:
        lines = [row for row in rows if row[0] == batch_id]
        models = Counter(row[6] for row in lines if row[1] == "output" and row[6] is not None)
        model = min(models, key=lambda m: (-models[m], m)) if models else None

        def total(index: int, lines: list = lines) -> int | None:
            values = [row[index] for row in lines if row[index] is not None]
            return sum(values) if values else None

        batch = batches[batch_id]
        processing = (
            batch["finalizing_at"] - batch["in_progress_at"]
            if batch["finalizing_at"] and batch["in_progress_at"]
            else None
        )
        completion = total(9)
        cost = None
        if model in price:
            input_price, output_price, _ = price[model]
            cost = ((total(8) or 0) * input_price + (completion or 0) * output_price) / 1e6
        usage[batch_id] = {
            "model": model,
            "requests": len(lines),
            "requests_failed": sum(is_failed(row) for row in lines),
            "prompt_tokens": total(8),
            "completion_tokens": completion,
            "total_tokens": total(10),
            "reasoning_tokens": total(11),
            "cached_tokens": total(12),
            "tokens_per_second": completion / processing
            if processing and completion is not None
            else None,
            "cost": cost,
            "currency": price[model][2] if model in price else None,
            "ended": ended_at(batch),
        }
    return usage


def ended_at(batch: dict) -> int | None:
    for name in ("completed_at", "failed_at", "expired_at", "cancelled_at"):
        if batch.get(name):
            return batch[name]
    return None


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Shanghai"])
def test_batch_usage_matches_the_files_and_the_shipped_prices(simulator, db_path, run, timezone):
    assert run("sync", "--db", str(db_path)).code == 0

    wanted = expected_usage(simulator)
    rows = query(
        db_path,
        "select batch_id, model, requests, requests_succeeded, requests_failed, prompt_tokens, "
        "completion_tokens, total_tokens, reasoning_tokens, cached_tokens, "
        "completion_tokens_per_second, estimated_cost, currency from analytics.batch_usage",
        timezone,
    )

    assert {row[0] for row in rows} == wanted.keys()
    assert any(w["cost"] for w in wanted.values()) and any(
        w["cost"] is None for w in wanted.values()
    )
    for batch_id, model, requests, succeeded, failed, *tokens, tps, cost, currency in rows:
        want = wanted[batch_id]
        assert (model, requests, failed) == (
            want["model"],
            want["requests"],
            want["requests_failed"],
        )
        assert succeeded == requests - failed
        assert tokens == [
            want[name]
            for name in (
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "reasoning_tokens",
                "cached_tokens",
            )
        ]
        assert tps == pytest.approx(want["tokens_per_second"])
        assert cost == pytest.approx(want["cost"]) and currency == want["currency"]


def test_a_price_left_blank_makes_a_cost_unknown_only_where_its_tokens_were_used(
    simulator, db_path, run
):
    assert run("sync", "--db", str(db_path)).code == 0
    usage = expected_usage(simulator).values()
    only_prompt = {u["model"] for u in usage if u["prompt_tokens"] and not u["completion_tokens"]}
    both = {u["model"] for u in usage if u["prompt_tokens"] and u["completion_tokens"]}
    embeddings, chat = sorted(only_prompt - both)[0], sorted(both)[0]
    with duckdb.connect(str(db_path)) as con:  # an input price alone, as for embeddings
        con.executemany(
            "insert into analytics.seed_model_prices "
            "values (?, ?, '', 'CNY', 'a test', '2099-01-01')",
            [[embeddings, "0.5"], [chat, "2"]],
        )

    costs = [
        row
        for row in query(
            db_path, "select model, prompt_tokens, estimated_cost from analytics.batch_usage"
        )
        if row[0] in (embeddings, chat)
    ]

    assert {model for model, _, _ in costs} == {embeddings, chat}
    for model, prompt_tokens, cost in costs:
        if model == embeddings:
            assert cost == pytest.approx(prompt_tokens * 0.5 / 1e6)
        else:  # its completion tokens have no price
            assert cost is None


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles"])
def test_daily_usage_sums_batches_by_the_utc_day_they_ended(simulator, db_path, run, timezone):
    assert run("sync", "--db", str(db_path)).code == 0

    wanted: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0, 0, 0.0])
    for usage in expected_usage(simulator).values():
        day = datetime.fromtimestamp(usage["ended"], UTC).date()
        totals = wanted[day, usage["model"]]
        totals[0] += 1
        totals[1] += usage["requests"]
        totals[2] += usage["requests_failed"]
        totals[3] += usage["prompt_tokens"] or 0
        totals[4] += usage["completion_tokens"] or 0
        totals[5] += usage["cost"] or 0.0
    rows = query(
        db_path,
        "select usage_date, model, batches, requests, requests_failed, "
        "coalesce(prompt_tokens, 0), coalesce(completion_tokens, 0), "
        "coalesce(estimated_cost, 0) from analytics.daily_usage",
        timezone,
    )

    assert {(row[0], row[1]) for row in rows} == wanted.keys()
    for day, model, *figures, cost in rows:
        assert figures == wanted[day, model][:5]
        assert cost == pytest.approx(wanted[day, model][5])


def read_lines(
    tmp_path: Path, contents: dict[str, bytes], chunk: int = 1 << 16
) -> tuple[list[tuple], list[dict], str]:
    """Each content as a downloaded output file of the batch named by its key, arriving in
    chunks of `chunk` bytes, read as a sync reads them: the request rows, the batch_files rows
    and the warning."""
    group = []
    for batch_id, content in contents.items():
        numbered = Numbered(tmp_path / f"{batch_id}.lines")
        for start in range(0, len(content), chunk):
            numbered.write(content[start : start + chunk])
        numbered.close()
        file = ResultFile(batch_id, "output", f"file-{batch_id}")
        group.append(Download(file, "loaded", numbered.path, len(content), numbered.lines))
    requests, files, stats = [], [], ResultStats()
    with duckdb.connect(config=READER) as con:
        for downloads in groups(iter(group)):
            for name, table in rows_of(downloads, con, stats):
                if name == "batch_requests":
                    requests += [tuple(row.values()) for row in table.to_pylist()]
                else:
                    files += table.to_pylist()
    stats.finish()
    return requests, files, "\n".join(stats.warnings)


def completion_line(number: int, words: int) -> bytes:
    body = {
        "model": "deepseek-ai/DeepSeek-V3",
        "choices": [{"message": {"content": "token " * words}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": number, "completion_tokens": words, "total_tokens": 0},
    }
    line = {"custom_id": f"r-{number}", "response": {"status_code": 200, "body": body}}
    return json.dumps(line).encode() + b"\n"


class EncodedFiles(BaseHTTPRequestHandler):
    """Serves BODY compressed as the path names, under the Content-Length of the bytes sent:
    encoded for the transport (`/gzip`, `/deflate`; `/gzip-cut` hangs up halfway through), or
    stored gzipped and sent as it is, without Content-Encoding (`/stored`; `/stored-members`, two
    gzip members one after the other; `/stored-truncated`, the first half of the gzip file), or
    under an encoding no client decodes (`/compress`)."""

    BODY = b"".join(completion_line(n, 50) for n in range(1, 3_001))
    HALF = BODY.index(b"\n", len(BODY) // 2) + 1
    SENT: ClassVar[dict[str, tuple[bytes, str | None]]] = {
        "gzip": (gzip.compress(BODY), "gzip"),
        "deflate": (zlib.compress(BODY), "deflate"),
        "stored": (gzip.compress(BODY), None),
        "stored-members": (gzip.compress(BODY[:HALF]) + gzip.compress(BODY[HALF:]), None),
    }
    SENT["stored-truncated"] = (SENT["stored"][0][: len(SENT["stored"][0]) // 2], None)
    SENT["compress"] = (SENT["stored"][0], "compress")  # an encoding urllib3 does not decode

    def do_GET(self) -> None:
        name = self.path.strip("/")
        sent, encoding = self.SENT[name.removesuffix("-cut")]
        self.send_response(200)
        if encoding is not None:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(sent)))
        self.end_headers()
        self.wfile.write(sent[: len(sent) // 2] if name.endswith("-cut") else sent)

    def log_message(self, *args: object) -> None:
        pass


class NotTheFile(BaseHTTPRequestHandler):
    """Success codes that do not carry the whole file: `/206` the first half of it (Partial
    Content, with its Content-Range), `/202` a job still running, `/204` nothing."""

    def do_GET(self) -> None:
        status = int(self.path.strip("/"))
        body = {
            206: EncodedFiles.BODY[: EncodedFiles.HALF],
            202: b'{"status": "processing"}',
            204: b"",
        }[status]
        self.send_response(status)
        if status == 206:
            size = len(EncodedFiles.BODY)
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{size}")
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_success_code_that_brings_no_whole_file_leaves_it_failed(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotTheFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    retry = RetryPolicy(max_attempts=2, backoff_factor=0)
    fetcher = Fetcher(BatchApi(base, "sk-test", retry, Deadline(None)), tmp_path / "s")
    codes = [206, 202, 204]
    files = [ResultFile(f"batch_{code}", "output", f"{base}/{code}") for code in codes]
    try:
        downloads = list(fetcher.downloads(files, ResultStats()))
    finally:
        server.shutdown()
        server.server_close()

    assert [(d.state, d.path, d.lines) for d in downloads] == [("failed", None, 0)] * 3
    assert [d.message for d in downloads] == [
        "the answer was HTTP 206 Partial Content, not the file",
        "the answer was HTTP 202 Accepted, not the file",
        "the answer was HTTP 204 No Content, not the file",
    ]
    assert not list((tmp_path / "s").iterdir())


class UnsizedFiles(BaseHTTPRequestHandler):
    """Serves EncodedFiles.BODY as HTTP/1.0 may, with neither a length nor chunks, the body
    ending with the connection: `/whole` all of it, its last line without a line end; `/cut` up
    to inside a line halfway; `/gzip-cut` gzip-encoded, cut halfway. `/garbage-end` is whole
    and sized, its last line no JSON."""

    WHOLE = EncodedFiles.BODY[:-1]
    SENT: ClassVar[dict[str, bytes]] = {
        "whole": WHOLE,
        "cut": WHOLE[: EncodedFiles.HALF + 40],
        "gzip-cut": gzip.compress(WHOLE)[: len(gzip.compress(WHOLE)) // 2],
        "garbage-end": EncodedFiles.BODY + b'{"custom_id": "r-30',
    }

    def do_GET(self) -> None:
        name = self.path.strip("/")
        self.send_response(200)
        if name.startswith("gzip"):
            self.send_header("Content-Encoding", "gzip")
        if name == "garbage-end":
            self.send_header("Content-Length", str(len(self.SENT[name])))
        self.end_headers()
        self.wfile.write(self.SENT[name])

    def log_message(self, *args: object) -> None:
        pass


def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def encoded_files() -> Iterator[str]:
    yield from serving(EncodedFiles)


@pytest.fixture
def unsized_files() -> Iterator[str]:
    yield from serving(UnsizedFiles)


def test_a_body_of_no_stated_length_loads_unless_it_ends_inside_a_line(unsized_files, tmp_path):
    retry = RetryPolicy(max_attempts=2, backoff_factor=0)
    fetcher = Fetcher(BatchApi(unsized_files, "sk-test", retry, Deadline(None)), tmp_path / "s")
    names = ("whole", "cut", "gzip-cut", "garbage-end")
    files = [ResultFile(f"batch_{name}", "output", f"{unsized_files}/{name}") for name in names]

    whole, cut, gzip_cut, garbage_end = fetcher.downloads(files, ResultStats())

    assert (whole.state, whole.lines, whole.bytes) == ("loaded", 3_000, len(UnsizedFiles.WHOLE))
    for download in (cut, gzip_cut):
        assert (download.state, download.path) == ("failed", None), download.file
        assert download.message.startswith("the connection closed inside a line")
    # under a length that was met, a last line that is no JSON is a bad line, not a cut
    assert (garbage_end.state, garbage_end.lines) == ("loaded", 3_001)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_file_sent_encoded_loads_whole_and_one_cut_short_does_not(
    encoded_files, tmp_path, encoding
):
    # Content-Length counts the encoded bytes, fewer than the file's
    retry = RetryPolicy(max_attempts=2, backoff_factor=0)
    api = BatchApi(encoded_files, "sk-test", retry, Deadline(None))
    fetcher = Fetcher(api, tmp_path / "scratch")
    files = [
        ResultFile("batch_a", "output", f"{encoded_files}/{encoding}"),
        ResultFile("batch_b", "output", f"{encoded_files}/{encoding}-cut"),
    ]

    whole, cut = fetcher.downloads(files, ResultStats())

    assert (whole.state, whole.lines, whole.bytes) == ("loaded", 3_000, len(EncodedFiles.BODY))
    assert whole.path.read_bytes().count(b"\n") == 3_000
    assert (cut.state, cut.path) == ("failed", None)


@pytest.mark.parametrize("stored", ["stored", "stored-members"])
def test_a_file_stored_gzipped_and_sent_as_it_is_loads_unpacked(encoded_files, tmp_path, stored):
    retry = RetryPolicy(max_attempts=2, backoff_factor=0)
    fetcher = Fetcher(BatchApi(encoded_files, "sk-test", retry, Deadline(None)), tmp_path / "s")
    files = [
        ResultFile("batch_a", "output", f"{encoded_files}/{stored}"),
        ResultFile("batch_b", "output", f"{encoded_files}/stored-truncated"),
    ]

    whole, truncated = fetcher.downloads(files, ResultStats())

    assert (whole.state, whole.lines, whole.bytes) == ("loaded", 3_000, len(EncodedFiles.BODY))
    numbered = whole.path.read_bytes().splitlines()
    assert [line.split(b"\x1f", 1)[1] + b"\n" for line in numbered] == [
        completion_line(n, 50) for n in range(1, 3_001)
    ]
    assert (truncated.state, truncated.path) == ("failed", None)
    assert truncated.message == "the body is a gzip file that ends before its end"


def test_a_body_in_an_encoding_the_client_cannot_decode_is_refused(encoded_files, tmp_path):
    retry = RetryPolicy(max_attempts=2, backoff_factor=0)
    fetcher = Fetcher(BatchApi(encoded_files, "sk-test", retry, Deadline(None)), tmp_path / "s")
    files = [ResultFile("batch_a", "output", f"{encoded_files}/compress")]

    (refused,) = fetcher.downloads(files, ResultStats())

    assert (refused.state, refused.path) == ("failed", None)
    assert refused.message == "the body is encoded as compress, which this client cannot decode"
    assert list((tmp_path / "s").iterdir()) == []


def check_body(tmp_path: Path, body: bytes) -> None:
    """Save `body` as the fetcher does and judge it as the fetcher does."""
    numbered = Numbered(tmp_path / "copy.lines")
    numbered.write(body)
    numbered.close()
    check_is_result_file(numbered.head, numbered.lines)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"code": 50505, "message": "Model service overloaded.", "data": null}\n', "50505"),
        (b'{"code": 20000, "message": "Ok", "status": true, "data": {"id": "f"}}', "20000"),
        (b'{"object": "list", "data": [{"id": "batch_1"}], "has_more": false}\n', "listing"),
        (b' [{"custom_id": "r-1"}, {"custom_id": "r-2"}]\n', "array"),
        (b"\n<!DOCTYPE html><html><body>Just a moment...</body></html>\n", "page"),
        (b'<?xml version="1.0"?>\n<Error><Code>AccessDenied</Code></Error>\n', "page"),
    ],
    ids=["error envelope", "success envelope", "listing", "array", "html", "xml"],
)
def test_a_body_that_is_no_result_file_is_refused(tmp_path, body, said):
    with pytest.raises(NotAResultFile, match=said):
        check_body(tmp_path, body)


@pytest.mark.parametrize(
    "body",
    [
        completion_line(1, 3),  # OpenAI's shape, one line
        b'\n{"custom_id": "r-1", "response": {"body": {"model": "m"}}}',  # SiliconFlow's
        b'{"custom_id": "r-1", "response": null, "error": {"code": "x", "message": "y"}}\n',
        b'{"code": 1, "message": "a line without a custom_id"}\n' + completion_line(2, 3),
        b"not json\n",
    ],
    ids=["openai", "siliconflow", "error line", "two lines", "a bad line"],
)
def test_a_result_file_of_any_shape_is_taken(tmp_path, body):
    check_body(tmp_path, body)


# Errors as servers send them: OpenAI's `{code, message}` at the top or in the response body,
# and plain text in either place; the last ones carry no error at all.
ERROR_SHAPES = [
    {"error": {"code": "rate_limited", "message": "slow down"}},
    {"response": {"status_code": 400, "body": {"error": {"code": 20012, "message": "bad"}}}},
    {"error": {"message": "only a message"}},
    {"error": "Internal error: upstream closed"},
    {"response": {"status_code": 500, "body": {"error": "upstream said no"}}},
    {"error": "plain", "response": {"body": {"error": {"code": "c", "message": "in the body"}}}},
    {"error": {"code": "only_a_code"}},
    {"error": None, "response": {"status_code": 200, "body": {"model": "m"}}},
    {"error": "  \t "},
    {"error": False},
    {"error": {}},
]


@pytest.mark.parametrize("pad", [0, SHORT_LINE], ids=["short lines", "long lines"])
def test_an_error_of_any_shape_gives_its_code_and_message(tmp_path, pad):
    lines = [
        json.dumps({"custom_id": f"r-{n}", **shape, "padding": "x" * pad}).encode()
        for n, shape in enumerate(ERROR_SHAPES, 1)
    ]
    requests, files, warning = read_lines(tmp_path, {"batch_a": b"\n".join(lines)})
    assert (warning, files[0]["bad_lines"]) == ("", 0)
    expected = {request_row("batch_a", "output", n, line) for n, line in enumerate(lines, 1)}
    assert set(requests) == expected
    messages = {row[3]: row[14] for row in requests}
    assert messages["r-4"] == "Internal error: upstream closed"
    assert messages["r-5"] == "upstream said no"
    assert [messages[f"r-{n}"] for n in range(7, 12)] == [None] * 5


def test_long_completions_load_within_the_readers_memory(tmp_path):
    # 2 files of 20,000 lines of ~1.3 kB: the group the reader takes in one query
    contents = {
        batch_id: b"".join(completion_line(n, 210) for n in range(1, 20_001))
        for batch_id in ("batch_a", "batch_b")
    }
    requests, files, warning = read_lines(tmp_path, contents)
    assert warning == ""
    assert len(requests) == 40_000
    assert {(r[0], r[2], r[3], r[8], r[9]) for r in requests} == {
        (b, n, f"r-{n}", n, 210) for b in contents for n in range(1, 20_001)
    }
    assert [(f["state"], f["lines"], f["bad_lines"]) for f in files] == [("loaded", 20_000, 0)] * 2


@pytest.mark.parametrize("chunk", [1 << 16, 1 << 30], ids=["streamed", "one chunk"])
def test_a_line_longer_than_the_reader_takes_is_a_bad_line_and_the_rest_load(tmp_path, chunk):
    too_long = b'{"custom_id": "' + b"x" * (LONGEST_LINE + 1) + b'"}\n'
    contents = {
        "batch_a": completion_line(1, 3) + too_long + completion_line(3, 3),
        "batch_b": too_long + b"[1]\n" + completion_line(3, 3) + b"not json\n" + too_long[:-1],
    }
    requests, files, warning = read_lines(tmp_path, contents, chunk)
    assert sorted((r[0], r[2], r[3]) for r in requests) == [
        ("batch_a", 1, "r-1"),
        ("batch_a", 3, "r-3"),
        ("batch_b", 3, "r-3"),
    ]
    assert [(f["batch_id"], f["lines"], f["bad_lines"]) for f in files] == [
        ("batch_a", 3, 1),
        ("batch_b", 5, 4),
    ]
    assert warning.endswith("(batch_a output line 2; batch_b output line 1, 2, 4, 5)")


@pytest.mark.parametrize("chunk", [1, 5, 1 << 16], ids=["byte by byte", "5 bytes", "whole"])
def test_blank_lines_keep_their_place_in_the_count_and_are_no_request(tmp_path, chunk):
    lines = [b"", b"   ", completion_line(3, 2)[:-1], b"\r", b"\t \r", b"{}", b"x", b""]
    lines.append(completion_line(9, 2)[:-1])  # the last line has no newline
    requests, files, warning = read_lines(tmp_path, {"batch_a": b"\n".join(lines)}, chunk)
    assert sorted((r[2], r[3]) for r in requests) == [(3, "r-3"), (6, None), (9, "r-9")]
    assert [(f["lines"], f["bad_lines"]) for f in files] == [(4, 1)]
    assert warning.endswith("(batch_a output line 7)")


# Control characters where JSON allows them (a carriage return between values, as in CRLF line
# ends) and where it does not (inside a string; the reader's own separator anywhere).
CONTROL_LINES = [
    b'{"custom_id": "r-1",\r "response": {"body": {"model": "m"}}}\r',
    b'{"custom_id": "r-2\rx"}',
    b"\r",  # a blank line, ended CRLF
    b'{"custom_id": "r-4\x1fx"}',
    b'{"custom_id":\x1f"r-5"}',
    b'{"custom_id": "r-6", "response": {"status_code": 200}}\r',
    b'{"custom_id": "r-7\tx"}',
    b'{"custom_id": "r-8", "pad": "' + b"x" * SHORT_LINE + b'",\r "error": "e"}',
]


@pytest.mark.parametrize("chunk", [1, 1 << 16], ids=["byte by byte", "whole"])
def test_carriage_returns_and_control_characters_read_as_json_reads_them(tmp_path, chunk):
    content = b"\n".join(CONTROL_LINES) + b"\n"
    requests, files, warning = read_lines(tmp_path, {"batch_a": content}, chunk)
    expected = {
        row
        for number, line in enumerate(CONTROL_LINES, 1)
        if (row := request_row("batch_a", "output", number, line)) is not None
    }
    assert sorted(r[3] for r in expected) == ["r-1", "r-6", "r-8"]
    assert set(requests) == expected
    assert [(f["lines"], f["bad_lines"]) for f in files] == [(7, 4)]
    assert warning.endswith("(batch_a output line 2, 4, 5, 7)")


# Lines with half a UTF-16 surrogate pair escaped alone (json.dumps writes `\ud83d`), and with
# what looks alike but is not: (custom_id sent, custom_id stored).
SURROGATE_IDS = [
    ("r-1\ud83d", "r-1\ufffd"),  # a high half alone
    ("r-2\ude00x", "r-2\ufffdx"),  # a low half alone
    ("r-3\ud83d\ude00", "r-3\U0001f600"),  # a whole pair: an emoji
    ("r-4\\ud83d", "r-4\\ud83d"),  # an escaped backslash, then text
    ("r-5\udbff", "r-5\ufffd"),
]


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16], ids=["byte by byte", "7 bytes", "whole"])
def test_half_a_surrogate_pair_is_read_as_a_replacement_character_not_a_bad_line(tmp_path, chunk):
    cut = json.loads(completion_line(6, 700))  # a completion cut inside an emoji
    cut["response"]["body"]["choices"][0]["message"]["content"] += "\ud83d"
    long = {"custom_id": "r-7\ud83d", "padding": "x" * SHORT_LINE}  # cut down as it is saved
    lines = [json.dumps({"custom_id": sent}) for sent, _ in SURROGATE_IDS]
    lines += [json.dumps(cut), json.dumps(long)]
    assert all(line.isascii() for line in lines)

    requests, files, warning = read_lines(tmp_path, {"batch_a": "\n".join(lines).encode()}, chunk)

    assert (warning, [(f["lines"], f["bad_lines"]) for f in files]) == ("", [(7, 0)])
    stored = {row[2]: row[3] for row in requests}
    assert stored == {
        **{n: kept for n, (_, kept) in enumerate(SURROGATE_IDS, 1)},
        6: "r-6",
        7: "r-7\ufffd",
    }
    [(prompt, completion)] = [(row[8], row[9]) for row in requests if row[2] == 6]
    assert (prompt, completion) == (6, 700)


@pytest.mark.parametrize("chunk", [1, 1 << 16], ids=["byte by byte", "whole"])
def test_a_byte_order_mark_before_the_first_line_is_no_part_of_it(tmp_path, chunk):
    bom = b"\xef\xbb\xbf"
    contents = {
        "batch_a": bom + completion_line(1, 3) + completion_line(2, 3),
        "batch_b": completion_line(1, 3) + bom + completion_line(2, 3),  # not a mark there
    }
    requests, files, warning = read_lines(tmp_path, contents, chunk)
    assert sorted((r[0], r[2], r[3]) for r in requests) == [
        ("batch_a", 1, "r-1"),
        ("batch_a", 2, "r-2"),
        ("batch_b", 1, "r-1"),
    ]
    assert [(f["lines"], f["bad_lines"]) for f in files] == [(2, 0), (2, 1)]
    assert warning.endswith("(batch_b output line 2)")


def embedding_line(number: int, dimensions: int) -> bytes:
    body = {
        "object": "list",
        "model": "BAAI/bge-m3",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.123456789] * dimensions}],
        "usage": {"prompt_tokens": number, "total_tokens": number},
    }
    line = {"id": f"b-{number}", "custom_id": f"e-{number}", "response": {"body": body}}
    return json.dumps(line).encode() + b"\n"


@pytest.mark.parametrize(
    ("line", "size", "prefix", "lines", "files"),
    [
        (completion_line, 250_000, "r", 60, 2),
        (completion_line, 2_700, "r", 3_000, 2),
        (completion_line, 1_300, "r", 9_000, 6),
        (embedding_line, 60_000, "e", 60, 2),
    ],
    ids=["1 MB completions", "16 kB completions", "8 kB lines in six files", "700 kB embeddings"],
)
def test_files_of_long_lines_load_every_request_within_the_readers_memory(
    tmp_path, line, size, prefix, lines, files
):
    # whole vectors of such lines, or several such files read at once, outgrow the reader
    served = [line(n, size) for n in range(1, lines + 1)]
    assert min(map(len, served)) > 7_500
    per_file = lines // files
    contents = {
        f"batch_{f}": b"".join(served[f * per_file : (f + 1) * per_file]) for f in range(files)
    }
    requests, stored, warning = read_lines(tmp_path, contents)
    assert warning == ""
    assert sorted((r[0], r[2], r[3], r[8]) for r in requests) == sorted(
        (f"batch_{f}", n - f * per_file, f"{prefix}-{n}", n)
        for f in range(files)
        for n in range(f * per_file + 1, (f + 1) * per_file + 1)
    )
    assert [(f["lines"], f["bad_lines"]) for f in stored] == [(per_file, 0)] * files


def test_a_long_line_is_read_as_the_reader_reads_a_short_one(tmp_path):
    # the same request with a short and a long completion gives the same row but its number
    content = b"".join(
        [
            completion_line(7, 3),
            completion_line(7, 30_000),
            b'{"custom_id": "odd", "response": "' + b"y" * 100_000 + b'"}\n',
            b'{"custom_id": "odd", "response": "y"}\n',
            b"[" + b"1, " * 30_000 + b"1]\n",
            b"[1]\n",
            b'{"custom_id": "\xff\xfe' + b"z" * 100_000 + b'"}\n',
        ]
    )
    requests, files, warning = read_lines(tmp_path, {"batch_a": content})
    short, long = [r for r in requests if r[3] == "r-7"]
    assert short[:2] + short[3:8] + short[10:] == long[:2] + long[3:8] + long[10:]
    assert (short[2], long[2], short[9], long[9]) == (1, 2, 3, 30_000)
    long, short = [r for r in requests if r[3] == "odd"]  # a response of another type
    assert (long[2], short[2], long[4:], short[4:]) == (3, 4, (None,) * 11, (None,) * 11)
    assert len(requests) == 4
    assert [(f["lines"], f["bad_lines"]) for f in files] == [(7, 3)]
    assert warning.endswith("(batch_a output line 5, 6, 7)")


def test_a_sync_leaves_pandas_unimported(simulator, db_path):
    # pandas is ~30 MB and a good part of the start-up; nothing a sync does needs it
    code = (
        "import sys; from pipelines.cli import main; "
        f"code = main(['sync', '--no-models', '--db', {str(db_path)!r}]); "
        "print('pandas imported' if 'pandas' in sys.modules else 'no pandas'); sys.exit(code)"
    )
    for _ in range(2):  # a full sync with result files, then an incremental one
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "no pandas"
    assert_results_equal(db_path, simulator)


def sync_on_a_terminal(
    simulator, db_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A sync whose output is a terminal (`script`'s), its downloads slowed enough for dlt's
    progress log (every 2 s) to speak: what it showed, stdout and stderr together."""
    simulator.faults.latency_ms = 100  # ~4 s of downloads
    command = f"{sys.executable} -m pipelines sync --no-models --db {db_path}"
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    return done


def test_a_terminal_sees_the_files_done_out_of_all_as_they_download(simulator, db_path):
    total = len(served(simulator))
    done = sync_on_a_terminal(simulator, db_path)
    seen = [(int(n), int(of)) for n, of in re.findall(r"result files: (\d+)/(\d+)", done.stdout)]
    assert {of for _, of in seen} == {total}
    assert any(n < total for n, _ in seen), "no progress before the end"
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert seen[-1] == (total, total)
    quiet = subprocess.run(
        [sys.executable, "-m", "pipelines", "sync", "--no-models", "--db", str(db_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert quiet.returncode == 0
    assert "result files:" not in quiet.stderr  # no terminal, no progress
    assert quiet.stdout.count("\n") == 1


def test_a_sync_stopped_before_its_files_load_records_none_of_them(
    simulator, db_path, run, monkeypatch
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    loads = []
    load_and_record = sync.load_and_record

    def stopped_at_the_files_load(pipeline, con, stats=None):
        loads.append(stats)
        if stats is None:  # the result files' load: Ctrl-C comes first
            raise KeyboardInterrupt
        return load_and_record(pipeline, con, stats)

    monkeypatch.setattr(sync, "load_and_record", stopped_at_the_files_load)

    assert run("sync", "--db", str(db_path), "--no-models").code == 130

    assert len(loads) == 2
    assert query(db_path, "select count(*) from siliconflow.batch_requests") == [(0,)]
    assert query(
        db_path,
        "select exit_code, files_loaded, request_lines from siliconflow.sync_runs "
        "order by finished_at desc limit 1",
    ) == [(130, 0, 0)]


def test_a_sync_stopped_during_its_files_load_records_the_files_it_loaded(
    simulator, db_path, run, monkeypatch
):
    assert run("sync", "--db", str(db_path), "--no-models", "--no-results").code == 0
    # the batches' load comes first
    stopper = StopAt(sync.load_credentials, signal.SIGTERM, call=2)
    monkeypatch.setattr(sync, "load_credentials", stopper)

    assert run("sync", "--db", str(db_path), "--no-models").code == 143

    [(loaded,)] = query(
        db_path, "select count(*) from siliconflow.batch_files where state = 'loaded'"
    )
    assert stopper.calls == 2 and loaded > 0
    assert query(
        db_path,
        "select exit_code, files_loaded from siliconflow.sync_runs "
        "order by finished_at desc limit 1",
    ) == [(143, loaded)]


@pytest.mark.parametrize("psutil", [True, False], ids=["with-psutil", "without-psutil"])
def test_a_terminal_sees_counts_not_memory_figures_nor_a_psutil_warning(
    simulator, db_path, tmp_path, psutil
):
    env = dict(os.environ)
    if not psutil:  # as `pip install sfbatches` leaves it: psutil comes with the dev tools only
        (tmp_path / "psutil.py").write_text("raise ImportError('psutil is not installed')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])

    done = sync_on_a_terminal(simulator, db_path, env)

    assert re.search(r"result files: \d+/\d+", done.stdout)
    for unwanted in ("psutil", "Warning", "Memory usage", "CPU usage"):
        assert unwanted not in done.stdout
