"""Opening the DuckDB file: the connection a sync loads through."""

import duckdb

from pipelines import database


def test_a_database_opened_for_loading_is_the_file_written_in_small_row_groups(tmp_path):
    db_path = tmp_path / "warehouse.duckdb"

    with database.connect(db_path, row_group_size=2048) as con:
        con.execute("create schema siliconflow")
        con.execute("create table siliconflow.numbers as select range as n from range(10000)")

    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute("select count(*), sum(n) from siliconflow.numbers").fetchone()
        groups = con.execute(
            "select count(distinct row_group_id) from pragma_storage_info('siliconflow.numbers')"
        ).fetchone()
    assert rows == (10000, sum(range(10000)))
    assert groups == (5,)  # 10,000 rows in groups of 2,048; DuckDB's default would make one
