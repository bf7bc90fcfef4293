"""HTTP to the SiliconFlow API: dlt's REST client and retries, with what a cron sync needs.

Every request of a sync goes through `ApiAdapter`, so three promises hold whatever requests
does (redirects, retries, threads): the key goes only to URLs under `base_url`; a request ends
within `request_timeout` even when its body trickles in a byte at a time; and no request starts
once the sync's own deadline has passed.
"""

import codecs
import os
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.client import IncompleteRead, RemoteDisconnected
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from dlt.common import jsonpath
from dlt.sources.helpers.requests import Client
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from dlt.sources.helpers.rest_client.client import PageData
from dlt.sources.helpers.rest_client.paginators import BasePaginator
from requests import PreparedRequest, Request, Response
from requests.adapters import HTTPAdapter
from requests.exceptions import (
    ChunkedEncodingError,
    HTTPError,
    ReadTimeout,
    RequestException,
    Timeout,
)
from requests.exceptions import JSONDecodeError as RequestsJSONDecodeError
from requests.utils import get_environ_proxies
from urllib3.exceptions import NameResolutionError, ProtocolError, ReadTimeoutError

from pipelines.errors import (
    STOPS,
    ApiError,
    AuthError,
    RateLimited,
    SfBatchesError,
    SyncTimeout,
    first_line,
)

from .settings import BATCHES_PATH, FIRST_TRANSIENT_CODE, PARALLEL_REQUESTS, SUCCESS_CODES

READ_BYTES = 1 << 16
NOT_JSON = object()


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a transient failure becomes an error (exit 4)."""

    max_attempts: int = 6
    backoff_factor: float = 1.0
    max_delay_s: float = 60.0
    timeout_s: float = 60.0


class Deadline:
    """The moment a whole sync must be done by, on the monotonic clock."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.ends_at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return float("inf") if self.ends_at is None else self.ends_at - time.monotonic()

    def budget(self, timeout_s: float) -> float:
        """Seconds the next request may take; refuses to start one once time is up."""
        self.check()
        return min(timeout_s, self.remaining())

    def check(self) -> None:
        if self.remaining() <= 0:
            raise SyncTimeout(
                f"the sync ran longer than sources.siliconflow.sync_timeout ({self.seconds:g} s) "
                "and stopped; the database keeps its previous state: raise sync_timeout, or "
                "check why the API is slow"
            )


class ApiResponse(Response):
    """A response whose whole body was read within its deadline; its JSON is parsed once."""

    # What requests' adapter sets on a response (those it set), by their public names.
    FIELDS = (
        "status_code",
        "headers",
        "raw",
        "url",
        "encoding",
        "reason",
        "cookies",
        "elapsed",
        "request",
        "connection",
        "history",
    )

    def __init__(self, response: Response, body: bytes) -> None:
        super().__init__()
        for name in self.FIELDS:
            if hasattr(response, name):
                setattr(self, name, getattr(response, name))
        self.body = body
        try:
            # JSON forbids a byte order mark, but some servers write one; what follows is JSON
            self.parsed: Any = orjson.loads(body.removeprefix(codecs.BOM_UTF8))
        except orjson.JSONDecodeError:
            self.parsed = NOT_JSON

    @property
    def content(self) -> bytes:  # type: ignore[override]
        return self.body

    def json(self, **kwargs: Any) -> Any:
        if self.parsed is NOT_JSON:
            raise RequestsJSONDecodeError("the body is not JSON", self.text[:80], 0)
        return self.parsed


def parsed_body(response: Response) -> Any:
    """The JSON body, or None when it is not JSON."""
    if isinstance(response, ApiResponse):
        return None if response.parsed is NOT_JSON else response.parsed
    try:
        return response.json()
    except ValueError:
        return None


def is_under(url: str, base_url: str) -> bool:
    """Whether `url` lies under `base_url`: same scheme, host and port, and below its path."""
    target, base = urlsplit(url), urlsplit(base_url)
    base_path = base.path.rstrip("/")
    return (target.scheme, target.hostname, _port(target)) == (
        base.scheme,
        base.hostname,
        _port(base),
    ) and (target.path == base_path or target.path.startswith(base_path + "/"))


def _port(parts: Any) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class ApiAdapter(HTTPAdapter):
    """requests' transport, keeping the key to `base_url` and every request within its time."""

    def __init__(self, base_url: str, timeout_s: float, deadline: Deadline) -> None:
        super().__init__(pool_maxsize=PARALLEL_REQUESTS)
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.deadline = deadline

    def send(  # type: ignore[override]
        self, request: PreparedRequest, stream: bool = False, timeout: Any = None, **kwargs: Any
    ) -> Response:
        if not is_under(request.url or "", self.base_url):
            # A redirect, or a signed storage URL: the signature is the credential there.
            request.headers.pop("Authorization", None)
        budget = self.deadline.budget(self.timeout_s)
        response = super().send(request, stream=True, timeout=budget, **kwargs)
        if stream:
            return response
        return ApiResponse(response, read_body(response, time.monotonic() + budget, budget))


def read_body(response: Response, ends_at: float, budget: float) -> bytes:
    """The whole body, or ReadTimeout (retried) once `ends_at` passes, however it trickles."""
    chunks = []
    for chunk in read_chunks(response):
        chunks.append(chunk)
        if time.monotonic() > ends_at:
            response.close()
            raise ReadTimeout(f"the answer took longer than {budget:g} s", request=response.request)
    return b"".join(chunks)


def read_chunks(response: Response, deadline: "Deadline | None" = None) -> Iterator[bytes]:
    """The body of a streamed response as it arrives, each read bounded by the request's
    timeout; SyncTimeout once the sync's deadline passes."""
    raw = response.raw
    try:
        while chunk := raw.read1(READ_BYTES, decode_content=True):
            yield chunk
            STOPS.check()
            if deadline is not None:
                deadline.check()
    except ProtocolError as error:
        # urllib3's first argument says why; the whole error reads as a tuple of two
        why = error.args[0] if error.args else error
        raise ChunkedEncodingError(why, request=response.request) from None
    except ReadTimeoutError as error:
        raise ReadTimeout(error, request=response.request) from None
    raw.release_conn()


# --- what an answer means ---------------------------------------------------------------------


def api_code(body: Any) -> Any:
    return body.get("code") if isinstance(body, dict) else None


def is_error_envelope(body: Any) -> bool:
    """SiliconFlow's `{"code": 50505, "message": …, "data": null}`, even with HTTP 200."""
    return (
        isinstance(body, dict)
        and "code" in body
        and body["code"] not in SUCCESS_CODES
        and not isinstance(body.get("data"), list | dict)
        and "id" not in body
    )


def is_success(response: Response) -> bool:
    return 200 <= response.status_code < 300


def is_transient_success(response: Response | None, exception: BaseException | None) -> bool:
    """A 2xx worth another try: a proxy's HTML page, or an overload envelope (code 50xxx).
    A streamed body (a result file) is its reader's to judge, never read here."""
    if not isinstance(response, ApiResponse) or not is_success(response):
        return False
    body = parsed_body(response)
    return body is None or (is_error_envelope(body) and _is_transient_code(api_code(body)))


def _is_transient_code(code: Any) -> bool:
    try:
        return int(code) >= FIRST_TRANSIENT_CODE
    except (TypeError, ValueError):
        return False


def retry_after_s(response: Response) -> float | None:
    """The wait `Retry-After` asks for, in seconds (a number or an HTTP date)."""
    header = (response.headers.get("Retry-After") or "").strip()
    if not header:
        return None
    if header.isdigit():
        return float(header)
    try:
        return parsedate_to_datetime(header).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _is_transient(response: Response) -> bool:
    return (
        response.status_code == 429
        or response.status_code >= 500
        or (is_transient_success(response, None))
    )


def _is_listing(response: Response) -> bool:
    """Whether the answer is to `GET /batches` (not to one batch's own route)."""
    request = response.request
    path = urlsplit(request.url or "").path if request is not None else ""
    return path.rstrip("/").endswith(f"/{BATCHES_PATH}")


def _where(response: Response) -> str:
    request = response.request
    return f"{request.method} {request.path_url}" if request is not None else "?"


def _short(url: str | None) -> str:
    return redact(url or "")[:120]


def _api_code_text(response: Response) -> str:
    code = api_code(parsed_body(response))
    return f", code {code}" if code is not None else ""


def _api_message(response: Response) -> str:
    body = parsed_body(response)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    text = body if isinstance(body, str) else response.text
    return " ".join(str(text).split())[:200] or response.reason or "no message"


# A URL's query, as requests quotes URLs in its errors.
QUERY = re.compile(r"\?[^\s'\")]*")
# What met a request that got no (whole) answer, most telling first, and how a person says it.
NO_ANSWER = (
    (NameResolutionError, "the host name did not resolve"),
    (ConnectionRefusedError, "the connection was refused"),
    (RemoteDisconnected, "the server closed the connection without answering"),
    (ConnectionResetError, "the connection was reset"),
    (IncompleteRead, "the connection broke off in the middle of the answer"),
    (ChunkedEncodingError, "the connection broke off in the middle of the answer"),
    (Timeout, "no answer in time"),
    (ssl.SSLError, "the TLS handshake failed"),
)


def redact(text: str) -> str:
    """`text` without the queries of the URLs it quotes (the key never travels in a URL, but a
    signed storage URL carries its signature in the query, and a base URL could hold one), cut
    at a word past 200 characters."""
    text = QUERY.sub("?…", text)
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " …"


def plain_reason(error: BaseException) -> str:
    """Why a request got no (whole) answer, and where, as a person says it; else the error's
    own words."""
    causes = list(_causes(error))
    for kind, said in NO_ANSWER:
        if any(isinstance(cause, kind) for cause in causes):
            request = getattr(error, "request", None)
            return f"{said} at {_short(request.url)}" if request is not None else said
    return f"{type(error).__name__}: {redact(first_line(error))}"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors inside it: requests and urllib3 wrap them in `args` and `reason`."""
    seen: set[int] = set()
    waiting = [error]
    while waiting:
        cause = waiting.pop(0)
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        inner = [*cause.args, getattr(cause, "reason", None), cause.__cause__, cause.__context__]
        waiting += [found for found in inner if isinstance(found, BaseException)]


# --- the API ----------------------------------------------------------------------------------


class BatchApi:
    """The batch routes of one account, over dlt's REST client and a retrying session."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        retry: RetryPolicy,
        deadline: Deadline,
        key_source: str = "the configuration",
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.key_source = key_source
        self.retry = retry
        self.deadline = deadline
        http = Client(
            request_timeout=retry.timeout_s,
            request_max_attempts=retry.max_attempts,
            request_backoff_factor=retry.backoff_factor,
            request_max_retry_delay=retry.max_delay_s,
            retry_condition=is_transient_success,
            raise_for_status=False,
        )
        session = http.session
        adapter = ApiAdapter(base_url, retry.timeout_s, deadline)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Proxy and CA settings come from the environment once, not again for every page.
        session.proxies = get_environ_proxies(base_url)
        session.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        session.trust_env = False
        self.client = RESTClient(
            base_url=base_url,
            auth=BearerTokenAuth(api_key),
            session=session,
            # compiled once: dlt compiles a selector given as text again for every page
            data_selector=jsonpath.compile_path("data"),
        )
        self.hooks = {"response": [self.check]}

    def pages(self, page_size: int, after: str | None = None) -> Iterator[PageData[Any]]:
        """Pages from the top (or `after` a batch id); `page.paginator` says why paging stopped."""
        return self.client.paginate(
            BATCHES_PATH, paginator=BatchPages(page_size, after), hooks=self.hooks
        )

    def page_after(self, cursor: str | None, page_size: int) -> list[Any]:
        """One page `after` a batch id (from the top when None); [] when that id is unknown."""
        params: dict[str, Any] = {"limit": page_size}
        if cursor is not None:
            params["after"] = cursor
        try:
            response = self.client.get(BATCHES_PATH, params=params, hooks=self.hooks)
        except HTTPError as error:
            # The batch it names is gone, so `after` it is refused.
            if error.response is not None and error.response.status_code == 400:
                return []
            raise
        return response.json()["data"] or []

    def batch(self, batch_id: str) -> dict | None:
        """One batch by id; None when the API says it does not exist."""
        try:
            # One path segment whatever the id holds: a `/`, `?` or `#` in it would ask for
            # another route, another batch or a truncated id.
            path = f"{BATCHES_PATH}/{quote(batch_id, safe='')}"
            response = self.client.get(path, hooks=self.hooks)
        except HTTPError as error:
            # The API's own JSON "no such batch" means it is gone; the router's plain-text 404
            # means a wrong base URL, which must fail.
            if _is_missing_batch(error.response):
                return None
            raise
        batch = response.json()
        if isinstance(batch, dict) and isinstance(batch.get("data"), dict):
            batch = batch["data"]
        return batch

    # --- answers ------------------------------------------------------------------------------

    def check(self, response: Response, *args: Any, **kwargs: Any) -> None:
        """Response hook: raise on every unusable answer while dlt's retry can still see it."""
        if response.is_redirect:
            return  # requests follows it; the adapter keeps the key to base_url
        self.refuse_long_waits(response)
        body = parsed_body(response)
        usable = isinstance(body, dict) and not is_error_envelope(body)
        if not is_success(response) or not usable or ("data" not in body and "id" not in body):
            raise HTTPError(response=response)
        if _is_listing(response) and not isinstance(body.get("data", ""), list | None):
            raise HTTPError(response=response)  # dlt would take one object for a page of it

    def refuse_long_waits(self, response: Response) -> None:
        """Fail at once when told to wait longer than the retries may (or the sync has left)."""
        wait = retry_after_s(response) if response.status_code in (429, 503) else None
        if wait is None or wait <= min(self.retry.max_delay_s, self.deadline.remaining()):
            return
        raise RateLimited(
            self.hidden(
                f"the SiliconFlow API asks to wait {_duration(wait)} (HTTP {response.status_code}"
                f"{_api_code_text(response)}: {_api_message(response)}; Retry-After: "
                f"{response.headers['Retry-After']}), longer than the retries may wait "
                f"({self.retry.max_delay_s:g} s): stopped at once; the database keeps its "
                "previous state and the next run tries again"
            )
        )

    def hidden(self, text: str) -> str:
        """`text` without the key: an API may quote the key it was sent in its messages."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def failure(self, error: BaseException) -> SfBatchesError | None:
        """What requests raised after retries, as the one line a user reads."""
        if isinstance(error, HTTPError) and error.response is not None:
            return self.describe(error.response)
        if isinstance(error, RequestException):
            return ApiError(
                f"could not reach the SiliconFlow API after retries ({plain_reason(error)}); "
                "check the network and sources.siliconflow.base_url"
            )
        return None

    def describe(self, response: Response) -> SfBatchesError:
        """The error for an answer that stayed unusable after any retries."""
        kind, text = self.meaning(response)
        return kind(self.hidden(text))

    def meaning(self, response: Response) -> tuple[type[SfBatchesError], str]:
        """Which failure an unusable answer is, and the line that says so."""
        status, where = response.status_code, _where(response)
        if not is_under(response.url or "", self.base_url):
            return ApiError, (
                f"the SiliconFlow API redirected to {_short(response.url)}, outside base_url, "
                f"where the key is not sent, and that answered HTTP {status}: set "
                "sources.siliconflow.base_url to where the API now lives"
            )
        if status in (401, 403):
            return AuthError, (
                f"authentication refused (HTTP {status}: {_api_message(response)}) for the key "
                f"from {self.key_source}: check that key (a key belongs to one platform: "
                "api.siliconflow.cn or, set as base_url, api.siliconflow.com)"
            )
        if 300 <= status < 400:
            location = response.headers.get("Location")
            target = f"to {_short(location)}" if location else "without a Location"
            return ApiError, (
                f"the SiliconFlow API answered {where} with a redirect (HTTP {status}) {target} "
                "that could not be followed: check sources.siliconflow.base_url"
            )
        body = parsed_body(response)
        tries = f" after {self.retry.max_attempts} tries" if _is_transient(response) else ""
        if not is_success(response) or is_error_envelope(body):
            hint = _what_to_do(status)
            return ApiError, (
                f"the SiliconFlow API failed (HTTP {status}{_api_code_text(response)}: "
                f"{_api_message(response)}) at {where}{tries}; {hint}"
            )
        if body is None:
            return ApiError, (
                f"the SiliconFlow API answered {where} with a body that is not JSON "
                f"({response.headers.get('content-type', 'no content type')}){tries}; retry later"
            )
        if isinstance(body, dict) and _is_listing(response):
            found = f"`data` is {type(body['data']).__name__}" if "data" in body else "no `data`"
            return ApiError, (
                f"the SiliconFlow API answered {where} without `data` as a list of batches "
                f"({found}; keys: {sorted(body)[:8]}); nothing was loaded, retry later or report "
                "it to SiliconFlow"
            )
        return ApiError, (
            f"the SiliconFlow API answered {where} without `data` and without an id "
            f"(keys: {sorted(body)[:8] if isinstance(body, dict) else type(body).__name__}); "
            "nothing was loaded, retry later or report it to SiliconFlow"
        )


def _what_to_do(status: int) -> str:
    """The advice for an answer that failed: a wrong address or request is not mended by
    waiting."""
    if status == 404:
        return "check sources.siliconflow.base_url"
    if 400 <= status < 500 and status not in (408, 429):
        return (
            "the API refused the request itself: check sources.siliconflow.page_size and base_url"
        )
    return "retry later"


def _is_missing_batch(response: Response | None) -> bool:
    return (
        response is not None and response.status_code == 404 and parsed_body(response) is not None
    )


class BatchPages(BasePaginator):
    """OpenAI-style cursor paging over `GET /batches`.

    `after` is the page's `last_id` when that names a batch on the page, else the page's last
    item (as OpenAI's SDK pages): a `last_id` pointing further down would skip batches, and a
    server that lists a batch again at the end of a page means its `last_id`. Paging stops when
    `has_more` is false, at an empty page, and at a cursor already asked with, so a server that
    hands a cursor back cannot make it loop; `stop` says which.
    """

    def __init__(self, page_size: int, after: str | None = None) -> None:
        super().__init__()
        self.page_size = page_size
        self.after = after
        self.asked = {after}
        self.more = True
        self.stop = ""

    @property
    def has_next_page(self) -> bool:
        return self.more

    def init_request(self, request: Request) -> None:
        request.params = {**(request.params or {}), "limit": self.page_size}
        if self.after is not None:
            request.params["after"] = self.after

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        body = response.json()
        cursor = _cursor(body.get("last_id"), data or [])
        if _says_no(body.get("has_more")):
            self.finish("end")
        elif not data:
            self.finish("empty")
        elif cursor is None or cursor in self.asked:
            self.finish("loop")
        else:
            self.after = cursor
            self.asked.add(cursor)

    def update_request(self, request: Request) -> None:
        request.params["after"] = self.after

    def finish(self, why: str) -> None:
        self.more = False
        self.stop = why


def _says_no(has_more: Any) -> bool:
    """`has_more` is false, 0, or a text meaning either, in any case and spacing."""
    if isinstance(has_more, str):
        return has_more.strip().lower() in ("false", "0", "no")
    return has_more in (False, 0)


def _cursor(last_id: Any, page: list[Any]) -> Any:
    ids = [batch.get("id") for batch in page if isinstance(batch, dict)]
    if last_id is not None and last_id in ids:
        return last_id
    return ids[-1] if ids else last_id
