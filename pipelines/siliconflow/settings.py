"""Constants of the SiliconFlow batch API and of how the source reads it."""

DEFAULT_BASE_URL = "https://api.siliconflow.cn/v1"
DEFAULT_PAGE_SIZE = 100
BATCHES_PATH = "batches"
# OpenAI's route for a file's content; SiliconFlow serves result files there (or names a signed
# storage URL instead).
FILES_PATH = "files/{file_id}/content"

# `code` of SiliconFlow's envelope `{code, message, data}` when it wraps a success; 50xxx codes
# (50505 overloaded, 50602/50603 rate limited) are transient, whatever the HTTP status says.
SUCCESS_CODES = frozenset({0, 200, 20000})
FIRST_TRANSIENT_CODE = 50000

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
# per-item cost vanishes, small enough to keep memory flat (see bench/README.md).
CHUNK_ROWS = 5_000
# A sync keeps the ids it has loaded as a sorted array of their hashes, those of the latest
# pages in a set until this many (or a sixteenth of the array) are merged into it.
MERGE_AFTER = 8_192
# Pages downloaded ahead of the one being converted:
# enough that the download goes on while dlt writes a chunk.
PREFETCH_PAGES = 20

# Open batches deep in the history are re-read page by page or one by one: several requests at
# a time hide the latency (429s are retried like any other, with backoff).
PARALLEL_REQUESTS = 16

# Result files downloaded at once: most are small, so each is mostly a round trip to wait for.
FILE_DOWNLOADS = 8
# Rows of `batch_requests` handed to dlt at a time: memory stays flat whatever a file's size.
REQUEST_ROWS = 10_000
