"""What the warehouse holds, read before a sync so that it reads only what may have changed."""

from pathlib import Path

import duckdb

from pipelines.siliconflow import Floor, HeldIds, SyncPlan
from pipelines.siliconflow.rows import RESERVED, from_duckdb
from pipelines.vocabulary import BATCHES, DATASET, SYNC_STATE, TERMINAL_STATUSES, sql_list

from .database import connect, sync_config

IS_OPEN = f"lower(status) not in ({sql_list(TERMINAL_STATUSES)})"


def stored_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "select table_name from information_schema.tables where table_schema = ?", [DATASET]
    ).fetchall()
    return {name for (name,) in rows}


def read_plan(db_path: Path, full: bool = False) -> SyncPlan:
    """Every stored id, the open batches with their place in newest-first order, and the state
    the last sync left for this one."""
    if not db_path.exists():
        return SyncPlan()
    with connect(db_path, config=sync_config(db_path)) as con:
        tables = stored_tables(con)
        if BATCHES not in tables:
            return SyncPlan()
        digests = con.execute(
            f"select md5_number_lower(id) as digest from {DATASET}.{BATCHES} order by digest"
        ).fetchnumpy()["digest"]
        if not len(digests):
            return SyncPlan()
        open_rows = _open_batches(con)
        floor, sweep_after = _state(con) if SYNC_STATE in tables else (None, None)
        column_types = _added_column_types(con)
    return SyncPlan(
        held=HeldIds(digests),
        full=full,
        floor=floor,
        sweep_after=sweep_after,
        open_positions={batch_id: position for batch_id, position, _ in open_rows},
        previous_ids={batch_id: previous for batch_id, _, previous in open_rows},
        column_types=column_types,
    )


def _open_batches(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        f"""
        select id, position, previous_id from (
            select
                id,
                status,
                row_number() over newest_first as position,
                lag(id) over newest_first as previous_id
            from {DATASET}.{BATCHES}
            -- only the recent part of the history: nothing older than the oldest open one
            where created_at >= (
                select min(created_at)
                from {DATASET}.{BATCHES}
                where {IS_OPEN}
            )
            window newest_first as (order by created_at desc, id desc)
        )
        where {IS_OPEN}
        """
    ).fetchall()


def _state(con: duckdb.DuckDBPyConnection) -> tuple[Floor | None, str | None]:
    row = con.execute(
        f"select floor_id, floor_created_at, sweep_after from {DATASET}.{SYNC_STATE}"
    ).fetchone()
    if row is None:
        return None, None
    floor_id, floor_created_at, sweep_after = row
    return (Floor(floor_id, floor_created_at) if floor_id else None), sweep_after


def _added_column_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The stored kind of each column of `batches` that holds a field the API added."""
    rows = con.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = ? and table_name = ?",
        [DATASET, BATCHES],
    ).fetchall()
    return {name: from_duckdb(data_type) for name, data_type in rows if name not in RESERVED}
