"""What the warehouse holds, read before a sync so that it reads only what may have changed."""

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from pipelines.siliconflow import Fingerprints, Floor, HeldIds, ResultFile, SyncPlan
from pipelines.siliconflow.rows import NOT_ADDED, from_duckdb
from pipelines.vocabulary import (
    BATCH_FILES,
    BATCH_REQUESTS,
    BATCHES,
    DATASET,
    FAILED,
    FINGERPRINTS,
    GONE,
    NAMES_A_FILE,
    SYNC_STATE,
    is_terminal_sql,
)

from .database import connect_for_sync

IS_OPEN = f"not {is_terminal_sql('status')}"
# Result files one sync tries at most; the rest wait for the next.
MAX_FILES = 10_000
RESULT_TABLES = {BATCH_FILES, BATCH_REQUESTS}
TRIED = f"select batch_id, kind, file_id, state, attempts from {DATASET}.{BATCH_FILES}"
NONE_TRIED = (
    "select ''::varchar as batch_id, ''::varchar as kind, ''::varchar as file_id, "
    "''::varchar as state, 0::bigint as attempts where false"
)
# The file a name stands for: a signed link's query is its signature, renewed now and then.
THE_FILE = "split_part(trim({name}), '?', 1)"
IS_LINK = "regexp_matches(trim(file_id), '^https?://', 'i')"


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
    with connect_for_sync(db_path) as con:
        tables = stored_tables(con)
        result_tables = tables >= RESULT_TABLES
        if BATCHES not in tables:
            return SyncPlan(result_tables=result_tables)
        # Sorted by numpy, not by DuckDB: a sort in DuckDB holds far more than the 8 bytes a
        # batch it returns.
        held = HeldIds(
            con.execute(
                f"select md5_number_lower(id) as digest from {DATASET}.{BATCHES}"
            ).fetchnumpy()["digest"]
        )
        if not len(held):
            return SyncPlan(result_tables=result_tables)
        open_rows = _open_batches(con)
        floor, sweep_after = _state(con) if SYNC_STATE in tables else (None, None)
        column_types = _added_column_types(con)
        fingerprints = (
            _fingerprints(con, held) if FINGERPRINTS in tables and not full else Fingerprints()
        )
    return SyncPlan(
        held=held,
        full=full,
        floor=floor,
        sweep_after=sweep_after,
        open_positions={batch_id: position for batch_id, position, _ in open_rows},
        previous_ids={batch_id: previous for batch_id, _, previous in open_rows},
        column_types=column_types,
        fingerprints=fingerprints,
        result_tables=result_tables,
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


def _fingerprints(con: duckdb.DuckDBPyConnection, held: HeldIds) -> Fingerprints:
    """The fingerprints of stored batches that dlt's loads finished with: a load cut short by a
    kill may have stored a batch's fingerprint without the batch's rows, and a batch deleted
    from the table is loaded again whatever its fingerprint says."""
    digests, prints = _by_digest(
        con.execute(
            f"""
            select md5_number_lower(id) as digest, fingerprint
            from {DATASET}.{FINGERPRINTS}
            where _dlt_load_id in (select load_id from {DATASET}._dlt_loads where status = 0)
            """
        ).fetchnumpy()
    )
    stored = held.holds(digests)
    return Fingerprints(digests[stored], prints[stored])


def _by_digest(found: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Digests and fingerprints sorted by digest (see `read_plan` on sorting in DuckDB)."""
    order = np.argsort(found["digest"])
    return found["digest"][order], found["fingerprint"][order]


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
    return {name: from_duckdb(data_type) for name, data_type in rows if name not in NOT_ADDED}


@dataclass(frozen=True)
class FilePlan:
    """The result files one sync fetches, how many wait in all, and whether the tables for
    them exist yet."""

    files: list[ResultFile] = field(default_factory=list)
    pending: int = 0
    tables_exist: bool = False


def pending_files(
    con: duckdb.DuckDBPyConnection, wanted: bool = True, retry_gone: bool = False
) -> FilePlan:
    """Result files of ended batches not loaded yet (none unless `wanted`), oldest first, as
    their links expire first, at most MAX_FILES a sync: those never tried, those that failed,
    any file a batch names in place of a gone one or, by a new file id, of a loaded one, and
    (when `retry_gone`) every gone one."""
    tables = stored_tables(con)
    if BATCHES not in tables or not wanted:
        return FilePlan(tables_exist=tables >= RESULT_TABLES)
    rows = con.execute(
        f"""
        with named as (
            select id as batch_id, 'output' as kind, output_file_id as file_id, created_at
            from {DATASET}.{BATCHES}
            where not ({IS_OPEN}) and {NAMES_A_FILE.format(column="output_file_id")}
            union all
            select id, 'error', error_file_id, created_at
            from {DATASET}.{BATCHES}
            where not ({IS_OPEN}) and {NAMES_A_FILE.format(column="error_file_id")}
        ),

        tried as ({TRIED if BATCH_FILES in tables else NONE_TRIED}),

        compared as (
            select
                named.*,
                tried.state,
                tried.attempts,
                {THE_FILE.format(name="named.file_id")}
                = {THE_FILE.format(name="tried.file_id")} as same_file
            from named
            left join tried using (batch_id, kind)
        )

        select
            batch_id,
            kind,
            file_id,
            if(same_file, attempts, 0),
            count(*) over () as pending
        from compared
        where
            state is null
            or list_contains($again, state)
            -- the batch names another file: a gone one's stand-in, or a loaded one's new id (a
            -- signed link that moved may lead to the same file: a loaded one is not fetched again)
            or (not same_file and (state = '{GONE}' or not {IS_LINK}))
        order by created_at, batch_id, kind
        limit {MAX_FILES}
        """,
        {"again": [FAILED, GONE] if retry_gone else [FAILED]},
    ).fetchall()
    return FilePlan(
        files=[ResultFile(*row[:4]) for row in rows],
        pending=rows[0][4] if rows else 0,
        tables_exist=tables >= RESULT_TABLES,
    )
