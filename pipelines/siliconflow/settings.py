"""Constants of the SiliconFlow batch API and of the tables it is loaded into."""

DEFAULT_BASE_URL = "https://api.siliconflow.cn/v1"
DEFAULT_PAGE_SIZE = 100
BATCHES_PATH = "batches"
DATASET_NAME = "siliconflow"

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Every status SiliconFlow or OpenAI documents; others are stored as sent, counted as open, and
# named in a warning. Compared in lower case: other OpenAI-compatible providers shout.
KNOWN_STATUSES = TERMINAL_STATUSES | {
    "in_queue",
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
}
# `code` of SiliconFlow's envelope `{code, message, data}` when it wraps a success; 50xxx codes
# (50505 overloaded, 50602/50603 rate limited) are transient, whatever the HTTP status says.
SUCCESS_CODES = frozenset({0, 200, 20000})
FIRST_TRANSIENT_CODE = 50000

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

BATCHES = "batches"
REQUEST_COUNTS = "batch_request_counts"
METADATA = "batch_metadata"
ERRORS = "batch_errors"
STATUS_HISTORY = "batch_status_history"
CHILD_TABLES = (REQUEST_COUNTS, METADATA, ERRORS)
# One row: the floor a broken walk left and the sweep's cursor, for the next sync.
SYNC_STATE = "_sfbatches_state"
# One row per key in each table; children are also replaced as a whole per `batch_id`.
PRIMARY_KEYS = {
    BATCHES: ("id",),
    REQUEST_COUNTS: ("batch_id",),
    METADATA: ("batch_id", "key"),
    ERRORS: ("batch_id", "position"),
}

# A walk from the top has reached ground the warehouse holds once this many batches in a row
# (or a page's worth, if pages are smaller) were stored already: new batches sort above stored
# ones, except in the same second or with a skewed clock, which a run this long outlasts.
CONNECT_RUN = 20
# The anti-entropy sweep: pages re-read each sync, further down the history each time, so that
# whatever went wrong before, every listed batch is stored within a bounded number of syncs.
DEFAULT_SWEEP_PAGES = 10
# A whole sync stops after this long (exit 4, database unchanged), well before cron piles up.
DEFAULT_SYNC_TIMEOUT_S = 900.0

# Raw pages are turned into Arrow tables this many rows at a time: big enough that dlt's
# per-item cost vanishes, small enough to keep memory flat.
CHUNK_ROWS = 2_000
# Pages downloaded ahead of the one being converted (a chunk's worth at the default page size):
# enough that the download goes on while dlt writes a chunk.
PREFETCH_PAGES = 20

# Open batches deep in the history are re-read page by page or one by one: several requests at
# a time hide the latency (429s are retried like any other, with backoff). 16 keeps a no-op
# sync of 100k batches (about 170 pages to re-read) near 1 s of waiting over a 50 ms link.
PARALLEL_REQUESTS = 16
