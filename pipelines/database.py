"""Which DuckDB file to use, and opening it while another process may hold it."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pipelines.errors import DatabaseBusy

DEFAULT_DB = "siliconflow.duckdb"
# How long to wait for a lock held by another process before exit 5 (cron runs overlap rarely).
LOCK_WAIT_S = float(os.environ.get("SFBATCHES_LOCK_TIMEOUT", "10"))


# DuckDB would take most of the machine's memory for a merge or a window over the history; a
# cron job should stay small. With dlt loading one job at a time (sync.py) and no
# deduplicating window in its merges (siliconflow/__init__.py), 64 MB carries a full refresh
# of 1M batches.
SYNC_CONFIG = {"memory_limit": "64MB", "preserve_insertion_order": False}
# Every sfbatches connection that writes keeps the tables in row groups of this many rows. At
# DuckDB's default (122,880) a full sync of 100k batches fills no row group, so DuckDB logs every
# row to the WAL and compresses it all again in the checkpoint at close; at this size it writes
# a large insert straight into the file (0.5 s less at 100k batches, files ~25% larger). A
# checkpoint by a connection with another size regroups every table once: a DuckDB shell opened
# read-write does that (0.5 s at 100k batches), read-only connections never do.
ROW_GROUP_SIZE = 16_384
# Only an attached database takes a row group size; a writer attaches it under this name.
ATTACHED_AS = "warehouse"


def resolve_db_path(cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get("SFBATCHES_DB") or DEFAULT_DB)


def is_lock_error(error: BaseException) -> bool:
    if isinstance(error, duckdb.IOException) and "lock" in str(error).lower():
        return True
    return error.__cause__ is not None and is_lock_error(error.__cause__)


def busy_message(db_path: Path | str = "the database") -> str:
    return (
        f"{db_path} is locked by another process (a running sync, or a notebook or DuckDB "
        "shell holding it open): close it or wait, then run again"
    )


@contextmanager
def connect(
    db_path: Path | str,
    read_only: bool = False,
    wait_s: float | None = None,
    config: dict[str, object] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database, waiting a little while another process holds DuckDB's file lock."""
    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            con = _open(db_path, read_only, config or {})
            break
        except duckdb.IOException as error:
            if not is_lock_error(error):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy(busy_message(db_path)) from None
            time.sleep(0.2)
    try:
        yield con
    finally:
        con.close()


def _open(
    db_path: Path | str, read_only: bool, config: dict[str, object]
) -> duckdb.DuckDBPyConnection:
    if read_only or str(db_path) == ":memory:":
        return duckdb.connect(str(db_path), read_only=read_only, config=config)
    con = duckdb.connect(config=config)
    try:
        con.execute(f"attach ? as {ATTACHED_AS} (row_group_size {ROW_GROUP_SIZE})", [str(db_path)])
        con.execute(f"use {ATTACHED_AS}")
    except BaseException:
        con.close()
        raise
    return con
