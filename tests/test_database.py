"""Opening the DuckDB file for writing: every writer keeps the same row groups."""

import duckdb

from pipelines.warehouse import database


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
