"""The simulator's HTTP face: SiliconFlow's batch routes, auth and errors, plus faults on demand.

Two servers: the API (batches and result files, behind the key) and a signed object storage
that serves the result files some batches name as signed URLs (rejects nothing, logs all; a
small file gzip-encoded to a client that accepts it, as a CDN in front of a bucket does).
"""

import contextlib
import copy
import gzip
import json
import os
import random
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from http.client import responses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qsl, unquote

import orjson

from .files import ResultFile
from .world import UnknownBatchError, World

DEFAULT_API_KEY = "sk-sim-test"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSONL = "application/jsonl"
XML = "application/xml"
TRACE_HEADER = "x-siliconcloud-trace-id"
LIST_PATH = "/v1/batches"
ITEM_PREFIX = "/v1/batches/"
ALIAS_PREFIX = "/alt"  # /alt/v1/... answers like /v1/...: a redirect target outside a base URL
FILES_PREFIX = "/v1/files/"
CONTENT_SUFFIX = "/content"
STORAGE_PREFIX = "/results/"  # the storage's path: /results/<file id>.jsonl?<signature>
STORAGE_SUFFIX = ".jsonl"
SMALL_FILE_BYTES = 8 * 1024 * 1024  # larger files go out chunked, generated as they are sent
CHUNK_BYTES = 64 * 1024
# Faults that reshape a page of the listing; a single batch fetched meanwhile is answered normally.
PAGE_KINDS = ("end_early", "empty_end", "self_cursor", "skip", "bad_last_id", "echo_cursor")
# Faults that still serve what was asked for, late, slowly or altered.
SERVING_KINDS = ("slow", "trickle", "malformed", *PAGE_KINDS)
# Faults only file downloads take (on the API or the storage); all others take the next /v1 request.
FILE_FAULT_KINDS = ("file_error", "cut_short", "cut_unsized")
CUT_KINDS = ("cut_short", "cut_unsized")
FAULT_KINDS = (
    "status",
    "bad_json",
    "drop",
    "no_data",
    "envelope",
    "redirect",
    *SERVING_KINDS,
    *FILE_FAULT_KINDS,
)
# What a fault means when queue() leaves status, count or seconds unset.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "skip": {"count": 50},
    "bad_last_id": {"count": 50},
    "trickle": {"seconds": 0.05},
    "redirect": {"status": 302},
    "file_error": {"status": 503},
}
TRICKLE_BYTES = 16
RANDOM_ERRORS = (429, 500, 503, 504)
TIMING_SETTINGS = frozenset({"error_rate", "latency_ms"})  # whether and when, not what
POLL_SECONDS = 0.01  # stop() waits up to one poll; tests start and stop a server each
# Bodies of answers kept for asking again (AnswerCache). A page of 100 batches is about 63 KB, so
# the default holds every page of a 300,000-batch world; `sfbatches simulate` takes another bound
# in MB from CACHE_MB_ENV (the bench sizes it to its world).
CACHE_BYTES = 200 * 1024 * 1024
CACHE_MB_ENV = "SFBATCHES_SIMULATOR_CACHE_MB"
CACHE_ENTRY_BYTES = 256  # what one entry costs beyond its body: key, node, bytes header
PROXY_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body><h1>Checking your browser before accessing api.siliconflow.cn</h1></body></html>"
)
OVERLOADED = {
    "code": 50505,
    "message": "Model service overloaded. Please try again later.",
    "data": None,
}


class Reply(NamedTuple):
    """One HTTP answer; the handler only writes it out, `trickle_s` apart per few bytes if set.

    A streamed answer has `chunks` instead of a body: sent chunked, or under Content-Length
    `length` when given. `cut_at` hangs up after that many bytes of the body. An answer not
    `sized` says neither its length nor chunks: its body ends where the connection does.
    """

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    trickle_s: float = 0.0
    chunks: Iterable[bytes] | None = None
    length: int | None = None
    cut_at: int | None = None
    sized: bool = True


class Request(NamedTuple):
    """One request as the simulator saw it; status 0 means the connection was dropped."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    at: float = 0.0  # time.monotonic() when the answer was ready, for retry-delay checks
    authorization: str | None = None  # the Authorization header, to check where a key went
    host: str = "api"  # which server answered: "api" or "storage"


def to_json(payload: Any) -> bytes:
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson stops at 64-bit integers; overrides may serve bigger ones
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def accepts_gzip(headers: Mapping[str, str]) -> bool:
    return "gzip" in (headers.get("Accept-Encoding") or "").lower()


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, to_json(payload), JSON, headers)


def api_error(message: str, status: int = 400, code: int = 20012) -> Reply:
    return json_reply(status, {"code": code, "message": message, "data": None})


NOT_FOUND = Reply(404, b"404 page not found", TEXT)
UNAUTHORIZED = json_reply(401, "Invalid token")
FILE_NOT_FOUND = json_reply(404, {"code": 20015, "message": "file not found", "data": None})


def storage_error(status: int, code: str, message: str) -> Reply:
    """An answer of the object storage: S3's XML error document."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Reply(status, body.encode(), XML)


LINK_EXPIRED = storage_error(403, "AccessDenied", "Request has expired")
NO_SUCH_KEY = storage_error(404, "NoSuchKey", "The specified key does not exist.")
STORAGE_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


def error_reply(status: int, retry_after: str | None = None) -> Reply:
    """The body SiliconFlow sends with this status (see api/NOTES.md)."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    if status == 429:
        message = "Request was rejected due to rate limiting. Details: TPM limit reached."
        return json_reply(429, {"message": message, "data": None, "code": 50603}, headers)
    if status == 503:
        return json_reply(503, OVERLOADED, headers)
    if status == 401:
        return UNAUTHORIZED
    if status == 403:
        return json_reply(403, "Forbidden")
    if status == 404:
        return NOT_FOUND
    if status == 400:
        return api_error("invalid request parameters")
    texts = {500: b"Internal Server Error", 502: b"Bad Gateway", 504: b"upstream request timeout"}
    return Reply(status, texts.get(status, b"error"), TEXT, headers)


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page in OpenAI's list shape, its cursor fields taken from `data`."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def api_path(path: str) -> str:
    """The /v1 route a path names: without the /alt alias and the list route's trailing slash."""
    if path.startswith(f"{ALIAS_PREFIX}/v1/"):
        path = path.removeprefix(ALIAS_PREFIX)
    return LIST_PATH if path == f"{LIST_PATH}/" else path


# --- faults -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One queued misbehaviour: `status` answers that error; other kinds are named in Faults."""

    kind: str = "status"
    status: int = 500
    body: Any = None
    content_type: str | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    count: int = 0
    location: str | None = None
    files: bool = False  # waits for the next file download (on the API or the storage)

    def reply(self, default: Reply | None = None) -> Reply:
        """This fault's own body if it has one, else `default`, else the error of its status."""
        headers = (("Retry-After", self.retry_after),) if self.retry_after is not None else ()
        if self.body is None:
            if default is None:
                return error_reply(self.status, self.retry_after)
            return default._replace(headers=(*default.headers, *headers))
        if isinstance(self.body, bytes):
            return Reply(self.status, self.body, self.content_type or JSON, headers)
        if isinstance(self.body, str) and self.content_type is None:
            return Reply(self.status, self.body.encode(), TEXT, headers)
        return Reply(self.status, to_json(self.body), self.content_type or JSON, headers)


def canned_reply(fault: Fault, origin: str) -> Reply:
    """The answer of a fault that serves nothing from the world; `origin` is where we were asked."""
    if fault.kind == "bad_json":
        return Reply(200, PROXY_PAGE.encode(), HTML)
    if fault.kind == "no_data":
        return json_reply(200, {"object": "list", "has_more": False})
    if fault.kind == "envelope":
        return fault.reply(json_reply(fault.status, OVERLOADED))
    if fault.kind == "redirect":
        return redirect_reply(fault, origin)
    return fault.reply()


def redirect_reply(fault: Fault, origin: str) -> Reply:
    """A 3xx to `fault.location` (a path is on our own host); no location, no Location header."""
    phrase = f"{fault.status} {responses.get(fault.status, 'Redirect')}"
    page = f"<html><head><title>{phrase}</title></head><body><h1>{phrase}</h1></body></html>"
    reply = fault.reply(Reply(fault.status, page.encode(), HTML))
    if fault.location is None:
        return reply
    location = origin + fault.location if fault.location.startswith("/") else fault.location
    return reply._replace(headers=(*reply.headers, ("Location", location)))


def _mapping(value: Any, what: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a JSON object")
    return value


def _batch_fields(value: Any = None) -> dict[str, Any]:
    return dict(_mapping(value, "batch fields"))


def _batch_overrides(value: Any = None) -> dict[str, dict[str, Any]]:
    return {str(key): _batch_fields(item) for key, item in _mapping(value, "overrides").items()}


def _batch_ids(value: Any = None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError("pin_to_top must be a list of batch ids")
    return [str(batch_id) for batch_id in value]


def _batch_pairs(value: Any = None) -> dict[str, str]:
    return {str(key): str(item) for key, item in _mapping(value, "repeat").items()}


class Faults:
    """What the simulator does wrong, changeable at any time from any thread.

    One-shot faults (`queue`) answer the next requests to /v1 in order:
    `status` (that error, with SiliconFlow's body), `bad_json` (a 200 HTML proxy page), `drop`
    (hang up), `slow` (answer after `seconds`), `no_data` (a list without data), `malformed`
    (one batch lacks its id), `trickle` (the right answer, 16 bytes every `seconds`, default
    0.05, under its full Content-Length: per-read timeouts never fire), `envelope` (HTTP 200
    with SiliconFlow's 50505 error envelope), `redirect` (`status`, default 302, to `location`:
    a path is on this host, None sends no Location header). Page faults bend one answer of
    GET /v1/batches and leave a single batch's answer alone: `end_early` (has_more false),
    `empty_end` (no data, null cursor, has_more true), `self_cursor` (no data, last_id = the
    `after` asked with), `skip` (the page starts `count` batches, default 50, further down),
    `bad_last_id` (right data, last_id `count` batches, default 50, below the last one),
    `echo_cursor` (the page asked after=X starts with batch X). `body` replaces the answer's
    body for status, envelope and redirect.

    Result file downloads (GET /v1/files/{id}/content and the storage) have faults of their
    own, which wait for the next download and leave pages and batches alone: `file_error`
    (`status`, default 503, with SiliconFlow's body on the API and an XML one on the storage)
    `cut_short` (the full Content-Length, half the body, then the connection closes) and
    `cut_unsized` (no Content-Length nor chunks, the body up to inside a line halfway, then the
    connection closes: all that tells it from a whole file is a last line cut short). Any
    other kind queued with `files=True` waits for a download too (e.g. `drop`, `slow`,
    `trickle` on the storage). A download on the API takes a waiting file fault first, else
    the next /v1 fault like any request; the storage takes file faults only. Page faults and
    `malformed` serve a file unchanged.

    Rates and quirks stay until reset: `error_rate` (random 429/500/503/504), `latency_ms`
    (delay per request), `ignore_after` (the first page again, has_more true), `oldest_first`
    (ascending order), `single_page` (everything at once, has_more false), `omit_last_id` (no
    first_id/last_id), `extra_fields` (fields set on every batch served), `overrides` (batch id
    -> fields set on that batch only; its place in the listing stays), `pin_to_top` (these ids
    listed first, in this order, and nowhere else; cursors stay consistent), `repeat` (batch id
    -> the id after which it is served again, so it is listed twice; last_id ignores it),
    `files_via_storage` (a file download on the API answers 302 to the storage's signed link
    for that file, as an API that keeps its files in object storage does).

    `shape()` says what the settings make answers hold, for the server's cache of answers.
    """

    # Each setting's type, also its cleared value when called without an argument.
    # All but TIMING_SETTINGS change what an answer holds.
    SETTINGS: ClassVar[dict[str, Callable[..., Any]]] = {
        "error_rate": float,
        "latency_ms": float,
        "ignore_after": bool,
        "oldest_first": bool,
        "single_page": bool,
        "omit_last_id": bool,
        "extra_fields": _batch_fields,
        "overrides": _batch_overrides,
        "pin_to_top": _batch_ids,
        "repeat": _batch_pairs,
        "files_via_storage": bool,
    }
    error_rate: float
    latency_ms: float
    ignore_after: bool
    oldest_first: bool
    single_page: bool
    omit_last_id: bool
    extra_fields: dict[str, Any]
    overrides: dict[str, dict[str, Any]]
    pin_to_top: list[str]
    repeat: dict[str, str]
    files_via_storage: bool
    version: int  # moves whenever a setting that shapes answers is assigned

    def __init__(self, seed: int = 7) -> None:
        self.version = 0
        self._lock = threading.Lock()
        self._queue: deque[Fault | None] = deque()
        self._file_queue: deque[Fault | None] = deque()
        self._rng = random.Random(seed)
        self._clear_settings()

    def queue(
        self,
        status: int | None = None,
        *,
        kind: str | None = None,
        times: int = 1,
        body: Any = None,
        retry_after: str | int | None = None,
        seconds: float = 0.0,
        content_type: str | None = None,
        after: int = 0,
        count: int = 0,
        location: str | None = None,
        files: bool = False,
    ) -> None:
        """Answer `times` requests with this fault, once `after` more have been served well.

        File faults (and any kind with `files`) count file downloads only, `after` included."""
        kind = kind or "status"
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if kind == "status" and status is None:
            raise ValueError("a status fault needs a status, e.g. queue(status=429)")
        defaults = KIND_DEFAULTS.get(kind, {})
        fault = Fault(
            kind=kind,
            status=status or defaults.get("status", 200),
            body=body,
            content_type=content_type,
            retry_after=None if retry_after is None else str(retry_after),
            seconds=seconds or defaults.get("seconds", 0.0),
            count=count or defaults.get("count", 0),
            location=location,
            files=bool(files) or kind in FILE_FAULT_KINDS,
        )
        with self._lock:
            queue = self._file_queue if fault.files else self._queue
            queue.extend([None] * after + [fault] * times)

    def pending(self) -> int:
        """How many queued faults have not fired yet (requests let through not counted)."""
        with self._lock:
            return sum(fault is not None for fault in chain(self._queue, self._file_queue))

    def take_file(self, *, api: bool) -> Fault | None:
        """The fault for a file download: one waiting for downloads, else (on the API only)
        what any /v1 request would take."""
        with self._lock:
            if self._file_queue:
                return self._file_queue.popleft()
        return self.take() if api else None

    def take(self) -> Fault | None:
        """The fault for this request, if any: queued ones first, then the random error rate."""
        with self._lock:
            if self._queue:
                # a None placeholder lets one request through (see `after`)
                return self._queue.popleft()
            if self.error_rate and self._rng.random() < self.error_rate:
                return Fault(status=self._rng.choice(RANDOM_ERRORS))
        return None

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._file_queue.clear()
        self._clear_settings()

    def _clear_settings(self) -> None:
        for name, kind in self.SETTINGS.items():
            setattr(self, name, kind())

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.SETTINGS and name not in TIMING_SETTINGS:
            super().__setattr__("version", self.version + 1)

    def shape(self) -> tuple[int, str]:
        """What the settings make an answer hold now; equal shapes give equal answers.

        `version` moves with every setting assigned (also back to an earlier value, so a
        setting changed while an answer was being rendered is never mistaken for no change);
        the repr catches a dict or list setting edited in place.
        """
        containers = (self.extra_fields, self.overrides, self.pin_to_top, self.repeat)
        return self.version, repr(containers)

    def update(self, settings: Mapping[str, Any]) -> None:
        """Apply a JSON-like dict: any of SETTINGS, `queue` (one or a list of queue() kwargs)
        and `reset: true`. Unknown names raise ValueError, so typos are not silently ignored."""
        if not isinstance(settings, Mapping):
            raise TypeError("fault settings must be a JSON object")
        unknown = set(settings) - {*self.SETTINGS, "queue", "reset"}
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        if settings.get("reset"):
            self.reset()
        for name, kind in self.SETTINGS.items():
            if name in settings:
                setattr(self, name, kind(settings[name]))
        queued = settings.get("queue") or []
        for entry in [queued] if isinstance(queued, Mapping) else queued:
            self.queue(**entry)

    def as_dict(self) -> dict[str, Any]:
        state = {name: copy.deepcopy(getattr(self, name)) for name in self.SETTINGS}
        with self._lock:
            state["queue"] = [
                {f.name: getattr(fault, f.name) for f in fields(Fault)} if fault else None
                for fault in chain(self._queue, self._file_queue)
            ]
        return state


# --- answers served before -------------------------------------------------------------------


class AnswerCache:
    """Bodies of fault-free answers, kept for one state of the world and its settings at a time.

    Rendering a page re-derives every batch on it, which would make the simulator, not the
    client, the slow side of a benchmark. A body is filed under its request's key within a
    `state` (what the answer depends on besides the request); filing one under another state
    empties the cache first. The least recently used bodies go once all exceed `max_bytes`.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._state: Hashable = None
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, state: Hashable, key: Hashable) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key) if state == self._state else None
            if body is None:
                self.misses += 1
                return None
            self._bodies.move_to_end(key)
            self.hits += 1
            return body

    def put(self, state: Hashable, key: Hashable, body: bytes) -> None:
        if len(body) + CACHE_ENTRY_BYTES > self.max_bytes:
            return
        with self._lock:
            if state != self._state:
                self._bodies.clear()
                self.bytes = 0
                self._state = state
            self._drop(self._bodies.pop(key, None))
            self._bodies[key] = body
            self.bytes += len(body) + CACHE_ENTRY_BYTES
            while self.bytes > self.max_bytes:
                self._drop(self._bodies.popitem(last=False)[1])

    def _drop(self, body: bytes | None) -> None:
        if body is not None:
            self.bytes -= len(body) + CACHE_ENTRY_BYTES


# --- the API ----------------------------------------------------------------------------------


class Simulator:
    """SiliconFlow's batch API over HTTP on 127.0.0.1, served from a World by a daemon thread,
    and beside it the object storage its signed result URLs point to (`storage_origin`)."""

    def __init__(
        self,
        world: World | None = None,
        *,
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        default_limit: int = 20,
        max_limit: int = 100,
        host: str = "127.0.0.1",
        cache_bytes: int = CACHE_BYTES,
        storage_port: int = 0,
    ) -> None:
        self.world = world if world is not None else World()
        self.api_key = api_key
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.faults = Faults()
        self.cache = AnswerCache(cache_bytes)
        self.requests: list[Request] = []
        self.connections = 0
        self.storage_connections = 0
        self._address = (host, port)
        self._storage_address = (host, storage_port)
        self._log_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._storage: _Server | None = None
        self._storage_thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._address[1]:
            raise RuntimeError("the simulator has no port yet; call start() first")
        return self._address[1]

    @property
    def origin(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def storage_port(self) -> int:
        if not self._storage_address[1]:
            raise RuntimeError("the storage has no port yet; call start() first")
        return self._storage_address[1]

    @property
    def storage_origin(self) -> str:
        """Where signed result URLs point: http://127.0.0.1:<storage port>."""
        return f"http://{self._storage_address[0]}:{self.storage_port}"

    def start(self) -> "Simulator":
        """Start the API and the storage; the world names signed URLs on this storage."""
        if self._server is None:
            self._server, self._thread = self._launch(self._address, storage=False)
            # Keep the port across stop() and start(), so a restart looks like an outage.
            self._address = (self._address[0], self._server.server_address[1])
        if self._storage is None:
            self._storage, self._storage_thread = self._launch(self._storage_address, storage=True)
            self._storage_address = (self._storage_address[0], self._storage.server_address[1])
        self.world.set_storage_origin(self.storage_origin)
        return self

    def _launch(
        self, address: tuple[str, int], *, storage: bool
    ) -> tuple["_Server", threading.Thread]:
        server = _Server(address, _Handler, self, storage=storage)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"simulator{'-storage' if storage else ''}:{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        return server, thread

    def stop(self) -> None:
        """Stop both servers (their ports are kept for a restart)."""
        for server, thread in ((self._server, self._thread), (self._storage, self._storage_thread)):
            if server is None or thread is None:
                continue
            server.shutdown()
            server.close_connections()
            server.server_close()
            thread.join()
        self._server = self._thread = self._storage = self._storage_thread = None

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the request log ------------------------------------------------------------------

    def count(self, path_prefix: str = "/v1/") -> int:
        """How many requests were made to paths starting with `path_prefix`."""
        return sum(1 for request in self.requests if request.path.startswith(path_prefix))

    def storage_requests(self) -> list[Request]:
        """The requests the storage answered, in arrival order."""
        return [r for r in self.requests if r.host == "storage"]

    def file_requests(self) -> list[Request]:
        """The result file downloads, from the API (/v1/files/.../content) or the storage."""
        return [r for r in self.requests if r.host == "storage" or _file_route(r.path)]

    def list_requests(self) -> list[Request]:
        """The page fetches (GET /v1/batches, also with / or under /alt) in arrival order."""
        return [r for r in self.requests if api_path(r.path) == LIST_PATH and r.method == "GET"]

    def clear_requests(self) -> None:
        with self._log_lock:
            self.requests.clear()

    @property
    def cache_hits(self) -> int:
        """How many answers were served from the cache of answers."""
        return self.cache.hits

    # --- answering ------------------------------------------------------------------------

    def respond(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """The reply to one request, or None to drop the connection without answering."""
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        reply = self._route(method, path, query, headers, body)
        self._log(method, path, query, reply, headers, "api")
        return reply

    def respond_storage(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """The storage's reply: any file asked for by its path, whatever the headers say."""
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        reply = self._storage_route(method, path, accepts_gzip(headers))
        self._log(method, path, query, reply, headers, "storage")
        return reply

    def _log(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        reply: Reply | None,
        headers: Mapping[str, str],
        host: str,
    ) -> None:
        status = reply.status if reply else 0
        authorization = headers.get("Authorization")
        request = Request(method, path, query, status, time.monotonic(), authorization, host)
        with self._log_lock:
            self.requests.append(request)

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        if path.startswith("/_sim/"):
            return self._control(method, path, query, body)
        path = api_path(path)
        file_id = _file_route(path)
        if file_id is not None:
            return self._file_download(method, file_id, headers)
        batch_id = path[len(ITEM_PREFIX) :] if path.startswith(ITEM_PREFIX) else None
        if method != "GET" or (path != LIST_PATH and (not batch_id or "/" in batch_id)):
            return NOT_FOUND
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return UNAUTHORIZED
        if self.faults.latency_ms > 0:
            time.sleep(self.faults.latency_ms / 1000)
        fault = self.faults.take()
        if fault is None:
            return self._answer(query, batch_id)
        return self._faulty(fault, query, batch_id, headers.get("Host"))

    def _faulty(
        self, fault: Fault, query: dict[str, str], batch_id: str | None, host: str | None
    ) -> Reply | None:
        if fault.kind == "drop":
            return None
        if fault.kind == "slow":
            time.sleep(fault.seconds)  # long enough to trip the client's timeout
        if fault.kind in SERVING_KINDS:
            return self._answer(query, batch_id, fault)
        # Redirect to the host the client asked, so it keeps the key for a same-host redirect.
        return canned_reply(fault, f"http://{host}" if host else self.origin)

    def _answer(
        self, query: dict[str, str], batch_id: str | None, fault: Fault | None = None
    ) -> Reply:
        """What was asked for; `fault` may reshape a page, break one batch or trickle it out."""
        if fault is None:
            return self._cached_answer(query, batch_id)
        payload = self._list(query, fault) if batch_id is None else self._get(batch_id)
        if isinstance(payload, Reply):
            return payload
        kind = fault.kind if fault is not None else None
        if kind == "malformed":
            items = payload.get("data") or [payload]
            items[len(items) // 2].pop("id", None)
        reply = json_reply(200, payload, ((TRACE_HEADER, os.urandom(16).hex()),))
        return reply._replace(trickle_s=fault.seconds) if kind == "trickle" else reply

    def _cached_answer(self, query: dict[str, str], batch_id: str | None) -> Reply:
        """A fault-free answer, its body from the cache when this state answered it before."""
        state = self._serving_state()
        key = (batch_id,) if batch_id is not None else (query.get("limit"), query.get("after"))
        body = self.cache.get(state, key)
        if body is None:
            payload = self._list(query) if batch_id is None else self._get(batch_id)
            if isinstance(payload, Reply):
                return payload
            body = to_json(payload)
            # Something changed while it was rendered: it may belong to neither state.
            if self._serving_state() == state:
                self.cache.put(state, key, body)
        return Reply(200, body, JSON, ((TRACE_HEADER, os.urandom(16).hex()),))

    def _serving_state(self) -> tuple[Any, ...]:
        """Everything a fault-free answer depends on besides the request itself."""
        world = self.world
        limits = (self.default_limit, self.max_limit)
        return world, world.now, world.version, self.faults.shape(), limits

    def _list(self, query: dict[str, str], fault: Fault | None = None) -> dict[str, Any] | Reply:
        limit = self._limit(query.get("limit"))
        if isinstance(limit, Reply):
            return limit
        faults = self.faults
        after = None if faults.ignore_after else query.get("after") or None
        if faults.single_page:
            limit = max(1, self.world.visible_count())
        try:
            page = self._page(limit, after, fault)
        except UnknownBatchError:
            return api_error(f"invalid after: no batch with id {after!r}")
        page["data"] = [self._altered(batch) for batch in self._with_repeats(page["data"])]
        if faults.ignore_after:
            page["has_more"] = True
        if faults.omit_last_id:
            del page["first_id"], page["last_id"]
        return page

    def _limit(self, raw: str | None) -> int | Reply:
        if raw is None:
            return self.default_limit
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            return api_error(f"limit must be an integer of at least 1, got {raw!r}")
        return min(int(raw), self.max_limit)

    def _get(self, batch_id: str) -> dict[str, Any] | Reply:
        batch = self.world.get(batch_id)
        if batch is None:
            return api_error(f"batch {batch_id} not found", status=404)
        return self._altered(batch)

    # --- result files ---------------------------------------------------------------------

    def _file_download(self, method: str, file_id: str, headers: Mapping[str, str]) -> Reply | None:
        if method != "GET":
            return NOT_FOUND
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return UNAUTHORIZED
        if self.faults.latency_ms > 0:
            time.sleep(self.faults.latency_ms / 1000)
        fault = self.faults.take_file(api=True)
        link = self.world.signed_url(file_id) if self.faults.files_via_storage else None
        if fault is None and link is not None and self.world.file(file_id) is not None:
            return redirect_reply(Fault(kind="redirect", status=302, location=link), "")
        return self._download(file_id, fault, storage=False, host=headers.get("Host"))

    def _storage_route(self, method: str, path: str, gzipped: bool) -> Reply | None:
        name = path.removeprefix(STORAGE_PREFIX)
        if method != "GET" or name == path or not name.endswith(STORAGE_SUFFIX):
            return NO_SUCH_KEY
        if self.faults.latency_ms > 0:
            time.sleep(self.faults.latency_ms / 1000)
        fault = self.faults.take_file(api=False)
        return self._download(
            name.removesuffix(STORAGE_SUFFIX), fault, storage=True, gzipped=gzipped
        )

    def _download(
        self,
        file_id: str,
        fault: Fault | None,
        *,
        storage: bool,
        host: str | None = None,
        gzipped: bool = False,
    ) -> Reply | None:
        """A result file as the API (storage=False) or the storage answers it, `fault` applied;
        `gzipped`: a small file's body gzip-encoded, as a CDN in front of the storage sends it."""
        if fault is None or fault.kind in (*SERVING_KINDS, *CUT_KINDS):
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            return self._file_reply(file_id, fault, storage, gzipped)
        kind = fault.kind
        if kind == "drop":
            return None
        if kind == "file_error":
            code, message = STORAGE_ERRORS.get(fault.status, ("ServiceUnavailable", "Try again."))
            return fault.reply(storage_error(fault.status, code, message) if storage else None)
        origin = self.storage_origin if storage else f"http://{host}" if host else self.origin
        return canned_reply(fault, origin)

    def _file_reply(
        self, file_id: str, fault: Fault | None, storage: bool, gzipped: bool = False
    ) -> Reply:
        file = self.world.file(file_id)
        if file is None:
            return NO_SUCH_KEY if storage else FILE_NOT_FOUND
        if file.gone:
            # An expired link (storage) or a deleted file (API): gone either way.
            return LINK_EXPIRED if storage else FILE_NOT_FOUND
        if storage:
            headers = (("x-amz-request-id", os.urandom(8).hex().upper()),)
        else:
            headers = ((TRACE_HEADER, os.urandom(16).hex()),)
        trickle_s = fault.seconds if fault is not None and fault.kind == "trickle" else 0.0
        reply = Reply(200, b"", JSONL, headers, trickle_s)
        content = self._file_content(file)
        cut = fault is not None and fault.kind in CUT_KINDS
        if cut:
            reply = reply._replace(sized=fault.kind == "cut_short")
        if isinstance(content, bytes):
            cut_at = _inside_a_line(content, len(content) // 2) if cut else None
            if gzipped:
                content = gzip.compress(content, compresslevel=1)
                reply = reply._replace(headers=(*headers, ("Content-Encoding", "gzip")))
                cut_at = len(content) // 2 if cut else None
            return reply._replace(body=content, cut_at=cut_at)
        if cut:
            length = sum(map(len, file.lines()))  # one pass to count, then the real one
            return reply._replace(chunks=_chunks(file.lines()), length=length, cut_at=length // 2)
        return reply._replace(chunks=content)

    def _file_content(self, file: ResultFile) -> bytes | Iterator[bytes]:
        """A small file's bytes (from the cache when it holds them), else its chunks, made as
        they are sent: generation stops at SMALL_FILE_BYTES and goes on from there."""
        state = self._serving_state()
        key = ("file", file.plain_id)
        body = self.cache.get(state, key)
        if body is not None:
            return body
        lines = file.lines()
        buffered: list[bytes] = []
        size = 0
        for line in lines:
            buffered.append(line)
            size += len(line)
            if size > SMALL_FILE_BYTES:
                return _resumed(buffered, lines)
        body = b"".join(buffered)
        if self._serving_state() == state:
            self.cache.put(state, key, body)
        return body

    # --- the listing, as pinned batches and page faults bend it ---------------------------

    def _page(self, limit: int, after: str | None, fault: Fault | None) -> dict[str, Any]:
        """The page asked for, reshaped by a page fault if one is due."""
        kind, count = (fault.kind, fault.count) if fault is not None else (None, 0)
        if kind == "empty_end":
            return list_object([], has_more=True)
        if kind == "self_cursor":
            return {**list_object([], has_more=True), "last_id": after}
        if kind == "skip":
            return self._skipping(limit, after, count)
        page = self._listing(limit, after)
        if kind == "end_early":
            page["has_more"] = False
        elif kind == "bad_last_id":
            page["last_id"] = self._id_below(page, count)
        elif kind == "echo_cursor" and after is not None:
            page["data"][:0] = self._visible([after])
            page["first_id"] = after
        return page

    def _skipping(self, limit: int, after: str | None, count: int) -> dict[str, Any]:
        """The page that starts `count` batches further down than `after` says."""
        skipped = self._listing(count, after)
        if not skipped["has_more"]:
            return list_object([], has_more=False)
        return self._listing(limit, skipped["last_id"])

    def _id_below(self, page: dict[str, Any], count: int) -> str | None:
        """The id `count` batches below the page's last one, or the deepest there is."""
        if not page["has_more"]:
            return page["last_id"]
        return self._listing(count, page["last_id"])["data"][-1]["id"]

    def _listing(self, limit: int, after: str | None) -> dict[str, Any]:
        """One page of the listing in served order: pinned batches first, then the world's."""
        pinned = [batch["id"] for batch in self._visible(dict.fromkeys(self.faults.pin_to_top))]
        if not pinned:
            return self.world.list_page(limit, after, oldest_first=self.faults.oldest_first)
        return self._pinned_page(limit, after, pinned)

    def _pinned_page(self, limit: int, after: str | None, pinned: list[str]) -> dict[str, Any]:
        """A page of `pinned` followed by the world's listing without them."""
        if after in pinned:
            head, after = pinned[pinned.index(after) + 1 :], None
        else:
            head = pinned if after is None else []
        wanted = limit - len(head[:limit])
        # Ask for enough to fill the page even if every pinned batch is among the answers.
        rest = self.world.list_page(
            wanted + len(pinned), after, oldest_first=self.faults.oldest_first
        )
        unpinned = [batch for batch in rest["data"] if batch["id"] not in pinned]
        data = self._visible(head[:limit]) + unpinned[:wanted]
        has_more = len(head) > limit or len(unpinned) > wanted or rest["has_more"]
        return list_object(data, has_more)

    def _with_repeats(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`data` with each repeated batch served again right after the batch it follows."""
        served = []
        for batch in data:
            served.append(batch)
            again = [key for key, anchor in self.faults.repeat.items() if anchor == batch["id"]]
            served.extend(self._visible(again))
        return served

    def _visible(self, batch_ids: Iterable[str]) -> list[dict[str, Any]]:
        """These batches as they are now, leaving out ids not created yet or unknown."""
        batches = (self.world.get(batch_id) for batch_id in batch_ids)
        return [batch for batch in batches if batch is not None]

    def _altered(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch as served: extra_fields on every batch, then this batch's own overrides."""
        faults = self.faults
        changes = {**faults.extra_fields, **faults.overrides.get(batch["id"], {})}
        batch.update(copy.deepcopy(changes))
        return batch

    # --- control API for out-of-process users ---------------------------------------------

    def _control(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
        try:
            if (method, path) == ("POST", "/_sim/advance"):
                self.world.advance(int(query.get("seconds", "")))
                return json_reply(200, self._state())
            if (method, path) == ("POST", "/_sim/faults"):
                # json, not orjson: it keeps integers beyond 64 bits exact (see overrides)
                self.faults.update(json.loads(body or b"{}"))
                return json_reply(200, self.faults.as_dict())
            if (method, path) == ("GET", "/_sim/faults"):
                return json_reply(200, self.faults.as_dict())
            if (method, path) == ("GET", "/_sim/state"):
                return json_reply(200, self._state())
            if (method, path) == ("POST", "/_sim/stick"):
                since = int(query.get("since", self.world.now))
                self.world.stick(query.get("batch_id", ""), query.get("stage", ""), since)
                return json_reply(200, self._state())
            if (method, path) == ("POST", "/_sim/enlarge"):
                lines, pad_bytes = int(query.get("lines", "")), int(query.get("pad_bytes", "0"))
                self.world.enlarge(query.get("batch_id", ""), lines, pad_bytes)
                return json_reply(200, self._state())
        except (ValueError, TypeError, UnknownBatchError) as exc:  # JSONDecodeError: a ValueError
            return api_error(str(exc))
        return NOT_FOUND

    def _state(self) -> dict[str, Any]:
        world = self.world
        return {
            "now": world.now,
            "batches": world.size,
            "visible": world.visible_count(),
            "requests": len(self.requests),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "cache_bytes": self.cache.bytes,
            "storage": self.storage_origin if self._storage_address[1] else None,
        }


# --- HTTP plumbing ----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type, sim: Simulator, *, storage: bool = False
    ) -> None:
        self.sim = sim
        self.storage = storage
        self.answer = sim.respond_storage if storage else sim.respond
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
            if self.storage:
                self.sim.storage_connections += 1
            else:
                self.sim.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up on idle keep-alive clients, so a stopped simulator really is gone."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or vanish mid-answer are expected (slow, drop, trickle faults).
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a client session reuses its connection
    disable_nagle_algorithm = True  # header and body go out at once, no 40 ms ACK stall
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log on Simulator replaces stderr chatter

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.answer(method, self.path, self.headers, body)
        if reply is None:
            self.close_connection = True
            return
        chunked = reply.sized and reply.chunks is not None and reply.length is None
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif reply.sized:
            length = len(reply.body) if reply.chunks is None else reply.length
            self.send_header("Content-Length", str(length))
        else:
            self.close_connection = True  # the body ends where the connection does
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        pieces = (reply.body,) if reply.chunks is None else reply.chunks
        sent = 0
        for piece in pieces:
            if reply.cut_at is not None and sent + len(piece) >= reply.cut_at:
                self._write(piece[: reply.cut_at - sent], reply.trickle_s)
                self.close_connection = True  # hang up short of Content-Length
                return
            if chunked and piece:
                self.wfile.write(b"%x\r\n" % len(piece))
                self._write(piece, reply.trickle_s)
                self.wfile.write(b"\r\n")
            else:
                self._write(piece, reply.trickle_s)
            sent += len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, body: bytes, pause_s: float) -> None:
        """Write the body at once, or a few bytes at a time with `pause_s` between writes."""
        if pause_s <= 0:
            self.wfile.write(body)
            return
        for start in range(0, len(body), TRICKLE_BYTES):
            if start:
                time.sleep(pause_s)
            self.wfile.write(body[start : start + TRICKLE_BYTES])


def serve(
    port: int,
    batches: int,
    seed: int,
    api_key: str | None = None,
    latency_ms: float = 0,
    host: str = "127.0.0.1",
    cache_mb: float | None = None,
    max_requests: int = 50_000,
) -> None:
    """Serve a fresh world until Ctrl-C; the clock stands still unless POST /_sim/advance.

    The cache of answers holds up to `cache_mb`, else $SFBATCHES_SIMULATOR_CACHE_MB, else 200 MB.
    Batches hold up to `max_requests` requests each (their result files one line per request).
    """
    cache_bytes = _cache_bytes(cache_mb)
    world = World(batches=batches, seed=seed, max_requests=max_requests)
    simulator = Simulator(
        world, port=port, api_key=api_key or DEFAULT_API_KEY, host=host, cache_bytes=cache_bytes
    )
    simulator.faults.latency_ms = latency_ms
    with simulator:
        print(
            f"sfbatches simulator: {simulator.base_url} api key {simulator.api_key} "
            f"({world.visible_count():,} batches visible; Ctrl-C stops)",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _file_route(path: str) -> str | None:
    """The file id of a /v1/files/{id}/content path (also under /alt), else None; the id's
    segment percent-decoded, as any web server reads a path."""
    path = api_path(path)
    if not (path.startswith(FILES_PREFIX) and path.endswith(CONTENT_SUFFIX)):
        return None
    file_id = path[len(FILES_PREFIX) : -len(CONTENT_SUFFIX)]
    return unquote(file_id) if file_id and "/" not in file_id else None


def _inside_a_line(body: bytes, at: int) -> int:
    """`at`, or the nearest place before it inside a line: the body cut there ends with a line
    neither ended nor whole."""
    while at > 1 and b"\n" in (body[at - 1 : at], body[at : at + 1]):
        at -= 1
    return at


def _chunks(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Lines joined into pieces of about CHUNK_BYTES, so a large file is written in few calls."""
    part: list[bytes] = []
    size = 0
    for line in lines:
        part.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield b"".join(part)
            part, size = [], 0
    if part:
        yield b"".join(part)


def _resumed(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of a file whose first lines were made already; they are let go once sent."""
    piece = b"".join(head)
    head.clear()
    yield piece
    del piece
    yield from _chunks(rest)


def _cache_bytes(cache_mb: float | None) -> int:
    if cache_mb is None:
        raw = os.environ.get(CACHE_MB_ENV, "").strip()
        if not raw:
            return CACHE_BYTES
        try:
            cache_mb = float(raw)
        except ValueError:
            raise ValueError(f"{CACHE_MB_ENV} must be a number of MB, not {raw!r}") from None
    return max(0, int(cache_mb * 1024 * 1024))
