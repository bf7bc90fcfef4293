"""HTTP details of the SiliconFlow API: the client, its retries, what its answers mean, and
downloading ahead of the caller."""

import os
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from dlt.sources.helpers.requests import Client
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
from requests import Response
from requests.exceptions import HTTPError
from requests.utils import get_environ_proxies

from pipelines.errors import ApiError, AuthError, SfBatchesError

from .settings import BATCHES_PATH

_PARSED = "_sfbatches_json"
_END = object()
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a transient failure becomes an error (exit 4)."""

    max_attempts: int = 6
    backoff_factor: float = 1.0
    max_delay_s: float = 60.0
    timeout_s: float = 60.0


class BatchesPaginator(JSONResponseCursorPaginator):
    """`after` = `last_id`, or the last item's id when the server leaves `last_id` out."""

    def __init__(self) -> None:
        super().__init__(cursor_path="last_id", cursor_param="after", has_more_path="has_more")

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        super().update_state(response, data)
        if self._next_reference is None and data:
            self._next_reference = data[-1].get("id")
        if self._next_reference is None:
            self._has_next_page = False


class BatchesClient(RESTClient):
    """dlt's REST client, minus per-page work `check_response` has already done."""

    def extract_response(self, response: Response, data_selector: Any) -> list[Any]:
        # dlt compiles the JSONPath selector again on every page; `data` is known to be there.
        return parsed_json(response)["data"] or []


def make_client(base_url: str, api_key: str, retry: RetryPolicy) -> RESTClient:
    http = Client(
        request_timeout=retry.timeout_s,
        request_max_attempts=retry.max_attempts,
        request_backoff_factor=retry.backoff_factor,
        request_max_retry_delay=retry.max_delay_s,
        retry_condition=_is_unparsable_success,
        raise_for_status=False,
    )
    session = http.session
    # Proxy and CA settings come from the environment once, not again for every page.
    session.proxies = get_environ_proxies(base_url)
    session.verify = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    session.trust_env = False
    return BatchesClient(
        base_url=base_url,
        auth=BearerTokenAuth(api_key),
        session=session,
        data_selector="data",
    )


def _is_unparsable_success(response: Response | None, exception: BaseException | None) -> bool:
    """A 200 whose body is not JSON (a proxy's HTML page) is worth another try."""
    return response is not None and response.ok and parsed_json(response) is None


def parsed_json(response: Response) -> Any:
    # Parsed once with orjson and cached: dlt's client and paginator both call `.json()`.
    if not hasattr(response, _PARSED):
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            parsed = None
        setattr(response, _PARSED, parsed)
        response.json = lambda **_: parsed  # type: ignore[method-assign]
    return getattr(response, _PARSED)


def check_response(response: Response, *args: Any, **kwargs: Any) -> None:
    """Response hook: raise on every unusable answer while dlt's retry can still see it."""
    body = parsed_json(response)
    unusable = not isinstance(body, dict) or ("data" not in body and "id" not in body)
    if not response.ok or unusable:
        raise HTTPError(response=response)


def describe_failure(response: Response) -> SfBatchesError:
    """The error a user sees for an answer that stayed unusable after any retries."""
    status = response.status_code
    if status in (401, 403):
        return AuthError(
            f"authentication refused (HTTP {status}: {_api_message(response)}): "
            "check SOURCES__SILICONFLOW__API_KEY or SILICONFLOW_API_KEY"
        )
    if not response.ok:
        hint = "check sources.siliconflow.base_url" if status == 404 else "retry later"
        return ApiError(
            f"the SiliconFlow API failed (HTTP {status}{_api_code(response)}: "
            f"{_api_message(response)}) at {_where(response)}; {hint}"
        )
    body = parsed_json(response)
    if body is None:
        return ApiError(
            f"the SiliconFlow API answered {_where(response)} with a body that is not JSON "
            f"({response.headers.get('content-type', 'no content type')}); retry later"
        )
    return ApiError(
        f"the SiliconFlow API answered {_where(response)} without `data` and without an id "
        f"(keys: {sorted(body)[:8] if isinstance(body, dict) else type(body).__name__}); "
        "nothing was loaded, retry later or report it to SiliconFlow"
    )


def _where(response: Response) -> str:
    return f"{response.request.method} {response.request.path_url}" if response.request else "?"


def _api_code(response: Response) -> str:
    body = parsed_json(response)
    code = body.get("code") if isinstance(body, dict) else None
    return f", code {code}" if code is not None else ""


def _api_message(response: Response) -> str:
    body = parsed_json(response)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    text = body if isinstance(body, str) else response.text
    return " ".join(str(text).split())[:200] or response.reason or "no message"


def page_after(client: RESTClient, cursor: str, page_size: int) -> list[Any]:
    try:
        response = client.get(
            BATCHES_PATH,
            params={"limit": page_size, "after": cursor},
            hooks={"response": [check_response]},
        )
    except HTTPError as error:
        # The batch before it is gone, so `after` it is refused: look the open one up instead.
        if error.response is not None and error.response.status_code == 400:
            return []
        raise
    return parsed_json(response)["data"] or []


def get_batch(client: RESTClient, batch_id: str) -> dict | None:
    try:
        response = client.get(f"{BATCHES_PATH}/{batch_id}", hooks={"response": [check_response]})
    except HTTPError as error:
        # The API's own JSON "no such batch" means it is gone; the router's plain-text 404
        # means a wrong base URL, which must fail.
        if _is_missing_batch(error.response):
            return None
        raise
    batch = parsed_json(response)
    if isinstance(batch, dict) and isinstance(batch.get("data"), dict):
        batch = batch["data"]
    return batch


def _is_missing_batch(response: Response | None) -> bool:
    return (
        response is not None and response.status_code == 404 and parsed_json(response) is not None
    )


def redact(text: str) -> str:
    # requests puts the URL into connection errors; the key never travels in the URL, but a
    # user-supplied base URL could hold credentials.
    return text.split("?")[0][:200]


def prefetched(items: Generator[T, None, None], depth: int) -> Iterator[T]:
    """`items`, produced by a thread of their own up to `depth` ahead of the caller.

    An error in the thread is raised here; a caller that stops early stops the thread too.
    dlt's `parallelized` resources do not do this: they run one `next()` of a generator at a
    time, so the pages of a chunk would still download and convert one after the other.
    """
    buffer: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(entry: tuple[Any, BaseException | None]) -> bool:
        while not stopped.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as error:  # every error belongs to the caller
            offer((_END, error))
        finally:
            items.close()

    threading.Thread(target=produce, name="sfbatches-prefetch", daemon=True).start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stopped.set()
