"""Build the analytics schema: every sql/**/*.sql view and sql/seeds/*.csv table, dependencies
first, all or nothing."""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.errors import ModelError
from pipelines.vocabulary import ANALYTICS, BATCHES, DATASET
from pipelines.warehouse.database import open_database

SCHEMA = ANALYTICS
SOURCE_SCHEMA = DATASET
# folders under sql/ build in this order; a dependency can still pull a file earlier
LAYERS = ("seeds", "staging", "intermediate", "marts")

_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_DEFINITION = re.compile(rf"\bcreate\s+or\s+replace\s+view\s+{SCHEMA}\.(\w+)", re.IGNORECASE)
_REFERENCE = re.compile(rf"\b{SCHEMA}\.(\w+)", re.IGNORECASE)
_SOURCE = re.compile(rf"\b{SOURCE_SCHEMA}\.(\w+)", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^LINE (\d+):", re.MULTILINE)


@dataclass(frozen=True)
class Model:
    """One sql file: the view it creates and the views and tables it reads."""

    name: str
    path: Path
    label: str
    sql: str
    depends_on: frozenset[str]
    sources: frozenset[str]
    rank: tuple[int, str]


def default_sql_dir() -> Path:
    """The SQL models: `pipelines/sql` in an installed wheel, else the checkout's sql/."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "sql", package.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise ModelError(f"the SQL models are missing from {package}: reinstall sfbatches")


def build_models(con: duckdb.DuckDBPyConnection, *, sql_dir: Path | None = None) -> list[str]:
    """(Re)create every analytics view in one transaction; return their names in build order.

    Raises ModelError when there is no synced data or a file fails; then no view changed.
    """
    models = order_models(discover_models(sql_dir or default_sql_dir()))
    check_sources(con, models)
    con.execute("begin transaction")
    try:
        con.execute(f"create schema if not exists {SCHEMA}")
        for model in models:
            run_model(con, model)
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")
    return [model.name for model in models]


def build_models_at(db_path: str | Path, *, sql_dir: Path | None = None) -> list[str]:
    """Open the DuckDB file at `db_path`, build the models, close it."""
    with open_database(db_path) as con:
        return build_models(con, sql_dir=sql_dir)


def discover_models(sql_dir: Path) -> list[Model]:
    """Read every .sql file under `sql_dir` (each must create the view named after it) and
    every seed: a CSV under `sql_dir/seeds` that users edit, loaded as table `seed_<name>`."""
    models = [read_model(path, sql_dir) for path in sorted(sql_dir.rglob("*.sql"))]
    models += [read_seed(path, sql_dir) for path in sorted((sql_dir / "seeds").glob("*.csv"))]
    if not models:
        raise ModelError(f"no .sql files found in {sql_dir}")
    seen: dict[str, str] = {}
    for model in models:
        if model.name in seen:
            raise ModelError(
                f"{model.label} and {seen[model.name]} both define {SCHEMA}.{model.name}",
                path=model.label,
            )
        seen[model.name] = model.label
    return models


def read_model(path: Path, sql_dir: Path) -> Model:
    """Parse one file: its view name (must equal the file name) and its references."""
    label = path.relative_to(sql_dir.parent).as_posix()
    sql = path.read_text(encoding="utf-8")
    code = _COMMENT.sub(" ", sql)
    defined = _DEFINITION.findall(code)
    if defined != [path.stem]:
        raise ModelError(
            f"{label} must hold exactly one `create or replace view {SCHEMA}.{path.stem}`",
            path=label,
        )
    folder = path.relative_to(sql_dir).parts[0] if path.parent != sql_dir else ""
    layer = LAYERS.index(folder) if folder in LAYERS else len(LAYERS)
    return Model(
        name=path.stem,
        path=path,
        label=label,
        sql=sql,
        depends_on=frozenset(_REFERENCE.findall(code)) - {path.stem},
        sources=frozenset(_SOURCE.findall(code)),
        rank=(layer, label),
    )


def read_seed(path: Path, sql_dir: Path) -> Model:
    """A seed as a model: its CSV read as text, each column cast by the view that reads it."""
    name = f"seed_{path.stem}"
    quoted = str(path).replace("'", "''")
    return Model(
        name=name,
        path=path,
        label=path.relative_to(sql_dir.parent).as_posix(),
        sql=(
            f"create or replace table {SCHEMA}.{name} as "
            f"select * from read_csv('{quoted}', header = true, all_varchar = true)"
        ),
        depends_on=frozenset(),
        sources=frozenset(),
        rank=(LAYERS.index("seeds"), path.name),
    )


def order_models(models: list[Model]) -> list[Model]:
    """Sort topologically; among files that are ready, staging before marts, then by path."""
    by_name = {model.name: model for model in models}
    for model in models:
        unknown = sorted(model.depends_on - by_name.keys())
        if unknown:
            raise ModelError(
                f"{model.label} reads {SCHEMA}.{unknown[0]}, which no sql file defines",
                path=model.label,
            )
    waiting = {model.name: set(model.depends_on) for model in models}
    ready = [(model.rank, model.name) for model in models if not model.depends_on]
    heapq.heapify(ready)
    ordered: list[Model] = []
    while ready:
        _, name = heapq.heappop(ready)
        ordered.append(by_name[name])
        for other, needs in waiting.items():
            if name in needs:
                needs.remove(name)
                if not needs:
                    heapq.heappush(ready, (by_name[other].rank, other))
    if len(ordered) < len(models):
        stuck = sorted(by_name[name].label for name, needs in waiting.items() if needs)
        raise ModelError(f"circular references between {', '.join(stuck)}")
    return ordered


def check_sources(con: duckdb.DuckDBPyConnection, models: list[Model]) -> None:
    """Fail with advice when the synced tables the models read are not there."""
    rows = con.execute(
        "select table_name from duckdb_tables() "
        "where schema_name = ? and database_name = current_database()",
        [SOURCE_SCHEMA],
    ).fetchall()
    present = {name for (name,) in rows}
    if BATCHES not in present:
        raise ModelError("no synced data: run `sfbatches sync` first")
    for model in models:
        missing = sorted(model.sources - present)
        if missing:
            raise ModelError(
                f"{model.label} reads {SOURCE_SCHEMA}.{missing[0]}, which is missing: "
                "run `sfbatches sync` first",
                path=model.label,
            )


def run_model(con: duckdb.DuckDBPyConnection, model: Model) -> None:
    """Create one view; DuckDB's "LINE n" counts lines of the file, as it is sent whole."""
    try:
        con.execute(model.sql)
    except duckdb.Error as error:
        text = str(error)
        found = _ERROR_LINE.search(text)
        line = int(found.group(1)) if found else None
        where = f"{model.label}:{line}" if line else model.label
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        raise ModelError(f"{where}: {first}", path=model.label, line=line) from error
