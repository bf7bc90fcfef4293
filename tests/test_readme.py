"""The README tells the truth: every table, view and column it names exists after a sync."""

import re

import duckdb
from conftest import REPO

ROW = re.compile(r"^\| `(?P<name>\w+)` \|(?P<rest>.*)\|$")
NAME = re.compile(r"`(\w+)`")


def named_columns() -> dict[str, set[str]]:
    """`table or view` -> the backticked names in the last cell of its README table row."""
    text = (REPO / "README.md").read_text()
    section = text.split("## What the warehouse holds", 1)[1].split("\n## ", 1)[0]
    named: dict[str, set[str]] = {}
    for line in section.splitlines():
        if row := ROW.match(line):
            named[row["name"]] = set(NAME.findall(row["rest"].rsplit("|", 1)[-1]))
    return named


def test_every_column_the_readme_names_exists(simulator, db_path, run):
    assert run("sync", "--db", str(db_path)).code == 0
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute(
            "select table_name, column_name from information_schema.columns "
            "where table_schema in ('siliconflow', 'analytics')"
        ).fetchall()
    actual: dict[str, set[str]] = {}
    for table, column in rows:
        actual.setdefault(table, set()).add(column)

    named = named_columns()

    assert {"batches", "batch_turnaround", "open_batches"} <= named.keys()
    for name, columns in named.items():
        assert name in actual, f"README names {name}, which does not exist"
        assert columns, f"README lists no columns for {name}"
        assert columns <= actual[name], (name, columns - actual[name])
