"""The DuckDB side of a sync: what the warehouse holds now, and the bookkeeping after a load."""

from pathlib import Path

import duckdb

from pipelines.database import SYNC_CONFIG, connect
from pipelines.siliconflow import SyncPlan
from pipelines.siliconflow.settings import (
    BATCHES,
    CHILD_TABLES,
    DATASET_NAME,
    PRIMARY_KEYS,
    REQUEST_COUNTS,
    STATUS_HISTORY,
    TERMINAL_STATUSES,
)

SCHEMA = DATASET_NAME
# When a row was loaded: dlt's load id is the unix time its load package was created.
LOADED_AT = "to_timestamp(cast({table}._dlt_load_id as double))"
# The newest load whose batches were recorded: the next sync records those loaded after it. (The
# newest history row would do only while every load changes something: after a full refresh
# that changed nothing, every later sync would go over the whole history again.)
RECORDED = "_sfbatches_recorded"
TERMINAL_LIST = ", ".join(f"'{status}'" for status in sorted(TERMINAL_STATUSES))


def stored_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "select table_name from information_schema.tables where table_schema = ?", [SCHEMA]
    ).fetchall()
    return {name for (name,) in rows}


def read_plan(db_path: Path) -> SyncPlan:
    """The newest stored batch and every open one, with its position in newest-first order."""
    if not db_path.exists():
        return SyncPlan()
    with connect(db_path, config=SYNC_CONFIG) as con:
        if BATCHES not in stored_tables(con):
            return SyncPlan()
        newest = con.execute(
            f"select max(epoch(created_at))::bigint from {SCHEMA}.{BATCHES}"
        ).fetchone()[0]
        if newest is None:
            return SyncPlan()
        open_rows = con.execute(
            f"""
            select id, position, previous_id from (
                select
                    id,
                    status,
                    row_number() over newest_first as position,
                    lag(id) over newest_first as previous_id
                from {SCHEMA}.{BATCHES}
                -- only the recent part of the history: nothing older than the oldest open one
                where created_at >= (
                    select min(created_at)
                    from {SCHEMA}.{BATCHES}
                    where status not in ({TERMINAL_LIST})
                )
                window newest_first as (order by created_at desc, id desc)
            )
            where status not in ({TERMINAL_LIST})
            """
        ).fetchall()
    return SyncPlan(
        is_first_load=False,
        newest_created_at=int(newest),
        open_positions={batch_id: position for batch_id, position, _ in open_rows},
        previous_ids={batch_id: previous for batch_id, _, previous in open_rows},
    )


def record_observations(
    con: duckdb.DuckDBPyConnection, drop_duplicates: bool = False
) -> tuple[int, int]:
    """Drop stale child rows and append status history; return (new, changed) batch counts.

    Runs after every load, in one transaction, over the batches loaded since the last time it
    ran (a killed sync that loaded but never got here is caught up by the next one). A batch's
    current child rows carry its own load id, so older ones are stale (a metadata key removed,
    errors cleared).
    """
    tables = stored_tables(con)
    if BATCHES not in tables:
        return 0, 0
    con.execute("begin transaction")
    _create_history_table(con)
    since = _recorded_through(con)
    if drop_duplicates:
        _drop_duplicates(con, tables)
    for table in CHILD_TABLES:
        if table in tables:
            con.execute(
                f"""
                delete from {SCHEMA}.{table} as child
                using {SCHEMA}.{BATCHES} as parent
                where parent.id = child.batch_id
                    and {LOADED_AT.format(table="parent")} > ?
                    and child._dlt_load_id < parent._dlt_load_id
                """,
                [since],
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


def _drop_duplicates(con: duckdb.DuckDBPyConnection, tables: set[str]) -> None:
    """Keep one row per key: a first load appends, and a job re-run after a kill appends twice."""
    for table, key in PRIMARY_KEYS.items():
        if table in tables:
            con.execute(
                f"""
                delete from {SCHEMA}.{table}
                where rowid in (
                    select rowid
                    from {SCHEMA}.{table}
                    qualify row_number() over (
                        partition by {", ".join(key)} order by _dlt_load_id desc
                    ) > 1
                )
                """
            )


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
            where {LOADED_AT.format(table="batch")} > $since
        )
    """
    if _history_is_empty(con):
        # Nothing observed yet, so every batch is new: no last observation to look up (that
        # lookup was half of a first sync's bookkeeping).
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
        -- each batch's newest history row: a sorted join, so a full refresh of 1M batches fits
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
