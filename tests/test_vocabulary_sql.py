"""The statuses SQL spells itself agree with pipelines.vocabulary, which the Python side uses."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from pipelines.analytics.models import default_sql_dir
from pipelines.vocabulary import LIFECYCLE, TERMINAL_STATUSES, normal_status, status_sql

SQL_FILES = sorted(default_sql_dir().rglob("*.sql"))

_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_LITERAL = re.compile(r"'((?:[^']|'')*)'")
# a column named status (qualified or not), never status_code and the like
_STATUS = r"(?<![\w.])(?:\w+\.)?status(?!\w)"
_LIST = re.compile(rf"{_STATUS}\s+(?:not\s+)?in\s*\(([^)]*)\)", re.IGNORECASE)
_COMPARED = re.compile(
    rf"{_STATUS}\s*(?:=|<>|!=)\s*'([^']*)'|'([^']*)'\s*(?:=|<>|!=)\s*{_STATUS}", re.IGNORECASE
)


def without_comments(sql: str) -> str:
    return _COMMENT.sub(" ", sql)


def code_of(path: Path) -> str:
    return without_comments(path.read_text(encoding="utf-8"))


def status_lists(code: str) -> list[frozenset[str]]:
    """Each `status in ('a', 'b')` list, as the set of statuses it names."""
    found = (frozenset(_LITERAL.findall(items)) for items in _LIST.findall(code))
    return [statuses for statuses in found if statuses]


def status_literals(code: str) -> list[str]:
    """Every status the code compares a status column with, in lists or one at a time."""
    compared = [left or right for left, right in _COMPARED.findall(code)]
    return compared + [status for found in status_lists(code) for status in found]


def test_the_sql_models_are_found():
    assert SQL_FILES, f"no .sql files under {default_sql_dir()}"


def test_the_parser_sees_lists_and_comparisons_in_every_spelling():
    code = without_comments(
        "where s.status in ('completed', 'failed')\n"
        "    and status = 'in_queue' or 'expired' <> b.status\n"
        "    -- status = 'not code'\n"
        "    and status_code = '200' and batch_status = 'x'"
    )
    assert status_lists(code) == [frozenset({"completed", "failed"})]
    assert sorted(status_literals(code)) == ["completed", "expired", "failed", "in_queue"]


def test_sql_spells_the_terminal_statuses_once_and_as_the_vocabulary_does():
    lists = {
        path.relative_to(default_sql_dir().parent).as_posix(): found
        for path in SQL_FILES
        if (found := status_lists(code_of(path)))
    }
    assert len(lists) == 1, (
        f"status lists in {sorted(lists)}: spell them once (is_terminal in "
        "int_batch_lifecycle) and read is_terminal everywhere else"
    )
    ((label, found),) = lists.items()
    assert found == [TERMINAL_STATUSES], f"{label} lists {found}, not {sorted(TERMINAL_STATUSES)}"


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda path: path.name)
def test_every_status_the_sql_names_is_one_of_the_lifecycle(path):
    unknown = sorted(set(status_literals(code_of(path))) - set(LIFECYCLE))
    assert not unknown, f"{path.name} compares status with {unknown}, not in LIFECYCLE"


@pytest.mark.parametrize("model", ["stg_batches.sql", "stg_batch_status_history.sql"])
def test_the_views_read_a_status_as_the_python_side_compares_it(model):
    staging = code_of(default_sql_dir() / "staging" / model)
    assert f"{status_sql('status')} as status" in staging
    padded = ["  COMPLETED ", "completed\t", "\r\n Completed\n", "\vcompleted\f", "validating\v"]
    with duckdb.connect() as con:
        read = con.execute(f"select {status_sql('s')} from unnest(?) as t(s)", [padded])
        assert [row[0] for row in read.fetchall()] == [normal_status(s) for s in padded]
    assert {normal_status(s) for s in padded} == {"completed", "validating"}
    assert normal_status("completed\u00a0") != "completed"  # ASCII blanks only, as DuckDB
