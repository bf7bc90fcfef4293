"""The simulator's HTTP face: SiliconFlow's batch routes, auth and errors, plus faults on demand."""

import contextlib
import os
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson

from .world import UnknownBatchError, World

DEFAULT_API_KEY = "sk-sim-test"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
TRACE_HEADER = "x-siliconcloud-trace-id"
LIST_PATH = "/v1/batches"
ITEM_PREFIX = "/v1/batches/"
FAULT_KINDS = ("status", "bad_json", "drop", "slow", "no_data", "malformed")
RANDOM_ERRORS = (429, 500, 503, 504)
POLL_SECONDS = 0.01  # stop() waits up to one poll; tests start and stop a server each
PROXY_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body><h1>Checking your browser before accessing api.siliconflow.cn</h1></body></html>"
)


class Reply(NamedTuple):
    """One HTTP answer; the handler only writes it out."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


class Request(NamedTuple):
    """One request as the simulator saw it; status 0 means the connection was dropped."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    at: float = 0.0  # time.monotonic() when the answer was ready, for retry-delay checks


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, orjson.dumps(payload), JSON, headers)


def api_error(message: str, status: int = 400, code: int = 20012) -> Reply:
    return json_reply(status, {"code": code, "message": message, "data": None})


NOT_FOUND = Reply(404, b"404 page not found", TEXT)
UNAUTHORIZED = json_reply(401, "Invalid token")


def error_reply(status: int, retry_after: str | None = None) -> Reply:
    """The body SiliconFlow sends with this status (see api/NOTES.md)."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    if status == 429:
        message = "Request was rejected due to rate limiting. Details: TPM limit reached."
        return json_reply(429, {"message": message, "data": None, "code": 50603}, headers)
    if status == 503:
        message = "Model service overloaded. Please try again later."
        return json_reply(503, {"code": 50505, "message": message, "data": None}, headers)
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

    def reply(self) -> Reply:
        headers = (("Retry-After", self.retry_after),) if self.retry_after is not None else ()
        if self.body is None:
            return error_reply(self.status, self.retry_after)
        if isinstance(self.body, bytes):
            return Reply(self.status, self.body, self.content_type or JSON, headers)
        if isinstance(self.body, str) and self.content_type is None:
            return Reply(self.status, self.body.encode(), TEXT, headers)
        return Reply(self.status, orjson.dumps(self.body), self.content_type or JSON, headers)


class Faults:
    """What the simulator does wrong, changeable at any time from any thread.

    One-shot faults (`queue`) answer the next requests to /v1 in order. Rates and quirks stay
    until reset: `error_rate` (random 429/500/503/504), `latency_ms` (delay per request),
    `ignore_after` (the first page again, has_more true), `oldest_first` (ascending order),
    `single_page` (everything at once, has_more false), `omit_last_id` (no first_id/last_id).
    """

    SETTINGS = (
        "error_rate",
        "latency_ms",
        "ignore_after",
        "oldest_first",
        "single_page",
        "omit_last_id",
    )

    def __init__(self, seed: int = 7) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault | None] = deque()
        self._rng = random.Random(seed)
        self.error_rate = 0.0
        self.latency_ms = 0.0
        self.ignore_after = False
        self.oldest_first = False
        self.single_page = False
        self.omit_last_id = False

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
    ) -> None:
        """Answer `times` requests with this fault, once `after` more have been served well."""
        kind = kind or "status"
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if kind == "status" and status is None:
            raise ValueError("a status fault needs a status, e.g. queue(status=429)")
        fault = Fault(
            kind=kind,
            status=status or 200,
            body=body,
            content_type=content_type,
            retry_after=None if retry_after is None else str(retry_after),
            seconds=seconds,
        )
        with self._lock:
            self._queue.extend([None] * after + [fault] * times)

    def pending(self) -> int:
        """How many queued faults have not fired yet (requests let through not counted)."""
        with self._lock:
            return sum(fault is not None for fault in self._queue)

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
        self.update(dict.fromkeys(self.SETTINGS, 0))

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
        for name in self.SETTINGS:
            if name in settings:
                kind = float if name in ("error_rate", "latency_ms") else bool
                setattr(self, name, kind(settings[name]))
        queued = settings.get("queue") or []
        for entry in [queued] if isinstance(queued, Mapping) else queued:
            self.queue(**entry)

    def as_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self.SETTINGS}
        with self._lock:
            state["queue"] = [
                {f.name: getattr(fault, f.name) for f in fields(Fault)} if fault else None
                for fault in self._queue
            ]
        return state


# --- the API ----------------------------------------------------------------------------------


class Simulator:
    """SiliconFlow's batch API over HTTP on 127.0.0.1, served from a World by a daemon thread."""

    def __init__(
        self,
        world: World | None = None,
        *,
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        default_limit: int = 20,
        max_limit: int = 100,
        host: str = "127.0.0.1",
    ) -> None:
        self.world = world if world is not None else World()
        self.api_key = api_key
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.faults = Faults()
        self.requests: list[Request] = []
        self.connections = 0
        self._address = (host, port)
        self._log_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._address[1]:
            raise RuntimeError("the simulator has no port yet; call start() first")
        return self._address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/v1"

    def start(self) -> "Simulator":
        if self._server is None:
            self._server = _Server(self._address, _Handler, self)
            # Keep the port across stop() and start(), so a restart looks like an outage.
            self._address = (self._address[0], self._server.server_address[1])
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": POLL_SECONDS},
                name=f"simulator:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the request log ------------------------------------------------------------------

    def count(self, path_prefix: str = "/v1/") -> int:
        """How many requests were made to paths starting with `path_prefix`."""
        return sum(1 for request in self.requests if request.path.startswith(path_prefix))

    def list_requests(self) -> list[Request]:
        """The page fetches (GET /v1/batches) in arrival order."""
        return [r for r in self.requests if r.path == LIST_PATH and r.method == "GET"]

    def clear_requests(self) -> None:
        with self._log_lock:
            self.requests.clear()

    # --- answering ------------------------------------------------------------------------

    def respond(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """The reply to one request, or None to drop the connection without answering."""
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        reply = self._route(method, path, query, headers, body)
        with self._log_lock:
            self.requests.append(
                Request(method, path, query, reply.status if reply else 0, time.monotonic())
            )
        return reply

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        if path.startswith("/_sim/"):
            return self._control(method, path, query, body)
        batch_id = path[len(ITEM_PREFIX) :] if path.startswith(ITEM_PREFIX) else None
        if method != "GET" or (path != LIST_PATH and (not batch_id or "/" in batch_id)):
            return NOT_FOUND
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return UNAUTHORIZED
        if self.faults.latency_ms > 0:
            time.sleep(self.faults.latency_ms / 1000)
        fault = self.faults.take()
        if fault is None or fault.kind == "slow":
            if fault is not None:
                time.sleep(fault.seconds)  # long enough to trip the client's timeout
            return self._answer(query, batch_id)
        return self._faulty(fault, query, batch_id)

    def _answer(self, query: dict[str, str], batch_id: str | None) -> Reply:
        payload = self._list(query) if batch_id is None else self._get(batch_id)
        if isinstance(payload, Reply):
            return payload
        return json_reply(200, payload, ((TRACE_HEADER, os.urandom(16).hex()),))

    def _faulty(self, fault: Fault, query: dict[str, str], batch_id: str | None) -> Reply | None:
        if fault.kind == "drop":
            return None
        if fault.kind == "bad_json":
            return Reply(200, PROXY_PAGE.encode(), HTML)
        if fault.kind == "no_data":
            return json_reply(200, {"object": "list", "has_more": False})
        if fault.kind == "malformed":
            payload = self._list(query) if batch_id is None else self._get(batch_id)
            if isinstance(payload, Reply):
                return payload
            items = payload.get("data") or [payload]
            items[len(items) // 2].pop("id", None)
            return json_reply(200, payload)
        return fault.reply()

    def _list(self, query: dict[str, str]) -> dict[str, Any] | Reply:
        limit = self._limit(query.get("limit"))
        if isinstance(limit, Reply):
            return limit
        faults = self.faults
        after = None if faults.ignore_after else query.get("after") or None
        if faults.single_page:
            limit = max(1, self.world.visible_count())
        try:
            page = self.world.list_page(limit, after, oldest_first=faults.oldest_first)
        except UnknownBatchError:
            return api_error(f"invalid after: no batch with id {after!r}")
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
        return batch

    # --- control API for out-of-process users ---------------------------------------------

    def _control(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
        try:
            if (method, path) == ("POST", "/_sim/advance"):
                self.world.advance(int(query.get("seconds", "")))
                return json_reply(200, self._state())
            if (method, path) == ("POST", "/_sim/faults"):
                self.faults.update(orjson.loads(body or b"{}"))
                return json_reply(200, self.faults.as_dict())
            if (method, path) == ("GET", "/_sim/faults"):
                return json_reply(200, self.faults.as_dict())
            if (method, path) == ("GET", "/_sim/state"):
                return json_reply(200, self._state())
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return api_error(str(exc))
        return NOT_FOUND

    def _state(self) -> dict[str, Any]:
        world = self.world
        return {
            "now": world.now,
            "batches": world.size,
            "visible": world.visible_count(),
            "requests": len(self.requests),
        }


# --- HTTP plumbing ----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, sim: Simulator) -> None:
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
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
        # Clients that time out or vanish mid-answer are expected (slow and drop faults).
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
        reply = self.server.sim.respond(method, self.path, self.headers, body)
        if reply is None:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)


def serve(
    port: int,
    batches: int,
    seed: int,
    api_key: str | None = None,
    latency_ms: float = 0,
    host: str = "127.0.0.1",
) -> None:
    """Serve a fresh world until Ctrl-C; the clock stands still unless POST /_sim/advance."""
    world = World(batches=batches, seed=seed)
    simulator = Simulator(world, port=port, api_key=api_key or DEFAULT_API_KEY, host=host)
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
