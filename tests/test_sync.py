"""The incremental sync, end to end against the simulator over HTTP."""

import math
from pathlib import Path

import duckdb
import pytest
from conftest import run_process
from truth import assert_warehouse_equals, expected_latest_history, latest_history

from pipelines.simulator import Simulator, World
from pipelines.warehouse.sync import SyncResult

TERMINAL = {"completed", "failed", "expired", "cancelled"}
PAGE = 100


def list_requests(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path == "/v1/batches")


def lookups(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path.startswith("/v1/batches/"))


def query(db_path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_full_sync_equals_ground_truth_in_all_five_tables(simulator, db_path, run):
    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    truth = simulator.world.visible()
    assert_warehouse_equals(db_path, truth)
    assert latest_history(db_path) == expected_latest_history(truth)
    assert query(db_path, "select count(*) from siliconflow.batch_status_history") == [
        (len(truth),)
    ]
    assert "full sync" in outcome.out and f"{len(truth):,} batches read" in outcome.out
    assert f"({len(truth):,} new, 0 changed)" in outcome.out


def test_sync_prints_one_summary_line_under_cron(simulator, db_path):
    outcome = run_process("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert len(outcome.out.strip().splitlines()) == 1
    assert outcome.err == ""


@pytest.mark.parametrize("hours", [1, 7, 30])
def test_incremental_sync_reads_only_new_and_previously_open_batches(
    simulator, db_path, run, hours, monkeypatch
):
    # The sweep's own pages are counted in test_hostile_api.py.
    monkeypatch.setenv("SOURCES__SILICONFLOW__SWEEP_PAGES", "0")
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    before = {b["id"]: b for b in simulator.world.visible()}
    simulator.world.advance(hours * 3600)
    simulator.requests.clear()

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    truth = simulator.world.visible()
    assert_warehouse_equals(db_path, truth)
    assert latest_history(db_path) == expected_latest_history(truth)
    assert "incremental sync" in outcome.out
    # Worked out from the truth: the pages holding new batches, then either the pages down
    # to the deepest previously-open batch or one lookup per open batch beyond them.
    positions = {b["id"]: i for i, b in enumerate(truth)}
    new = [b for b in truth if b["id"] not in before]
    was_open = [i for i, b in before.items() if b["status"] not in TERMINAL]
    new_pages = math.ceil((len(new) + 1) / PAGE)
    beyond = [i for i in was_open if positions[i] >= new_pages * PAGE]
    deepest = max((positions[i] for i in was_open), default=0)
    cheapest = min(math.ceil((deepest + 1) / PAGE), new_pages + len(beyond))
    made = list_requests(simulator) + lookups(simulator)
    assert made <= cheapest + 1, (made, cheapest)
    assert list_requests(simulator) < math.ceil(len(truth) / PAGE) or cheapest >= len(truth) / PAGE


def test_second_sync_with_nothing_new_reads_little_and_changes_nothing(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    first_load = load_ids(db_path)
    history_rows = query(db_path, "select count(*) from siliconflow.batch_status_history")
    simulator.requests.clear()

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0
    assert "(0 new, 0 changed)" in outcome.out
    assert query(db_path, "select count(*) from siliconflow.batch_status_history") == history_rows
    assert_warehouse_equals(db_path, simulator.world.visible())
    assert load_ids(db_path) == first_load  # read again, but nothing loaded again


def load_ids(db_path: Path) -> dict[str, str]:
    return dict(query(db_path, "select id, _dlt_load_id from siliconflow.batches"))


def loaded_again(before: dict[str, str], db_path: Path) -> set[str]:
    return {i for i, load_id in load_ids(db_path).items() if load_id != before.get(i)}


def test_a_sync_loads_again_exactly_the_batches_whose_object_changed(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    first_load = load_ids(db_path)
    before = {b["id"]: b for b in simulator.world.visible()}
    simulator.world.advance(4 * 3600)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    truth = simulator.world.visible()
    changed = {b["id"] for b in truth if before.get(b["id"]) != b}
    was_open = {i for i, b in before.items() if b["status"] not in TERMINAL}
    # New batches, batches that moved on, and open batches read again that did not move on.
    assert changed - set(before) and changed & was_open and was_open - changed
    assert loaded_again(first_load, db_path) == changed
    assert_warehouse_equals(db_path, truth)


def test_a_batch_whose_metadata_alone_changed_is_loaded_again(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    first_load = load_ids(db_path)
    visible = simulator.world.visible()
    deepest_open = [b["id"] for b in visible if b["status"] not in TERMINAL][-1]
    simulator.world.set_metadata(deepest_open, {"team": "search", "run": "2"})

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert loaded_again(first_load, db_path) == {deepest_open}
    assert query(
        db_path,
        f"select key, value from siliconflow.batch_metadata where batch_id = '{deepest_open}' "
        "order by key",
    ) == [("run", "2"), ("team", "search")]
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_fingerprints_of_a_load_that_did_not_finish_are_not_trusted(
    simulator, db_path, run, monkeypatch
):
    # Without the sweep, the third sync reads again just what the second one did.
    monkeypatch.setenv("SOURCES__SILICONFLOW__SWEEP_PAGES", "0")
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    with duckdb.connect(str(db_path)) as con:
        # As a load cut short leaves them: stored, but not by a load dlt finished.
        con.execute("update siliconflow._sfbatches_fingerprints set _dlt_load_id = '1.0'")
    first_load = load_ids(db_path)
    was_open = {b["id"] for b in simulator.world.visible() if b["status"] not in TERMINAL}

    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    second_load = load_ids(db_path)
    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert was_open and was_open <= loaded_again(first_load, db_path)
    assert loaded_again(second_load, db_path) == set()  # trusted again once loaded
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_status_history_appends_a_row_only_when_status_or_counts_change(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    first = {b["id"]: b for b in simulator.world.visible()}
    simulator.world.advance(7 * 3600)
    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    changed = {
        b["id"]
        for b in simulator.world.visible()
        if b["id"] in first
        and (b["status"], b["request_counts"])
        != (first[b["id"]]["status"], first[b["id"]]["request_counts"])
        and not (
            not b["request_counts"]
            and not first[b["id"]]["request_counts"]
            and b["status"] == first[b["id"]]["status"]
        )
    }
    rows_per_batch = dict(
        query(db_path, "select batch_id, count(*) from siliconflow.batch_status_history group by 1")
    )
    assert changed, "the simulator should move some batches in 7 hours"
    for batch_id in first:
        assert rows_per_batch[batch_id] == (2 if batch_id in changed else 1), batch_id


def test_removed_metadata_key_disappears(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    target = next(
        b for b in simulator.world.visible() if b["status"] not in TERMINAL and b["metadata"]
    )
    kept = dict(list(target["metadata"].items())[:-1])
    simulator.world.set_metadata(target["id"], kept)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    rows = query(
        db_path,
        f"select key, value from siliconflow.batch_metadata where batch_id = '{target['id']}'",
    )
    assert dict(rows) == kept
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_metadata_emptied_leaves_no_rows(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    target = next(
        b for b in simulator.world.visible() if b["status"] not in TERMINAL and b["metadata"]
    )
    simulator.world.set_metadata(target["id"], None)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert_warehouse_equals(db_path, simulator.world.visible())


def test_full_refresh_rereads_terminal_batches_too(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    target = next(b for b in simulator.world.visible() if b["status"] == "completed")
    simulator.world.set_metadata(target["id"], {"changed": "after it completed"})
    simulator.requests.clear()

    outcome = run("sync", "--db", str(db_path), "--no-models", "--full-refresh")

    assert outcome.code == 0 and "full sync" in outcome.out
    assert list_requests(simulator) == math.ceil(len(simulator.world.visible()) / PAGE)
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_deleted_database_is_rebuilt_completely(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    db_path.unlink()
    simulator.world.advance(3600)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and "full sync" in outcome.out
    assert_warehouse_equals(db_path, simulator.world.visible())


def test_two_database_paths_never_share_incremental_state(simulator, tmp_path, run):
    first, second = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    assert run("sync", "--db", str(first), "--no-models").code == 0
    simulator.world.advance(3600)

    outcome = run("sync", "--db", str(second), "--no-models")

    assert "full sync" in outcome.out
    assert_warehouse_equals(second, simulator.world.visible())


def test_every_column_exists_from_the_first_sync_even_when_all_null(tmp_path, run, monkeypatch):
    with Simulator(World(batches=0, seed=1, now=1_764_000_000)) as sim:
        monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        monkeypatch.setenv("SILICONFLOW_API_KEY", sim.api_key)
        db_path = tmp_path / "empty.duckdb"
        assert run("sync", "--db", str(db_path), "--no-models").code == 0

    types = dict(
        query(
            db_path,
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'siliconflow' and table_name = 'batches'",
        )
    )
    for name in ("created_at", "in_progress_at", "cancelled_at", "expired_at", "failed_at"):
        assert types[name] == "TIMESTAMP WITH TIME ZONE"
    for name in ("id", "status", "file_name", "error_file_id"):
        assert types[name] == "VARCHAR"
    tables = {
        row[0]
        for row in query(
            db_path,
            "select table_name from information_schema.tables where table_schema = 'siliconflow'",
        )
    }
    assert {
        "batch_request_counts",
        "batch_metadata",
        "batch_errors",
        "batch_status_history",
    } <= tables


def test_fields_the_api_adds_become_columns(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    truth = [b for b in simulator.world.visible() if b.get("usage")]
    assert truth, "the simulator should serve OpenAI-style batches with usage"
    rows = dict(
        query(
            db_path,
            "select id, usage__total_tokens from siliconflow.batches where model is not null",
        )
    )
    for batch in truth:
        assert rows[batch["id"]] == batch["usage"]["total_tokens"]


def test_metadata_keys_are_stored_exactly_as_sent(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    keys = {row[0] for row in query(db_path, "select key from siliconflow.batch_metadata")}
    sent = {k for b in simulator.world.visible() for k in (b["metadata"] or {})}
    assert keys == sent
    assert any(not k.isascii() for k in keys) and any(" " in k for k in keys)


def test_missing_api_key_exits_2_with_one_line(db_path):
    outcome = run_process("sync", "--db", str(db_path), env={"SILICONFLOW_API_KEY": ""})

    assert outcome.code == 2
    assert outcome.err.count("\n") == 1 and "Traceback" not in outcome.err
    assert "SILICONFLOW_API_KEY" in outcome.err


def test_wrong_api_key_exits_3_without_printing_it(simulator, db_path):
    wrong = "sk-wrong-key-1234567890"
    outcome = run_process("sync", "--db", str(db_path), env={"SILICONFLOW_API_KEY": wrong})

    assert outcome.code == 3
    assert outcome.err.count("\n") == 1 and "Traceback" not in outcome.err
    assert "401" in outcome.err and "Invalid token" in outcome.err
    assert wrong not in outcome.err + outcome.out
    # nothing of the API's, only the failed sync's own row
    assert query(
        db_path, "select table_name from information_schema.tables where table_schema='siliconflow'"
    ) == [("sync_runs",)]
    assert query(db_path, "select outcome, exit_code from siliconflow.sync_runs") == [("failed", 3)]


def test_a_server_serving_fewer_than_asked_is_still_read_page_by_page(tmp_path, run, monkeypatch):
    world = World(batches=2000, seed=11, now=1_764_000_000)
    with Simulator(world, max_limit=20) as sim:
        monkeypatch.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        monkeypatch.setenv("SILICONFLOW_API_KEY", sim.api_key)
        db_path = tmp_path / "capped.duckdb"
        assert run("sync", "--db", str(db_path), "--no-models").code == 0
        world.advance(7 * 3600)
        sim.clear_requests()

        outcome = run("sync", "--db", str(db_path), "--no-models")

        assert outcome.code == 0 and outcome.err == ""
        assert_warehouse_equals(db_path, world.visible())
        assert lookups(sim) == 0, "pages of 20 should cover every open batch"


def failing_extract(tmp_path: Path, error: Exception) -> Exception:
    """What dlt raises when a resource raises `error` during extract."""
    import dlt

    @dlt.resource
    def rows():
        yield {"a": 1}
        raise error

    pipeline = dlt.pipeline(
        pipeline_name="failing", pipelines_dir=str(tmp_path), destination="duckdb"
    )
    with pytest.raises(Exception) as raised:
        pipeline.extract(rows())
    return raised.value


@pytest.mark.parametrize(
    "error",
    [
        duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block of 4.0 MiB"),
        ZeroDivisionError("division by zero"),
    ],
    ids=["duckdb", "python"],
)
def test_an_unforeseen_failure_inside_dlt_is_named_by_its_cause(tmp_path, error):
    from pipelines.errors import exit_code_of, one_line

    wrapped = failing_extract(tmp_path, error)

    assert type(wrapped).__name__ == "PipelineStepFailed"
    assert exit_code_of(wrapped) == 1
    assert one_line(wrapped) == (
        f"unexpected {type(error).__name__}: {error} "
        "(rerun with --verbose for details, and report it)"
    )


@pytest.mark.parametrize(
    ("batches", "pages", "said"),
    [
        (1, 1, "1 batch read (1 new, 0 changed) from 1 page and 0 lookups"),
        (2, 3, "2 batches read (1 new, 0 changed) from 3 pages and 0 lookups"),
    ],
)
def test_the_summary_counts_in_the_right_number(batches, pages, said):
    result = SyncResult(Path("w.duckdb"), full=True, new=1)
    result.stats.batches, result.stats.pages = batches, pages

    summary = result.summary()
    assert summary.startswith(f"sfbatches: full sync of w.duckdb: {said}, 0 result files (0 ")
