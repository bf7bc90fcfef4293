"""The simulator serves the result files of ended batches, in every shape the real API has."""

import gzip
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pipelines.simulator import TERMINAL, ResultFile, Simulator, World

NOW = 1_750_300_000
HOUR = 3600
DAY = 86_400
KINDS = ("output", "error")
CHAT_MODELS = {
    "deepseek-ai/DeepSeek-V3",
    "deepseek-ai/DeepSeek-R1",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen2.5-7B-Instruct",
    "moonshotai/Kimi-K2-Instruct",
}
SIGNED_URL = re.compile(
    r"http://127\.0\.0\.1:(\d+)/results/(file-[0-9a-f]{24})\.jsonl"
    r"\?X-Amz-Expires=2592000&X-Amz-Signature=[0-9a-f]{64}"
)
EXPIRED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
)
FILE_NOT_FOUND = {"code": 20015, "message": "file not found", "data": None}


def small_world(**kwargs: Any) -> World:
    """300 batches of at most 1,000 requests: every variant, files of a few hundred KB."""
    return World(**{"batches": 300, "seed": 7, "now": NOW, "max_requests": 1000, **kwargs})


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(small_world()) as simulator:
        yield simulator


def parse(file: ResultFile) -> tuple[list[dict], list[bytes]]:
    """The request lines of a file as objects, and the lines that are not JSON objects."""
    good, bad = [], []
    for raw in b"".join(file.lines()).split(b"\n")[:-1]:
        try:
            line = json.loads(raw)
        except ValueError:
            bad.append(raw)
            continue
        (good if isinstance(line, dict) else bad).append(line if isinstance(line, dict) else raw)
    return good, bad


@pytest.fixture(scope="module")
def parsed() -> list[tuple[ResultFile, list[dict], list[bytes]]]:
    """Every file of a 300-batch world, parsed once for the tests of line shapes."""
    return [(file, *parse(file)) for file in small_world().result_files()]


def download(api: requests.Session, sim: Simulator, file_id: str) -> requests.Response:
    return api.get(f"{sim.base_url}/files/{file_id}/content", timeout=5)


# --- the world: which files exist and what they hold ----------------------------------------


def test_max_requests_bounds_totals_and_changes_nothing_else():
    default, small = World(batches=500, seed=7, now=NOW), small_world(batches=500, max_requests=20)

    assert default.visible() == World(batches=500, seed=7, now=NOW, max_requests=50_000).visible()
    assert [(b["id"], b["status"]) for b in small.visible()] == [
        (b["id"], b["status"]) for b in default.visible()
    ]
    totals = [b["request_counts"]["total"] for b in small.visible() if b["request_counts"]]
    assert max(totals) <= 20 and len(set(totals)) > 10
    with pytest.raises(ValueError, match="max_requests"):
        World(batches=1, max_requests=0)


@pytest.mark.parametrize("hours", [0, 7, 40 * 24])
def test_a_batch_has_exactly_the_files_its_object_names(hours):
    with Simulator(small_world()) as sim:  # started: some objects name signed URLs
        world = sim.world
        world.advance(hours * HOUR)
        for batch in world.visible():
            for kind in KINDS:
                named = batch[f"{kind}_file_id"]
                file = world.result_file(batch["id"], kind)
                assert (file.file_id if file else None) == named
                if file is not None:
                    assert batch["status"] in TERMINAL - {"failed"}
                    assert file.batch_id == batch["id"] and file.kind == kind
                    assert file.signed == named.startswith("http://")


def test_line_counts_match_request_counts_and_custom_ids_are_disjoint(parsed):
    world = small_world()
    files = {(file.batch_id, file.kind): lines for file, lines, _ in parsed}
    checked = 0
    for batch in world.visible():
        counts = batch["request_counts"]
        output = files.get((batch["id"], "output"), [])
        errors = files.get((batch["id"], "error"), [])
        if not counts or batch["status"] not in TERMINAL:
            continue
        assert len(output) == (counts["completed"] if batch["output_file_id"] else 0)
        assert len(errors) == (counts["failed"] if batch["error_file_id"] else 0)
        done = [line["custom_id"] for line in output]
        failed = [line["custom_id"] for line in errors]
        assert len(set(done + failed)) == len(done) + len(failed)
        assert set(done + failed) <= {f"request-{n}" for n in range(1, counts["total"] + 1)}
        if batch["status"] == "completed":
            assert len(done) + len(failed) == counts["total"]
            checked += 1
    assert checked > 50


def test_result_files_lists_every_file_of_every_visible_batch():
    world = small_world()
    expected = [
        world.result_file(batch_id, kind) for batch_id in world.visible_ids() for kind in KINDS
    ]
    files = world.result_files()

    assert files == [file for file in expected if file is not None]
    assert {file.kind for file in files} == set(KINDS) and len(files) > 200
    assert world.result_file("batch_nope", "output") is None
    with pytest.raises(ValueError, match="kind"):
        world.result_file(files[0].batch_id, "input")


def test_lines_are_the_file_newline_separated_with_a_final_newline(parsed):
    for file, lines, bad in parsed[:40]:
        content = file.content()
        assert content.endswith(b"\n") and b"\n\n" not in content
        assert content.count(b"\n") == len(lines) + len(bad) == file.requests + len(bad)
        assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in file.lines())


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes():
    first, again, other = small_world(), small_world(), small_world(seed=8)

    def digest(world: World) -> str:
        hashed = hashlib.sha256()
        for file in world.result_files():
            hashed.update(file.file_id.encode())
            for line in file.lines():
                hashed.update(line)
        return hashed.hexdigest()

    assert digest(first) == digest(again) != digest(other)
    assert [f.content() for f in first.result_files()[:5]] == [
        f.content() for f in first.result_files()[:5]
    ]


def test_a_20000_line_file_is_generated_well_under_a_second():
    world = World(batches=300, seed=7, now=NOW)  # up to 50,000 requests a batch
    file = next(file for file in world.result_files() if file.requests >= 20_000)
    started = time.perf_counter()
    lines = sum(1 for _ in file.lines())

    assert time.perf_counter() - started < 0.5
    assert lines >= file.requests


# --- line shapes ------------------------------------------------------------------------------


def output_lines(parsed: list) -> list[dict]:
    return [line for file, lines, _ in parsed if file.kind == "output" for line in lines]


def test_output_lines_come_in_openai_and_siliconflow_shapes(parsed):
    lines = output_lines(parsed)
    openai = [line for line in lines if "id" in line]
    plain = [line for line in lines if "id" not in line]

    assert openai and plain
    for line in openai:
        assert list(line) == ["id", "custom_id", "response", "error"]
        assert re.fullmatch(r"batch_req_[0-9a-f]+", line["id"]) and line["error"] is None
        assert list(line["response"]) == ["status_code", "request_id", "body"]
    for line in plain:
        assert list(line) == ["custom_id", "response"] and list(line["response"]) == ["body"]
    assert len({line["id"] for line in openai}) == len(openai)


def test_openai_shaped_files_hold_a_few_500_lines(parsed):
    lines = output_lines(parsed)
    openai = [line for line in lines if "id" in line]
    failures = [line for line in openai if line["response"]["status_code"] == 500]

    assert {line["response"]["status_code"] for line in openai} == {200, 500}
    assert 0.003 < len(failures) / len(openai) < 0.03
    assert all(
        line["response"]["body"]["error"]["type"] == "server_error"
        and line["response"]["body"]["error"]["code"] == "internal_error"
        and line["error"] is None
        for line in failures
    )


def test_chat_bodies_vary_in_usage_details_finish_reason_and_model(parsed):
    bodies = [
        line["response"]["body"]
        for line in output_lines(parsed)
        if "choices" in line["response"]["body"]
    ]
    details = Counter(
        ("completion_tokens_details" in b["usage"], "prompt_tokens_details" in b["usage"])
        for b in bodies
    )

    assert set(details) == {(True, True), (True, False), (False, True), (False, False)}
    assert {b["choices"][0]["finish_reason"] for b in bodies} == {"stop", "length"}
    assert {b["model"] for b in bodies} == CHAT_MODELS
    for body in bodies:
        usage = body["usage"]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert 20 <= usage["prompt_tokens"] <= 3000 and 1 <= usage["completion_tokens"] <= 2000
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        content = body["choices"][0]["message"]["content"]
        assert 20 <= len(content) <= 200 and '"' in content and "\n" in content
        assert not content.isascii()
    reasoning = {
        b["model"]: b["usage"]["completion_tokens_details"]["reasoning_tokens"]
        for b in bodies
        if "completion_tokens_details" in b["usage"]
    }
    assert reasoning["deepseek-ai/DeepSeek-R1"] > 0 and reasoning["deepseek-ai/DeepSeek-V3"] == 0
    assert any(b["usage"].get("prompt_tokens_details", {}).get("cached_tokens") for b in bodies)


def test_some_batches_mix_two_models_most_lines_naming_one(parsed):
    mixed = []
    for file, lines, _ in parsed:
        models = Counter(
            line["response"]["body"]["model"]
            for line in lines
            if file.kind == "output" and "model" in line["response"]["body"]
        )
        if len(models) > 1:
            mixed.append(models)

    assert mixed and all(len(models) == 2 for models in mixed)
    assert all(max(models.values()) > 0.7 * sum(models.values()) for models in mixed)


def test_embeddings_bodies_have_a_vector_and_no_completion_tokens(parsed):
    bodies = [
        line["response"]["body"]
        for line in output_lines(parsed)
        if line["response"]["body"].get("object") == "list"
    ]

    assert bodies
    for body in bodies:
        assert body["model"] == "BAAI/bge-m3"
        (item,) = body["data"]
        assert item["object"] == "embedding" and len(item["embedding"]) == 8
        assert body["usage"] == {"prompt_tokens": body["usage"]["prompt_tokens"]} | {
            "total_tokens": body["usage"]["prompt_tokens"]
        }


def test_error_lines_come_with_a_400_response_or_with_only_an_error(parsed):
    lines = [line for file, lines, _ in parsed if file.kind == "error" for line in lines]
    answered = [line for line in lines if line["response"] is not None]
    unanswered = [line for line in lines if line["response"] is None]

    assert answered and unanswered
    for line in answered:
        assert line["response"]["status_code"] == 400 and line["error"] is None
        assert set(line["response"]["body"]["error"]) == {"message", "type", "code"}
    for line in unanswered:
        assert set(line["error"]) == {"code", "message"}


def test_about_one_file_in_40_holds_lines_that_are_not_json(parsed):
    damaged = [(file, bad) for file, _, bad in parsed if bad]
    bad_lines = [line for _, bad in damaged for line in bad]

    assert 2 <= len(damaged) <= len(parsed) / 10
    assert all(1 <= len(bad) <= 2 for _, bad in damaged)
    assert b"not json" in bad_lines
    assert any(line.startswith(b'{"') for line in bad_lines)  # a line cut in half
    assert all(line.decode() for line in bad_lines)  # broken JSON, never broken UTF-8


def test_openai_style_usage_is_the_sum_over_its_output_lines():
    world = small_world(batches=2000)
    batches = [batch for batch in world.visible() if batch.get("usage")]
    assert len(batches) > 20
    for batch in batches:
        lines, _ = parse(world.result_file(batch["id"], "output"))
        usages = [line["response"]["body"].get("usage", {}) for line in lines]
        prompt = sum(usage.get("prompt_tokens", 0) for usage in usages)
        completion = sum(usage.get("completion_tokens", 0) for usage in usages)
        cached = sum(u.get("prompt_tokens_details", {}).get("cached_tokens", 0) for u in usages)
        reasoning = sum(
            u.get("completion_tokens_details", {}).get("reasoning_tokens", 0) for u in usages
        )
        assert batch["usage"] == {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        }


# --- signed URLs and gone files ---------------------------------------------------------------


def test_a_fifth_of_batches_name_signed_urls_once_the_storage_is_known():
    world = small_world()
    assert not any(file.signed for file in world.result_files())  # no storage yet: plain ids
    plain = {(f.batch_id, f.kind): f.file_id for f in world.result_files()}

    with Simulator(world) as sim:
        files = world.result_files()
        signed = [file for file in files if file.signed]
        assert 0.1 < len(signed) / len(files) < 0.3
        for file in signed:
            match = SIGNED_URL.fullmatch(file.file_id)
            assert match and int(match[1]) == sim.storage_port
            assert match[2] == file.plain_id == plain[(file.batch_id, file.kind)]
        by_batch = {file.batch_id: file for file in signed}
        for batch in world.visible():
            names = [batch["output_file_id"], batch["error_file_id"]]
            if batch["id"] in by_batch:
                assert all(name is None or SIGNED_URL.fullmatch(name) for name in names)


def test_files_of_batches_ended_over_30_days_ago_and_a_few_more_are_gone():
    world = small_world()
    fresh = {(file.batch_id, file.kind): file.gone for file in world.result_files()}
    assert 0 < sum(fresh.values()) < 0.06 * len(fresh)

    world.advance(20 * DAY)
    aged = 0
    for file in world.result_files():
        if (file.batch_id, file.kind) not in fresh:
            continue  # a batch ended since
        batch = world.get(file.batch_id)
        ended_at = batch["completed_at"] or batch["expired_at"] or batch["cancelled_at"]
        too_old = world.now - ended_at > 30 * DAY
        assert file.gone == (too_old or fresh[file.batch_id, file.kind])
        aged += too_old
    assert aged > 10


def test_gone_files_answer_404_json_on_the_api_and_403_xml_on_the_storage(sim, api):
    sim.world.advance(45 * DAY)
    gone = [file for file in sim.world.result_files() if file.gone]
    signed = next(file for file in gone if file.signed)
    plain = next(file for file in gone if not file.signed)

    for file in (signed, plain):
        response = download(api, sim, file.plain_id)
        assert response.status_code == 404 and response.json() == FILE_NOT_FOUND
    expired = requests.get(signed.file_id, timeout=5)
    assert expired.status_code == 403 and expired.text == EXPIRED_XML
    assert expired.headers["Content-Type"] == "application/xml"


# --- the API's file route ---------------------------------------------------------------------


def test_a_file_is_served_byte_for_byte_with_its_content_length(sim, api):
    file = next(f for f in sim.world.result_files() if not f.signed and not f.gone)
    response = download(api, sim, file.file_id)

    assert response.status_code == 200 and response.content == file.content()
    assert response.headers["Content-Type"] == "application/jsonl"
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.headers["x-siliconcloud-trace-id"]
    alt = api.get(f"http://127.0.0.1:{sim.port}/alt/v1/files/{file.file_id}/content", timeout=5)
    assert alt.content == response.content
    assert sim.cache_hits == 1  # asked again: from the cache of answers


def test_the_file_route_needs_the_key_and_knows_only_named_files(sim, api):
    file = sim.world.result_files()[0]
    unauthorized = requests.get(f"{sim.base_url}/files/{file.plain_id}/content", timeout=5)
    unknown = download(api, sim, "file-000000000000000000000000")
    running = next(b for b in sim.world.visible() if b["status"] not in TERMINAL)

    assert unauthorized.status_code == 401 and unauthorized.json() == "Invalid token"
    assert unknown.status_code == 404 and unknown.json() == FILE_NOT_FOUND
    assert download(api, sim, running["input_file_id"]).json() == FILE_NOT_FOUND
    assert download(api, sim, "not-a-file").status_code == 404
    assert api.get(f"{sim.base_url}/files/{file.plain_id}", timeout=5).status_code == 404


def test_the_request_log_records_file_downloads_with_their_authorization(sim, api):
    plain = next(f for f in sim.world.result_files() if not f.signed and not f.gone)
    signed = next(f for f in sim.world.result_files() if f.signed and not f.gone)
    download(api, sim, plain.file_id)
    requests.get(signed.file_id, timeout=5)
    api.get(f"{sim.base_url}/batches", params={"limit": 1}, timeout=5)

    assert [(r.host, r.path, r.status, r.authorization) for r in sim.file_requests()] == [
        ("api", f"/v1/files/{plain.file_id}/content", 200, f"Bearer {sim.api_key}"),
        ("storage", f"/results/{signed.plain_id}.jsonl", 200, None),
    ]
    assert sim.storage_requests()[0].query["X-Amz-Expires"] == "2592000"
    assert sim.count("/v1/") == 2 and len(sim.list_requests()) == 1


def test_files_via_storage_redirects_a_download_to_the_storages_link_for_that_file(sim, api):
    sim.faults.files_via_storage = True
    plain = next(f for f in sim.world.result_files() if not f.signed and not f.gone)

    moved = download(api, sim, plain.plain_id)
    unknown = download(api, sim, "file-000000000000000000000000")

    (redirect,) = moved.history
    assert redirect.status_code == 302 and SIGNED_URL.fullmatch(redirect.headers["Location"])
    assert SIGNED_URL.fullmatch(moved.url)[2] == plain.plain_id
    assert moved.status_code == 200 and moved.content == plain.content()
    assert unknown.status_code == 404 and unknown.json() == FILE_NOT_FOUND
    assert [(r.host, r.status) for r in sim.file_requests()] == [
        ("api", 302),
        ("storage", 200),
        ("api", 404),
    ]


# --- the signed storage -----------------------------------------------------------------------


def test_signed_urls_are_served_by_the_storage_without_a_key(sim, api):
    signed = [f for f in sim.world.result_files() if f.signed and not f.gone]
    listed = {
        b["id"]: b for b in api.get(f"{sim.base_url}/batches?limit=100", timeout=5).json()["data"]
    }
    file = next(f for f in signed if f.batch_id in listed)
    assert listed[file.batch_id][f"{file.kind}_file_id"] == file.file_id

    response = requests.get(file.file_id, timeout=5)
    assert response.status_code == 200 and response.content == file.content()
    assert response.headers["Content-Type"] == "application/jsonl"
    assert sim.storage_requests()[-1].authorization is None


def test_the_storage_gzips_a_small_file_for_a_client_that_accepts_it(sim):
    file = next(f for f in sim.world.result_files() if f.signed and not f.gone)
    plain = requests.get(file.file_id, headers={"Accept-Encoding": "identity"}, stream=True)
    packed = requests.get(file.file_id, headers={"Accept-Encoding": "gzip"}, stream=True)

    assert "Content-Encoding" not in plain.headers
    assert plain.raw.read() == file.content()
    assert packed.headers["Content-Encoding"] == "gzip"
    sent = packed.raw.read(decode_content=False)
    assert packed.headers["Content-Length"] == str(len(sent)) != str(len(file.content()))
    assert gzip.decompress(sent) == file.content()


def test_the_storage_rejects_nothing_and_logs_what_it_was_sent(sim):
    file = next(f for f in sim.world.result_files() if f.signed and not f.gone)
    unsigned = f"{sim.storage_origin}/results/{file.plain_id}.jsonl"
    sent = requests.get(unsigned, headers={"Authorization": "Bearer sk-leaked"}, timeout=5)

    assert sent.status_code == 200 and sent.content == file.content()
    assert sim.storage_requests()[-1].authorization == "Bearer sk-leaked"
    missing = requests.get(f"{sim.storage_origin}/results/file-{'0' * 24}.jsonl", timeout=5)
    assert missing.status_code == 404 and "<Code>NoSuchKey</Code>" in missing.text
    assert requests.get(f"{sim.storage_origin}/v1/batches", timeout=5).status_code == 404
    assert [r.status for r in sim.storage_requests()] == [200, 404, 404]


def test_the_storage_stops_and_restarts_with_the_simulator_on_the_same_port():
    world = small_world()
    simulator = Simulator(world).start()
    file = next(f for f in world.result_files() if f.signed and not f.gone)
    assert requests.get(file.file_id, timeout=5).ok
    simulator.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(file.file_id, timeout=5)
    simulator.start()
    assert world.result_file(file.batch_id, file.kind).file_id == file.file_id
    assert requests.get(file.file_id, timeout=5).ok
    simulator.stop()


# --- faults on downloads ----------------------------------------------------------------------


def test_file_error_waits_for_a_download_and_answers_503_overloaded(sim, api):
    file = next(f for f in sim.world.result_files() if not f.signed and not f.gone)
    sim.faults.queue(kind="file_error")

    assert api.get(f"{sim.base_url}/batches", timeout=5).ok  # a page does not take it
    assert sim.faults.pending() == 1
    response = download(api, sim, file.file_id)
    assert response.status_code == 503 and response.json()["code"] == 50505
    assert download(api, sim, file.file_id).content == file.content()


def test_file_error_on_the_storage_answers_in_xml_with_its_status(sim):
    file = next(f for f in sim.world.result_files() if f.signed and not f.gone)
    sim.faults.queue(kind="file_error", status=500, retry_after=2)
    response = requests.get(file.file_id, timeout=5)

    assert response.status_code == 500 and "<Code>InternalError</Code>" in response.text
    assert response.headers["Retry-After"] == "2"
    assert requests.get(file.file_id, timeout=5).ok


@pytest.mark.parametrize("signed", [False, True])
def test_cut_short_sends_half_the_body_under_the_full_content_length(sim, api, signed):
    file = next(f for f in sim.world.result_files() if f.signed == signed and not f.gone)
    client = requests.Session() if signed else api  # the key goes to the API only
    url = file.file_id if signed else f"{sim.base_url}/files/{file.file_id}/content"
    sim.faults.queue(kind="cut_short")

    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        client.get(url, timeout=5)
    assert sim.file_requests()[-1].status == 200 and sim.faults.pending() == 0
    assert client.get(url, timeout=5).content == file.content()


@pytest.mark.parametrize("signed", [False, True])
def test_cut_unsized_sends_part_of_the_body_without_a_length_ending_inside_a_line(sim, api, signed):
    file = next(f for f in sim.world.result_files() if f.signed == signed and not f.gone)
    client = requests.Session() if signed else api
    url = file.file_id if signed else f"{sim.base_url}/files/{file.file_id}/content"
    sim.faults.queue(kind="cut_unsized")

    response = client.get(url, timeout=5)  # no length to miss: the body seems whole

    assert response.status_code == 200 and sim.faults.pending() == 0
    assert "Content-Length" not in response.headers
    assert "Transfer-Encoding" not in response.headers
    whole = file.content()
    assert whole.startswith(response.content) and len(response.content) < len(whole)
    *_, last = response.content.split(b"\n")
    assert last and whole[len(response.content) : len(response.content) + 1] != b"\n"
    with pytest.raises(ValueError):
        json.loads(last)
    assert client.get(url, timeout=5).content == whole


def test_a_queued_page_fault_also_takes_the_next_api_download_but_not_the_storage(sim, api):
    plain = next(f for f in sim.world.result_files() if not f.signed and not f.gone)
    signed = next(f for f in sim.world.result_files() if f.signed and not f.gone)
    sim.faults.queue(status=500)

    assert requests.get(signed.file_id, timeout=5).ok
    assert download(api, sim, plain.file_id).status_code == 500
    assert sim.faults.pending() == 0


def test_drop_slow_and_trickle_work_on_downloads(sim, api):
    plain = next(f for f in sim.world.result_files() if not f.signed and not f.gone)
    signed = next(f for f in sim.world.result_files() if f.signed and not f.gone)
    sim.faults.queue(kind="drop")
    with pytest.raises(requests.ConnectionError):
        download(api, sim, plain.file_id)

    sim.faults.queue(kind="drop", files=True)  # waits for a download: the storage's here
    assert api.get(f"{sim.base_url}/batches", timeout=5).ok
    with pytest.raises(requests.ConnectionError):
        requests.get(signed.file_id, timeout=5)

    sim.faults.queue(kind="slow", seconds=0.5, files=True)
    with pytest.raises(requests.Timeout):
        requests.get(signed.file_id, timeout=0.1)

    small = min(
        (f for f in sim.world.result_files() if not f.gone and f.kind == "error"),
        key=lambda f: len(f.content()),
    )
    sim.faults.queue(kind="trickle", seconds=0.001)
    started = time.perf_counter()
    response = api.get(f"{sim.base_url}/files/{small.plain_id}/content", timeout=5)
    assert response.content == small.content()
    assert time.perf_counter() - started >= 0.001 * (len(small.content()) // 16 - 1)


def test_file_faults_show_in_the_queue_and_reset(sim):
    sim.faults.update({"queue": [{"kind": "cut_short"}, {"kind": "trickle", "files": True}]})
    queued = sim.faults.as_dict()["queue"]

    assert [(f["kind"], f["status"], f["files"]) for f in queued] == [
        ("cut_short", 200, True),
        ("trickle", 200, True),
    ]
    sim.faults.reset()
    assert sim.faults.pending() == 0


# --- large files ------------------------------------------------------------------------------


def test_enlarge_makes_an_output_file_of_many_padded_lines():
    world = small_world()
    batch = next(b for b in world.visible() if b["status"] == "completed" and b["output_file_id"])
    world.enlarge(batch["id"], lines=500, pad_bytes=4000)
    file = world.result_file(batch["id"], "output")
    sizes = [len(line) for line in file.lines()]
    lines, _ = parse(file)

    assert file.requests == 500 and len(lines) == 500
    assert [line["custom_id"] for line in lines] == [f"request-{n}" for n in range(1, 501)]
    assert 3000 < sorted(sizes)[len(sizes) // 2] < 5000
    assert world.get(batch["id"]) == batch  # the object stays as drawn
    with pytest.raises(ValueError):
        world.enlarge(batch["id"], lines=0, pad_bytes=10)


@pytest.mark.parametrize("pad_bytes", [3_001, 20_007])
@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/embeddings"])
def test_padding_leaves_every_line_as_well_formed_as_it_was(endpoint, pad_bytes):
    world = small_world()
    batch = next(
        b
        for b in world.visible()
        if b["status"] == "completed" and b["output_file_id"] and b["endpoint"] == endpoint
    )
    before = world.result_file(batch["id"], "output")
    _, bad_before = parse(before)
    world.enlarge(batch["id"], lines=before.requests, pad_bytes=pad_bytes)

    good, bad = parse(world.result_file(batch["id"], "output"))

    assert len(bad) == len(bad_before)
    assert len(good) == before.requests


def test_a_large_file_is_streamed_chunked_and_counts_out(sim, api):
    batch = next(
        b for b in sim.world.visible() if b["status"] == "completed" and b["output_file_id"]
    )
    sim.world.enlarge(batch["id"], lines=20_000, pad_bytes=1000)  # about 20 MB
    file = sim.world.result_file(batch["id"], "output")
    expected = hashlib.sha256()
    for line in file.lines():
        expected.update(line)
    url = file.file_id if file.signed else f"{sim.base_url}/files/{file.file_id}/content"

    received, lines, size = hashlib.sha256(), 0, 0
    with api.get(url, stream=True, timeout=5) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        for chunk in response.iter_content(64 * 1024):
            received.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
    assert received.hexdigest() == expected.hexdigest()
    assert lines >= 20_000 and size > 16 * 1024 * 1024


def test_the_control_api_enlarges_a_batch(sim):
    batch = next(b for b in sim.world.visible() if b["status"] == "completed")
    control = f"http://127.0.0.1:{sim.port}/_sim/enlarge"
    params = {"batch_id": batch["id"], "lines": 30, "pad_bytes": 100}

    assert requests.post(control, params=params, timeout=5).json()["storage"] == sim.storage_origin
    assert sim.world.result_file(batch["id"], "output").requests == 30
    assert (
        requests.post(control, params={"batch_id": "x", "lines": 3}, timeout=5).status_code == 400
    )
