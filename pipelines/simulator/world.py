"""Seeded ground truth for the simulator: batches whose status follows a settable clock.

A world of a million batches must build in seconds, so per batch it stores only its creation
second (one sorted array) and a position <-> key permutation. Everything else - lifecycle,
payload shapes, metadata, result files - is re-derived on demand from (seed, key), and ids are
a reversible scramble of the key, so finding a batch by id needs no dictionary. Finding a
result file by its id does: a sorted array of id prefixes, built the first time one is asked.
"""

import hashlib
import math
import random
import re
import struct
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache, partial
from itertools import accumulate, cycle
from typing import Any, NamedTuple, TypeVar

from .files import (
    Enlarged,
    LinePlan,
    ResultFile,
    error_lines,
    output_lines,
    pick,
    plan_lines,
    request_numbers,
    usage_sums,
)

HOUR = 3600
DAY = 86_400
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ID_PATTERN = re.compile(r"batch_[0-9a-z]{24}")
FILE_ID_PATTERN = re.compile(r"file-[0-9a-f]{24}")
FILE_KINDS = ("output", "error")
GONE_AFTER_S = 30 * DAY  # SiliconFlow keeps result links for a month
LINK_EXPIRES_S = 30 * DAY
SIGNED_BELOW = 51  # of 256: batches whose files are signed storage URLs (~20%)
LOST_BELOW = 5  # of 256: files gone before their month is up (~2%)
LINE_PLAN_CACHE = 1024

# Ids are 24 base-36 digits; 2**124 < 36**24, so every scrambled key fits.
_ID_BITS = 124
_ID_MASK = (1 << _ID_BITS) - 1
_MUL_1 = 0x9E3779B97F4A7C15F39CC0605CEDC83
_MUL_2 = 0xD6E8FEB86659FD93A5B2C1E0F1D2C3B
_INV_1 = pow(_MUL_1, -1, 1 << _ID_BITS)
_INV_2 = pow(_MUL_2, -1, 1 << _ID_BITS)
_HALF = _ID_BITS // 2  # x ^= x >> 62 is its own inverse on 124 bits
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_DIGIT_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]

WINDOWS = ((("24h", 24 * HOUR), 0.85), (("72h", 72 * HOUR), 0.10), (("336h", 336 * HOUR), 0.05))
OUTCOMES = (("completed", 0.86), ("failed", 0.05), ("expired", 0.045), ("cancelled", 0.045))
COUNT_SHAPES = (("full", 0.75), ("null_until_started", 0.13), ("null", 0.07), ("empty", 0.05))
SAME_SECOND_SHARE = 0.03  # scripts often submit several batches within one second
PLAN_CACHE = 20_000
_DRAWS = 48  # uniforms per batch; a plan uses about 40
# Spare bytes after the draws: input, output and error file ids (12 each), then the result
# files' own bits. A longer shake digest keeps its prefix, so adding bytes here changes nothing
# that came before.
_SPARE = 48
_FILE_IDS = (_DRAWS * 4 + 12, _DRAWS * 4 + 24)  # where the output and error ids start
_U32 = 1 / 2**32
T = TypeVar("T")

METADATA_KEYS = (
    "name",
    "batch_description",
    "team name",
    "项目",
    "a.b",
    "owner",
    'say "hi"',
    "emoji 🚀",
    "ключ",
    "priority",
    "x/y",
    "UPPER_case",
    "run-id",
    "it's",
    "a__b",
)
METADATA_VALUES = (
    "",
    "batch",
    "nightly eval",
    "研究组",
    "🚀",
    'he said "ok"',
    "42",
    "a.b.c",
    "ünïcödé",
    "team alpha",
    "O'Brien",
)
ERRORS = (
    ("invalid_json_line", "This line is not parseable as valid JSON.", None, 3),
    ("model_not_found", "The model `deepseek-ai/DeepSeek-V9` does not exist.", "body.model", 1),
    ("duplicate_custom_id", "The custom_id for this request is a duplicate.", "custom_id", 17),
    ("token_limit_exceeded", "Enqueued token limit reached for this model.", None, None),
    ("invalid_request", "Input file must contain between 1 and 50000 requests.", None, None),
)
FILE_STEMS = ("requests_name", "batch_input", "eval_set", "翻译任务", "my requests (1)", "daily")
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "text-embedding-3-small")


class UnknownBatchError(LookupError):
    """No batch with this id exists at the current clock."""


class Timeline(NamedTuple):
    """When each event of one batch happens; None when it never does.

    Requests are processed linearly from in_progress_at until work_end, reaching work_fraction
    of the batch's requests (1.0 for a completed batch).
    """

    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    work_end: int | None = None
    work_fraction: float = 0.0


class Plan(NamedTuple):
    """Everything about one batch that does not depend on the clock."""

    created_at: int
    window: str
    expires_at: int
    endpoint: str
    queue_status: str
    timeline: Timeline
    total: int
    failed_total: int
    counts_shape: str
    errors_null_when_fine: bool
    errors_as_strings: bool
    error_entries: tuple[tuple[str, str, str | None, int | None], ...]
    metadata: dict[str, str] | None
    input_file_id: str
    output_file_id: str
    error_file_id: str
    file_name: str | None
    model: str | None
    signed: bool  # its result files are named by signed storage URLs once storage is known
    output_lost: bool  # its output file is gone even within the month
    error_lost: bool
    file_seed: int  # seeds its result lines (files.plan_lines)


class World:
    """Batches created over [now - history_days, now + future_days], observed at `now`.

    A batch holds 1..max_requests requests (log-uniform). Its result files follow its object:
    `result_file()` and `result_files()` say what they hold (see files.ResultFile).

    `version` counts the changes made to it (advance, set_metadata, cancel, enlarge, a new
    storage origin), each counted once the change is in place: an answer rendered at one
    (now, version) stays right while neither moves, so the server may keep it.
    """

    def __init__(
        self,
        batches: int = 2000,
        seed: int = 7,
        now: int | None = None,
        history_days: float = 30.0,
        future_days: float = 3.0,
        max_requests: int = 50_000,
    ) -> None:
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self.now = int(time.time()) if now is None else int(now)
        self.seed = seed
        self.size = batches
        self.max_requests = max_requests
        self.version = 0
        # Where signed result URLs point (http://host:port); None names plain file ids only.
        self.storage_origin: str | None = None
        self._lock = threading.Lock()
        self._id_salt = _salt(seed)
        rnd = random.Random(seed)
        start = self.now - int(history_days * DAY)
        end = self.now + int(future_days * DAY)
        self._created = array("q", _creation_times(rnd, batches, start, self.now, end))
        self._key_at = array("i", range(batches))
        self._order_ties_by_id()
        self._pos_of_key = array("i", [0]) * batches
        for pos, key in enumerate(self._key_at):
            self._pos_of_key[key] = pos
        self._metadata: dict[int, dict[str, str] | None] = {}
        # timelines changed after the world was drawn: cancelled or stuck batches
        self._changed: dict[int, Timeline] = {}
        self._enlarged: dict[int, Enlarged] = {}
        self._plan = lru_cache(maxsize=PLAN_CACHE)(self._make_plan)
        self._line_plan = lru_cache(maxsize=LINE_PLAN_CACHE)(self._make_line_plan)
        self._file_index: tuple[array, int] | None = None
        self._index_lock = threading.Lock()

    # --- the clock and what is visible at it ----------------------------------------------

    def advance(self, seconds: int) -> None:
        """Move the clock forward; batches never go back to an earlier state."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self.now += int(seconds)
            self.version += 1

    def visible_count(self) -> int:
        return bisect_right(self._created, self.now)

    def visible(self) -> list[dict[str, Any]]:
        """Every batch created at or before now, newest first: what a full listing must return."""
        t = self.now
        return [self._render(pos, t) for pos in range(bisect_right(self._created, t) - 1, -1, -1)]

    def visible_ids(self) -> list[str]:
        top = self.visible_count()
        return [self.id_at(pos) for pos in range(top - 1, -1, -1)]

    def get(self, batch_id: str) -> dict[str, Any] | None:
        t = self.now
        pos = self._position(batch_id)
        if pos is None or self._created[pos] > t:
            return None
        return self._render(pos, t)

    def list_page(
        self, limit: int, after: str | None = None, *, oldest_first: bool = False
    ) -> dict[str, Any]:
        """One page of the listing, ordered by (created_at, id), newest first unless asked.

        Positions of existing batches never move, so a cursor stays valid while the clock runs;
        batches that appear later show up at the newest end only.
        """
        t = self.now
        top = bisect_right(self._created, t)
        if after is None:
            start = 0 if oldest_first else top - 1
        else:
            pos = self._position(after)
            if pos is None or pos >= top:
                raise UnknownBatchError(after)
            start = pos + 1 if oldest_first else pos - 1
        if oldest_first:
            positions = range(start, min(start + limit, top))
            has_more = start + limit < top
        else:
            positions = range(start, max(start - limit, -1), -1)
            has_more = start - limit >= 0
        data = [self._render(pos, t) for pos in positions]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    # --- changes tests make to single batches ---------------------------------------------

    def set_metadata(self, batch_id: str, metadata: dict[str, str] | None) -> None:
        """Replace a batch's metadata from now on (also before it was created)."""
        key = self._key(batch_id)
        with self._lock:
            self._metadata[key] = None if metadata is None else dict(metadata)
            self.version += 1

    def cancel(self, batch_id: str) -> None:
        """Cancel an open batch now; it is cancelled a few minutes later. Ended ones stay."""
        key = self._key(batch_id)
        with self._lock:
            t = self.now
            plan = self._plan(key)
            timeline = self._changed.get(key, plan.timeline)
            if _status_at(timeline, t, plan.queue_status) in TERMINAL | {"cancelling"}:
                return
            self._changed[key] = _cancelled_now(timeline, t, 60 + key % 240)
            self.version += 1

    def stick(self, batch_id: str, stage: str, since: int) -> None:
        """Keep a batch in `stage` from `since` on, whatever it was drawn to do: what
        `sfbatches check` must notice. 'queue': never started (it keeps its queue status from
        its creation; `since` is ignored); 'in_progress'; 'finalizing'."""
        key = self._key(batch_id)
        plan = self._plan(key)
        if since < plan.created_at:
            raise ValueError("a batch cannot be stuck before it was created")
        started = min(plan.created_at + 60, since)
        timelines = {
            "queue": Timeline(),
            "in_progress": Timeline(since, work_end=since + 10 * DAY, work_fraction=0.5),
            "finalizing": Timeline(started, since, work_end=since, work_fraction=1.0),
        }
        if stage not in timelines:
            raise ValueError(
                f"a batch can be stuck in queue, in_progress or finalizing, not {stage!r}"
            )
        with self._lock:
            self._changed[key] = timelines[stage]
            self.version += 1

    def enlarge(self, batch_id: str, lines: int, pad_bytes: int) -> None:
        """Make this batch's output file hold `lines` lines of about `pad_bytes` bytes each,
        generated as they are served (a gigabyte is fine). Its object stays as it was: request
        counts and usage still describe the batch as drawn. Applies whenever it has an output
        file (an ended batch with completed requests)."""
        key = self._key(batch_id)
        if lines < 1 or pad_bytes < 0:
            raise ValueError("enlarge needs lines >= 1 and pad_bytes >= 0")
        with self._lock:
            self._enlarged[key] = Enlarged(int(lines), int(pad_bytes))
            self.version += 1

    def set_storage_origin(self, origin: str | None) -> None:
        """Where signed result URLs point from now on (the Simulator's storage server)."""
        with self._lock:
            if origin != self.storage_origin:
                self.storage_origin = origin
                self.version += 1

    # --- result files ---------------------------------------------------------------------

    def result_file(self, batch_id: str, kind: str) -> ResultFile | None:
        """The batch's output or error file as its object names it now; None when it names
        none (not ended, failed, nothing completed or failed) or the batch is not visible."""
        if kind not in FILE_KINDS:
            raise ValueError(f"kind must be one of {FILE_KINDS}, not {kind!r}")
        t = self.now
        pos = self._position(batch_id)
        if pos is None or self._created[pos] > t:
            return None
        return self._result_file(self._key_at[pos], kind, t)

    def result_files(self) -> list[ResultFile]:
        """Every result file of every visible batch, newest batch first, output before error."""
        t = self.now
        found = []
        for pos in range(bisect_right(self._created, t) - 1, -1, -1):
            for kind in FILE_KINDS:
                file = self._result_file(self._key_at[pos], kind, t)
                if file is not None:
                    found.append(file)
        return found

    def file(self, plain_id: str) -> ResultFile | None:
        """The result file behind a plain file id (`file-...`), if a visible batch names it now
        (directly or inside its signed URL); gone files included."""
        if not FILE_ID_PATTERN.fullmatch(plain_id):
            return None
        t = self.now
        for key, kind in self._keys_of_file(plain_id):
            if self._created[self._pos_of_key[key]] <= t:
                return self._result_file(key, kind, t)
        return None

    def _result_file(self, key: int, kind: str, t: int) -> ResultFile | None:
        plan = self._plan(key)
        timeline = self._changed.get(key, plan.timeline)
        status = _status_at(timeline, t, plan.queue_status)
        if status not in TERMINAL or status == "failed":
            return None
        completed, failed = _done(plan, timeline, t)
        output = kind == "output"
        count = completed if output else failed
        if not count:
            return None
        ended_at = {
            "completed": timeline.completed_at,
            "expired": timeline.expired_at,
            "cancelled": timeline.cancelled_at,
        }[status]
        lost = plan.output_lost if output else plan.error_lost
        plain = plan.output_file_id if output else plan.error_file_id
        name = self._namer(plan)
        enlarged = self._enlarged.get(key) if output else None
        lines = partial(self._line_plan, key)
        if enlarged is not None:
            count = enlarged.lines
        return ResultFile(
            batch_id=_id_of_key(key, self._id_salt),
            kind=kind,
            file_id=plain if name is None else name(plain),
            plain_id=plain,
            signed=name is not None,
            gone=lost or ended_at is None or t - ended_at > GONE_AFTER_S,
            requests=count,
            _source=_line_source(plan, timeline, lines, kind, count, enlarged),
        )

    def _keys_of_file(self, plain_id: str) -> list[tuple[int, str]]:
        """(key, kind) of the batches whose plan names this file id (almost always one)."""
        index, shift = self._index()
        prefix = int(plain_id[5:21], 16) >> shift
        found = []
        start = bisect_left(index, prefix << shift)
        for entry in index[start : start + 8]:
            if entry >> shift != prefix:
                break
            key, kind = divmod(entry & ((1 << shift) - 1), 2)
            plan = self._plan(key)
            if (plan.output_file_id, plan.error_file_id)[kind] == plain_id:
                found.append((key, FILE_KINDS[kind]))
        return found

    def _index(self) -> tuple[array, int]:
        """Output and error file ids of every batch as sorted (id prefix | key, kind) words."""
        with self._index_lock:
            if self._file_index is None:
                shift = max(1, (2 * self.size).bit_length())
                keep = ~((1 << shift) - 1)
                entries = []
                for key in range(self.size):
                    raw = hashlib.shake_128(b"%d:%d" % (self.seed, key)).digest(_FILE_IDS[1] + 12)
                    for kind, at in enumerate(_FILE_IDS):
                        word = int.from_bytes(raw[at : at + 8], "big")
                        entries.append((word & keep) | (2 * key + kind))
                entries.sort()
                self._file_index = (array("Q", entries), shift)
            return self._file_index

    def signed_url(self, plain_id: str) -> str | None:
        """The storage's signed link to a file, or None while no storage is known."""
        origin = self.storage_origin
        return None if origin is None else _signed_url(origin, self.seed, plain_id)

    def _namer(self, plan: Plan) -> Callable[[str], str] | None:
        """How this batch's object names its files: as signed URLs, or None for plain ids."""
        origin = self.storage_origin
        if not plan.signed or origin is None:
            return None
        return partial(_signed_url, origin, self.seed)

    def _make_line_plan(self, key: int) -> LinePlan:
        plan = self._plan(key)
        return plan_lines(
            plan.file_seed,
            openai_object=plan.model is not None,
            chat=plan.endpoint != "/v1/embeddings",
        )

    # --- ids ------------------------------------------------------------------------------

    def id_at(self, pos: int) -> str:
        """The id at position `pos` counted from the oldest batch, future ones included."""
        return _id_of_key(self._key_at[pos], self._id_salt)

    def _key(self, batch_id: str) -> int:
        pos = self._position(batch_id)
        if pos is None:
            raise UnknownBatchError(batch_id)
        return self._key_at[pos]

    def _position(self, batch_id: str) -> int | None:
        key = _key_of_id(batch_id, self._id_salt)
        if key is None or key >= self.size:
            return None
        return self._pos_of_key[key]

    def _order_ties_by_id(self) -> None:
        """Within one creation second, order by id, as the API's (created_at, id) sort does."""
        created, keys, salt = self._created, self._key_at, self._id_salt
        first = 0
        for pos in range(1, len(created) + 1):
            if pos < len(created) and created[pos] == created[first]:
                continue
            if pos - first > 1:
                tied = sorted(keys[first:pos], key=lambda k: _scramble(k ^ salt))
                keys[first:pos] = array("i", tied)
            first = pos

    # --- rendering ------------------------------------------------------------------------

    def _make_plan(self, key: int) -> Plan:
        created_at = self._created[self._pos_of_key[key]]
        return make_plan(*batch_entropy(self.seed, key), created_at, self.max_requests)

    def _render(self, pos: int, t: int) -> dict[str, Any]:
        key = self._key_at[pos]
        plan = self._plan(key)
        timeline = self._changed.get(key, plan.timeline)
        metadata = self._metadata.get(key, plan.metadata)
        usage = None
        if plan.model is not None:
            requests = plan.total - plan.failed_total

            def usage() -> tuple[int, int, int, int]:
                return usage_sums(self._line_plan(key), requests)

        batch_id = _id_of_key(key, self._id_salt)
        return render(plan, timeline, t, batch_id, metadata, self._namer(plan), usage)


def _signed_url(origin: str, seed: int, plain_id: str) -> str:
    signature = hashlib.sha256(b"%d:%s" % (seed, plain_id.encode())).hexdigest()
    return (
        f"{origin}/results/{plain_id}.jsonl"
        f"?X-Amz-Expires={LINK_EXPIRES_S}&X-Amz-Signature={signature}"
    )


def _line_source(
    plan: Plan,
    timeline: Timeline,
    line_plan: Callable[[], LinePlan],
    kind: str,
    count: int,
    enlarged: Enlarged | None,
) -> Callable[[], Iterator[bytes]]:
    """What ResultFile.lines() calls: a fresh generator of the file's lines each time."""
    started = timeline.in_progress_at if timeline.in_progress_at is not None else plan.created_at
    span_s = max(0, (timeline.work_end or started) - started)

    def source() -> Iterator[bytes]:
        lines = line_plan()
        if kind == "error":
            numbers = request_numbers(plan.total, plan.failed_total, failed=True)
            return error_lines(lines, numbers, count)
        if enlarged is not None:
            numbers = iter(range(1, count + 1))
            return output_lines(lines, numbers, count, started, span_s, enlarged.pad_bytes)
        numbers = request_numbers(plan.total, plan.failed_total, failed=False)
        return output_lines(lines, numbers, count, started, span_s)

    return source


def render(
    plan: Plan,
    timeline: Timeline,
    t: int,
    batch_id: str,
    metadata: dict[str, str] | None,
    name_file: Callable[[str], str] | None = None,
    usage: Callable[[], tuple[int, int, int, int]] | None = None,
) -> dict[str, Any]:
    """The API object of one batch as seen at time t (fresh dicts: callers may mutate them).

    `name_file` turns a file id into what the object shows (a signed URL); `usage` gives the
    (input, cached, output, reasoning) tokens an OpenAI-style object reports once completed.
    """
    status = _status_at(timeline, t, plan.queue_status)
    completed, failed = _done(plan, timeline, t)
    ended = status in TERMINAL and status != "failed"
    output_file_id = plan.output_file_id if ended and completed else None
    error_file_id = plan.error_file_id if ended and failed else None
    if name_file is not None:
        output_file_id = output_file_id and name_file(output_file_id)
        error_file_id = error_file_id and name_file(error_file_id)
    obj: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": plan.endpoint,
        "errors": _errors(plan, status),
        "input_file_id": plan.input_file_id,
        "completion_window": plan.window,
        "status": status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": plan.created_at,
        "in_progress_at": _seen(timeline.in_progress_at, t),
        "expires_at": plan.expires_at,
        "finalizing_at": _seen(timeline.finalizing_at, t),
        "completed_at": _seen(timeline.completed_at, t),
        "failed_at": _seen(timeline.failed_at, t),
        "expired_at": _seen(timeline.expired_at, t),
        "cancelling_at": _seen(timeline.cancelling_at, t),
        "cancelled_at": _seen(timeline.cancelled_at, t),
        "request_counts": _counts(plan, timeline, t, completed, failed),
        "metadata": None if metadata is None else dict(metadata),
        "file_name": plan.file_name,
    }
    if plan.model is not None:
        obj["model"] = plan.model
        if status == "completed" and usage is not None:
            obj["usage"] = _usage(usage())
    return obj


def _done(plan: Plan, timeline: Timeline, t: int) -> tuple[int, int]:
    """Requests completed and failed by time t."""
    fraction = _work_fraction(timeline, t)
    return int((plan.total - plan.failed_total) * fraction), int(plan.failed_total * fraction)


def _seen(at: int | None, t: int) -> int | None:
    return at if at is not None and at <= t else None


def _status_at(timeline: Timeline, t: int, queue_status: str) -> str:
    # Latest lifecycle stage first, so events in the same second resolve to the later stage.
    stages = (
        ("cancelled", timeline.cancelled_at),
        ("expired", timeline.expired_at),
        ("failed", timeline.failed_at),
        ("completed", timeline.completed_at),
        ("cancelling", timeline.cancelling_at),
        ("finalizing", timeline.finalizing_at),
        ("in_progress", timeline.in_progress_at),
    )
    for status, at in stages:
        if at is not None and at <= t:
            return status
    return queue_status


def _work_fraction(timeline: Timeline, t: int) -> float:
    started, end = timeline.in_progress_at, timeline.work_end
    if started is None or end is None or t < started:
        return 0.0
    if t >= end:
        return timeline.work_fraction
    return timeline.work_fraction * (t - started) / (end - started)


def _counts(
    plan: Plan, timeline: Timeline, t: int, completed: int, failed: int
) -> dict[str, int] | None:
    shape = plan.counts_shape
    if shape == "null":
        return None
    if shape == "empty":
        return {}
    started = timeline.in_progress_at is not None and timeline.in_progress_at <= t
    if shape == "null_until_started" and not started:
        return None
    return {"total": plan.total, "completed": completed, "failed": failed}


def _errors(plan: Plan, status: str) -> list | dict | None:
    if status != "failed":
        return None if plan.errors_null_when_fine else []
    if plan.errors_as_strings:
        return [
            f"line {line}: {message}" if line else message
            for _, message, _, line in plan.error_entries
        ]
    data = [
        {"code": code, "message": message, "param": param, "line": line}
        for code, message, param, line in plan.error_entries
    ]
    return {"object": "list", "data": data}


def _usage(usage: tuple[int, int, int, int]) -> dict[str, Any]:
    input_tokens, cached, output_tokens, reasoning = usage
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


# --- planning one batch -----------------------------------------------------------------------

Draw = Callable[[], float]  # the next uniform number in [0, 1) for one batch


def batch_entropy(seed: int, key: int) -> tuple[Draw, bytes]:
    """Uniforms and spare bytes for one batch, hashed from (seed, key).

    A hash is several times cheaper than seeding a random.Random per batch, which matters
    because plans are rebuilt for every page served.
    """
    raw = hashlib.shake_128(b"%d:%d" % (seed, key)).digest(_DRAWS * 4 + _SPARE)
    words = struct.unpack_from(f"<{_DRAWS}I", raw)
    return map(_U32.__mul__, cycle(words)).__next__, raw[_DRAWS * 4 :]


def make_plan(draw: Draw, spare: bytes, created_at: int, max_requests: int = 50_000) -> Plan:
    """One batch's fixed facts; the same draws always give the same batch."""
    window, window_s = pick(draw, WINDOWS)
    expires_at = created_at + window_s
    timeline = plan_timeline(draw, created_at, expires_at)
    total = max(1, int(_log_uniform(draw, 1, max_requests)))
    failed_total = 0 if draw() < 0.7 else min(total, 1 + int(total * draw() * 0.08))
    openai_style = draw() < 0.05
    return Plan(
        created_at=created_at,
        window=window,
        expires_at=expires_at,
        endpoint="/v1/embeddings" if draw() < 0.05 else "/v1/chat/completions",
        queue_status="validating" if draw() < 0.02 else "in_queue",
        timeline=timeline,
        total=total,
        failed_total=failed_total,
        counts_shape=pick(draw, COUNT_SHAPES),
        errors_null_when_fine=draw() < 0.6,
        errors_as_strings=draw() < 0.5,
        error_entries=_error_entries(draw),
        metadata=_metadata(draw),
        input_file_id=f"file-{spare[:12].hex()}",
        output_file_id=f"file-{spare[12:24].hex()}",
        error_file_id=f"file-{spare[24:36].hex()}",
        file_name=None if openai_style else _file_name(draw),
        model=_choice(draw, MODELS) if openai_style else None,
        signed=spare[36] < SIGNED_BELOW,
        output_lost=spare[37] < LOST_BELOW,
        error_lost=spare[38] < LOST_BELOW,
        file_seed=int.from_bytes(spare[40:48], "big"),
    )


def plan_timeline(draw: Draw, created: int, expires: int) -> Timeline:
    """Queue wait, processing and finalizing durations, ended by one terminal outcome."""
    window = expires - created
    # Batch work waits for spare capacity, so queues of hours are common.
    short_queue = draw() < 0.3
    queue = int(_log_uniform(draw, 2, 600) if short_queue else _log_uniform(draw, 600, 12 * HOUR))
    finalize = int(_log_uniform(draw, 2, 600))
    # Longer windows attract longer jobs; every job must still fit inside its window.
    longest = min(window * 0.9, 22 * HOUR * math.sqrt(window / DAY))
    work = min(int(_log_uniform(draw, 1800, longest)), window - queue - finalize - 1)
    outcome = pick(draw, OUTCOMES)
    if outcome == "completed":
        return _completed(draw, created, expires, queue, work, finalize)
    if outcome == "failed":
        return _failed(draw, created, queue, work)
    if outcome == "expired":
        return _expired(draw, created, expires, queue)
    return _cancelled(draw, created, queue, work)


def _completed(
    draw: Draw, created: int, expires: int, queue: int, work: int, finalize: int
) -> Timeline:
    started = created + queue
    if draw() < 0.01:
        # Edge for analytics: done exactly at the deadline still meets the window.
        finalizing = expires - finalize
        return Timeline(started, finalizing, expires, work_end=finalizing, work_fraction=1.0)
    if draw() < 0.01:
        work = 0  # a tiny batch, processed within the second it started
    finalizing = started + work
    return Timeline(
        started, finalizing, finalizing + finalize, work_end=finalizing, work_fraction=1.0
    )


def _failed(draw: Draw, created: int, queue: int, work: int) -> Timeline:
    if draw() < 0.6:
        # Most failures are input validation: rejected from the queue, never started.
        return Timeline(failed_at=created + min(queue, 1 + int(draw() * 300)))
    started = created + queue
    failed = started + int(work * (0.05 + 0.85 * draw()))
    return Timeline(started, failed_at=failed, work_end=failed, work_fraction=0.5 * draw())


def _expired(draw: Draw, created: int, expires: int, queue: int) -> Timeline:
    if draw() < 0.25:
        return Timeline(expired_at=expires)  # never left the queue
    # Keeps what it finished: the counts stop short of the total.
    return Timeline(
        created + queue, expired_at=expires, work_end=expires, work_fraction=0.1 + 0.85 * draw()
    )


def _cancelled(draw: Draw, created: int, queue: int, work: int) -> Timeline:
    cancelling = created + int((queue + work) * (0.02 + 0.88 * draw()))
    cancelled = cancelling + 30 + int(draw() * 570)
    started = created + queue
    if started > cancelling:
        return Timeline(cancelling_at=cancelling, cancelled_at=cancelled)
    fraction = (cancelling - started) / work if work else 1.0
    return Timeline(
        started,
        cancelling_at=cancelling,
        cancelled_at=cancelled,
        work_end=cancelling,
        work_fraction=fraction,
    )


def _cancelled_now(timeline: Timeline, t: int, delay: int) -> Timeline:
    started = _seen(timeline.in_progress_at, t)
    return Timeline(
        started,
        finalizing_at=_seen(timeline.finalizing_at, t),
        cancelling_at=t,
        cancelled_at=t + delay,
        work_end=t if started is not None else None,
        work_fraction=_work_fraction(timeline, t),
    )


def _error_entries(draw: Draw) -> tuple[tuple[str, str, str | None, int | None], ...]:
    first = int(draw() * len(ERRORS))
    return (ERRORS + ERRORS)[first : first + 1 + int(draw() * 3)]


def _metadata(draw: Draw) -> dict[str, str] | None:
    roll = draw()
    if roll < 0.2:
        return None
    if roll < 0.35:
        return {}
    # Repeated keys collapse, which only makes the number of pairs vary more.
    pairs = 1 + int(draw() * 5)
    return {_choice(draw, METADATA_KEYS): _choice(draw, METADATA_VALUES) for _ in range(pairs)}


def _file_name(draw: Draw) -> str:
    return f"{_choice(draw, FILE_STEMS)}{_choice(draw, ('', '_2', '-final'))}.jsonl"


def _choice(draw: Draw, options: Sequence[T]) -> T:
    return options[int(draw() * len(options))]


def _log_uniform(draw: Draw, low: float, high: float) -> float:
    if high <= low:
        return low
    return low * math.exp(draw() * math.log(high / low))


# --- creation times ---------------------------------------------------------------------------


def _creation_times(rnd: random.Random, n: int, start: int, now: int, end: int) -> list[int]:
    """n sorted creation seconds in [start, end]: busier on weekday afternoons, with bursts."""
    buckets = _hour_buckets(rnd, start, now, end)
    weights = [weight for _, _, weight in buckets]
    picks = rnd.choices(buckets, cum_weights=list(accumulate(weights)), k=n)
    times = sorted(low + int(rnd.random() * (high - low)) for low, high, _ in picks)
    for i in range(1, n):
        if rnd.random() < SAME_SECOND_SHARE:
            times[i] = times[i - 1]
    return times


def _hour_buckets(
    rnd: random.Random, start: int, now: int, end: int
) -> list[tuple[int, int, float]]:
    buckets = []
    for hour_start in range(start - start % HOUR, end + 1, HOUR):
        low, high = max(start, hour_start), min(end + 1, hour_start + HOUR)
        hour_of_day = hour_start % DAY // HOUR
        weekday = (hour_start // DAY + 3) % 7  # 1970-01-01 was a Thursday
        # Peak around 06:00 UTC (afternoon in China), quieter weekends, rare submission storms,
        # and usage growing over the period, so the recent past is busiest.
        weight = 1 + 0.5 * math.cos(2 * math.pi * (hour_of_day - 6) / 24)
        weight *= 0.7 if weekday >= 5 else 1.0
        weight *= 0.6 + 0.8 * min(1.0, (low - start) / max(1, now - start))
        weight *= 6.0 if rnd.random() < 0.02 else 1.0
        buckets.append((low, high, weight * (high - low) / HOUR))
    return buckets


# --- ids --------------------------------------------------------------------------------------


def _salt(seed: int) -> int:
    digest = hashlib.blake2b(str(seed).encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big") & _ID_MASK


def _scramble(x: int) -> int:
    x = (x * _MUL_1) & _ID_MASK
    x ^= x >> _HALF
    x = (x * _MUL_2) & _ID_MASK
    return x ^ (x >> _HALF)


def _unscramble(x: int) -> int:
    x ^= x >> _HALF
    x = (x * _INV_2) & _ID_MASK
    x ^= x >> _HALF
    return (x * _INV_1) & _ID_MASK


def _id_of_key(key: int, salt: int) -> str:
    x = _scramble(key ^ salt)
    pairs = []
    for _ in range(12):
        x, pair = divmod(x, 36 * 36)
        pairs.append(_DIGIT_PAIRS[pair])
    return "batch_" + "".join(reversed(pairs))


def _key_of_id(batch_id: str, salt: int) -> int | None:
    if not ID_PATTERN.fullmatch(batch_id):
        return None
    x = int(batch_id[6:], 36)
    if x > _ID_MASK:
        return None
    return _unscramble(x) ^ salt
