"""Turn API batch objects into Arrow tables, one per warehouse table, column by column."""

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pyarrow as pa

from pipelines.errors import ApiError

from .settings import (
    BATCHES,
    CHILD_FIELDS,
    ERRORS,
    METADATA,
    REQUEST_COUNTS,
    STRING_FIELDS,
    TIMESTAMP_FIELDS,
)

API_TIME = pa.timestamp("s", tz="UTC")
UTC_TIME = pa.timestamp("us", tz="UTC")  # what `in_microseconds` stores, see there why

# Key columns are declared not-null to match dlt's primary-key hints.
API_BATCHES_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=name != "id") for name in STRING_FIELDS]
    + [pa.field(name, API_TIME) for name in TIMESTAMP_FIELDS]
)
REQUEST_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        ("total", pa.int64()),
        ("completed", pa.int64()),
        ("failed", pa.int64()),
    ]
)
METADATA_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        ("value", pa.string()),
    ]
)
ERRORS_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        ("code", pa.string()),
        ("message", pa.string()),
        ("param", pa.string()),
        ("line", pa.int64()),
    ]
)
KNOWN_FIELDS = frozenset(API_BATCHES_SCHEMA.names) | CHILD_FIELDS


def check_batches(batches: list[Any]) -> None:
    """Refuse a page whose items are not batch objects with an id, before anything is loaded."""
    for position, batch in enumerate(batches):
        if not isinstance(batch, dict):
            raise ApiError(
                f"the API returned a batch that is not an object (item {position}: "
                f"{str(batch)[:80]!r}); nothing was loaded, retry later or report it to SiliconFlow"
            )
        if not isinstance(batch.get("id"), str) or not batch["id"]:
            raise ApiError(
                f"the API returned a batch without an id (item {position}, "
                f"keys {sorted(batch)[:8]}); nothing was loaded, retry later or report it"
            )


def batches_table(batches: list[dict]) -> pa.Table:
    """One row per batch: every known scalar field, plus any field the API added later.

    Times stay in seconds, as the API sends them, until `in_microseconds`.
    """
    try:
        # Arrow reads the dicts in C++, far faster than a Python loop per column.
        table = pa.Table.from_pylist(batches, schema=API_BATCHES_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        table = pa.Table.from_arrays(
            [_column(batches, field) for field in API_BATCHES_SCHEMA], schema=API_BATCHES_SCHEMA
        )
    for name, values in _extra_columns(batches).items():
        table = table.append_column(name, _infer_column(values))
    return table


def in_microseconds(table: pa.Table) -> pa.Table:
    """Times as microseconds: dlt stores second-precision Arrow times without a time zone, and
    SPEC wants TIMESTAMP WITH TIME ZONE.

    A cast costs about as much for one page as for a whole chunk: cast chunks.
    """
    schema = pa.schema(
        [field.with_type(UTC_TIME) if field.type == API_TIME else field for field in table.schema]
    )
    return table.cast(schema)


def request_counts_table(batches: list[dict]) -> pa.Table:
    rows = [
        {**counts, "batch_id": batch["id"]}
        for batch in batches
        if isinstance(counts := batch.get("request_counts"), dict) and counts
    ]
    try:
        return pa.Table.from_pylist(rows, schema=REQUEST_COUNTS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        # A count that is not an integer (e.g. "12") is read as one, or left empty.
        names = REQUEST_COUNTS_SCHEMA.names[1:]
        rows = [row | {name: _as_int(row.get(name)) for name in names} for row in rows]
        return pa.Table.from_pylist(rows, schema=REQUEST_COUNTS_SCHEMA)


def metadata_table(batches: list[dict]) -> pa.Table:
    batch_ids: list[str] = []
    keys: list[str] = []
    values: list[str | None] = []
    for batch in batches:
        metadata = batch.get("metadata")
        if isinstance(metadata, dict) and metadata:
            batch_ids.extend([batch["id"]] * len(metadata))
            keys.extend(metadata)
            values.extend(metadata.values())
    if not all(value is None or type(value) is str for value in values):
        values = [_as_text(value) for value in values]
    return pa.Table.from_arrays(
        [pa.array(batch_ids), pa.array(keys, pa.string()), pa.array(values, pa.string())],
        schema=METADATA_SCHEMA,
    )


def errors_table(batches: list[dict]) -> pa.Table:
    rows = [
        dict(zip(ERRORS_SCHEMA.names, (batch["id"], position, *_error_fields(error)), strict=True))
        for batch in batches
        if batch.get("errors")
        for position, error in enumerate(_error_list(batch["errors"]))
    ]
    return pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)


class TableChunk:
    """Arrow tables of many pages, converted a page at a time as the pages arrive.

    A conversion holds the GIL from start to end: page-sized ones let the thread downloading
    the next page run in between, so both go on at once. Raw pages are not kept: holding
    thousands of dicts makes every garbage collection slower.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {name: [] for name in TABLE_BUILDERS}
        self.rows = 0

    def add(self, page: list[dict]) -> None:
        self.rows += len(page)
        for name, to_table in TABLE_BUILDERS.items():
            self.parts[name].append(to_table(page))

    def take(self) -> dict[str, pa.Table]:
        """One table per warehouse table, with every column even when no page came."""
        tables = {
            name: _combine(self.parts[name] or [TABLE_BUILDERS[name]([])]) for name in self.parts
        }
        tables[BATCHES] = in_microseconds(tables[BATCHES])
        self._clear()
        return tables


def _combine(parts: list[pa.Table]) -> pa.Table:
    try:
        # A field the API added later may be missing from some pages: those get nulls.
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # ... or be a number on one page and text on another: keep all of it as text.
        return pa.concat_tables(
            [_extras_as_text(part) for part in parts], promote_options="permissive"
        )


def _extras_as_text(table: pa.Table) -> pa.Table:
    schema = pa.schema(
        [
            field if field.name in KNOWN_FIELDS else field.with_type(pa.string())
            for field in table.schema
        ]
    )
    return table.cast(schema)


def _column(batches: list[dict], field: pa.Field) -> pa.Array:
    """One column the slow way, to name the field that Arrow refused."""
    values = [batch.get(field.name) for batch in batches]
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as error:
        raise ApiError(
            f"the API returned a batch whose {field.name!r} is not a {_describe(field.type)} "
            f"({error}); nothing was loaded, report it to SiliconFlow"
        ) from None


def _describe(arrow_type: pa.DataType) -> str:
    return "unix timestamp" if pa.types.is_timestamp(arrow_type) else "string"


def _extra_columns(batches: list[dict]) -> dict[str, list[Any]]:
    """Fields outside the documented ones, nested objects flattened to `parent__child` names."""
    extra: dict[str, list[Any]] = {}
    for key in sorted(set().union(*batches) - KNOWN_FIELDS):
        for row, batch in enumerate(batches):
            value = batch.get(key)
            if value is None:
                continue
            for name, scalar in _flatten(key, value):
                extra.setdefault(name, [None] * len(batches))[row] = scalar
    return extra


def _flatten(name: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _flatten(f"{name}__{key}", child)
    elif isinstance(value, list):
        yield name, orjson.dumps(value).decode()
    else:
        yield name, value


def _infer_column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types in one new field: keep every value as text rather than drop any.
        return pa.array([None if value is None else _as_text(value) for value in values])


def _error_list(errors: Any) -> list[Any]:
    # SiliconFlow sends null, [], or a list of strings; OpenAI wraps a list in {"data": [...]}.
    if isinstance(errors, dict):
        errors = errors.get("data")
    if isinstance(errors, list):
        return errors
    return [] if errors is None else [errors]


def _error_fields(error: Any) -> tuple[str | None, str | None, str | None, int | None]:
    if not isinstance(error, dict):
        return None, _as_text(error), None, None
    return (
        _as_text(error.get("code")),
        _as_text(error.get("message")),
        _as_text(error.get("param")),
        _as_int(error.get("line")),
    )


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


TABLE_BUILDERS: dict[str, Callable[[list[dict]], pa.Table]] = {
    BATCHES: batches_table,
    REQUEST_COUNTS: request_counts_table,
    METADATA: metadata_table,
    ERRORS: errors_table,
}
