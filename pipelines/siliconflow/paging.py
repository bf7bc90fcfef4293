"""Which pages to read: newest first down to what the warehouse has, then the open batches."""

import itertools
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dlt.sources.helpers.rest_client import RESTClient
from requests.exceptions import HTTPError, RequestException

from pipelines.errors import ApiError

from .helpers import (
    BatchesPaginator,
    check_response,
    describe_failure,
    get_batch,
    page_after,
    redact,
)
from .rows import check_batches
from .settings import BATCHES_PATH, PARALLEL_REQUESTS


@dataclass(frozen=True)
class SyncPlan:
    """What the warehouse already holds, so an incremental sync reads only what may have changed.

    Attributes:
        newest_created_at: created_at (unix seconds) of the newest stored batch; None reads all.
        open_positions: id → position (1 = newest) of each stored batch that was not terminal.
        previous_ids: id → the id stored just before it (newest first), for each open batch:
            `after` that id, a page starts with the open batch.
        is_first_load: the warehouse holds no batch yet, so nothing needs merging.
    """

    newest_created_at: int | None = None
    open_positions: dict[str, int] = field(default_factory=dict)
    previous_ids: dict[str, str | None] = field(default_factory=dict)
    is_first_load: bool = True

    @property
    def is_full(self) -> bool:
        return self.newest_created_at is None


@dataclass
class ReadStats:
    pages: int = 0
    lookups: int = 0
    batches: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def read_batches(
    client: RESTClient, plan: SyncPlan, page_size: int, stats: ReadStats
) -> Iterator[list[dict]]:
    """Yield lists of batch objects: every batch created since the plan, and every open one.

    Pages are read newest first until the newest stored batch is behind us (to the end on a
    full sync); the open batches further down are re-read by the pages that start at them, and
    any still missing are looked up one by one.
    """
    walk = _PageWalk(plan, stats)
    try:
        for page in client.paginate(
            BATCHES_PATH,
            params={"limit": page_size},
            paginator=BatchesPaginator(),
            hooks={"response": [check_response]},
        ):
            batches = walk.accept(page)
            if batches:
                yield batches
            if walk.done:
                break
        unseen = walk.still_open()
        # A server may serve fewer than `limit` per page; a re-read page covers what it serves.
        served = min(page_size, walk.longest_page) or page_size
        found = yield from reread_pages(client, plan, unseen, served, stats)
        yield from look_up(client, [i for i in unseen if i not in found], stats)
    except HTTPError as error:
        raise describe_failure(error.response) from None
    except RequestException as error:
        raise ApiError(
            f"could not reach the SiliconFlow API after retries ({type(error).__name__}: "
            f"{redact(str(error))}); check the network and sources.siliconflow.base_url"
        ) from None


def reread_pages(
    client: RESTClient,
    plan: SyncPlan,
    open_positions: dict[str, int],
    page_size: int,
    stats: ReadStats,
) -> Generator[list[dict], None, set[str]]:
    """Re-read the pages that start at each still-open batch, in parallel; return ids found.

    The warehouse knows which batch precedes each open one, so `after` it the page starts with
    that open batch and covers the next ones too: never more requests than one lookup each,
    usually far fewer, and no waiting for page after page. Only the open batches on those pages
    are yielded: the terminal ones around them are stored already, and a terminal batch never
    changes, so loading them again would only cost time and memory.
    """
    starts = page_starts(plan, open_positions, page_size)
    found: set[str] = set()
    first_ids: set[str] = set()
    misplaced = False
    window = PARALLEL_REQUESTS * 2  # pages in flight: enough to hide latency, few to hold
    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        for offset in range(0, len(starts), window):
            wanted = starts[offset : offset + window]
            pages = pool.map(lambda start: page_after(client, start[0], page_size), wanted)
            for page, (_, first) in zip(pages, wanted, strict=True):
                check_batches(page)
                stats.pages += 1
                misplaced = misplaced or not page or page[0]["id"] != first
                if not page or page[0]["id"] in first_ids:
                    continue
                first_ids.add(page[0]["id"])
                still_open = [
                    batch
                    for batch in page
                    if batch["id"] in open_positions and batch["id"] not in found
                ]
                found.update(batch["id"] for batch in still_open)
                stats.batches += len(page)
                if still_open:
                    yield still_open
    if misplaced:
        stats.warn(
            "a page read `after` a stored batch did not start with the batch after it (the API "
            "ignores `after` or changed its order): looked up the open batches it missed"
        )
    return found


def page_starts(
    plan: SyncPlan, open_positions: dict[str, int], page_size: int
) -> list[tuple[str, str]]:
    """(`after` cursor, open batch the page starts with) for pages covering every open batch."""
    starts: list[tuple[str, str]] = []
    covered_to = 0
    for batch_id, position in sorted(open_positions.items(), key=lambda item: item[1]):
        previous = plan.previous_ids.get(batch_id)
        if position > covered_to and previous:
            starts.append((previous, batch_id))
            covered_to = position + page_size - 1
    return starts


def look_up(client: RESTClient, batch_ids: list[str], stats: ReadStats) -> Iterator[list[dict]]:
    """`GET /batches/{id}` for each id, a few at a time: each one is a full round trip."""
    if not batch_ids:
        return
    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        found = [batch for batch in pool.map(lambda i: get_batch(client, i), batch_ids) if batch]
    check_batches(found)
    stats.lookups += len(batch_ids)
    stats.batches += len(found)
    if len(found) < len(batch_ids):
        stats.warn(
            f"{len(batch_ids) - len(found)} batches open at the last sync are gone from the API "
            "(HTTP 404); their last known state is kept"
        )
    yield found


class _PageWalk:
    """Decide, page by page, whether more pages can hold anything new or still open."""

    def __init__(self, plan: SyncPlan, stats: ReadStats) -> None:
        self.plan = plan
        self.stats = stats
        self.longest_page = 0
        self.unseen_open = dict(plan.open_positions)
        self.read_everything = plan.is_full
        self.done = False
        self.first_ids: set[str] = set()
        self.last_created_at: int | None = None

    def accept(self, page: list[Any]) -> list[dict]:
        check_batches(page)
        self.stats.pages += 1
        if page and page[0]["id"] in self.first_ids:
            self.stats.warn(
                "the API returned the same page twice (it ignores `after`): stopped paging and "
                f"kept the {self.stats.batches} batches read; a later sync reads the rest"
            )
            self.done = True
            return []
        if page:
            self.first_ids.add(page[0]["id"])
        self.longest_page = max(self.longest_page, len(page))
        self._check_order(page)
        self.stats.batches += len(page)
        for batch in page:
            self.unseen_open.pop(batch["id"], None)
        if not self.read_everything:
            self._decide_after(page)
        return page

    def _check_order(self, page: list[dict]) -> None:
        created = [batch.get("created_at") for batch in page]
        if self.last_created_at is not None:
            created.insert(0, self.last_created_at)
        created = [value for value in created if isinstance(value, int)]
        if any(later > earlier for earlier, later in itertools.pairwise(created)):
            if not self.read_everything:
                self.stats.warn(
                    "the API does not list batches newest first: reading every page so that "
                    "nothing is missed"
                )
            self.read_everything = True
        if created:
            self.last_created_at = created[-1]

    def _decide_after(self, page: list[dict]) -> None:
        # Past the newest stored batch every new one has been read; open batches further down
        # are re-read by their own pages (see `reread_pages`).
        oldest = self.last_created_at
        if page and oldest is not None and oldest < self.plan.newest_created_at:
            self.done = True

    def still_open(self) -> dict[str, int]:
        if self.read_everything or not self.done:
            return {}
        return self.unseen_open
