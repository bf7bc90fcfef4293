"""The dlt sources for SiliconFlow batch jobs: the batches (one read of the API, four tables out
of it) and, once they are stored, the result files of the ended ones."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from pipelines.vocabulary import (
    BATCH_FILES,
    BATCH_REQUESTS,
    BATCHES,
    CHILD_TABLES,
    DATASET,
    FINGERPRINTS,
    PRIMARY_KEYS,
    SYNC_STATE,
    TIMESTAMP_FIELDS,
)

from .client import BatchApi, Deadline, RetryPolicy
from .paging import Fingerprints, Floor, HeldIds, ReadStats, SyncPlan, read_batches
from .prefetch import prefetched
from .results import Fetcher, ResultFile, ResultStats, empty_tables, result_rows
from .rows import ExtraColumns, TableChunk, with_load_id
from .settings import (
    CHUNK_ROWS,
    DEFAULT_BASE_URL,
    DEFAULT_PAGE_SIZE,
    DEFAULT_SWEEP_PAGES,
    PREFETCH_PAGES,
)

__all__ = [
    "Deadline",
    "ExtraColumns",
    "Fingerprints",
    "Floor",
    "HeldIds",
    "ReadStats",
    "ResultFile",
    "ResultStats",
    "RetryPolicy",
    "SyncPlan",
    "result_files",
    "siliconflow",
]

# dlt's deduplicating window sorts every merged row in memory, more than the rest of a long
# history's full refresh needs (bench/README.md). A load may still hold a batch twice (a job
# re-run after a kill): warehouse/history.py keeps one row per key after every load.
MERGE = {"disposition": "merge", "strategy": "delete-insert", "deduplicated": True}


@dlt.source(name=DATASET, max_table_nesting=0)
def siliconflow(
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    page_size: int = DEFAULT_PAGE_SIZE,
    plan: SyncPlan | None = None,
    retry: RetryPolicy | None = None,
    stats: ReadStats | None = None,
    sweep_pages: int = DEFAULT_SWEEP_PAGES,
    deadline: Deadline | None = None,
    key_source: str = "the configuration",
) -> list[DltResource]:
    """Batches from `GET /batches`, with their request counts, metadata and errors.

    Args:
        plan: what the warehouse already holds; None reads every page.
        stats: filled in while reading (pages, lookups, warnings, what to record) for the caller.
        sweep_pages: older pages re-read each sync, further down the history each time.
        deadline: when the whole sync must be done; no request starts after it.
        key_source: where the key came from, named when the API refuses it.
    """
    plan = plan or SyncPlan()
    stats = stats if stats is not None else ReadStats()
    stats.columns = ExtraColumns(plan.column_types)
    api = BatchApi(
        base_url, api_key, retry or RetryPolicy(), deadline or Deadline(None), key_source
    )

    # The result files' tables come into being with the first batches, empty, so the views over
    # them build even when no file is read, without a load of their own.
    results = {} if plan.result_tables else empty_tables()

    @dlt.resource(name="batch_chunks", selected=False)
    def batch_chunks() -> Iterator[dict[str, pa.Table]]:
        # The next pages download while a chunk of pages is read into Arrow tables.
        chunk = TableChunk(stats.columns)
        pages = read_batches(api, plan, page_size, sweep_pages, stats)
        for page in prefetched(pages, PREFETCH_PAGES):
            chunk.add(plan.fingerprints.changed(page))
            if chunk.rows >= CHUNK_ROWS:
                yield chunk.take()
        # An empty last chunk still carries every table's columns, so a new account gets them.
        last = chunk.take() if chunk.rows or not stats.batches else {}
        stats.warnings += stats.columns.warnings
        # Where the next sync goes on travels in the same load package as the pages it follows
        # from, so a package loaded after a kill brings its own.
        yield last | {SYNC_STATE: stats.state_table()} | results

    resources = [batch_chunks | batches_resource()]
    resources += [batch_chunks | child_resource(name) for name in CHILD_TABLES]
    resources += [batch_chunks | part(FINGERPRINTS, write_disposition=MERGE, primary_key=["id"])]
    if results:
        resources += result_resources(batch_chunks)
    if plan.is_first_load:
        # Nothing stored yet, so nothing to merge with: appending skips dlt's staging tables
        # and merge SQL, much of a first load's time.
        for resource in resources:
            resource.apply_hints(write_disposition="append")
    return [*resources, batch_chunks | part(SYNC_STATE, write_disposition="replace")]


def part(name: str, **hints: Any) -> DltResource:
    """The resource of table `name`: the part of each item the producer put under that name."""

    @dlt.transformer(name=name, **hints)
    def table(item: dict[str, pa.Table]) -> Iterator[pa.Table]:
        if name in item:
            yield with_load_id(item[name], dlt.current.load_package_state()["load_id"])

    return table


def batches_resource() -> DltResource:
    return part(
        BATCHES,
        write_disposition=MERGE,
        primary_key=list(PRIMARY_KEYS[BATCHES]),
        columns={
            name: {"data_type": "timestamp", "timezone": True, "nullable": True}
            for name in TIMESTAMP_FIELDS
        },
    )


def child_resource(name: str) -> DltResource:
    # Children are replaced per batch: delete-insert on `batch_id` drops the rows of every batch
    # in the load before inserting its current ones (warehouse/history.py drops those of batches
    # that have none any more). No primary key hint: dlt would delete on "key OR batch_id", a
    # join DuckDB cannot hash, slow and memory-bound on a long history; `batch_id` alone covers
    # it.
    return part(name, write_disposition=MERGE, merge_key="batch_id")


@dlt.source(name=DATASET, max_table_nesting=0)
def result_files(
    files: list[ResultFile],
    scratch: Path,
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    archive: Path | None = None,
    retry: RetryPolicy | None = None,
    deadline: Deadline | None = None,
    stats: ResultStats | None = None,
    key_source: str = "the configuration",
) -> list[DltResource]:
    """The lines of `files` into `batch_requests`, and one `batch_files` row per file tried.

    Args:
        scratch: a folder for files while they are read.
        archive: keep each raw file there, gzipped, as `<batch_id>/<kind>.jsonl.gz`.
    """
    api = BatchApi(
        base_url, api_key, retry or RetryPolicy(), deadline or Deadline(None), key_source
    )
    fetcher = Fetcher(api, scratch, archive)
    stats = stats if stats is not None else ResultStats()

    @dlt.resource(name="result_rows", selected=False)
    def rows() -> Iterator[dict[str, pa.Table]]:
        collector = dlt.current.pipeline().collector

        def done(count: int) -> None:
            collector.update("result files", inc=count, total=len(files))

        yield from result_rows(fetcher, files, stats, done)

    return result_resources(rows)


def result_resources(producer: DltResource) -> list[DltResource]:
    """The resources of the result tables, fed by `producer`'s items."""
    return [
        producer | part(BATCH_REQUESTS, write_disposition="append"),
        producer
        | part(BATCH_FILES, write_disposition=MERGE, primary_key=list(PRIMARY_KEYS[BATCH_FILES])),
    ]
