"""Turn API batch objects into Arrow tables, one per warehouse table."""

import hashlib
import io
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from dlt.common.normalizers.naming.snake_case import NamingConvention

from pipelines.errors import ApiError
from pipelines.vocabulary import (
    BATCHES,
    CHILD_FIELDS,
    ERRORS,
    FINGERPRINTS,
    METADATA,
    REQUEST_COUNTS,
    STRING_FIELDS,
    TIMESTAMP_FIELDS,
)

API_TIME = pa.timestamp("s", tz="UTC")
UTC_TIME = pa.timestamp("us", tz="UTC")  # what `in_microseconds` stores, see there why
# Unix seconds that Python's datetime (and so every notebook) can show: years 1 to 9999.
FIRST_SECOND = -62_135_596_800
LAST_SECOND = 253_402_300_799
INT64 = (-(2**63), 2**63 - 1)
EXACT_IN_DOUBLE = 2**53

# Key columns are declared not-null to match dlt's primary-key hints.
API_BATCHES_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=name != "id") for name in STRING_FIELDS]
    + [pa.field(name, API_TIME) for name in TIMESTAMP_FIELDS]
)
# How the API sends the batches' fields: times in unix seconds.
API_BATCHES_JSON = pa.schema(
    [
        field.with_type(pa.int64()) if field.type == API_TIME else field
        for field in API_BATCHES_SCHEMA
    ]
)
REQUEST_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        ("total", pa.int64()),
        ("completed", pa.int64()),
        ("failed", pa.int64()),
    ]
)
COUNT_NAMES = REQUEST_COUNTS_SCHEMA.names[1:]
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
FINGERPRINTS_SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False), pa.field("fingerprint", pa.int64())]
)
# Part of every fingerprint: a change in how sfbatches stores a batch changes it, so that the
# next sync loads every batch it reads again the new way.
FINGERPRINT_VERSION = b"sfbatches-1"
KNOWN_FIELDS = frozenset(API_BATCHES_SCHEMA.names) | CHILD_FIELDS
LOAD_ID = "_dlt_load_id"
LOAD_ID_SCHEMA = pa.schema([("load_id", pa.string())])
# A block holds whole lines: a page longer than this is converted value by value. One thread:
# the other core downloads the next pages, and Arrow's pool of threads would hold buffers of its
# own.
JSON_READ = pj.ReadOptions(block_size=4 << 20, use_threads=False)
# Rows of each line `columns_table` writes: a page's worth.
LINE_ROWS = 100


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


def _as_json(value: Any) -> str:
    """A value as the API sent it: a number written as text shows its quotes."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def out_of_range(batch_id: Any, name: str, value: Any, wanted: str) -> ApiError:
    return ApiError(
        f"the API returned batch {batch_id} with {name} = {_as_json(value)[:40]}, not {wanted}; "
        "nothing was loaded: report it to SiliconFlow"
    )


# --- fields the API added later ----------------------------------------------------------------

# Types of added fields, narrowest first: a column only ever widens, so no value is rounded and
# no later value of another type can block a load.
ARROW_TYPES = {
    "boolean": pa.bool_(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "text": pa.string(),
}
DUCKDB_TYPES = {"boolean": "BOOLEAN", "bigint": "BIGINT", "double": "DOUBLE", "text": "VARCHAR"}
# Columns for added fields, at most: DuckDB writes each column of a row group in blocks of its
# own, so a table some thousands of columns wide outgrows a sync's memory limit in every later
# load. The fields past them are kept together, one JSON object per batch, in MORE_FIELDS.
MOST_ADDED_COLUMNS = 100
MORE_FIELDS = "more_fields"
NOT_ADDED = frozenset(KNOWN_FIELDS | {LOAD_ID, "_dlt_id"})  # columns of no added field
RESERVED = NOT_ADDED | {MORE_FIELDS}  # names an added field's own column never takes


# The kind of each type of value but int, whose kind depends on its size (`ExtraColumns.kind`).
KINDS = {bool: "boolean", float: "double", str: "text"}


def widest(kinds: set[str], exact_in_double: bool = True) -> str:
    """The narrowest type that holds values of all these kinds without changing any."""
    if len(kinds) <= 1:
        return next(iter(kinds), "text")
    if kinds == {"bigint", "double"} and exact_in_double:
        return "double"
    return "text"


def as_kind(value: Any, kind: str) -> Any:
    if value is None or kind in ("boolean", "bigint"):
        return value
    if kind == "double":
        return float(value)
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _for_reader(values: list[Any], kind: str) -> list[Any]:
    """`values` as `as_kind` makes them, for `columns_table` to read into a column of `kind`:
    the reader makes a double of a whole number itself, so only a text column's values that are
    not text need converting."""
    if kind != "text" or set(map(type, values)) <= {str, type(None)}:
        return values
    return [as_kind(value, kind) for value in values]


def from_duckdb(data_type: str) -> str:
    """The kind of a stored DuckDB column."""
    name = data_type.upper()
    if name == "BOOLEAN":
        return "boolean"
    if name in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT"):
        return "bigint"
    if name in ("FLOAT", "DOUBLE", "REAL") or name.startswith("DECIMAL"):
        return "double"
    return "text"


class ExtraColumns:
    """One stable column name and type for every field the API added, across pages and syncs.

    Names are dlt's normalized ones. A field whose normalized name is a documented field's
    (`Status`, `created-at`) or another added field's gets its own suffixed column instead of
    colliding. A type that changes widens the column (bigint → double → text); a stored column
    that must widen is listed in `widened` for the sync to alter before loading. Past
    MOST_ADDED_COLUMNS, new fields share MORE_FIELDS.
    """

    def __init__(self, stored: dict[str, str] | None = None) -> None:
        self.stored = dict(stored or {})
        self.kinds = dict(self.stored)
        self.widened: dict[str, str] = {}
        self.warnings: list[str] = []
        self.naming = NamingConvention()
        self.names: dict[str, str | None] = {}
        self.taken = set(self.stored) - {MORE_FIELDS}  # columns of added fields
        self.told_more = False
        self.owners: dict[str, str] = {}  # column name → the field path that has it
        self.big_ints: set[str] = set()

    def column(self, path: str) -> str | None:
        """The column for a flattened field path, e.g. `usage__total_tokens`; None for a new
        one past MOST_ADDED_COLUMNS, whose values go to MORE_FIELDS."""
        if path not in self.names:
            name = self._name(path)
            if name not in self.taken and len(self.taken) >= MOST_ADDED_COLUMNS:
                self.names[path] = None
            else:
                self.names[path] = name
                self.taken.add(name)
        return self.names[path]

    def more_fields(self) -> None:
        """Say once that fields went to MORE_FIELDS, unless it held some already."""
        if MORE_FIELDS not in self.kinds and not self.told_more:
            self.told_more = True
            self.warnings.append(
                f"the API added more than {MOST_ADDED_COLUMNS} fields: those without a column "
                f"are kept together as one JSON object per batch in batches.{MORE_FIELDS}"
            )

    def _name(self, path: str) -> str:
        """The field's normalized name, unless that is empty, a documented or dlt's own
        column, or another added field's (`Foo` beside `foo`; the first one read keeps it):
        then a name suffixed with the field's digest, the same in every sync."""
        name = self.naming.normalize_path(path)
        if name and name not in RESERVED and self.owners.setdefault(name, path) == path:
            return name
        own = f"{name or 'field'}_{hashlib.sha1(path.encode()).hexdigest()[:6]}"
        if own not in self.kinds:
            why = f"whose column name {name!r} is taken" if name else "whose name has no letters"
            self.warnings.append(
                f"the API added a field {path!r}, {why}: its values are stored in batches.{own}"
            )
        return own

    def array(self, name: str, values: list[Any]) -> pa.Array:
        """`values` of one column as Arrow, in the column's type widened to hold them all."""
        kind = self.kind(name, values)
        return pa.array([as_kind(value, kind) for value in values], ARROW_TYPES[kind])

    def table(self, columns: dict[str, list[Any]]) -> pa.Table:
        """Columns of added fields as one table, as `array` makes each (see TableChunk)."""
        kinds = {name: self.kind(name, values) for name, values in columns.items()}
        schema = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in kinds.items()])
        return columns_table(
            {name: _for_reader(values, kinds[name]) for name, values in columns.items()}, schema
        )

    def kind(self, name: str, values: list[Any]) -> str:
        """The column's type, widened to hold `values` too."""
        types = set(map(type, values)) - {type(None)}
        kinds = {KINDS.get(value_type, "text") for value_type in types - {int}}
        if int in types:
            ints = [value for value in values if type(value) is int]
            low, high = min(ints), max(ints)
            kinds.add("bigint" if INT64[0] <= low and high <= INT64[1] else "text")
            if max(-low, high) > EXACT_IN_DOUBLE:
                self.big_ints.add(name)
        if name in self.kinds:
            kinds.add(self.kinds[name])
        kind = widest(kinds, exact_in_double=name not in self.big_ints)
        self._widen(name, kind)
        return kind

    def _widen(self, name: str, kind: str) -> None:
        before = self.kinds.get(name)
        self.kinds[name] = kind
        if before is None or before == kind or name not in self.stored:
            return
        if name not in self.widened:
            self.warnings.append(
                f"the API changed the type of field {name!r} (was {DUCKDB_TYPES[before]}): "
                f"column batches.{name} is widened to {DUCKDB_TYPES[kind]}, no value was lost"
            )
        self.widened[name] = kind


# --- the tables --------------------------------------------------------------------------------


def batches_table(batches: list[dict], extras: ExtraColumns) -> pa.Table:
    """One row per batch: every known scalar field, plus any field the API added later.

    Times stay in seconds, as the API sends them, until `in_microseconds`.
    """
    table = _table(batches, API_BATCHES_SCHEMA, _column)
    for name, values in _extra_columns(batches, extras).items():
        table = table.append_column(name, extras.array(name, values))
    return table


def in_microseconds(table: pa.Table) -> pa.Table:
    """Times as microseconds: dlt stores second-precision Arrow times without a time zone, and
    SPEC wants TIMESTAMP WITH TIME ZONE.

    A cast costs about as much for one page as for a whole chunk: cast chunks.
    """
    for name in TIMESTAMP_FIELDS:
        _check_range(table, name)
    schema = pa.schema(
        [field.with_type(UTC_TIME) if field.type == API_TIME else field for field in table.schema]
    )
    return table.cast(schema)


def _check_range(table: pa.Table, name: str) -> None:
    seconds = table[name].cast(pa.int64())
    low, high = pc.min_max(seconds).values()
    if low.as_py() is None or (low.as_py() >= FIRST_SECOND and high.as_py() <= LAST_SECOND):
        return
    outside = pc.or_(pc.less(seconds, FIRST_SECOND), pc.greater(seconds, LAST_SECOND))
    row = pc.index(outside, True).as_py()
    raise out_of_range(
        table["id"][row].as_py(), name, seconds[row].as_py(), "a unix time between years 1 and 9999"
    )


def batch_text(batch: dict) -> bytes:
    """A batch object as JSON, keys sorted: the same object always gives the same text."""
    return orjson.dumps(batch, option=orjson.OPT_SORT_KEYS)


def fingerprint(text: bytes) -> int:
    """64 bits of a digest of a batch's `batch_text`: any change in any field changes it."""
    digest = hashlib.blake2b(text, digest_size=8, person=FINGERPRINT_VERSION).digest()
    return int.from_bytes(digest, "little", signed=True)


def request_counts_rows(batches: list[dict]) -> list[dict]:
    """A row for each batch whose `request_counts` holds a count (`{}`, all nulls: none)."""
    return [
        {**counts, "batch_id": batch["id"]}
        for batch in batches
        if isinstance(counts := batch.get("request_counts"), dict)
        and any(counts.get(name) is not None for name in COUNT_NAMES)
    ]


def request_counts_table(rows: list[dict]) -> pa.Table:
    try:
        return _table(rows, REQUEST_COUNTS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        # A count that is not an integer (e.g. "12") is read as one, or left empty.
        rows = [
            row
            | {
                name: _checked_int(row.get(name), row["batch_id"], f"request_counts.{name}")
                for name in COUNT_NAMES
            }
            for row in rows
        ]
        return _table(rows, REQUEST_COUNTS_SCHEMA)


def metadata_rows(batches: list[dict]) -> list[dict]:
    return [
        {"batch_id": batch["id"], "key": key, "value": _as_text(value)}
        for batch in batches
        if isinstance(metadata := batch.get("metadata"), dict)
        for key, value in metadata.items()
    ]


def errors_rows(batches: list[dict]) -> list[dict]:
    return [
        dict(
            zip(
                ERRORS_SCHEMA.names,
                (batch["id"], position, *_error_fields(error, batch["id"])),
                strict=True,
            )
        )
        for batch in batches
        if batch.get("errors")
        for position, error in enumerate(_error_list(batch["errors"]))
    ]


class TableChunk:
    """Pages of batches gathered as JSON lines, then read into one Arrow table per warehouse
    table at a time.

    Arrow's JSON reader does the reading: in C++, letting the thread that downloads the next
    pages go on meanwhile, and without pyarrow's constructors, which on their first call with a
    list import pandas (when installed) to ask whether it is pandas data: a good part of a
    sync's start-up and memory. A chunk with a value that does not fit its column is converted
    value by value instead, which reads a count sent as text as a number and names a value that
    fits no column. Fields the API added are gathered as values, to widen their columns' types.
    """

    def __init__(self, extras: ExtraColumns) -> None:
        self.extras = extras
        self._clear()

    def _clear(self) -> None:
        self.lines: dict[str, list[bytes]] = {name: [] for name in (BATCHES, *CHILD_ROWS)}
        self.added: dict[str, list[Any]] = {}  # column of an added field → its values
        self.fingerprints: dict[str, list[Any]] = {"id": [], "fingerprint": []}
        self.rows = 0

    def add(self, page: list[dict]) -> None:
        # One text per batch makes both the page's line and the batch's fingerprint.
        texts = [batch_text(batch) for batch in page]
        self.lines[BATCHES].append(b'{"data":[' + b",".join(texts) + b"]}\n")
        self.fingerprints["id"] += [batch["id"] for batch in page]
        self.fingerprints["fingerprint"] += map(fingerprint, texts)
        for name, rows_of in CHILD_ROWS.items():
            self.lines[name].append(json_line(rows_of(page)))
        for name, values in _extra_columns(page, self.extras).items():
            self.added.setdefault(name, [None] * self.rows).extend(values)
        self.rows += len(page)
        for values in self.added.values():
            values.extend([None] * (self.rows - len(values)))

    def take(self) -> dict[str, pa.Table]:
        """One table per warehouse table, with every column even when no page came."""
        lines = {name: b"".join(parts) for name, parts in self.lines.items()}
        try:
            tables = self._read(lines)
        except pa.ArrowInvalid:
            tables = self._convert(lines)
        tables[FINGERPRINTS] = columns_table(self.fingerprints, FINGERPRINTS_SCHEMA)
        self._clear()
        return tables

    def _read(self, lines: dict[str, bytes]) -> dict[str, pa.Table]:
        tables = read_tables(lines)
        if self.added:
            added = self.extras.table(self.added)
            for name, column in zip(added.column_names, added.columns, strict=True):
                tables[BATCHES] = tables[BATCHES].append_column(name, column)
        return tables

    def _convert(self, lines: dict[str, bytes]) -> dict[str, pa.Table]:
        batches = batches_table(parsed(lines[BATCHES]), self.extras)
        tables = {BATCHES: in_microseconds(batches)}
        return tables | {name: CHILD_CONVERTERS[name](parsed(lines[name])) for name in CHILD_ROWS}


def read_tables(lines: dict[str, bytes]) -> dict[str, pa.Table]:
    """The tables of a chunk's JSON lines; ArrowInvalid when a value does not fit its column."""
    seconds = read_json_lines(lines[BATCHES], API_BATCHES_JSON)
    tables = {name: read_json_lines(lines[name], CHILD_SCHEMAS[name]) for name in CHILD_ROWS}
    return {BATCHES: in_microseconds(seconds.cast(API_BATCHES_SCHEMA))} | tables


def json_line(rows: list[Any]) -> bytes:
    """Rows as one line of JSON, as `read_json_lines` reads them."""
    return orjson.dumps({"data": rows}, option=orjson.OPT_APPEND_NEWLINE)


def parsed(lines: bytes) -> list[Any]:
    return [row for line in lines.splitlines() for row in orjson.loads(line)["data"]]


def read_json_lines(lines: bytes, schema: pa.Schema) -> pa.Table:
    """The rows of lines of `json_line` as a table of `schema` (fields outside it are left
    out); ArrowInvalid when a value is not of its column's type."""
    if not lines:
        return no_rows(schema)
    wrapped = pa.schema([("data", pa.list_(pa.struct(schema)))])
    table = pj.read_json(
        io.BytesIO(lines),
        read_options=JSON_READ,
        parse_options=pj.ParseOptions(explicit_schema=wrapped, unexpected_field_behavior="ignore"),
    )
    return pa.Table.from_struct_array(pc.list_flatten(table.column("data"))).cast(schema)


def with_load_id(table: pa.Table, load_id: str) -> pa.Table:
    """`table` stamped with the id of the load package it goes into, as dlt's `_dlt_load_id`:
    that tells a batch's current child rows from stale ones, and when a status was observed.

    dlt stamps Arrow tables itself when told to (`add_dlt_load_id`), but through pyarrow's
    constructors (see TableChunk).
    """
    (value,) = rows_table([{"load_id": load_id}], LOAD_ID_SCHEMA).column(0).chunk(0)
    column = pc.fill_null(pa.nulls(table.num_rows, pa.string()), value)
    return table.append_column(pa.field(LOAD_ID, pa.string(), nullable=False), column)


def no_rows(schema: pa.Schema) -> pa.Table:
    """An empty table of `schema` (`Schema.empty_table` imports pandas, see TableChunk)."""
    return pa.Table.from_batches([], schema=schema)


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows as a table of `schema`, without pyarrow's constructors (see TableChunk)."""
    return columns_table({name: [row.get(name) for row in rows] for name in schema.names}, schema)


def columns_table(columns: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """Equally long lists of values as a table of `schema`, without pyarrow's constructors
    (see TableChunk): each line holds a slice of every column, short enough that it takes a
    value longer than a reader block for a line to outgrow one."""
    rows = len(next(iter(columns.values()), []))
    lines = b"".join(
        orjson.dumps(
            {name: values[start : start + LINE_ROWS] for name, values in columns.items()},
            option=orjson.OPT_APPEND_NEWLINE,
        )
        for start in range(0, rows, LINE_ROWS)
    )
    if not lines:
        return no_rows(schema)
    lists = pa.schema([field.with_type(pa.list_(field.type)) for field in schema])
    table = pj.read_json(
        io.BytesIO(lines),
        read_options=JSON_READ,
        parse_options=pj.ParseOptions(explicit_schema=lists),
    )
    flat = [pc.list_flatten(column) for column in table.columns]
    return pa.Table.from_arrays(flat, schema=schema)


def _plain_column(rows: list[dict], field: pa.Field) -> pa.Array:
    return pa.array([row.get(field.name) for row in rows], type=field.type)


def _table(
    rows: list[dict],
    schema: pa.Schema,
    column: Callable[[list[dict], pa.Field], pa.Array] = _plain_column,
) -> pa.Table:
    """Rows as a table, built a column at a time: `pa.Table.from_pylist` looks up every field
    in every row's dict on its own and takes several times as long."""
    return pa.Table.from_arrays([column(rows, field) for field in schema], schema=schema)


def _column(batches: list[dict], field: pa.Field) -> pa.Array:
    """One column of batches; a value Arrow refuses is named with its batch and field."""
    values = [batch.get(field.name) for batch in batches]
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        wanted = "a unix timestamp" if pa.types.is_timestamp(field.type) else "a string"
        for batch, value in zip(batches, values, strict=True):
            try:
                pa.array([value], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                raise out_of_range(batch["id"], field.name, value, wanted) from None
        raise


def _extra_columns(batches: list[dict], extras: ExtraColumns) -> dict[str, list[Any]]:
    """Fields outside the documented ones, nested objects flattened to `parent__child` names."""
    extra: dict[str, list[Any]] = {}
    more: dict[int, dict[str, Any]] = {}  # by row: the fields past MOST_ADDED_COLUMNS
    for key in sorted(set().union(*batches) - KNOWN_FIELDS):
        for row, batch in enumerate(batches):
            value = batch.get(key)
            if value is None:
                continue
            for path, scalar in _flatten(key, value):
                if (name := extras.column(path)) is None:
                    more.setdefault(row, {})[path] = scalar
                else:
                    extra.setdefault(name, [None] * len(batches))[row] = scalar
    if more:
        extras.more_fields()
        column = extra.setdefault(MORE_FIELDS, [None] * len(batches))
        for row, fields in more.items():
            column[row] = orjson.dumps(fields).decode()
    return extra


def _flatten(name: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _flatten(f"{name}__{key}", child)
    elif isinstance(value, list):
        yield name, orjson.dumps(value).decode()
    else:
        yield name, value


def _error_list(errors: Any) -> list[Any]:
    # SiliconFlow sends null, [], or a list of strings; OpenAI wraps a list in {"data": [...]};
    # an object without `data` but with fields of its own is one error, sent bare.
    if isinstance(errors, dict):
        errors = errors.get("data") if "data" in errors or set(errors) <= {"object"} else [errors]
    if isinstance(errors, list):
        return errors
    return [] if errors is None else [errors]


def _error_fields(
    error: Any, batch_id: str
) -> tuple[str | None, str | None, str | None, int | None]:
    if not isinstance(error, dict):
        return None, _as_text(error), None, None
    return (
        _as_text(error.get("code")),
        _as_text(error.get("message")),
        _as_text(error.get("param")),
        _checked_int(error.get("line"), batch_id, "errors.line"),
    )


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _checked_int(value: Any, batch_id: str, name: str) -> int | None:
    """A whole number as int64; anything that is not a number is left empty."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not INT64[0] <= number <= INT64[1]:
        raise out_of_range(batch_id, name, value, "a count that fits in 64 bits")
    return number


CHILD_ROWS: dict[str, Callable[[list[dict]], list[dict]]] = {
    REQUEST_COUNTS: request_counts_rows,
    METADATA: metadata_rows,
    ERRORS: errors_rows,
}
CHILD_SCHEMAS = {
    REQUEST_COUNTS: REQUEST_COUNTS_SCHEMA,
    METADATA: METADATA_SCHEMA,
    ERRORS: ERRORS_SCHEMA,
}
# Value by value (see TableChunk), from the rows of CHILD_ROWS.
CHILD_CONVERTERS: dict[str, Callable[[list[dict]], pa.Table]] = {
    REQUEST_COUNTS: request_counts_table,
    METADATA: lambda rows: _table(rows, METADATA_SCHEMA),
    ERRORS: lambda rows: _table(rows, ERRORS_SCHEMA),
}
