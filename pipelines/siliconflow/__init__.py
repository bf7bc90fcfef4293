"""The dlt source for SiliconFlow batch jobs: one read of the API, four tables out of it."""

from collections.abc import Iterator

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from .helpers import RetryPolicy, make_client, prefetched
from .paging import ReadStats, SyncPlan, read_batches
from .rows import TableChunk
from .settings import (
    BATCHES,
    CHILD_TABLES,
    CHUNK_ROWS,
    DEFAULT_BASE_URL,
    DEFAULT_PAGE_SIZE,
    PREFETCH_PAGES,
    PRIMARY_KEYS,
    TIMESTAMP_FIELDS,
)

__all__ = ["ReadStats", "RetryPolicy", "SyncPlan", "siliconflow"]

# A load never holds a batch twice: a page served twice is dropped while paging and a re-read
# batch is yielded once. Telling dlt so skips its deduplicating window over every merged row,
# which alone needed more memory than the rest of a full refresh of 1M batches. (A job re-run
# after a kill can still stage rows twice: warehouse.py drops those after the recovery load.)
MERGE = {"disposition": "merge", "strategy": "delete-insert", "deduplicated": True}


@dlt.source(name="siliconflow", max_table_nesting=0)
def siliconflow(
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    page_size: int = DEFAULT_PAGE_SIZE,
    plan: SyncPlan | None = None,
    retry: RetryPolicy | None = None,
    stats: ReadStats | None = None,
) -> list[DltResource]:
    """Batches from `GET /batches`, with their request counts, metadata and errors.

    Args:
        plan: what the warehouse already holds; None reads every page.
        stats: filled in while reading (pages, lookups, warnings) for the caller's summary.
    """
    client = make_client(base_url, api_key, retry or RetryPolicy())
    stats = stats if stats is not None else ReadStats()
    plan = plan or SyncPlan()

    @dlt.resource(name="batch_chunks", selected=False)
    def batch_chunks() -> Iterator[dict[str, pa.Table]]:
        # The next pages download while this one is turned into Arrow tables.
        chunk = TableChunk()
        for page in prefetched(read_batches(client, plan, page_size, stats), PREFETCH_PAGES):
            chunk.add(page)
            if chunk.rows >= CHUNK_ROWS:
                yield chunk.take()
        # An empty last chunk still carries every table's columns, so a new account gets them.
        if chunk.rows or not stats.batches:
            yield chunk.take()

    resources = [batch_chunks | batches_resource()]
    resources += [batch_chunks | child_resource(name) for name in CHILD_TABLES]
    if plan.is_first_load:
        # Nothing stored yet, so nothing to merge with: appending skips dlt's staging tables
        # and merge SQL (a third of the load time).
        for resource in resources:
            resource.apply_hints(write_disposition="append")
    return resources


def batches_resource() -> DltResource:
    @dlt.transformer(
        name=BATCHES,
        write_disposition=MERGE,
        primary_key=list(PRIMARY_KEYS[BATCHES]),
        columns={
            name: {"data_type": "timestamp", "timezone": True, "nullable": True}
            for name in TIMESTAMP_FIELDS
        },
    )
    def batches(chunk: dict[str, pa.Table]) -> Iterator[pa.Table]:
        yield chunk[BATCHES]

    return batches


def child_resource(name: str) -> DltResource:
    # Children are replaced per batch: delete-insert on `batch_id` drops the rows of every batch
    # in the load before inserting its current ones (warehouse.py drops those of batches that
    # have none any more). No primary key hint: dlt would delete on "key OR batch_id", a join
    # DuckDB cannot hash, slow and memory-bound at 1M batches; `batch_id` alone covers it.
    @dlt.transformer(name=name, write_disposition=MERGE, merge_key="batch_id")
    def child(chunk: dict[str, pa.Table]) -> Iterator[pa.Table]:
        yield chunk[name]

    return child
