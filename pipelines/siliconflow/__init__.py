"""The dlt source for SiliconFlow batch jobs: one read of the API, four tables out of it."""

from collections.abc import Callable, Iterator

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from .helpers import RetryPolicy, make_client
from .paging import ReadStats, SyncPlan, read_batches
from .rows import batches_table, errors_table, metadata_table, request_counts_table
from .settings import (
    BATCHES,
    CHUNK_ROWS,
    DEFAULT_BASE_URL,
    DEFAULT_PAGE_SIZE,
    ERRORS,
    METADATA,
    PRIMARY_KEYS,
    REQUEST_COUNTS,
    TIMESTAMP_FIELDS,
)

__all__ = ["ReadStats", "RetryPolicy", "SyncPlan", "siliconflow"]

# Children are replaced per batch: delete-insert on `batch_id` drops the rows of every batch in
# the load before inserting its current ones (warehouse.py drops those of batches that have none).
CHILD_TABLES: dict[str, Callable[[list[dict]], pa.Table]] = {
    REQUEST_COUNTS: request_counts_table,
    METADATA: metadata_table,
    ERRORS: errors_table,
}


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

    # parallelized: dlt reads the next chunk in a worker thread while this one is converted.
    @dlt.resource(name="batch_chunks", selected=False, parallelized=True)
    def batch_chunks() -> Iterator[list[dict]]:
        chunk: list[dict] = []
        for batches in read_batches(client, plan, page_size, stats):
            chunk.extend(batches)
            if len(chunk) >= CHUNK_ROWS:
                yield chunk
                chunk = []
        # An empty last chunk still carries every table's columns, so a new account gets them.
        if chunk or not stats.batches:
            yield chunk

    resources = [batch_chunks | batches_resource()]
    resources += [
        batch_chunks | child_resource(name, to_table) for name, to_table in CHILD_TABLES.items()
    ]
    if plan.is_first_load:
        # Nothing stored yet, so nothing to merge with: appending skips dlt's staging tables
        # and merge SQL (a third of the load time). A page read twice is still impossible:
        # repeated pages are dropped while paging.
        for resource in resources:
            resource.apply_hints(write_disposition="append")
    return resources


def batches_resource() -> DltResource:
    @dlt.transformer(
        name=BATCHES,
        write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        primary_key=list(PRIMARY_KEYS[BATCHES]),
        columns={
            name: {"data_type": "timestamp", "timezone": True, "nullable": True}
            for name in TIMESTAMP_FIELDS
        },
    )
    def batches(chunk: list[dict]) -> Iterator[pa.Table]:
        yield batches_table(chunk)

    return batches


def child_resource(name: str, to_table: Callable[[list[dict]], pa.Table]) -> DltResource:
    @dlt.transformer(
        name=name,
        write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        primary_key=list(PRIMARY_KEYS[name]),
        merge_key="batch_id",
    )
    def child(chunk: list[dict]) -> Iterator[pa.Table]:
        yield to_table(chunk)

    return child
