"""The README tells the truth: every table, view and column it names exists after a sync, and its
recipes work."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_the_readmes_copy_makes_a_duckdb_2_file_open_in_duckdb_1(tmp_path):
    text = (REPO / "README.md").read_text()
    [command] = re.findall(r'`python -c "(.+?)"`', text, re.DOTALL)
    with duckdb.connect(str(tmp_path / "old.duckdb")) as con:  # DuckDB 2.0's own format
        con.execute("create schema siliconflow")
        con.execute("create table siliconflow.batches as select 'b' || range as id from range(5)")
    cli = Path(sys.executable).with_name("duckdb")  # pip's duckdb-cli 1.5, a dev extra
    query = "select count(*) from siliconflow.batches"

    def count(name: str) -> subprocess.CompletedProcess[str]:
        argv = [str(cli), "-readonly", "-csv", "-noheader", name, "-c", query]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)

    assert "version number" in count("old.duckdb").stderr
    code = command.replace("\n", " ").replace('\\"', '"')
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)

    assert count("new.duckdb").stdout.strip() == "5"
