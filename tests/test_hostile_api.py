"""A hostile API: listings that end early, skip, repeat or loop, clocks that lie, fields whose
type changes, and answers that are not what they seem. After each anomaly the warehouse is
complete with one row per id, or the sync fails loudly; it never hangs and never gets stuck."""

import codecs
import json
import math
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote

import duckdb
import orjson
import pytest
import requests
from conftest import REPO, START, run_process
from requests import Response
from truth import assert_warehouse_equals, count_of, served

from pipelines.siliconflow.client import ApiResponse, BatchApi, BatchPages, Deadline, RetryPolicy
from pipelines.siliconflow.rows import KNOWN_FIELDS, MOST_ADDED_COLUMNS
from pipelines.simulator import TERMINAL, World
from pipelines.simulator.server import AnswerCache
from pipelines.warehouse import plan

PAGE = 100
SWEEP = 3


def query(db_path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def stored_ids(db_path: Path) -> set[str]:
    return {row[0] for row in query(db_path, "select id from siliconflow.batches")}


def list_requests(sim) -> int:
    return len(sim.list_requests())


@pytest.fixture
def world() -> World:
    """Busier than the suite's default: a day and a half brings several pages of new batches."""
    return World(batches=4000, seed=11, now=START, history_days=10, future_days=5)


@pytest.fixture(autouse=True)
def small_sweep(monkeypatch):
    monkeypatch.setenv("SOURCES__SILICONFLOW__SWEEP_PAGES", str(SWEEP))


@pytest.fixture
def synced(simulator, db_path, run):
    """A warehouse synced once, then a day and a half of new batches (several pages)."""
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.world.advance(36 * 3600)
    new = len(served(simulator)) - len(stored_ids(db_path))
    assert new > 3 * PAGE, "the fixture needs new batches over several pages"
    simulator.clear_requests()
    return new


def syncs_until_complete(run, db_path, sim, most: int) -> int:
    """Run normal syncs until the warehouse holds what the API lists; how many it took."""
    for count in range(1, most + 1):
        outcome = run("sync", "--db", str(db_path), "--no-models")
        assert outcome.code == 0, outcome.err
        if stored_ids(db_path) == {b["id"] for b in served(sim)}:
            return count
    return most + 1


# --- 1. no permanent silent loss --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "said"),
    [("end_early", "ended before it reached"), ("empty_end", "empty page that says more")],
)
def test_a_listing_that_ends_early_once_is_completed_by_the_next_sync(
    simulator, db_path, run, synced, kind, said
):
    simulator.faults.queue(kind=kind, after=1)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and said in outcome.err
    missing = {b["id"] for b in served(simulator)} - stored_ids(db_path)
    assert missing, "the listing ending early must have left batches out of this sync"
    outcome = run("sync", "--db", str(db_path), "--no-models")
    assert outcome.code == 0, outcome.err
    assert_warehouse_equals(db_path, served(simulator))


def test_a_listing_that_ends_early_on_the_first_sync_is_completed_by_the_next(
    simulator, db_path, run
):
    simulator.faults.queue(kind="empty_end", after=2)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert len(stored_ids(db_path)) == 2 * PAGE

    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert_warehouse_equals(db_path, served(simulator))


@pytest.mark.parametrize("on_top", [False, True], ids=["in-place", "sorted-on-top"])
def test_a_batch_created_in_the_future_does_not_cut_later_syncs_short(
    simulator, db_path, run, on_top
):
    skewed = simulator.world.visible()[700]["id"]
    future = int((datetime.now(UTC) + timedelta(days=3650)).timestamp())
    simulator.faults.overrides = {skewed: {"created_at": future}}
    simulator.faults.pin_to_top = [skewed] if on_top else []
    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    for hours in (1, 6, 30):
        simulator.world.advance(hours * 3600)
        simulator.clear_requests()
        outcome = run("sync", "--db", str(db_path), "--no-models")

        assert outcome.code == 0 and "newest first" not in outcome.err  # not a full read
        assert_warehouse_equals(db_path, served(simulator))


def test_a_last_id_that_points_further_down_skips_nothing(simulator, db_path, run, synced):
    simulator.faults.queue(kind="bad_last_id", count=150, times=3)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert_warehouse_equals(db_path, served(simulator))


def test_a_cursor_that_skips_ahead_is_repaired_within_the_sweeps_bound(
    simulator, db_path, run, synced
):
    simulator.faults.queue(kind="skip", count=60, after=1)
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert {b["id"] for b in served(simulator)} - stored_ids(db_path), "the skip lost batches"

    bound = math.ceil(len(served(simulator)) / (PAGE * SWEEP)) + 1
    assert syncs_until_complete(run, db_path, simulator, bound) <= bound
    assert_warehouse_equals(db_path, served(simulator))


def test_batches_missing_for_any_reason_are_stored_again_within_the_sweeps_bound(
    simulator, db_path, run
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    total = len(served(simulator))
    with duckdb.connect(str(db_path)) as con:  # whatever went wrong before, deep in history
        con.execute(
            "delete from siliconflow.batches where id in "
            "(select id from siliconflow.batches order by created_at limit 300 offset 600)"
        )
    assert len(stored_ids(db_path)) == total - 300

    bound = math.ceil(total / (PAGE * SWEEP)) + 1
    assert syncs_until_complete(run, db_path, simulator, bound) <= bound
    assert_warehouse_equals(db_path, served(simulator))


def test_the_sweep_costs_its_pages_and_moves_on_each_sync(simulator, db_path, run):
    simulator.world.advance(40 * 86_400)  # every batch created and ended: nothing to re-read
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    seen: list[str] = []
    for _ in range(3):
        simulator.clear_requests()
        assert run("sync", "--db", str(db_path), "--no-models").code == 0
        cursors = [r.query.get("after") for r in simulator.list_requests()]
        # one page from the top (nothing new), then the sweep's pages, chained
        assert len(cursors) == 1 + SWEEP and cursors[0] is None
        assert not set(cursors[1:]) & set(seen), "each sweep goes on where the last one stopped"
        seen += cursors[1:]


# --- 2. one row per id --------------------------------------------------------------------------


def assert_one_row_per_key(db_path: Path) -> None:
    keys = {
        "batches": "id",
        "batch_request_counts": "batch_id",
        "batch_metadata": "batch_id, key",
        "batch_errors": "batch_id, position",
    }
    for table, key in keys.items():
        [(rows, distinct)] = query(
            db_path, f"select count(*), count(distinct ({key})) from siliconflow.{table}"
        )
        assert rows == distinct, table


@pytest.mark.parametrize("first_sync", [True, False], ids=["first-sync", "incremental"])
def test_a_page_that_begins_with_its_cursor_item_gives_one_row_per_id(
    simulator, db_path, run, first_sync
):
    if not first_sync:
        assert run("sync", "--db", str(db_path), "--no-models").code == 0
        simulator.world.advance(36 * 3600)
    simulator.faults.queue(kind="echo_cursor", times=50)

    assert run("sync", "--db", str(db_path)).code == 0

    assert_one_row_per_key(db_path)
    simulator.faults.reset()
    assert_warehouse_equals(db_path, served(simulator))


@pytest.mark.parametrize("refresh", [False, True], ids=["first-sync", "full-refresh"])
def test_an_id_listed_twice_deep_in_the_history_gives_one_row_and_counts_once(
    simulator, db_path, run, refresh
):
    visible = simulator.world.visible()
    repeated = [b for b in visible[50:60] if b["metadata"] and b["request_counts"]]
    simulator.faults.repeat = {b["id"]: visible[1500]["id"] for b in repeated}
    if refresh:
        assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert run("sync", "--db", str(db_path), *(["--full-refresh"] * refresh)).code == 0

    assert repeated
    assert_one_row_per_key(db_path)
    assert_warehouse_equals(db_path, served(simulator))
    [(in_views, turnaround_rows)] = query(
        db_path,
        "select (select sum(batches) from analytics.status_counts), "
        "(select count(*) from analytics.batch_turnaround)",
    )
    assert in_views == turnaround_rows == len(visible)
    # The first listing alone is loaded, so its fingerprint is the stored row's.
    fingerprinted = query(db_path, "select id from siliconflow._sfbatches_fingerprints")
    assert sorted(i for (i,) in fingerprinted if i in {b["id"] for b in repeated}) == sorted(
        b["id"] for b in repeated
    )


def mark_reads(simulator, batch_id: str, monkeypatch) -> list[str]:
    """Make each listing of `batch_id` differ, as a live batch's ticking counts do: the nth read
    names itself `read_n` in file_name and as its one metadata key. Returns the reads so far."""
    reads: list[str] = []
    list_page = simulator.world.list_page

    def marking_reads(*args, **kwargs):
        page = list_page(*args, **kwargs)
        for batch in page["data"]:
            if batch["id"] == batch_id:
                reads.append(f"read_{len(reads) + 1}")
                batch.update(file_name=reads[-1], metadata={reads[-1]: "yes"})
        return page

    monkeypatch.setattr(simulator.world, "list_page", marking_reads)
    monkeypatch.setattr(simulator, "cache", AnswerCache(0))  # every page rendered, so marked
    return reads


def assert_stored_from_one_read(db_path: Path, batch_id: str, reads: list[str]) -> None:
    [(stored,)] = query(
        db_path, f"select file_name from siliconflow.batches where id = '{batch_id}'"
    )
    keys = query(
        db_path, f"select key from siliconflow.batch_metadata where batch_id = '{batch_id}'"
    )
    assert stored in reads
    assert keys == [(stored,)]
    assert_one_row_per_key(db_path)


def test_an_open_batch_that_changes_between_its_re_read_and_the_sweep_is_stored_from_one_read(
    simulator, db_path, run, monkeypatch
):
    # An open batch below the first page: an incremental sync re-reads it on the page that
    # starts at it, and the sweep passes it again.
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    visible = simulator.world.visible()
    batch_id = next(b["id"] for b in visible[150:350] if b["status"] not in TERMINAL)
    reads = mark_reads(simulator, batch_id, monkeypatch)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert len(reads) >= 2, "the batch must be read twice in the sync for this test to mean much"
    assert_stored_from_one_read(db_path, batch_id, reads)


def test_a_new_batch_listed_twice_with_different_contents_is_stored_from_one_read(
    simulator, db_path, run, synced, monkeypatch
):
    new = served(simulator)[:PAGE]
    batch_id = next(b["id"] for b in new[:50] if b["metadata"])
    anchor = new[60]["id"]
    reads = mark_reads(simulator, batch_id, monkeypatch)
    # served again after `anchor` as it is in the world: unmarked, with its own metadata
    simulator.faults.repeat = {batch_id: anchor}

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert reads == ["read_1"]
    assert_stored_from_one_read(db_path, batch_id, reads)


class Lookups(BaseHTTPRequestHandler):
    """`GET /v1/batches/{id}` answering the batch whose id the path's one segment spells."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        batch_id = unquote(self.path.removeprefix("/v1/batches/"))
        body = json.dumps({"id": batch_id, "object": "batch", "status": "in_progress"}).encode()
        self.send_response(200 if "/" not in batch_id or "%2F" in self.path else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("batch_id", ["team/a/batch_1", "open?deep", "tab#2", "100%_done", "ü b"])
def test_a_batch_is_looked_up_by_its_whole_id_whatever_it_holds(batch_id):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Lookups)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Lookups.paths.clear()
    try:
        api = BatchApi(
            f"http://127.0.0.1:{server.server_port}/v1",
            "sk-test",
            RetryPolicy(max_attempts=1),
            Deadline(None),
        )
        found = api.batch(batch_id)
    finally:
        server.shutdown()
        server.server_close()
    assert found is not None and found["id"] == batch_id
    assert Lookups.paths == [f"/v1/batches/{quote(batch_id, safe='')}"]


@pytest.mark.parametrize("page", [0, 2])
def test_a_page_that_starts_with_a_byte_order_mark_is_read_as_json(
    simulator, db_path, run, synced, page, monkeypatch
):
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "1")  # read as it is, not asked again
    # the page the sync will ask for, as the simulator serves it, but with a UTF-8 BOM
    cursor = {}
    for _ in range(page):
        listed = requests.get(
            f"{simulator.base_url}/batches",
            params={"limit": PAGE, **cursor},
            headers={"Authorization": f"Bearer {simulator.api_key}"},
        ).json()
        cursor = {"after": listed["last_id"]}
    answer = requests.get(
        f"{simulator.base_url}/batches",
        params={"limit": PAGE, **cursor},
        headers={"Authorization": f"Bearer {simulator.api_key}"},
    )
    simulator.faults.queue(status=200, body=codecs.BOM_UTF8 + answer.content, after=page)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert simulator.faults.pending() == 0
    assert_warehouse_equals(db_path, served(simulator))


@pytest.mark.parametrize("refresh", [False, True], ids=["first-sync", "full-refresh"])
def test_a_batch_a_full_sync_lists_twice_with_different_contents_is_stored_from_one_read(
    simulator, db_path, run, monkeypatch, refresh
):
    if refresh:
        assert run("sync", "--db", str(db_path), "--no-models").code == 0
    visible = simulator.world.visible()
    batch = next(b for b in visible[50:60] if b["metadata"] and b["metadata"] != {"read_1": "yes"})
    reads = mark_reads(simulator, batch["id"], monkeypatch)
    # listed again after a batch deep in the history as it is in the world: unmarked
    simulator.faults.repeat = {batch["id"]: visible[1500]["id"]}

    full = ["--full-refresh"] * refresh
    assert run("sync", "--db", str(db_path), "--no-models", *full).code == 0

    assert reads == ["read_1"]
    assert_stored_from_one_read(db_path, batch["id"], reads)


# --- 3. a sync always ends ----------------------------------------------------------------------


def test_an_empty_page_handing_back_its_own_cursor_does_not_loop(simulator, db_path, run, synced):
    handed_back = served(simulator)[PAGE - 1]["id"]  # `after` of the walk's second page
    simulator.faults.queue(kind="self_cursor", after=1, times=20)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0 and "empty page that says more" in outcome.err
    asked = [r for r in simulator.list_requests() if r.query.get("after") == handed_back]
    # once each by the walk, the re-read of open batches and the sweep; a loop would take all 20
    assert len(asked) <= 3, "asked again and again with the cursor it handed back"
    simulator.faults.reset()
    assert syncs_until_complete(run, db_path, simulator, 1) == 1


def test_a_body_that_trickles_in_is_cut_off_by_request_timeout_and_retried(
    simulator, db_path, synced
):
    simulator.faults.queue(kind="trickle", seconds=0.05, after=1)  # 2 minutes for one page

    outcome = run_process(
        "sync", "--db", str(db_path), "--no-models",
        env={"RUNTIME__REQUEST_TIMEOUT": "1"}, timeout=60,
    )  # fmt: skip

    assert outcome.code == 0, outcome.err
    assert_warehouse_equals(db_path, served(simulator))


def test_a_body_that_always_trickles_ends_the_sync_with_exit_4(simulator, db_path, synced):
    simulator.faults.queue(kind="trickle", seconds=0.05, times=20)

    outcome = run_process(
        "sync", "--db", str(db_path), "--no-models",
        env={"RUNTIME__REQUEST_TIMEOUT": "0.5"}, timeout=60,
    )  # fmt: skip

    assert outcome.code == 4
    assert "after retries (no answer in time at http" in outcome.err
    assert outcome.err.count("\n") == 1


def test_a_sync_past_its_deadline_stops_with_exit_4_and_changes_nothing(
    simulator, db_path, run, synced, monkeypatch
):
    before = snapshot_ids_and_loads(db_path)
    simulator.faults.latency_ms = 150
    monkeypatch.setenv("SOURCES__SILICONFLOW__SYNC_TIMEOUT", "1")

    outcome = run("sync", "--db", str(db_path), "--full-refresh")

    assert outcome.code == 4
    assert "sync_timeout (1 s)" in outcome.err and outcome.err.count("\n") == 1
    assert snapshot_ids_and_loads(db_path) == before
    simulator.faults.latency_ms = 0
    monkeypatch.delenv("SOURCES__SILICONFLOW__SYNC_TIMEOUT")
    # this process let go of the lock: another sync starts at once and brings everything current
    again = run_process("sync", "--db", str(db_path), env={"SFBATCHES_LOCK_TIMEOUT": "0"})
    assert again.code == 0, again.err
    assert_warehouse_equals(db_path, served(simulator))


def snapshot_ids_and_loads(db_path: Path) -> list[tuple]:
    return query(db_path, "select id, _dlt_load_id from siliconflow.batches order by id")


# --- 4. no stuck state --------------------------------------------------------------------------


def column_type(db_path: Path, name: str) -> str:
    [(data_type,)] = query(
        db_path,
        "select data_type from information_schema.columns where table_schema = 'siliconflow' "
        f"and table_name = 'batches' and column_name = '{name}'",
    )
    return data_type


@pytest.mark.parametrize(
    ("later", "wanted_type", "wanted"),
    [("high", "VARCHAR", {"5", "high"}), (5.5, "DOUBLE", {5.0, 5.5})],
    ids=["int-to-text", "int-to-float"],
)
def test_an_added_field_whose_type_changes_widens_its_column_and_keeps_every_value(
    simulator, db_path, run, later, wanted_type, wanted
):
    simulator.faults.extra_fields = {"priority": 5}
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    assert column_type(db_path, "priority") == "BIGINT"
    simulator.world.advance(3600)
    simulator.faults.extra_fields = {"priority": later}

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 0, outcome.err
    assert "'priority'" in outcome.err and f"widened to {wanted_type}" in outcome.err
    assert column_type(db_path, "priority") == wanted_type
    values = {row[0] for row in query(db_path, "select distinct priority from siliconflow.batches")}
    assert values == wanted
    for args in ([], ["--full-refresh"]):  # never stuck, and the warning is said once
        outcome = run("sync", "--db", str(db_path), *args)
        assert outcome.code == 0, outcome.err
        assert "priority" not in outcome.err


def test_added_fields_whose_names_collide_with_documented_columns_get_their_own(
    simulator, db_path, run
):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.faults.extra_fields = {"Status": "shouted", "created-at": 3}

    outcome = run("sync", "--db", str(db_path), "--full-refresh")

    assert outcome.code == 0, outcome.err
    assert "'Status'" in outcome.err and "'created-at'" in outcome.err
    assert_warehouse_equals(db_path, served(simulator))  # status and created_at as documented
    columns = dict(
        query(
            db_path,
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'siliconflow' and table_name = 'batches'",
        )
    )
    status_column = next(c for c in columns if c.startswith("status_"))
    created_column = next(c for c in columns if c.startswith("created_at_"))
    assert query(db_path, f"select distinct {status_column} from siliconflow.batches") == [
        ("shouted",)
    ]
    assert query(db_path, f"select distinct {created_column} from siliconflow.batches") == [(3,)]
    again = run("sync", "--db", str(db_path))
    assert again.code == 0 and again.err == ""


# Added fields whose names normalize to nothing, to one another's or to dlt's own column.
ODD_NAMES = {
    "": "blank",
    "__": "dunder",
    "Foo": 101_001,
    "foo": 202_002,
    "a-b": "dash",
    "a_b": "under",
    "!!!": "bang",
    "???": "what",
    "_dlt_id": "theirs",
}


def test_added_fields_whose_names_collide_or_vanish_each_keep_a_column(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    simulator.faults.extra_fields = ODD_NAMES

    outcome = run("sync", "--db", str(db_path), "--full-refresh")

    assert outcome.code == 0, outcome.err
    assert_warehouse_equals(db_path, served(simulator))
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute("from siliconflow.batches").fetchall()
    for row in rows:
        assert all(row.count(value) == 1 for value in ODD_NAMES.values()), row
    again = run("sync", "--db", str(db_path), "--full-refresh")
    assert again.code == 0 and again.err == ""


def test_fields_past_the_most_columns_are_kept_as_json_and_syncs_go_on(simulator, db_path, run):
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    # a nested object with a key per request, as dynamic as added fields get, and many scalars
    added = {f"field_{i}": i for i in range(300)} | {
        "per_request": {f"req_{i}": {"tokens": i} for i in range(400)}
    }
    expected = {f"field_{i}": i for i in range(300)} | {
        f"per_request__req_{i}__tokens": i for i in range(400)
    }
    simulator.faults.extra_fields = added

    outcome = run("sync", "--db", str(db_path), "--full-refresh", "--no-models")

    assert outcome.code == 0 and outcome.err.count("more_fields") == 1, outcome.err
    added_columns = set(columns_of(db_path)) - KNOWN_FIELDS - {"_dlt_load_id"}
    assert len(added_columns) == MOST_ADDED_COLUMNS + 1  # and more_fields
    with duckdb.connect(str(db_path), read_only=True) as con:
        cursor = con.execute("from siliconflow.batches")
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        more = json.loads(row["more_fields"])
        assert not set(more) & set(row)
        assert {path: row[path] if path in row else more[path] for path in expected} == expected
    for args in (["--full-refresh"], []):
        again = run("sync", "--db", str(db_path), "--no-models", *args)
        assert again.code == 0 and again.err == "", again.err
    simulator.faults.extra_fields = {}
    assert run("sync", "--db", str(db_path), "--full-refresh", "--no-models").code == 0
    assert_warehouse_equals(db_path, served(simulator))


def columns_of(db_path: Path) -> list[str]:
    return [
        name
        for (name,) in query(
            db_path,
            "select column_name from information_schema.columns "
            "where table_schema = 'siliconflow' and table_name = 'batches'",
        )
    ]


@pytest.mark.parametrize(
    ("has_more", "more"),
    [
        (False, False),
        (0, False),
        ("false", False),
        (" FALSE ", False),
        ("False", False),
        ("0", False),
        (True, True),
        (1, True),
        ("true", True),
        ("True", True),
        (None, True),
    ],
)
def test_has_more_ends_the_listing_however_it_is_spelled(has_more, more):
    pages = BatchPages(2)
    body = {"data": [{"id": "b2"}, {"id": "b1"}], "last_id": "b1", "has_more": has_more}

    pages.update_state(ApiResponse(Response(), orjson.dumps(body)), body["data"])

    assert pages.has_next_page is more
    assert (pages.stop, pages.after) == (("", "b1") if more else ("end", None))


# --- 5. fail fast when told to wait -----------------------------------------------------------


def in_two_hours() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(hours=2, seconds=5), usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "said"),
    [(429, lambda: "3600", "rate limiting"), (503, in_two_hours, "overloaded")],
    ids=["429-seconds", "503-http-date"],
)
def test_a_wait_longer_than_the_retries_allow_fails_at_once(
    simulator, db_path, run, synced, status, retry_after, said
):
    before = snapshot_ids_and_loads(db_path)
    simulator.faults.queue(status=status, retry_after=retry_after(), times=10)
    started = time.monotonic()

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 4 and outcome.err.count("\n") == 1
    assert f"asks to wait {1.0 if status == 429 else 2.0} h" in outcome.err
    assert said in outcome.err, "the API's own message"
    assert simulator.count() == 1, "no retries"
    assert time.monotonic() - started < 30
    assert snapshot_ids_and_loads(db_path) == before


# --- 6. honest HTTP -----------------------------------------------------------------------------


def test_an_error_envelope_in_a_200_is_retried_like_the_503_it_means(
    simulator, db_path, run, synced
):
    simulator.faults.queue(kind="envelope", times=2, after=1)

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert simulator.faults.pending() == 0
    assert_warehouse_equals(db_path, served(simulator))


def test_an_error_envelope_that_stays_ends_as_exit_4_with_the_apis_message(
    simulator, db_path, run, synced
):
    simulator.faults.queue(kind="envelope", times=50)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 4 and outcome.err.count("\n") == 1
    assert "code 50505" in outcome.err and "Model service overloaded" in outcome.err
    assert "after 3 tries" in outcome.err


def test_a_redirect_under_the_base_url_is_followed(simulator, db_path, run, synced):
    simulator.faults.queue(kind="redirect", status=301, location="/v1/batches/?limit=100")

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert_warehouse_equals(db_path, served(simulator))


@pytest.mark.parametrize(
    ("location", "said"),
    [("/alt/v1/batches", "outside base_url"), (None, "without a Location")],
    ids=["elsewhere", "no-location"],
)
def test_a_redirect_that_cannot_be_followed_is_reported_as_one(
    simulator, db_path, run, synced, location, said
):
    simulator.faults.queue(kind="redirect", location=location, times=10)

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 4 and outcome.err.count("\n") == 1
    assert "redirect" in outcome.err and said in outcome.err
    assert "not JSON" not in outcome.err
    elsewhere = [r for r in simulator.requests if r.path.startswith("/alt/")]
    assert all(r.authorization is None for r in elsewhere), "the key left base_url"


# --- 10. statuses ------------------------------------------------------------------------------


def test_terminal_statuses_in_capitals_count_as_ended(simulator, db_path, run):
    open_ids = [b["id"] for b in simulator.world.visible()[:400] if b["status"] == "in_progress"]
    simulator.faults.overrides = {i: {"status": "COMPLETED"} for i in open_ids}

    assert run("sync", "--db", str(db_path)).code == 0

    assert open_ids
    assert not set(plan.read_plan(db_path).open_positions) & set(open_ids)
    open_now = {row[0] for row in query(db_path, "select batch_id from analytics.open_batches")}
    assert not open_now & set(open_ids)
    statuses = {row[0] for row in query(db_path, "select status from analytics.status_counts")}
    assert "COMPLETED" not in statuses and "completed" in statuses


def test_an_unknown_status_is_stored_as_sent_counted_open_and_named_once(simulator, db_path, run):
    paused = [b["id"] for b in simulator.world.visible()[100:400] if b["status"] == "completed"]
    simulator.faults.overrides = {i: {"status": "paused"} for i in paused[:3]}

    outcome = run("sync", "--db", str(db_path))

    assert outcome.code == 0
    warnings = [line for line in outcome.err.splitlines() if "paused" in line]
    assert len(warnings) == 1 and "'paused' (3," in warnings[0]
    assert_warehouse_equals(db_path, served(simulator))
    assert set(paused[:3]) <= set(plan.read_plan(db_path).open_positions)
    open_now = {row[0] for row in query(db_path, "select batch_id from analytics.open_batches")}
    assert set(paused[:3]) <= open_now


def test_a_request_count_below_zero_counts_nothing_in_the_views(simulator, db_path, run):
    visible = simulator.world.visible()
    running = next(b["id"] for b in visible if b["status"] == "in_progress")
    done = next(b["id"] for b in visible if b["status"] == "completed" and count_of(b, "completed"))
    simulator.faults.overrides = {
        running: {"request_counts": {"total": -1, "completed": -5, "failed": 0}},
        done: {"request_counts": {"total": 10, "completed": -3, "failed": -1}},
    }

    assert run("sync", "--db", str(db_path)).code == 0

    assert query(
        db_path,
        "select requests_total, requests_completed, requests_failed, progress "
        f"from analytics.open_batches where batch_id = '{running}'",
    ) == [(None, None, 0, None)]
    assert query(
        db_path,
        "select requests_total, requests_completed, requests_failed, requests_per_second "
        f"from analytics.batch_turnaround where batch_id = '{done}'",
    ) == [(10, None, None, None)]


def test_a_status_with_spaces_counts_as_its_status_and_none_as_open(
    simulator, db_path, run, monkeypatch
):
    done = [
        b["id"]
        for b in simulator.world.visible()[100:400]
        if b["status"] == "completed" and b.get("output_file_id")
    ]
    padded, missing = done[:2], done[2:4]
    simulator.faults.overrides = {
        padded[0]: {"status": " completed "},
        padded[1]: {"status": "Completed\t\n"},
        **{i: {"status": None} for i in missing},
    }
    monkeypatch.setenv("SOURCES__SILICONFLOW__RESULTS", "true")

    outcome = run("sync", "--db", str(db_path))

    assert outcome.code == 0 and "does not know" not in outcome.err
    open_positions = set(plan.read_plan(db_path).open_positions)
    assert not open_positions & set(padded)  # ended: not read again by each sync
    assert set(missing) <= open_positions  # no status: open, read again until it has one
    open_now = {row[0] for row in query(db_path, "select batch_id from analytics.open_batches")}
    assert not open_now & set(padded) and set(missing) <= open_now
    loaded = {
        row[0]
        for row in query(
            db_path, "select batch_id from siliconflow.batch_files where kind = 'output'"
        )
    }
    assert set(padded) <= loaded  # an ended batch's result files are fetched
    assert not loaded & set(missing)


def test_the_sync_process_never_hangs_on_a_looping_server(simulator, db_path):
    simulator.faults.ignore_after = True
    process = subprocess.run(
        [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0 and "ignores `after`" in process.stderr
