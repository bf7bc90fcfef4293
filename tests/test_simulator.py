"""The simulator behaves like SiliconFlow's batch API, and its faults do what they say."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from pipelines.simulator import TERMINAL, Simulator, World

NOW = 1_750_300_000  # a Thursday, 10:26 in Beijing
HOUR = 3600
TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
WINDOW_SECONDS = {"24h": 24 * HOUR, "72h": 72 * HOUR, "336h": 336 * HOUR}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(World(batches=2000, seed=7, now=NOW)) as simulator:
        yield simulator


@pytest.fixture
def small_sim() -> Iterator[Simulator]:
    """A 60-batch world, for tests that walk every page at tiny limits."""
    with Simulator(World(batches=60, seed=7, now=NOW)) as simulator:
        yield simulator


def list_batches(api: requests.Session, sim: Simulator, **params: Any) -> requests.Response:
    return api.get(f"{sim.base_url}/batches", params=params, timeout=5)


def fetch_all(api: requests.Session, sim: Simulator, limit: int = 100) -> list[dict]:
    """Page like OpenAI's SDK: the last item's id is the next `after`."""
    batches: list[dict] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = list_batches(api, sim, **params).json()
        batches.extend(page["data"])
        if not page["has_more"]:
            return batches
        params["after"] = page["data"][-1]["id"]


def ids(batches: list[dict]) -> list[str]:
    return [batch["id"] for batch in batches]


# --- listing and paging --------------------------------------------------------------------


def test_paging_with_limit_100_returns_every_visible_batch_newest_first_once(sim, api):
    batches = fetch_all(api, sim, limit=100)

    assert batches == sim.world.visible()
    assert len(set(ids(batches))) == len(batches) == sim.world.visible_count()
    order = [(b["created_at"], b["id"]) for b in batches]
    assert order == sorted(order, reverse=True)


def test_batches_created_in_the_same_second_page_correctly_at_any_page_size(sim, api):
    truth = sim.world.visible()
    ties = sum(a["created_at"] == b["created_at"] for a, b in pairwise(truth))
    assert ties >= 10

    assert ids(fetch_all(api, sim, limit=7)) == ids(truth)


def test_a_cursor_stays_valid_while_new_batches_appear(sim, api):
    before = sim.world.visible_ids()
    first = list_batches(api, sim, limit=100).json()
    sim.world.advance(30 * HOUR)
    rest = fetch_all_after(api, sim, first["last_id"])

    assert ids(first["data"]) + ids(rest) == before
    assert sim.world.visible_ids()[-len(before) :] == before  # new ones only on top


def fetch_all_after(api: requests.Session, sim: Simulator, after: str) -> list[dict]:
    batches: list[dict] = []
    while True:
        page = list_batches(api, sim, limit=100, after=after).json()
        batches.extend(page["data"])
        if not page["has_more"]:
            return batches
        after = page["last_id"]


def test_page_fields_follow_the_openai_list_shape(sim, api):
    page = list_batches(api, sim, limit=5).json()

    assert page["object"] == "list"
    assert page["first_id"] == page["data"][0]["id"]
    assert page["last_id"] == page["data"][-1]["id"]
    assert page["has_more"] is True


def test_limit_defaults_to_20_and_is_clamped_to_100(sim, api):
    assert len(list_batches(api, sim).json()["data"]) == 20
    assert len(list_batches(api, sim, limit=5000).json()["data"]) == 100


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "", "2.5"])
def test_a_limit_below_1_or_not_an_integer_answers_400_code_20012(sim, api, limit):
    response = list_batches(api, sim, limit=limit)

    assert response.status_code == 400
    assert response.json()["code"] == 20012


def test_an_unknown_after_answers_400_code_20012(sim, api):
    response = list_batches(api, sim, after="batch_000000000000000000000000")

    assert response.status_code == 400
    assert response.json()["code"] == 20012


def test_a_batch_not_yet_created_is_neither_listed_nor_found(sim, api):
    future = sim.world.id_at(sim.world.size - 1)

    assert future not in sim.world.visible_ids()
    assert api.get(f"{sim.base_url}/batches/{future}").status_code == 404
    assert list_batches(api, sim, after=future).status_code == 400


# --- single batches, auth, routing ---------------------------------------------------------


def test_get_returns_the_object_the_listing_shows(sim, api):
    listed = list_batches(api, sim, limit=3).json()["data"]

    for batch in listed:
        assert api.get(f"{sim.base_url}/batches/{batch['id']}").json() == batch


def test_an_unknown_batch_answers_404_with_a_json_body(sim, api):
    response = api.get(f"{sim.base_url}/batches/batch_nope")

    assert response.status_code == 404
    assert response.json()["code"] == 20012


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}])
def test_a_missing_or_wrong_key_answers_401_invalid_token(sim, headers):
    response = requests.get(f"{sim.base_url}/batches", headers=headers, timeout=5)

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == "Invalid token"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/files"), ("GET", "/batches"), ("POST", "/v1/batches")]
)
def test_unknown_routes_answer_404_page_not_found_in_plain_text(sim, api, method, path):
    response = api.request(method, f"http://127.0.0.1:{sim.port}{path}", timeout=5)

    assert response.status_code == 404
    assert response.text == "404 page not found"


def test_successful_answers_carry_a_trace_id(sim, api):
    assert list_batches(api, sim).headers["x-siliconcloud-trace-id"]


def test_a_session_reuses_one_keep_alive_connection(sim, api):
    for _ in range(5):
        list_batches(api, sim, limit=1)

    assert sim.connections == 1


def test_every_request_is_logged_with_its_query_and_status(sim, api):
    list_batches(api, sim, limit=2)
    list_batches(api, sim, limit=0)
    api.get(f"{sim.base_url}/nothing")

    assert [r[:4] for r in sim.requests] == [
        ("GET", "/v1/batches", {"limit": "2"}, 200),
        ("GET", "/v1/batches", {"limit": "0"}, 400),
        ("GET", "/v1/nothing", {}, 404),
    ]
    assert sim.count("/v1/batches") == 2
    assert len(sim.list_requests()) == 2


@pytest.mark.parametrize("prefix", ["/v1/batches/", "/alt/v1/batches", "/alt/v1/batches/"])
def test_the_list_route_also_answers_with_a_trailing_slash_and_under_alt(sim, api, prefix):
    url = f"http://127.0.0.1:{sim.port}{prefix}"
    response = api.get(url, params={"limit": 3}, timeout=5)

    assert response.json() == list_batches(api, sim, limit=3).json()
    assert requests.get(url, timeout=5).status_code == 401
    assert len(sim.list_requests()) == 3


def test_single_batches_are_also_served_under_alt(sim, api):
    batch_id = sim.world.visible_ids()[0]
    alt = f"http://127.0.0.1:{sim.port}/alt/v1"

    assert api.get(f"{alt}/batches/{batch_id}", timeout=5).json() == sim.world.get(batch_id)
    assert api.get(f"{alt}/files", timeout=5).text == "404 page not found"
    assert api.get(f"http://127.0.0.1:{sim.port}/alt/batches", timeout=5).status_code == 404


def test_the_request_log_records_the_authorization_sent_also_to_control_routes(sim, api):
    list_batches(api, sim, limit=1)
    requests.get(f"http://127.0.0.1:{sim.port}/_sim/state", timeout=5)
    headers = {"Authorization": "Bearer sk-elsewhere"}
    requests.get(f"http://127.0.0.1:{sim.port}/_sim/faults", headers=headers, timeout=5)

    assert [(r.path, r.status, r.authorization) for r in sim.requests] == [
        ("/v1/batches", 200, f"Bearer {sim.api_key}"),
        ("/_sim/state", 200, None),
        ("/_sim/faults", 200, "Bearer sk-elsewhere"),
    ]


def test_a_stopped_simulator_hangs_up_and_restarts_on_the_same_port():
    simulator = Simulator(World(batches=10, now=NOW)).start()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {simulator.api_key}"
        assert session.get(f"{simulator.base_url}/batches", timeout=5).ok
        simulator.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(f"{simulator.base_url}/batches", timeout=5)
        simulator.start()
        assert session.get(f"{simulator.base_url}/batches", timeout=5).ok
        simulator.stop()


# --- the world: ids, lifecycle, payload variants -------------------------------------------


def test_ids_are_batch_plus_24_lowercase_alnum_and_follow_the_seed():
    world = World(batches=50, seed=3, now=NOW)

    assert world.visible_ids() == World(batches=50, seed=3, now=NOW).visible_ids()
    assert not set(world.visible_ids()) & set(World(batches=50, seed=4, now=NOW).visible_ids())
    for batch_id in world.visible_ids():
        assert batch_id.startswith("batch_") and len(batch_id) == 30
        assert batch_id[6:].isalnum() and batch_id[6:] == batch_id[6:].lower()


def test_timestamps_and_counts_are_consistent_at_every_clock():
    world = World(batches=2000, seed=7, now=NOW)
    for step in (0, HOUR, 7 * HOUR, 30 * HOUR):
        world.advance(step)
        for batch in world.visible():
            assert_consistent(batch, world.now)


def assert_consistent(batch: dict, now: int) -> None:
    created, status = batch["created_at"], batch["status"]
    assert created <= now
    assert batch["expires_at"] == created + WINDOW_SECONDS[batch["completion_window"]]
    seen = [batch[name] for name in TIMESTAMPS if batch[name] is not None]
    assert all(created <= at <= now for at in seen)
    if status in TERMINAL:
        assert batch[f"{status}_at"] is not None
    if status == "completed":
        assert batch["in_progress_at"] <= batch["finalizing_at"] <= batch["completed_at"]
        assert batch["completed_at"] <= batch["expires_at"]
    if status == "expired":
        assert batch["expired_at"] == batch["expires_at"]
    if status in ("cancelling", "cancelled"):
        assert batch["cancelling_at"] is not None
    counts = batch["request_counts"]
    if counts:
        assert counts["completed"] + counts["failed"] <= counts["total"]
        if status == "completed":
            assert counts["completed"] + counts["failed"] == counts["total"]
        if status == "expired":
            assert counts["completed"] < counts["total"]


def test_advancing_the_clock_moves_open_batches_on_and_never_back():
    world = World(batches=2000, seed=7, now=NOW)
    before = {batch["id"]: batch for batch in world.visible()}
    for hours in (1, 7, 30):
        world.advance(hours * HOUR)
        after = {batch["id"]: batch for batch in world.visible()}
        changed = [i for i in before if after[i]["status"] != before[i]["status"]]
        assert changed, f"no status changed within {hours} h"
        for batch_id, old in before.items():
            assert_moved_forward(old, after[batch_id])
        before = after


def assert_moved_forward(old: dict, new: dict) -> None:
    if old["status"] in TERMINAL:
        assert new == old
    for name in TIMESTAMPS:
        assert old[name] is None or new[name] == old[name]
    if old["request_counts"] and new["request_counts"]:
        assert new["request_counts"]["completed"] >= old["request_counts"]["completed"]


def test_new_batches_appear_on_top_as_the_clock_passes_their_creation():
    world = World(batches=2000, seed=7, now=NOW)
    before = world.visible_ids()
    world.advance(30 * HOUR)
    after = world.visible()

    appeared = after[: len(after) - len(before)]
    assert appeared and all(NOW < batch["created_at"] <= world.now for batch in appeared)


def test_request_counts_grow_while_in_progress():
    world = World(batches=2000, seed=7, now=NOW)
    running = [b for b in world.visible() if b["status"] == "in_progress" and b["request_counts"]]
    world.advance(20 * 60)

    grown = [
        b
        for b in running
        if world.get(b["id"])["request_counts"]["completed"] > b["request_counts"]["completed"]
    ]
    assert running and grown


def test_every_payload_variant_occurs_in_a_2000_batch_world():
    batches = World(batches=2000, seed=7, now=NOW).visible()

    def occurs(predicate) -> bool:
        return any(predicate(batch) for batch in batches)

    assert occurs(lambda b: b["request_counts"] is None)
    assert occurs(lambda b: b["request_counts"] == {})
    assert occurs(lambda b: set(b["request_counts"] or ()) == {"total", "completed", "failed"})
    assert occurs(lambda b: b["errors"] is None)
    assert occurs(lambda b: b["errors"] == [])
    assert occurs(
        lambda b: (
            isinstance(b["errors"], list)
            and b["errors"]
            and all(isinstance(e, str) for e in b["errors"])
        )
    )
    assert occurs(
        lambda b: (
            isinstance(b["errors"], dict)
            and b["errors"]["object"] == "list"
            and set(b["errors"]["data"][0]) == {"code", "message", "param", "line"}
        )
    )
    assert occurs(lambda b: b["metadata"] is None)
    assert occurs(lambda b: b["metadata"] == {})
    keys = {key for batch in batches for key in batch["metadata"] or ()}
    assert {"项目", "team name", "a.b", 'say "hi"', "emoji 🚀"} <= keys
    assert occurs(lambda b: "" in (b["metadata"] or {}).values())
    assert occurs(lambda b: "model" in b and "usage" in b)
    assert occurs(lambda b: b["endpoint"] == "/v1/embeddings")
    assert {b["completion_window"] for b in batches} == {"24h", "72h", "336h"}
    assert {b["status"] for b in batches} >= {*TERMINAL, "in_progress", "in_queue"}


def test_lifecycle_edge_cases_occur_in_a_2000_batch_world():
    batches = World(batches=2000, seed=7, now=NOW).visible()

    def occurs(predicate) -> bool:
        return any(predicate(batch) for batch in batches)

    assert occurs(lambda b: b["status"] == "failed" and b["in_progress_at"] is None)
    assert occurs(lambda b: b["status"] == "failed" and b["in_progress_at"] is not None)
    assert occurs(lambda b: b["status"] == "completed" and b["completed_at"] == b["expires_at"])
    assert occurs(lambda b: b["status"] == "completed" and b["error_file_id"] is not None)
    assert occurs(
        lambda b: b["finalizing_at"] is not None and b["finalizing_at"] == b["in_progress_at"]
    )
    assert occurs(
        lambda b: b["status"] == "expired" and (b["request_counts"] or {}).get("completed")
    )
    assert occurs(lambda b: b["status"] == "cancelled" and b["cancelled_at"] > b["cancelling_at"])


def test_openai_style_validating_status_shows_while_fresh_batches_wait():
    world = World(batches=20_000, seed=7, now=NOW)
    statuses = set()
    for _ in range(3 * 24 * 12):
        world.advance(5 * 60)
        statuses |= {b["status"] for b in world.list_page(20)["data"]}

    assert {"validating", "in_queue", "finalizing"} <= statuses


def test_set_metadata_overrides_what_the_api_returns_from_then_on(sim, api):
    batch = list_batches(api, sim, limit=1).json()["data"][0]
    sim.world.set_metadata(batch["id"], {"kept": "yes"})

    assert api.get(f"{sim.base_url}/batches/{batch['id']}").json()["metadata"] == {"kept": "yes"}
    sim.world.set_metadata(batch["id"], None)
    assert sim.world.get(batch["id"])["metadata"] is None


def test_cancel_passes_through_cancelling_to_cancelled():
    world = World(batches=2000, seed=7, now=NOW)
    open_batch = next(b for b in world.visible() if b["status"] not in TERMINAL)
    ended = next(b for b in world.visible() if b["status"] == "completed")
    world.cancel(open_batch["id"])
    world.cancel(ended["id"])

    assert world.get(open_batch["id"])["status"] == "cancelling"
    assert world.get(open_batch["id"])["cancelling_at"] == world.now
    world.advance(10 * 60)
    assert world.get(open_batch["id"])["status"] == "cancelled"
    assert world.get(ended["id"]) == ended


def test_a_stuck_batch_stays_in_its_stage_whatever_it_was_drawn_to_do(sim, api):
    world = sim.world
    ended = [b for b in world.visible() if b["status"] == "completed"][:3]
    queued, finalizing, running = (b["id"] for b in ended)
    world.stick(queued, "queue", world.now)
    world.stick(finalizing, "finalizing", world.now - 3 * HOUR)
    control = f"http://127.0.0.1:{sim.port}/_sim/stick"
    since = ended[2]["created_at"] + 60
    answer = requests.post(
        control, params={"batch_id": running, "stage": "in_progress", "since": since}, timeout=5
    )
    assert answer.status_code == 200
    world.advance(40 * 24 * HOUR)  # past every window

    waiting = api.get(f"{sim.base_url}/batches/{queued}").json()
    assert waiting["status"] in ("validating", "in_queue")
    assert [waiting[name] for name in TIMESTAMPS] == [None] * len(TIMESTAMPS)
    assert waiting["output_file_id"] is None
    final = world.get(finalizing)
    assert (final["status"], final["finalizing_at"]) == ("finalizing", NOW - 3 * HOUR)
    assert final["in_progress_at"] <= final["finalizing_at"]
    assert (world.get(running)["status"], world.get(running)["in_progress_at"]) == (
        "in_progress",
        since,
    )


@pytest.mark.parametrize(
    ("stage", "since_offset", "says"),
    [("expired", 0, "not 'expired'"), ("finalizing", -(10**9), "before it was created")],
)
def test_a_batch_cannot_be_stuck_in_a_final_stage_or_before_it_exists(
    sim, stage, since_offset, says
):
    batch = sim.world.visible()[0]
    with pytest.raises(ValueError, match=says):
        sim.world.stick(batch["id"], stage, sim.world.now + since_offset)
    control = f"http://127.0.0.1:{sim.port}/_sim/stick"
    params = {"batch_id": batch["id"], "stage": stage, "since": sim.world.now + since_offset}
    assert requests.post(control, params=params, timeout=5).status_code == 400


def test_a_100k_world_builds():
    world = World(batches=100_000, seed=1)

    assert world.size == 100_000
    assert 80_000 < world.visible_count() < 100_000


# --- faults --------------------------------------------------------------------------------


def test_queued_429s_answer_the_next_requests_with_retry_after_then_recover(sim, api):
    sim.faults.queue(status=429, times=2, retry_after="1")
    first, second, third = (list_batches(api, sim) for _ in range(3))

    for response in (first, second):
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json()["code"] == 50603
    assert third.status_code == 200
    assert sim.faults.pending() == 0


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            503,
            {
                "code": 50505,
                "message": "Model service overloaded. Please try again later.",
                "data": None,
            },
        ),
        (403, "Forbidden"),
        (400, None),
    ],
)
def test_queued_json_errors_carry_siliconflow_bodies(sim, api, status, body):
    sim.faults.queue(status=status)
    response = list_batches(api, sim)

    assert response.status_code == status
    if body is not None:
        assert response.json() == body
    else:
        assert response.json()["code"] == 20012


@pytest.mark.parametrize("status", [500, 504, 404])
def test_queued_gateway_errors_answer_in_plain_text(sim, api, status):
    sim.faults.queue(status=status)
    response = api.get(f"{sim.base_url}/batches/{sim.world.visible_ids()[0]}")

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/plain")


def test_a_queued_fault_may_let_some_requests_through_first(sim, api):
    sim.faults.queue(status=503, times=2, after=1)

    assert sim.faults.pending() == 2
    assert requests.get(f"http://127.0.0.1:{sim.port}/_sim/faults", timeout=5).ok
    statuses = [list_batches(api, sim, limit=1).status_code for _ in range(4)]
    assert statuses == [200, 503, 503, 200]
    assert sim.faults.pending() == 0


def test_the_request_log_times_answers_so_backoff_can_be_measured(sim, api):
    list_batches(api, sim, limit=1)
    time.sleep(0.05)
    list_batches(api, sim, limit=1)

    first, second = sim.requests
    assert second.at - first.at >= 0.05


def test_a_queued_fault_may_carry_its_own_body(sim, api):
    sim.faults.queue(status=429, body={"message": "slow down", "data": None, "code": 50602})

    assert list_batches(api, sim).json()["code"] == 50602


def test_bad_json_answers_200_with_an_html_proxy_page(sim, api):
    sim.faults.queue(kind="bad_json")
    response = list_batches(api, sim)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_drop_closes_the_connection_without_an_answer(sim, api):
    sim.faults.queue(kind="drop")

    with pytest.raises(requests.ConnectionError):
        list_batches(api, sim)
    assert list_batches(api, sim).ok
    assert sim.requests[0].status == 0


def test_slow_answers_late_enough_to_trip_a_client_timeout(sim, api):
    sim.faults.queue(kind="slow", seconds=0.5)

    with pytest.raises(requests.Timeout):
        api.get(f"{sim.base_url}/batches", timeout=0.1)
    assert list_batches(api, sim).ok


def test_no_data_answers_a_list_object_without_data(sim, api):
    sim.faults.queue(kind="no_data")
    page = list_batches(api, sim).json()

    assert page["object"] == "list" and "data" not in page


def test_malformed_answers_a_page_where_one_batch_lacks_its_id(sim, api):
    sim.faults.queue(kind="malformed")
    page = list_batches(api, sim, limit=10).json()

    assert sum("id" not in batch for batch in page["data"]) == 1


def test_an_unknown_fault_kind_is_refused(sim):
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.faults.queue(kind="explode")


def test_error_rate_mixes_transient_errors_into_answers(sim, api):
    sim.faults.error_rate = 0.5
    statuses = {list_batches(api, sim, limit=1).status_code for _ in range(40)}

    assert 200 in statuses
    assert statuses - {200} and statuses - {200} <= {429, 500, 503, 504}


def test_latency_delays_every_answer(sim, api):
    sim.faults.latency_ms = 60
    started = time.perf_counter()
    list_batches(api, sim, limit=1)

    assert time.perf_counter() - started >= 0.06


def test_faults_do_not_touch_the_control_api(sim):
    sim.faults.queue(status=500)

    assert requests.get(f"http://127.0.0.1:{sim.port}/_sim/state", timeout=5).ok
    assert sim.faults.pending() == 1


# --- page faults: listings that end, skip or loop ------------------------------------------


def test_end_early_serves_the_page_asked_for_but_says_there_is_no_more(sim, api):
    truth = sim.world.visible_ids()
    sim.faults.queue(kind="end_early")
    page = list_batches(api, sim, limit=10, after=truth[9]).json()

    assert ids(page["data"]) == truth[10:20]
    assert page["last_id"] == truth[19] and page["has_more"] is False
    assert list_batches(api, sim, limit=10, after=truth[9]).json()["has_more"] is True


def test_empty_end_serves_an_empty_page_with_a_null_cursor_that_has_more(sim, api):
    sim.faults.queue(kind="empty_end")

    assert list_batches(api, sim, limit=10, after=sim.world.visible_ids()[9]).json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": True,
    }


@pytest.mark.parametrize("asked", [True, False])
def test_self_cursor_serves_an_empty_page_handing_back_its_own_after(sim, api, asked):
    after = sim.world.visible_ids()[9] if asked else None
    sim.faults.queue(kind="self_cursor")
    params = {"limit": 10} | ({"after": after} if asked else {})

    assert list_batches(api, sim, **params).json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": after,
        "has_more": True,
    }


def test_skip_starts_the_page_count_batches_further_down(sim, api):
    truth = sim.world.visible_ids()
    sim.faults.queue(kind="skip", count=5)
    sim.faults.queue(kind="skip")
    skipped = list_batches(api, sim, limit=10, after=truth[9]).json()
    skipped_50 = list_batches(api, sim, limit=10).json()

    assert ids(skipped["data"]) == truth[15:25] and skipped["last_id"] == truth[24]
    assert ids(skipped_50["data"]) == truth[50:60] and skipped_50["has_more"] is True


def test_skip_past_the_end_serves_an_empty_last_page(sim, api):
    truth = sim.world.visible_ids()
    sim.faults.queue(kind="skip", count=5)
    page = list_batches(api, sim, limit=10, after=truth[-4]).json()

    assert page["data"] == [] and page["has_more"] is False


def test_bad_last_id_names_a_batch_count_below_the_real_last_one(sim, api):
    truth = sim.world.visible_ids()
    sim.faults.queue(kind="bad_last_id", count=3)
    sim.faults.queue(kind="bad_last_id")
    page = list_batches(api, sim, limit=10).json()
    page_50 = list_batches(api, sim, limit=10).json()

    assert ids(page["data"]) == truth[:10] and page["first_id"] == truth[0]
    assert page["last_id"] == truth[12]
    assert ids(page_50["data"]) == truth[:10] and page_50["last_id"] == truth[59]


def test_echo_cursor_starts_the_page_with_the_batch_it_was_asked_after(sim, api):
    truth = sim.world.visible_ids()
    sim.faults.queue(kind="echo_cursor")
    page = list_batches(api, sim, limit=5, after=truth[4]).json()

    assert ids(page["data"]) == truth[4:10]
    assert page["first_id"] == truth[4] and page["last_id"] == truth[9]
    assert page["has_more"] is True


@pytest.mark.parametrize(
    "kind", ["end_early", "empty_end", "self_cursor", "skip", "bad_last_id", "echo_cursor"]
)
def test_a_page_fault_taken_by_a_single_batch_fetch_answers_it_normally(sim, api, kind):
    batch_id = sim.world.visible_ids()[3]
    sim.faults.queue(kind=kind)
    response = api.get(f"{sim.base_url}/batches/{batch_id}", timeout=5)

    assert response.status_code == 200 and response.json() == sim.world.get(batch_id)
    assert sim.faults.pending() == 0


# --- answers that arrive oddly -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/batches?limit=1", "/batches/{id}"])
def test_trickle_serves_the_right_answer_slower_than_a_per_read_timeout(sim, api, path):
    url = sim.base_url + path.format(id=sim.world.visible_ids()[0])
    expected = api.get(url, timeout=5).json()
    sim.faults.queue(kind="trickle", seconds=0.02)
    started = time.perf_counter()
    response = api.get(url, timeout=0.1)

    assert time.perf_counter() - started > 0.3
    assert response.status_code == 200 and response.json() == expected
    assert response.headers["Content-Length"] == str(len(response.content))


def test_trickle_defaults_to_a_pause_of_50_ms(sim):
    sim.faults.queue(kind="trickle")

    assert sim.faults.as_dict()["queue"][0]["seconds"] == 0.05


def test_a_client_hanging_up_on_a_trickle_leaves_no_traceback(sim, api, capfd):
    sim.faults.queue(kind="trickle", seconds=0.01)
    request = (
        f"GET /v1/batches?limit=5 HTTP/1.1\r\nHost: 127.0.0.1:{sim.port}\r\n"
        f"Authorization: Bearer {sim.api_key}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as client:
        client.sendall(request.encode())
        assert client.recv(64).startswith(b"HTTP/1.1 200")
    time.sleep(0.3)  # the server's next writes hit the closed socket

    assert list_batches(api, sim, limit=1).ok
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("path", ["/batches", "/batches/{id}"])
def test_envelope_answers_200_with_an_overloaded_error_body(sim, api, path):
    sim.faults.queue(kind="envelope")
    response = api.get(sim.base_url + path.format(id=sim.world.visible_ids()[0]), timeout=5)

    assert response.status_code == 200
    assert response.json() == {
        "code": 50505,
        "message": "Model service overloaded. Please try again later.",
        "data": None,
    }


def test_an_envelope_may_carry_its_own_body(sim, api):
    envelope = {"code": 50603, "message": "rate limited", "data": None}
    sim.faults.queue(kind="envelope", body=envelope)
    response = list_batches(api, sim)

    assert response.status_code == 200 and response.json() == envelope


def test_a_redirect_to_a_path_points_at_the_simulators_host(sim, api):
    sim.faults.queue(kind="redirect", location="/alt/v1/batches?limit=3")
    response = list_batches(api, sim, limit=3)
    redirect = response.history[0]

    assert redirect.status_code == 302
    assert redirect.headers["Location"] == f"http://127.0.0.1:{sim.port}/alt/v1/batches?limit=3"
    assert redirect.headers["Content-Type"].startswith("text/html")
    assert response.status_code == 200 and len(response.json()["data"]) == 3
    assert sim.requests[-1].path == "/alt/v1/batches"


def test_a_redirect_may_go_to_any_url_with_its_own_status(sim, api):
    sim.faults.queue(kind="redirect", status=301, location="https://elsewhere.example/v1/x")
    response = api.get(f"{sim.base_url}/batches", allow_redirects=False, timeout=5)

    assert response.status_code == 301
    assert response.headers["Location"] == "https://elsewhere.example/v1/x"


def test_a_redirect_without_location_cannot_be_followed(sim, api):
    sim.faults.queue(kind="redirect", status=301)
    response = list_batches(api, sim)

    assert response.status_code == 301 and not response.history
    assert "Location" not in response.headers
    assert "301 Moved Permanently" in response.text


# --- quirks --------------------------------------------------------------------------------


def test_ignore_after_serves_the_first_page_again_with_has_more(sim, api):
    sim.faults.ignore_after = True
    first = list_batches(api, sim, limit=10).json()
    again = list_batches(api, sim, limit=10, after=first["last_id"]).json()

    assert again["data"] == first["data"] and again["has_more"] is True


def test_oldest_first_lists_ascending_and_still_pages_consistently(sim, api):
    sim.faults.oldest_first = True

    assert ids(fetch_all(api, sim, limit=100)) == sim.world.visible_ids()[::-1]


def test_single_page_returns_everything_at_once(sim, api):
    sim.faults.single_page = True
    page = list_batches(api, sim, limit=5).json()

    assert ids(page["data"]) == sim.world.visible_ids() and page["has_more"] is False


def test_omit_last_id_drops_the_cursor_fields_but_last_item_paging_works(sim, api):
    sim.faults.omit_last_id = True
    page = list_batches(api, sim, limit=5).json()

    assert "first_id" not in page and "last_id" not in page
    assert ids(fetch_all(api, sim, limit=100)) == sim.world.visible_ids()


def test_extra_fields_are_set_on_every_batch_listed_or_fetched(sim, api):
    extra = {"priority": 5, "Status": "x", "created-at": 3, "status": "weird", "tags": ["a"]}
    sim.faults.extra_fields = extra
    listed = list_batches(api, sim, limit=5).json()["data"]
    fetched = api.get(f"{sim.base_url}/batches/{listed[0]['id']}", timeout=5).json()

    for batch in [*listed, fetched]:
        assert batch.items() >= extra.items()
    assert ids(listed) == sim.world.visible_ids()[:5]


def test_overrides_change_one_batch_in_list_and_get_but_not_its_place(sim, api):
    truth = sim.world.visible()
    target = truth[3]["id"]
    counts = {"total": 2**70, "completed": 1, "failed": 0}
    changes = {"status": "COMPLETED", "created_at": 4102444800, "request_counts": counts}
    sim.faults.overrides = {target: changes}
    listed = fetch_all(api, sim, limit=100)

    assert ids(listed) == ids(truth)
    assert listed[3] == {**truth[3], **changes}
    assert listed[:3] + listed[4:] == truth[:3] + truth[4:]
    assert api.get(f"{sim.base_url}/batches/{target}", timeout=5).json() == listed[3]


def fetch_pages(api: requests.Session, sim: Simulator, limit: int, **params: Any) -> list[dict]:
    """Every page, following each page's last_id."""
    pages = [list_batches(api, sim, limit=limit, **params).json()]
    while pages[-1]["has_more"]:
        pages.append(list_batches(api, sim, limit=limit, after=pages[-1]["last_id"]).json())
    return pages


def assert_well_formed(pages: list[dict], limit: int) -> None:
    for page in pages:
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        assert len(page["data"]) == limit or page is pages[-1]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 100])
def test_pin_to_top_lists_pinned_batches_first_and_pages_consistently(small_sim, api, limit):
    truth = small_sim.world.visible_ids()
    pinned = [truth[30], truth[3], truth[-1]]
    future = small_sim.world.id_at(small_sim.world.size - 1)
    small_sim.faults.pin_to_top = [*pinned, future]  # not created yet, so left out
    expected = pinned + [batch_id for batch_id in truth if batch_id not in pinned]
    pages = fetch_pages(api, small_sim, limit)

    assert [batch_id for page in pages for batch_id in ids(page["data"])] == expected
    assert_well_formed(pages, limit)
    assert ids(fetch_all(api, small_sim, limit=limit)) == expected


@pytest.mark.parametrize("start", [0, 1, 2, 3, 10])
def test_pin_to_top_continues_after_any_cursor(small_sim, api, start):
    truth = small_sim.world.visible_ids()
    pinned = [truth[30], truth[3], truth[-1]]
    small_sim.faults.pin_to_top = pinned
    expected = pinned + [batch_id for batch_id in truth if batch_id not in pinned]
    pages = fetch_pages(api, small_sim, 2, after=expected[start])

    assert [batch_id for page in pages for batch_id in ids(page["data"])] == expected[start + 1 :]
    assert_well_formed(pages, 2)


def test_repeat_serves_a_batch_again_right_after_another(sim, api):
    truth = sim.world.visible_ids()
    sim.faults.repeat = {truth[2]: truth[29]}
    pages = fetch_pages(api, sim, 10)

    assert ids(pages[2]["data"]) == [*truth[20:30], truth[2]]
    assert pages[2]["last_id"] == truth[29]
    listed = [batch_id for page in pages for batch_id in ids(page["data"])]
    assert listed == [*truth[:30], truth[2], *truth[30:]]


# --- answers served again from the cache ---------------------------------------------------


def fresh_body(sim: Simulator, target: str) -> bytes:
    """What `sim` answers to GET `target` now, rendered anew by a simulator without a cache."""
    uncached = Simulator(sim.world, cache_bytes=0)
    uncached.faults = sim.faults
    reply = uncached.respond("GET", target, {"Authorization": f"Bearer {sim.api_key}"}, b"")
    assert reply is not None and reply.status == 200
    return reply.body


@pytest.mark.parametrize("path", ["/batches?limit=10&after={after}", "/batches/{after}"])
def test_an_answer_asked_again_comes_byte_identical_from_the_cache(sim, api, path):
    url = sim.base_url + path.format(after=sim.world.visible_ids()[9])
    first = api.get(url, timeout=5)
    second = api.get(url, timeout=5)

    assert second.status_code == 200 and second.content == first.content
    assert sim.cache_hits == 1
    assert first.headers["x-siliconcloud-trace-id"] != second.headers["x-siliconcloud-trace-id"]
    state = requests.get(f"http://127.0.0.1:{sim.port}/_sim/state", timeout=5).json()
    assert state["cache_hits"] == 1 and state["cache_bytes"] > len(first.content)


def test_latency_and_error_rate_leave_cached_answers_in_place(sim, api):
    list_batches(api, sim, limit=10)
    sim.faults.latency_ms = 1
    sim.faults.error_rate = 0.0
    list_batches(api, sim, limit=10)

    assert sim.cache_hits == 1


def cancel_an_open_batch(sim: Simulator, truth: list[str]) -> None:
    open_batch = next(b for b in map(sim.world.get, truth[10:20]) if b["status"] not in TERMINAL)
    sim.world.cancel(open_batch["id"])


def set_faults(make_settings: Any) -> Any:
    """A change that applies the fault settings `make_settings(truth)` returns."""
    return lambda sim, truth: sim.faults.update(make_settings(truth))


CHANGES = {
    "advance": lambda sim, truth: sim.world.advance(HOUR),
    "set_metadata": lambda sim, truth: sim.world.set_metadata(truth[12], {"new": "yes"}),
    "cancel": cancel_an_open_batch,
    "extra_fields": set_faults(lambda truth: {"extra_fields": {"priority": 5}}),
    "extra_fields edited in place": lambda sim, truth: sim.faults.extra_fields.update(p=1),
    "overrides": set_faults(lambda truth: {"overrides": {truth[12]: {"status": "COMPLETED"}}}),
    "pin_to_top": set_faults(lambda truth: {"pin_to_top": [truth[15]]}),
    "repeat": set_faults(lambda truth: {"repeat": {truth[40]: truth[12]}}),
    "ignore_after": set_faults(lambda truth: {"ignore_after": True}),
    "single_page": set_faults(lambda truth: {"single_page": True}),
    "omit_last_id": set_faults(lambda truth: {"omit_last_id": True}),
    "oldest_first": set_faults(lambda truth: {"oldest_first": True}),
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_change_to_the_world_or_a_setting_is_seen_by_the_next_answer(sim, api, change):
    truth = sim.world.visible_ids()
    target = f"/v1/batches?limit=10&after={truth[9]}"
    url = f"http://127.0.0.1:{sim.port}{target}"
    before = api.get(url, timeout=5).content
    CHANGES[change](sim, truth)
    after = api.get(url, timeout=5).content

    assert after != before and after == fresh_body(sim, target)
    assert sim.cache_hits == 0
    assert api.get(url, timeout=5).content == after and sim.cache_hits == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503},
        {"kind": "bad_json"},
        {"kind": "malformed"},
        {"kind": "end_early"},
        {"kind": "skip", "count": 5},
        {"kind": "echo_cursor"},
    ],
)
def test_a_queued_fault_still_fires_on_a_cached_page_and_is_not_kept(sim, api, fault):
    url = f"{sim.base_url}/batches?limit=10&after={sim.world.visible_ids()[9]}"
    cached = api.get(url, timeout=5).content
    sim.faults.queue(**fault)
    faulty = api.get(url, timeout=5)

    assert faulty.content != cached and sim.faults.pending() == 0
    assert sim.cache_hits == 0
    assert api.get(url, timeout=5).content == cached and sim.cache_hits == 1


@pytest.mark.parametrize("kind", ["slow", "trickle"])
def test_a_late_answer_to_a_cached_page_is_rendered_anew(sim, api, kind):
    url = f"{sim.base_url}/batches?limit=10"
    cached = api.get(url, timeout=5).content
    sim.faults.queue(kind=kind, seconds=0.001)

    assert api.get(url, timeout=5).content == cached and sim.cache_hits == 0


def test_the_cache_stays_within_its_bytes_dropping_the_least_recently_used():
    world = World(batches=2000, seed=7, now=NOW)
    with requests.Session() as api, Simulator(world, cache_bytes=0) as uncached:
        api.headers["Authorization"] = f"Bearer {uncached.api_key}"
        page_bytes = len(list_batches(api, uncached, limit=100).content)
        bound = page_bytes * 5 // 2  # room for two pages
        with Simulator(world, cache_bytes=bound) as sim:
            pages = fetch_pages(api, sim, 100)
            assert [batch for page in pages for batch in page["data"]] == world.visible()
            assert len(sim.cache) == 2 and sim.cache.bytes <= bound

            list_batches(api, sim, limit=100, after=pages[-2]["last_id"])  # the last: kept
            list_batches(api, sim, limit=100)  # the first: dropped long ago
            assert sim.cache_hits == 1 and sim.cache.bytes <= bound


# --- control API for out-of-process users --------------------------------------------------


def test_the_control_api_advances_the_clock_and_sets_faults(sim, api):
    control = f"http://127.0.0.1:{sim.port}/_sim"

    assert requests.post(f"{control}/advance?seconds=3600", timeout=5).json()["now"] == NOW + HOUR
    settings = {"omit_last_id": True, "queue": [{"status": 503, "times": 2}]}
    assert requests.post(f"{control}/faults", json=settings, timeout=5).ok
    assert sim.faults.omit_last_id and sim.faults.pending() == 2
    assert requests.post(f"{control}/faults", json={"typo": 1}, timeout=5).status_code == 400
    assert requests.post(f"{control}/advance?seconds=x", timeout=5).status_code == 400


def test_the_control_api_sets_and_resets_batch_settings_and_new_fault_fields(sim, api):
    control = f"http://127.0.0.1:{sim.port}/_sim/faults"
    truth = sim.world.visible_ids()
    counts = {"total": 2**70, "completed": 1, "failed": 0}  # beyond 64 bits, kept exact
    settings = {
        "extra_fields": {"priority": 5},
        "overrides": {truth[0]: {"status": "COMPLETED", "request_counts": counts}},
        "pin_to_top": [truth[9]],
        "repeat": {truth[1]: truth[5]},
        "queue": [
            {"kind": "skip"},
            {"kind": "bad_last_id", "count": 3},
            {"kind": "redirect", "location": "/alt/v1/batches"},
        ],
    }
    state = requests.post(control, json=settings, timeout=5).json()

    assert {name: state[name] for name in settings if name != "queue"} == {
        name: value for name, value in settings.items() if name != "queue"
    }
    assert sim.faults.pin_to_top == [truth[9]] and sim.faults.repeat == {truth[1]: truth[5]}
    assert [(f["kind"], f["status"], f["count"], f["location"]) for f in state["queue"]] == [
        ("skip", 200, 50, None),
        ("bad_last_id", 200, 3, None),
        ("redirect", 302, 0, "/alt/v1/batches"),
    ]
    served = api.get(f"{sim.base_url}/batches/{truth[0]}", timeout=5).json()  # takes the skip
    assert served["request_counts"] == counts and served["priority"] == 5
    cleared = requests.post(control, json={"reset": True}, timeout=5).json()
    assert cleared["extra_fields"] == cleared["overrides"] == cleared["repeat"] == {}
    assert cleared["pin_to_top"] == [] and cleared["queue"] == []


@pytest.mark.parametrize(
    "settings",
    [{"pin_to_top": "batch_x"}, {"overrides": {"batch_x": 1}}, {"extra_fields": [1]}],
)
def test_the_control_api_refuses_batch_settings_of_the_wrong_shape(sim, settings):
    response = requests.post(f"http://127.0.0.1:{sim.port}/_sim/faults", json=settings, timeout=5)

    assert response.status_code == 400


def test_serve_prints_its_url_and_key_and_stops_on_ctrl_c():
    code = "from pipelines.simulator import serve; serve(port=0, batches=50, seed=1, api_key='k')"
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        base_url = next(word for word in line.split() if word.startswith("http://"))
        response = requests.get(
            f"{base_url}/batches", headers={"Authorization": "Bearer k"}, timeout=5
        )
        assert response.ok and " k " in line
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
