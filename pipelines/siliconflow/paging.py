"""Which pages to read: from the top down to ground the warehouse holds, the batches open at
the last sync, and a rotating sweep over the older pages.

Nothing here trusts one timestamp. A walk from the top stops once it meets a run of batches
the warehouse already holds; a walk that ended before that (the listing stopped early, a cursor
looped) leaves a floor that the next walk must pass first; and the sweep re-reads a few older
pages every sync, so a batch that any anomaly left out is stored within a bounded number of
syncs whatever happened.
"""

import hashlib
import itertools
import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from requests.exceptions import HTTPError, RequestException

from pipelines.vocabulary import KNOWN_STATUSES, normal_status

from .client import BatchApi
from .prefetch import worker_pool
from .rows import ExtraColumns, batch_text, check_batches, fingerprint, rows_table
from .settings import CONNECT_RUN, MERGE_AFTER, PARALLEL_REQUESTS

BatchPages = Generator[list[dict], None, Any]
STATE_SCHEMA = pa.schema(
    [("floor_id", pa.string()), ("floor_created_at", pa.int64()), ("sweep_after", pa.string())]
)


def id_digest(batch_id: str) -> int:
    """64 bits of the id's MD5, the same number as DuckDB's `md5_number_lower(id)`."""
    return int.from_bytes(hashlib.md5(batch_id.encode()).digest()[8:], "little")


def digests_of(batches: list[dict]) -> np.ndarray:
    return np.fromiter((id_digest(b["id"]) for b in batches), np.uint64, len(batches))


def find_digests(digests: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each wanted digest sits in the sorted `digests`, and whether it is there."""
    if not len(digests):
        return np.zeros(len(wanted), np.intp), np.zeros(len(wanted), bool)
    at = np.minimum(np.searchsorted(digests, wanted), len(digests) - 1)
    return at, digests[at] == wanted


class HeldIds:
    """The ids the warehouse holds, as sorted 64-bit digests: 8 bytes a batch, not a set of
    strings. A digest collision can only lengthen a run of held batches by one."""

    def __init__(self, digests: np.ndarray | None = None) -> None:
        self.digests = np.sort(digests) if digests is not None else np.empty(0, np.uint64)

    def __len__(self) -> int:
        return len(self.digests)

    def flags(self, batches: list[dict]) -> list[bool]:
        return self.holds(digests_of(batches)).tolist()

    def holds(self, digests: np.ndarray) -> np.ndarray:
        return find_digests(self.digests, digests)[1]


class IdSet:
    """Ids by a 64-bit hash, in little memory: a sorted array (8 bytes an id, a fraction of what
    a set of Python ints holds) and a set of those added since it was last merged into it."""

    def __init__(self) -> None:
        self.merged = np.empty(0, np.int64)
        self.recent: set[int] = set()

    def holds(self, keys: list[int]) -> list[bool]:
        if not len(self.merged):
            return [key in self.recent for key in keys]
        merged = find_digests(self.merged, np.array(keys, np.int64))[1].tolist()
        return [found or key in self.recent for found, key in zip(merged, keys, strict=True)]

    def add(self, keys: set[int]) -> None:
        self.recent |= keys
        # Merged once the recent ones make a sixteenth of the rest: a merge copies the array,
        # so merging every page would copy it once a page.
        if len(self.recent) >= max(MERGE_AFTER, len(self.merged) // 16):
            added = np.sort(np.fromiter(self.recent, np.int64, len(self.recent)))
            self.merged = np.insert(self.merged, np.searchsorted(self.merged, added), added)
            self.recent.clear()


class Fingerprints:
    """The fingerprint of each stored batch by its id's digest, both sorted by the digest: a
    batch read again whose fingerprint is the stored one is stored exactly so already.

    A sync may read a batch twice (an incremental sync's page re-read at an open batch and then
    its sweep; an API that lists an id twice), and a live batch changes in between. Only its
    first read that differs from the stored batch is loaded, so its row and its child rows come
    from one read (`taken`): a later read is the same batch or newer, and the next sync that
    finds it open or changed loads it again."""

    def __init__(self, digests: np.ndarray | None = None, prints: np.ndarray | None = None) -> None:
        self.digests = np.empty(0, np.uint64) if digests is None else digests
        self.prints = np.empty(0, np.int64) if prints is None else prints
        self.taken = IdSet()

    def changed(self, batches: list[dict]) -> list[dict]:
        """The batches to load: new or changed since stored, and not loaded yet this sync."""
        # Within one process Python's own hash of an id serves as well as its MD5, for less.
        keys = [hash(batch["id"]) for batch in batches]
        held = self.taken.holds(keys)
        stored = self._stored(batches)
        fresh: list[dict] = []
        loaded: set[int] = set()
        for batch, key, taken, same in zip(batches, keys, held, stored, strict=True):
            if not (taken or same or key in loaded):  # `in loaded`: a page listing it twice
                loaded.add(key)
                fresh.append(batch)
        self.taken.add(loaded)
        return fresh

    def _stored(self, batches: list[dict]) -> list[bool]:
        """Whether each batch is stored exactly as read."""
        if not len(self.digests):
            return [False] * len(batches)
        at, found = find_digests(self.digests, digests_of(batches))
        prints = np.fromiter((fingerprint(batch_text(b)) for b in batches), np.int64, len(batches))
        return (found & (self.prints[at] == prints)).tolist()


@dataclass(frozen=True)
class Floor:
    """The oldest batch read by a walk that stopped before it reached ground already held:
    the next walk must read past it before it may stop."""

    batch_id: str
    created_at: int | None


@dataclass(frozen=True)
class SyncPlan:
    """What the warehouse holds, so an incremental sync reads only what may have changed.

    Attributes:
        held: every stored id; none means a first load, which reads every page.
        full: read every page although batches are held (`--full-refresh`).
        floor: left by the last walk that did not reach held ground.
        sweep_after: the batch after which the sweep goes on (None: from the top).
        open_positions: id → position (1 = newest) of each stored batch that was not terminal.
        previous_ids: id → the id stored just before it (newest first), for each open batch:
            `after` that id, a page starts with the open batch.
        column_types: stored type of each column for a field the API added.
        fingerprints: of the stored batches; none on a full sync, which loads all it reads.
        result_tables: whether `batch_files` and `batch_requests` exist; if not, the batches'
            load creates them (empty), so the views over them build from the first sync on.
    """

    held: HeldIds = field(default_factory=HeldIds)
    full: bool = False
    floor: Floor | None = None
    sweep_after: str | None = None
    open_positions: dict[str, int] = field(default_factory=dict)
    previous_ids: dict[str, str | None] = field(default_factory=dict)
    column_types: dict[str, str] = field(default_factory=dict)
    fingerprints: Fingerprints = field(default_factory=Fingerprints)
    result_tables: bool = False

    @property
    def is_first_load(self) -> bool:
        return not len(self.held)

    @property
    def is_full(self) -> bool:
        return self.full or self.is_first_load


@dataclass
class ReadStats:
    """What a read did, filled in while reading; the sync records it after the load."""

    pages: int = 0
    lookups: int = 0
    batches: int = 0
    warnings: list[str] = field(default_factory=list)
    floor: Floor | None = None
    sweep_after: str | None = None
    unknown_statuses: dict[str, dict[str, None]] = field(default_factory=dict)
    columns: ExtraColumns = field(default_factory=ExtraColumns)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def state_table(self) -> pa.Table:
        """Where the next sync goes on, as the one row of `_sfbatches_state`."""
        floor = self.floor
        row = {
            "floor_id": floor and floor.batch_id,
            "floor_created_at": floor and floor.created_at,
            "sweep_after": self.sweep_after,
        }
        return rows_table([row], STATE_SCHEMA)

    def read(self, batches: list[Any], pages: int = 1) -> None:
        """Count what was read, after refusing anything that is not a batch object."""
        check_batches(batches)
        self.pages += pages
        self.batches += len(batches)
        for batch in batches:
            status = batch.get("status")
            if isinstance(status, str) and normal_status(status) not in KNOWN_STATUSES:
                self.unknown_statuses.setdefault(status, {})[batch["id"]] = None

    def warn_unknown_statuses(self) -> None:
        if not self.unknown_statuses:
            return
        named = ", ".join(
            f"{status!r} ({len(ids):,}, e.g. {next(iter(ids))})"
            for status, ids in sorted(self.unknown_statuses.items())
        )
        self.warn(f"statuses sfbatches does not know, stored as sent and counted as open: {named}")


def read_batches(
    api: BatchApi, plan: SyncPlan, page_size: int, sweep_pages: int, stats: ReadStats
) -> Iterator[list[dict]]:
    """Yield lists of batch objects: the new ones, the ones open at the last sync, a sweep."""
    try:
        yield from _read(api, plan, page_size, sweep_pages, stats)
    except (HTTPError, RequestException) as error:
        raise api.failure(error) from None
    stats.warn_unknown_statuses()


def _read(
    api: BatchApi, plan: SyncPlan, page_size: int, sweep_pages: int, stats: ReadStats
) -> Iterator[list[dict]]:
    walk = yield from walk_from_top(api, plan, page_size, stats)
    if walk.read_everything:
        stats.sweep_after = plan.sweep_after
        return
    yield from refresh_open(api, plan, walk, page_size, stats)
    if walk.stop == "end":
        return  # the walk read to the end of the listing: nothing is left to sweep
    # The walk reads the top every sync: a sweep starting over begins where it stopped.
    start = plan.sweep_after or (walk.oldest or {}).get("id")
    yield from sweep(api, start, page_size, sweep_pages, stats)


def walk_from_top(
    api: BatchApi, plan: SyncPlan, page_size: int, stats: ReadStats
) -> Generator[list[dict], None, "TopWalk"]:
    """Pages newest first until the walk reaches held ground (to the end on a full sync)."""
    walk = TopWalk(plan, stats, min(page_size, CONNECT_RUN))
    for page in api.pages(page_size):
        walk.accept(page)
        walk.stop = page.paginator.stop
        if page:
            yield list(page)
        if walk.connected:
            break
    stats.floor = walk.next_floor()
    return walk


class TopWalk:
    """Decide, batch by batch, whether the walk has reached ground the warehouse holds."""

    def __init__(self, plan: SyncPlan, stats: ReadStats, connect_run: int) -> None:
        self.plan = plan
        self.stats = stats
        self.connect_run = connect_run
        self.read_everything = plan.is_full
        self.past_floor = plan.floor is None
        self.run = 0
        self.held_seen = 0
        self.connected = False
        self.stop = ""
        self.oldest: dict | None = None
        self.longest_page = 0
        self.last_created_at: float | None = None
        self.unseen_open = dict(plan.open_positions)

    def accept(self, page: list[dict]) -> None:
        self.stats.read(page)
        self.longest_page = max(self.longest_page, len(page))
        self._check_order(page)
        for batch, held in zip(page, self.plan.held.flags(page), strict=True):
            self._step(batch, held)
        if page:
            self.oldest = page[-1]

    def _step(self, batch: dict, held: bool) -> None:
        self.unseen_open.pop(batch["id"], None)
        self.held_seen += held
        self.run = self.run + 1 if held and self.past_floor else 0
        if not self.past_floor and _is_at_or_below(batch, self.plan.floor):
            self.past_floor = True
        if self.run >= self.connect_run and not self.read_everything:
            self.connected = True

    def _check_order(self, page: list[dict]) -> None:
        # One batch with a skewed clock breaks the order twice; a listing sorted the other way
        # round rises all along.
        created = [unix_time(b.get("created_at")) for b in page]
        created = [c for c in [self.last_created_at, *created] if c is not None]
        pairs = list(itertools.pairwise(created))
        rises = sum(later > earlier for earlier, later in pairs)
        falls = sum(later < earlier for earlier, later in pairs)
        if rises > falls and not self.read_everything:
            self.stats.warn(
                "the API does not list batches newest first: reading every page so that "
                "nothing is missed"
            )
            self.read_everything = True
        if created:
            self.last_created_at = created[-1]

    def next_floor(self) -> Floor | None:
        """The floor the next walk must pass, after the warnings this walk earned."""
        if self.connected:
            return None
        if not self.past_floor:
            return self.plan.floor  # this walk did not get that far down either
        if self.stop == "end":
            return self._ended()
        self.stats.warn(
            f"the API {STALLS[self.stop]}: stopped paging and kept the {self.stats.batches:,} "
            "batches read; the next sync reads on from there"
        )
        return self._floor_here()

    def _ended(self) -> Floor | None:
        ended_early = (
            not self.read_everything
            and self.plan.floor is None
            and self.held_seen < len(self.plan.held)
        )
        if not ended_early:
            return None
        self.stats.warn(
            "the listing ended before it reached the batches stored by earlier syncs: the next "
            "sync reads on past where it ended"
        )
        return self._floor_here()

    def _floor_here(self) -> Floor | None:
        if self.oldest is None:
            return self.plan.floor
        created_at = unix_time(self.oldest.get("created_at"))
        return Floor(self.oldest["id"], None if created_at is None else math.floor(created_at))


def unix_time(value: Any) -> float | None:
    """A time the API sent as seconds since the epoch, whole or not; None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


STALLS = {
    "loop": "handed out a cursor it had already served (it ignores `after`, or loops)",
    "empty": "answered an empty page that says more follow",
}


def _is_at_or_below(batch: dict, floor: Floor | None) -> bool:
    if floor is None or batch["id"] == floor.batch_id:
        return True
    created_at = unix_time(batch.get("created_at"))
    return floor.created_at is not None and created_at is not None and created_at < floor.created_at


def refresh_open(
    api: BatchApi, plan: SyncPlan, walk: TopWalk, page_size: int, stats: ReadStats
) -> Iterator[list[dict]]:
    """Re-read the batches open at the last sync that the walk did not pass."""
    unseen = walk.unseen_open
    # A server may serve fewer than `limit` per page; a re-read page covers what it serves.
    served = min(page_size, walk.longest_page) or page_size
    found = yield from reread_pages(api, plan, unseen, served, stats)
    yield from look_up(api, [i for i in unseen if i not in found], stats)


def reread_pages(
    api: BatchApi,
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
    with worker_pool(PARALLEL_REQUESTS) as pool:
        for offset in range(0, len(starts), window):
            wanted = starts[offset : offset + window]
            pages = pool.map(lambda start: api.page_after(start[0], page_size), wanted)
            for page, (_, first) in zip(pages, wanted, strict=True):
                stats.read(page)
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


def look_up(api: BatchApi, batch_ids: list[str], stats: ReadStats) -> Iterator[list[dict]]:
    """`GET /batches/{id}` for each id, a few at a time: each one is a full round trip."""
    if not batch_ids:
        return
    with worker_pool(PARALLEL_REQUESTS) as pool:
        found = [batch for batch in pool.map(api.batch, batch_ids) if batch]
    stats.read(found, pages=0)
    stats.lookups += len(batch_ids)
    if len(found) < len(batch_ids):
        stats.warn(
            f"{len(batch_ids) - len(found)} batches open at the last sync are gone from the API "
            "(HTTP 404); their last known state is kept"
        )
    yield found


def sweep(
    api: BatchApi, after: str | None, page_size: int, pages: int, stats: ReadStats
) -> Iterator[list[dict]]:
    """Re-read `pages` pages from where the last sweep stopped, and load all they hold.

    At the end of the listing the next sweep starts again from the top; a cursor the API no
    longer knows (its batch is gone) restarts it from the top too.
    """
    stats.sweep_after = None
    if pages < 1:
        stats.sweep_after = after
        return
    try:
        for count, page in enumerate(api.pages(page_size, after), start=1):
            stats.read(page)
            if page:
                yield list(page)
            paginator = page.paginator
            stats.sweep_after = paginator.after if paginator.has_next_page else None
            if count >= pages:
                return
            if paginator.stop == "loop":
                stats.warn(
                    f"the API {STALLS['loop']}: stopped re-reading older pages; the next sync "
                    "starts them again from the top"
                )
    except HTTPError as error:
        if error.response is None or error.response.status_code != 400 or after is None:
            raise
