"""The DuckDB file: the row groups every writer keeps, and bookkeeping that reads what a load
wrote rather than the whole history."""

import re
from datetime import UTC, datetime

import duckdb
import pytest

from pipelines.warehouse import database, history


def row_groups(db_path, table: str) -> int:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(
            f"select count(distinct row_group_id) from pragma_storage_info('{table}')"
        ).fetchone()[0]


def test_writers_store_the_file_in_small_row_groups_and_keep_them(tmp_path):
    db_path = tmp_path / "warehouse.duckdb"
    rows = 40_000  # one row group at DuckDB's default size, three at sfbatches'

    with database.connect(db_path) as con:
        con.execute("create schema siliconflow")
        con.execute(f"create table siliconflow.numbers as select range as n from range({rows})")
    groups_after_load = row_groups(db_path, "siliconflow.numbers")
    with database.connect(db_path) as con:  # as `sfbatches models` does: views only
        con.execute("create view siliconflow.evens as select * from numbers where n % 2 = 0")

    assert groups_after_load == 3
    assert row_groups(db_path, "siliconflow.numbers") == 3
    with duckdb.connect(str(db_path), read_only=True) as con:
        assert con.execute("select count(*), sum(n) from siliconflow.evens").fetchone() == (
            rows // 2,
            sum(range(0, rows, 2)),
        )


LOAD_IDS = ["999999999.5", "1796196403.999999", "1796196404", "1796196404.25", "1796196405.1"]


@pytest.mark.parametrize(
    "since",
    [
        datetime(2026, 12, 2, 7, 26, 44, tzinfo=UTC),  # 1796196404
        datetime(2026, 12, 2, 7, 26, 44, 250000, tzinfo=UTC),
        datetime(2026, 12, 2, 7, 26, 43, tzinfo=UTC),
        datetime(2001, 9, 9, 1, 46, 39, tzinfo=UTC),  # 999999999: a nine-digit load id
        datetime(1, 1, 1),  # what DuckDB hands back for -infinity: nothing recorded yet
    ],
)
def test_rows_loaded_since_a_time_are_found_by_their_load_ids(since):
    later = [i for i in LOAD_IDS if float(i) > (since.timestamp() if since.tzinfo else -1e12)]
    with duckdb.connect() as con:
        con.execute("create table t as select unnest($ids) as _dlt_load_id", {"ids": LOAD_IDS})
        rows = con.execute(
            f"select _dlt_load_id from t where {history.loaded_since('t')} order by 1",
            {"since": since},
        ).fetchall()

    assert [i for (i,) in rows] == sorted(later)


def test_bookkeeping_reads_only_the_row_groups_of_loads_since(tmp_path):
    with database.connect(tmp_path / "warehouse.duckdb") as con:
        con.execute(
            "create table t as select range as n, '1796100000.5' as _dlt_load_id from range(100000)"
        )
        con.execute("insert into t select range, '1796196404.5' from range(1000)")
        con.execute("checkpoint")
        since = datetime(2026, 12, 2, 7, 26, 44, tzinfo=UTC)
        [(_, plan)] = con.execute(
            f"explain analyze select count(*) from t where {history.loaded_since('t')}",
            {"since": since},
        ).fetchall()

    scanned = re.search(r"Row Groups Scanned: (\d+) / (\d+)", plan)
    assert scanned and int(scanned[1]) == 1 and int(scanned[2]) >= 7
