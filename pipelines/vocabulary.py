"""The domain's words, in one place: schemas, tables, fields and statuses. Imports nothing, so
the source, the warehouse, the SQL runner, the report and the bench can all share it."""

DATASET = "siliconflow"  # the schema dlt loads into
ANALYTICS = "analytics"  # the schema of the SQL views

BATCHES = "batches"
REQUEST_COUNTS = "batch_request_counts"
METADATA = "batch_metadata"
ERRORS = "batch_errors"
STATUS_HISTORY = "batch_status_history"
CHILD_TABLES = (REQUEST_COUNTS, METADATA, ERRORS)
# Result files: one row per file a sync tried, one row per line of each loaded file.
BATCH_FILES = "batch_files"
BATCH_REQUESTS = "batch_requests"
FILE_KINDS = ("output", "error")  # a batch's output_file_id, error_file_id
LOADED, GONE, FAILED = "loaded", "gone", "failed"  # a file's state
# SQL: whether a batch names a file in `column`, by an id or a link (null or blank text names
# none), for the sync's plan and the report's files not loaded alike
NAMES_A_FILE = "regexp_matches({column}, '[^[:space:]]')"
# One row per sync that got the database, written at its end, ok or failed.
SYNC_RUNS = "sync_runs"
# One row: the floor a broken walk left and the sweep's cursor, for the next sync.
SYNC_STATE = "_sfbatches_state"
# One row per batch: a digest of the API object it was last loaded from, so that a batch read
# again unchanged is not loaded again.
FINGERPRINTS = "_sfbatches_fingerprints"
# One row per key in each table; children are also replaced as a whole per `batch_id`.
PRIMARY_KEYS = {
    BATCHES: ("id",),
    REQUEST_COUNTS: ("batch_id",),
    METADATA: ("batch_id", "key"),
    ERRORS: ("batch_id", "position"),
    BATCH_FILES: ("batch_id", "kind"),
    BATCH_REQUESTS: ("batch_id", "kind", "line"),
}

# `sfbatches check`'s limits when neither a flag nor `alerts.<name>` sets them (SPEC §2).
ALERT_DEFAULTS = {
    "max_sync_age_hours": 1.0,
    "max_queue_hours": 12.0,
    "max_finalizing_hours": 2.0,
    "max_failure_rate": 0.1,
}

STRING_FIELDS = (
    "id",
    "object",
    "endpoint",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "file_name",
)
TIMESTAMP_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
# Nested fields with a table of their own; every other field becomes a column of `batches`.
CHILD_FIELDS = frozenset({"request_counts", "metadata", "errors"})

# Statuses in the order a batch lives through them (SiliconFlow's `in_queue`, OpenAI's
# `validating`). Compared without the blanks around them and in lower case (other
# OpenAI-compatible providers pad and shout): `normal_status`, `status_sql`. Any other status,
# and none at all, is stored as sent and counted as open.
LIFECYCLE = (
    "in_queue",
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
STATUS_PADDING = " \t\n\r\f\v"  # the blanks around a status that do not count
STATUS_PADDING_SQL = r"e' \t\n\r\f' || chr(11)"  # the same in DuckDB, which has no \v
# A batch in one of these has started whatever its `in_progress_at` says: it is not queued.
STARTED_STATUSES = frozenset({"in_progress", "finalizing"})
KNOWN_STATUSES = frozenset(LIFECYCLE)


def sql_list(values: frozenset[str] | tuple[str, ...]) -> str:
    """`'a', 'b'`: a status list for SQL text, sorted so that it reads the same every time."""
    return ", ".join(f"'{value}'" for value in sorted(values))


def normal_status(status: str) -> str:
    """A status as compared: without the blanks around it, in lower case, as `status_sql`."""
    return status.strip(STATUS_PADDING).lower()


def status_sql(column: str) -> str:
    """SQL for the status in `column` as compared; DuckDB's `trim` alone takes spaces only."""
    return f"lower(trim({column}, {STATUS_PADDING_SQL}))"


def is_terminal_sql(column: str) -> str:
    """SQL that is true when the status in `column` is terminal, false otherwise (also null),
    as `analytics.int_batch_lifecycle.is_terminal` decides."""
    return f"coalesce({status_sql(column)} in ({sql_list(TERMINAL_STATUSES)}), false)"
