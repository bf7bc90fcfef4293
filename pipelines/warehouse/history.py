"""Writes around a load: columns widened before it; one row per key, current child rows and
the status history after it; and each sync's own row in `sync_runs`."""

import contextlib
from pathlib import Path

import duckdb

from pipelines.siliconflow.rows import DUCKDB_TYPES
from pipelines.vocabulary import (
    BATCH_FILES,
    BATCH_REQUESTS,
    BATCHES,
    CHILD_TABLES,
    DATASET,
    FINGERPRINTS,
    PRIMARY_KEYS,
    REQUEST_COUNTS,
    STATUS_HISTORY,
    SYNC_RUNS,
)

from . import database
from .plan import stored_tables

SCHEMA = DATASET
# When a row was loaded: dlt's load id is the unix time its load package was created.
LOADED_AT = "to_timestamp(cast({table}._dlt_load_id as double))"


def loaded_since(table: str) -> str:
    """SQL: the row of `table` (an alias) was loaded after `$since`.

    The first test is implied by the second, but DuckDB answers it from each row group's
    statistics of `_dlt_load_id`, so the rows of earlier loads are skipped unread: a sync's
    bookkeeping reads what it loaded, not the whole history. A load id is the load's Unix time
    as text, which sorts as the time does while it has ten digits (2001 to 2286); before that,
    nothing is skipped.
    """
    whole_seconds = (
        "case when epoch($since) >= 1e9 then floor(epoch($since))::bigint::varchar else '' end"
    )
    return f"{table}._dlt_load_id >= {whole_seconds} and {LOADED_AT.format(table=table)} > $since"


# The newest load whose batches were recorded: the next sync records those loaded after it. (The
# newest history row would do only while every load changes something: after a full refresh
# that changed nothing, every later sync would go over the whole history again.)
RECORDED = "_sfbatches_recorded"


def widen_columns(con: duckdb.DuckDBPyConnection, widened: dict[str, str]) -> None:
    """Give stored columns of added fields the wider type this load's values need.

    dlt adds columns but never changes a stored column's type; DuckDB's cast keeps every value
    (a stored integer too large for a double makes the column text instead).
    """
    for table in con.execute(
        "select table_schema from information_schema.tables where table_name = ? "
        "and table_schema in (?, ?)",
        [BATCHES, SCHEMA, f"{SCHEMA}_staging"],
    ).fetchall():
        for name, kind in widened.items():
            target = _exact_type(con, f'"{table[0]}".{BATCHES}', name, kind)
            con.execute(f'alter table "{table[0]}".{BATCHES} alter column "{name}" type {target}')


def _exact_type(con: duckdb.DuckDBPyConnection, table: str, name: str, kind: str) -> str:
    if kind != "double":
        return DUCKDB_TYPES[kind]
    (too_large,) = con.execute(
        f'select coalesce(max(abs(try_cast("{name}" as hugeint))) > 2 ** 53, false) from {table}'
    ).fetchone()
    return DUCKDB_TYPES["text" if too_large else kind]


def record_observations(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """After a load, in one transaction: one row per key in every table, stale child rows
    dropped, and status history appended.

    Covers every load since it last ran (a killed sync that loaded but never got here is caught
    up by the next one). Returns (new, changed) batch counts. A batch's current child rows carry
    its own load id, so older ones are stale (a metadata key removed, errors cleared).
    """
    tables = stored_tables(con)
    if BATCHES not in tables:
        return 0, 0
    # An aggregate over millions of request lines stays within the memory limit (spilling to
    # disk) only on one thread; two would each want their share of it.
    con.execute("set threads = 1")
    con.execute("begin transaction")
    _create_history_table(con)
    since = _recorded_through(con)
    if {BATCH_FILES, BATCH_REQUESTS} <= tables:
        # a file tried since holds a batch's lines of that kind: rows of a file it replaced go
        con.execute(
            f"""
            delete from {SCHEMA}.{BATCH_REQUESTS} as line
            using {SCHEMA}.{BATCH_FILES} as file
            where file.batch_id = line.batch_id
                and file.kind = line.kind
                and {loaded_since("file")}
                and line._dlt_load_id < file._dlt_load_id
            """,
            {"since": since},
        )
    _keep_one_row_per_key(con, tables, since)
    for table in CHILD_TABLES:
        if table in tables:
            con.execute(
                f"""
                delete from {SCHEMA}.{table} as child
                using {SCHEMA}.{BATCHES} as parent
                where parent.id = child.batch_id
                    and {loaded_since("parent")}
                    and child._dlt_load_id < parent._dlt_load_id
                """,
                {"since": since},
            )
    new, changed = _append_history(con, since, REQUEST_COUNTS in tables)
    con.execute(f"delete from {SCHEMA}.{RECORDED}")
    con.execute(
        f"insert into {SCHEMA}.{RECORDED} "
        f"select to_timestamp(cast(max(_dlt_load_id) as double)) from {SCHEMA}.{BATCHES} "
        "having count(*) > 0"
    )
    con.execute("commit")
    return new, changed


def _keep_one_row_per_key(con: duckdb.DuckDBPyConnection, tables: set[str], since: object) -> None:
    """Enforce one row per key among the rows loaded since `since`.

    dlt is told its merges hold no key twice (its deduplicating window does not fit a cron job's
    memory). A sync loads one read of each batch (`Fingerprints.taken`), but a load job re-run
    after a kill does stage rows twice. Finding them is one aggregate over what the load wrote;
    the newest load wins. Such a batch loses its fingerprint, which may be the other copy's, so
    the next sync that reads it loads it again.
    """
    for table, key in PRIMARY_KEYS.items():
        if table not in tables or not _may_hold_doubles(con, table, tables, since):
            continue
        columns = ", ".join(key)
        # The keys first, on their own: an aggregate spills to disk within the memory limit,
        # while a delete planned around it would size its join for every row of the table.
        con.execute(
            f"""
            create or replace temp table doubled as
            select {columns}
            from {SCHEMA}.{table}
            where {loaded_since(table)}
            group by all
            having count(*) > 1
            """,
            {"since": since},
        )
        if con.execute("select count(*) from doubled").fetchone()[0]:
            con.execute(
                f"""
                delete from {SCHEMA}.{table}
                where rowid in (
                    select {table}.rowid
                    from {SCHEMA}.{table}
                    semi join doubled using ({columns})
                    qualify row_number() over (
                        partition by {columns} order by _dlt_load_id desc, {table}.rowid
                    ) > 1
                )
                """
            )
            if table == BATCHES and FINGERPRINTS in tables:
                con.execute(
                    f"delete from {SCHEMA}.{FINGERPRINTS} where id in (select id from doubled)"
                )
        con.execute("drop table doubled")


def _may_hold_doubles(
    con: duckdb.DuckDBPyConnection, table: str, tables: set[str], since: object
) -> bool:
    """Whether rows of `table` loaded since `since` may hold a key twice.

    A result file's rows all come from one read of it, so a line of it can be stored twice only
    where the file has more rows than `batch_files` counts lines read from it. Counting rows per
    file groups by file; looking for doubled keys groups by every line.
    """
    if table != BATCH_REQUESTS or BATCH_FILES not in tables:
        return True
    (exceeding,) = con.execute(
        f"""
        select count(*)
        from (
            select batch_id, kind, count(*) as stored
            from {SCHEMA}.{BATCH_REQUESTS}
            where {loaded_since(BATCH_REQUESTS)}
            group by all
        ) as loaded
        left join {SCHEMA}.{BATCH_FILES} as files using (batch_id, kind)
        where loaded.stored > coalesce(files.lines - files.bad_lines, 0)
        """,
        {"since": since},
    ).fetchone()
    return exceeding > 0


def _recorded_through(con: duckdb.DuckDBPyConnection) -> object:
    """When the newest load already recorded was loaded (a database from before this marker
    existed falls back to the newest history row, which is older or the same)."""
    con.execute(
        f"create table if not exists {SCHEMA}.{RECORDED} "
        "(loaded_at timestamp with time zone not null)"
    )
    return con.execute(
        f"""
        select coalesce(
            (select max(loaded_at) from {SCHEMA}.{RECORDED}),
            (select max(observed_at) from {SCHEMA}.{STATUS_HISTORY}),
            '-infinity'::timestamptz
        )
        """
    ).fetchone()[0]


def _history_is_empty(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute(f"select count(*) = 0 from {SCHEMA}.{STATUS_HISTORY}").fetchone()[0]


def _create_history_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        f"""
        create table if not exists {SCHEMA}.{STATUS_HISTORY} (
            batch_id varchar not null,
            observed_at timestamp with time zone not null,
            status varchar,
            requests_total bigint,
            requests_completed bigint,
            requests_failed bigint
        )
        """
    )


def _append_history(
    con: duckdb.DuckDBPyConnection, since: object, has_counts: bool
) -> tuple[int, int]:
    """One row per batch loaded after `since` whose status or counts differ from its last one."""
    counts_join = (
        f"left join {SCHEMA}.{REQUEST_COUNTS} as counts on counts.batch_id = batch.id"
        if has_counts
        else "left join (select null::varchar as batch_id, null::bigint as total, "
        "null::bigint as completed, null::bigint as failed) as counts on false"
    )
    current_state = f"""
        current_state as (
            select
                batch.id as batch_id,
                {LOADED_AT.format(table="batch")} as observed_at,
                batch.status,
                counts.total as requests_total,
                counts.completed as requests_completed,
                counts.failed as requests_failed
            from {SCHEMA}.{BATCHES} as batch
            {counts_join}
            where {loaded_since("batch")}
        )
    """
    if _history_is_empty(con):
        # Nothing observed yet, so every batch is new: no last observation to look up, much of
        # a first sync's bookkeeping otherwise.
        (new,) = con.execute(
            f"insert into {SCHEMA}.{STATUS_HISTORY} by name "
            f"with {current_state} select * from current_state",
            {"since": since},
        ).fetchone()
        return int(new), 0
    con.execute(
        f"""
        create temp table observation as
        with

        {current_state},

        observed_before as (
            select *
            from {SCHEMA}.{STATUS_HISTORY}
            semi join current_state using (batch_id)
        )

        select
            current_state.*,
            last_observed.batch_id is null as is_new
        from current_state
        -- each batch's newest history row: a sorted join, so a long history's full refresh fits
        -- in the memory limit, where a window over them would not
        asof left join observed_before as last_observed
            on last_observed.batch_id = current_state.batch_id
            and last_observed.observed_at <= current_state.observed_at
        where last_observed.batch_id is null
            or (
                current_state.status,
                current_state.requests_total,
                current_state.requests_completed,
                current_state.requests_failed
            ) is distinct from (
                last_observed.status,
                last_observed.requests_total,
                last_observed.requests_completed,
                last_observed.requests_failed
            )
        """,
        {"since": since},
    )
    new, changed = con.execute(
        "select count(*) filter (where is_new), count(*) filter (where not is_new) from observation"
    ).fetchone()
    con.execute(
        f"""
        insert into {SCHEMA}.{STATUS_HISTORY}
        select
            batch_id,
            observed_at,
            status,
            requests_total,
            requests_completed,
            requests_failed
        from observation
        """
    )
    con.execute("drop table observation")
    return int(new), int(changed)


def record_run(db_path: Path, row: dict[str, object], wait_s: float | None = None) -> None:
    """Append one sync's `sync_runs` row; a first sync that failed leaves one too."""
    with database.connect_for_sync(db_path, wait_s) as con:
        con.execute(f"create schema if not exists {SCHEMA}")
        # run_id is a fresh uuid4; no key constraint, which DuckDB 1.0 cannot read from a file
        con.execute(
            f"""
            create table if not exists {SCHEMA}.{SYNC_RUNS} (
                run_id varchar not null,
                started_at timestamp with time zone not null,
                finished_at timestamp with time zone not null,
                kind varchar not null,
                outcome varchar not null,
                exit_code integer not null,
                message varchar,
                batches_read bigint,
                batches_new bigint,
                batches_changed bigint,
                pages bigint,
                lookups bigint,
                files_loaded bigint,
                request_lines bigint,
                warnings bigint
            )
            """
        )
        columns = ", ".join(row)
        con.execute(
            f"insert into {SCHEMA}.{SYNC_RUNS} ({columns}) values ({', '.join('?' * len(row))})",
            list(row.values()),
        )


def record_failed_run(db_path: Path, row: dict[str, object], wait: bool = True) -> None:
    """Record a failed sync when the database can be written, never hiding why it failed;
    unless `wait`, only if it can be written at once."""
    with contextlib.suppress(Exception):
        record_run(db_path, row, wait_s=None if wait else 0.0)
