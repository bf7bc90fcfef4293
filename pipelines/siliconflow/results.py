"""Result files of ended batches: each downloaded once, streamed to disk, and turned into one row
per line by DuckDB's JSON functions, so no file is ever held in memory.

A worker thread streams a file into the scratch folder, writing each line's number in front of
it (DuckDB's CSV reader keeps lines in order but does not number them) and, when asked, a
gzipped copy into the archive. The resource then reads the numbered copy with DuckDB and yields
its rows in Arrow batches, followed by the file's `batch_files` row.
"""

import contextlib
import gzip
import hashlib
import json
import os
import re
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from urllib.parse import quote, urlsplit

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from requests import Response
from requests.exceptions import HTTPError, RequestException
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from pipelines.errors import AuthError, SyncTimeout, first_line, naming
from pipelines.vocabulary import BATCH_FILES, BATCH_REQUESTS, FAILED, GONE, LOADED

from .client import (
    READ_BYTES,
    BatchApi,
    api_code,
    is_under,
    plain_reason,
    read_chunks,
    redact,
)
from .prefetch import worker_pool
from .rows import no_rows, rows_table
from .settings import FILE_DOWNLOADS, FILES_PATH, REQUEST_ROWS

# Between a line's number and its text: a control character, which JSON never holds unescaped.
SEPARATOR = b"\x1f"
# Bytes a line cannot carry to the reader, each swapped as the body is saved for one that JSON
# reads alike: a carriage return (where DuckDB's CSV reader would end the row, or refuse the whole
# file) for a tab, which JSON also takes as space between values and refuses inside a string; the
# separator for another control character, which JSON refuses anywhere.
TO_READER = bytes.maketrans(b"\r" + SEPARATOR, b"\t\x01")
# DuckDB reads lines in whole vectors, so a file of long lines (long completions, embeddings)
# would outgrow its memory: a longer line is cut down to what a request row keeps as it is saved.
SHORT_LINE = 8 << 10
# A longer line is a bad line, never parsed: parsing costs a few times a line's size in memory.
LONGEST_LINE = 4 << 20
# What stands for a line the reader cannot take (too long, not an object, still long once cut):
# not a JSON object, so the reader counts it as a bad line under its number.
NOT_A_REQUEST = b"-"
KEPT_LINE = 512 << 10  # the longest line the reader takes
NAMED = 5  # files and line numbers a warning names
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some writers put before the first line
GZIP_MAGIC = b"\x1f\x8b"  # how a gzip file starts; no JSON text starts so
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's setting for the gzip format
PART = ".gz.part"  # an archived file while it is written

FILES_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        ("file_id", pa.string()),
        ("state", pa.string()),
        ("bytes", pa.int64()),
        ("lines", pa.int64()),
        ("bad_lines", pa.int64()),
        ("attempts", pa.int64()),
        ("loaded_at", pa.timestamp("us", tz="UTC")),
        ("message", pa.string()),
    ]
)
REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
        ("custom_id", pa.string()),
        ("status_code", pa.int64()),
        ("request_id", pa.string()),
        ("model", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
    ]
)

# The numbered copies of a group of files, each line with the file it came from.
NUMBERED_LINES = f"""
    select files.batch_id, files.kind, files.file, numbered.line, numbered.raw
    from read_csv(
        $paths,
        columns = {{'line': 'BIGINT', 'raw': 'VARCHAR'}},
        delim = chr(31),
        quote = '',
        escape = '',
        header = false,
        auto_detect = false,
        ignore_errors = true,
        filename = true,
        max_line_size = {2 * KEPT_LINE},
        buffer_size = {2 * KEPT_LINE}
    ) as numbered
    inner join (
        select
            unnest($paths) as path,
            unnest($batch_ids) as batch_id,
            unnest($kinds) as kind,
            unnest(range(len($paths))) as file
    ) as files
        on numbered.filename = files.path
"""
# What a request was and what it cost (OpenAI's and SiliconFlow's line shapes, chat and
# embeddings bodies, error lines with or without a response); never its prompt or completion.
# One from_json per line: a json_extract per field would parse the line again each time.
REQUEST_FIELDS = {
    "custom_id": "VARCHAR",
    "response": {
        "status_code": "BIGINT",
        "request_id": "VARCHAR",
        "body": {
            "model": "VARCHAR",
            "choices": [{"finish_reason": "VARCHAR"}],
            "usage": {
                "prompt_tokens": "BIGINT",
                "completion_tokens": "BIGINT",
                "total_tokens": "BIGINT",
                "completion_tokens_details": {"reasoning_tokens": "BIGINT"},
                "prompt_tokens_details": {"cached_tokens": "BIGINT"},
            },
            "error": {"code": "VARCHAR", "message": "VARCHAR"},
        },
    },
    "error": {"code": "VARCHAR", "message": "VARCHAR"},
}
REQUEST_SHAPE = json.dumps(REQUEST_FIELDS)


def parsed(column: str) -> str:
    """SQL for the request in the line in `column`, or null when the line is not a JSON object.
    json_valid and json_type would read each line twice more and hold whole vectors of parses,
    beyond the reader's memory limit."""
    return (
        f"case when ltrim({column}, e' \\t\\r') like '{{%' "
        f"then try(from_json({column}, '{REQUEST_SHAPE}')) end"
    )


# Half of a UTF-16 surrogate pair escaped alone (`\ud83d`, as a completion cut inside an emoji
# may end) is JSON to Python and most readers, but DuckDB's refuses the line: a line refused
# that holds a surrogate escape is read again with each one (a whole pair beside it too) as
# U+FFFD. Only refused lines pay for it.
WHOLE_CHARACTERS = r"regexp_replace(raw, '\\u[dD][89a-fA-F][0-9a-fA-F]{2}', '\\ufffd', 'g')"

BLANK = r"e' \t\r\n'"  # what a blank text is made of, in DuckDB's escaped string syntax


def plain_error(parsed: str, path: str) -> str:
    """An error sent as plain text rather than as `{code, message}`: that text, unless blank.
    The raw line is read again only where the parsed error has neither field, which is rare."""
    text = f"(raw ->> '{path}')"
    return (
        f"case when {parsed} is not null and {parsed}.code is null and {parsed}.message is null "
        f"and json_type(raw, '{path}') = 'VARCHAR' and trim({text}, {BLANK}) <> '' "
        f"then {text} end"
    )


REQUEST_ROWS_SQL = f"""
    select
        batch_id,
        kind,
        line,
        r.custom_id as custom_id,
        r.response.status_code as status_code,
        r.response.request_id as request_id,
        r.response.body.model as model,
        r.response.body.choices[1].finish_reason as finish_reason,
        r.response.body.usage.prompt_tokens as prompt_tokens,
        r.response.body.usage.completion_tokens as completion_tokens,
        r.response.body.usage.total_tokens as total_tokens,
        r.response.body.usage.completion_tokens_details.reasoning_tokens as reasoning_tokens,
        r.response.body.usage.prompt_tokens_details.cached_tokens as cached_tokens,
        coalesce(r.error.code, r.response.body.error.code) as error_code,
        coalesce(
            r.error.message,
            r.response.body.error.message,
            {plain_error("r.error", "$.error")},
            {plain_error("r.response.body.error", "$.response.body.error")}
        ) as error_message,
        r is null as is_bad,
        file
    from (
        select batch_id, kind, file, line, text as raw, coalesce(first, {parsed("text")}) as r
        from (
            select
                *,
                case
                    when first is null and contains(raw, '\\u') then {WHOLE_CHARACTERS}
                    else raw
                end as text
            from (
                select batch_id, kind, file, line, raw, {parsed("raw")} as first
                from ({NUMBERED_LINES})
            )
        )
    )
"""
# One thread: the downloads use the other core. Rows come out in any order: each has its number.
# 48 MB holds one file of any size whose lines are at most SHORT_LINE, or a group of small files;
# several large files in one query need far more, so those are read alone.
READER = {"memory_limit": "48MB", "threads": 1, "preserve_insertion_order": False}
# Small files are read together: a DuckDB query costs about as much for one line as for many.
GROUP_BYTES = 32 << 20
GROUP_FILES = 256
SMALL_FILE = 4 << 20


@dataclass(frozen=True)
class ResultFile:
    """A result file a batch names, and how often earlier syncs tried it."""

    batch_id: str
    kind: str  # 'output' | 'error'
    file_id: str  # as the batch names it: a file id, or a signed storage URL
    attempts: int = 0

    @property
    def label(self) -> str:
        return f"{self.batch_id} {self.kind}"


@dataclass
class Download:
    """What fetching one file gave: a numbered copy on disk, or why there is none."""

    file: ResultFile
    state: str
    path: Path | None = None
    bytes: int = 0
    lines: int = 0
    message: str | None = None
    refused: AuthError | None = None  # the API refused the key for it


@dataclass
class ResultStats:
    """What the result files of one sync gave, for its summary and warnings."""

    files: int = 0
    loaded: int = 0
    lines: int = 0
    left: int = 0
    warnings: list[str] = field(default_factory=list)
    bad: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    stored: bool = False  # the files read went into the warehouse (a sync stopped first keeps none)
    refused: AuthError | None = None  # the API refused the key for a file: none was asked after

    def finish(self) -> None:
        """One warning per kind of trouble, naming a few files."""
        if self.bad:
            named = "; ".join(
                f"{name} line {', '.join(map(str, lines))}" if lines else name
                for name, lines in list(self.bad.items())[:NAMED]
            )
            self.warnings.append(
                f"result files of {len(self.bad):,} batches hold lines that are not JSON objects "
                f"(or are longer than {LONGEST_LINE >> 20} MB); "
                f"they were skipped and counted in batch_files.bad_lines ({named})"
            )
        if self.failed:
            some = "; ".join(f"{name}: {why}" for name, why in list(self.failed.items())[:NAMED])
            self.warnings.append(
                f"{len(self.failed):,} result files could not be fetched; the next sync tries "
                f"again ({some})"
            )
        if self.left:
            self.warnings.append(
                f"{self.left:,} result files are left for the next sync (a sync fetches at most "
                "10,000 and starts none after sources.siliconflow.sync_timeout)"
            )


def result_rows(
    fetcher: "Fetcher",
    files: list[ResultFile],
    stats: ResultStats,
    done: Callable[[int], None] = lambda count: None,
) -> Iterator[dict[str, pa.Table]]:
    """The request rows of `files` and their `batch_files` rows, in items of some thousands of
    rows (dlt's cost is per item, and most files are small); both tables exist from the first
    sync, even without a file. `done` hears of each file fetched (or given up)."""
    buffer = Buffer()
    with duckdb.connect(config=READER) as con:
        for group in groups(_told(fetcher.downloads(files, stats), done)):
            for name, table in rows_of(group, con, stats):
                yield from buffer.add(name, table)
    stats.finish()
    yield buffer.rest()


def _told(downloads: Iterator[Download], done: Callable[[int], None]) -> Iterator[Download]:
    for download in downloads:
        done(1)
        yield download


def groups(downloads: Iterator[Download]) -> Iterator[list[Download]]:
    """Downloads in groups read by one query: small files up to a total size, others alone."""
    group: list[Download] = []
    for download in downloads:
        if download.path is None or download.bytes > SMALL_FILE:
            yield [download]
            continue
        group.append(download)
        if sum(d.bytes for d in group) >= GROUP_BYTES or len(group) >= GROUP_FILES:
            yield group
            group = []
    if group:
        yield group


class Buffer:
    """Tables of each kind gathered until they make an item worth handing to dlt."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {BATCH_REQUESTS: [], BATCH_FILES: []}
        self.rows = 0

    def add(self, name: str, table: pa.Table) -> Iterator[dict[str, pa.Table]]:
        self.parts[name].append(table)
        self.rows += table.num_rows
        if self.rows >= REQUEST_ROWS:
            yield self.rest()

    def rest(self) -> dict[str, pa.Table]:
        """Everything gathered, as one item, with both tables even when empty."""
        empty = empty_tables()
        item = {name: pa.concat_tables([empty[name], *parts]) for name, parts in self.parts.items()}
        self._clear()
        return item


def empty_tables() -> dict[str, pa.Table]:
    """Both result tables without a row: what creates them before any file is read."""
    return {BATCH_REQUESTS: no_rows(REQUESTS_SCHEMA), BATCH_FILES: no_rows(FILES_SCHEMA)}


def rows_of(
    group: list[Download], con: duckdb.DuckDBPyConnection, stats: ResultStats
) -> Iterator[tuple[str, pa.Table]]:
    """A group's request rows, then each file's `batch_files` row, each with its table."""
    loaded = [download for download in group if download.path is not None]
    counts = LineCounts([(download.file.batch_id, download.file.kind) for download in loaded])
    try:
        if loaded:
            for table in _requests(loaded, con):
                yield BATCH_REQUESTS, counts.add(table)
    finally:
        for download in loaded:
            download.path.unlink(missing_ok=True)
    for download in group:
        yield BATCH_FILES, _tally(download, counts, stats)


class LineCounts:
    """Per file, the lines read as requests and the first few numbers of the bad ones."""

    def __init__(self, files: list[tuple[str, str]]) -> None:
        self.files = files  # (batch_id, kind) of each file of the group, by its place in it
        self.good: Counter[tuple[str, str]] = Counter()
        self.bad: defaultdict[tuple[str, str], list[int]] = defaultdict(list)

    def add(self, table: pa.Table) -> pa.Table:
        """Count the rows of `table`; its request rows.

        Counted with Arrow's kernels, by the file's place: a group_by would import pyarrow's
        dataset module and with it pandas, for a sync that uses neither.
        """
        is_bad = table.column("is_bad")
        if pc.any(is_bad).as_py():
            for row in table.select(["file", "line"]).filter(is_bad).to_pylist():
                numbers = self.bad[self.files[row["file"]]]
                numbers[:] = sorted([*numbers, row["line"]])[:NAMED]
            table = table.filter(pc.invert(is_bad))
        for count in pc.value_counts(table.column("file")).to_pylist():
            self.good[self.files[count["values"]]] += count["counts"]
        return table.drop_columns(["is_bad", "file"]).cast(REQUESTS_SCHEMA)


def _tally(download: Download, counts: LineCounts, stats: ResultStats) -> pa.Table:
    """Count one file in the stats; its `batch_files` row. A line the reader could not read at
    all (not UTF-8) is bad too, but has no number to name."""
    key = (download.file.batch_id, download.file.kind)
    stats.files += 1
    if download.path is None:
        if download.state == FAILED:
            stats.failed[download.file.label] = download.message or "failed"
        if download.refused is not None:
            stats.refused = AuthError(
                f"result files not downloaded, {download.refused}; the batches are synced and "
                "the next sync asks for the files again"
            )
        return file_row(download)
    stats.loaded += 1
    stats.lines += counts.good[key]
    bad_lines = download.lines - counts.good[key]
    if bad_lines:
        stats.bad[download.file.label] = counts.bad.get(key, [])
    return file_row(download, bad_lines)


def _parameters(group: list[Download]) -> dict[str, list[str]]:
    return {
        "paths": [str(download.path) for download in group],
        "batch_ids": [download.file.batch_id for download in group],
        "kinds": [download.file.kind for download in group],
    }


def _requests(group: list[Download], con: duckdb.DuckDBPyConnection) -> Iterator[pa.Table]:
    reader = con.sql(REQUEST_ROWS_SQL, params=_parameters(group)).to_arrow_reader(REQUEST_ROWS)
    for batch in reader:
        yield pa.Table.from_batches([batch])


def file_row(download: Download, bad_lines: int = 0) -> pa.Table:
    """The `batch_files` row of one attempt at one file."""
    file, loaded = download.file, download.state == LOADED
    row = {
        "batch_id": file.batch_id,
        "kind": file.kind,
        "file_id": file.file_id,
        "state": download.state,
        "bytes": download.bytes if loaded else None,
        "lines": download.lines if loaded else None,
        "bad_lines": bad_lines if loaded else None,
        "attempts": file.attempts + 1,
        "loaded_at": datetime.now(UTC) if loaded else None,
        "message": download.message,
    }
    return rows_table([row], FILES_SCHEMA)


class Fetcher:
    """Downloads result files a few at a time, each streamed to a numbered copy on disk."""

    def __init__(self, api: BatchApi, scratch: Path, archive: Path | None = None) -> None:
        self.api = api
        self.scratch = scratch
        self.archive = archive

    def downloads(self, files: list[ResultFile], stats: ResultStats) -> Iterator[Download]:
        """Each file's download, in the order given; none started once the deadline passed, or
        once the API refused the key for one (it would refuse each)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        # A killed sync's copies: each file it was fetching is fetched again from the start.
        for leftover in self.scratch.glob("*.lines"):
            leftover.unlink()
        waiting = iter(files)
        with worker_pool(FILE_DOWNLOADS) as pool:
            running: deque[Future[Download]] = deque()
            refused = False
            for file in waiting:
                running.append(pool.submit(self.download, file))
                if len(running) >= 2 * FILE_DOWNLOADS:
                    break
            while running:
                try:
                    download = running.popleft().result()
                except SyncTimeout:
                    stats.left = len(files) - stats.files
                    for future in running:
                        future.cancel()
                    return
                refused = refused or download.refused is not None
                if not refused and (file := next(waiting, None)) is not None:
                    running.append(pool.submit(self.download, file))
                yield download

    def download(self, file: ResultFile) -> Download:
        """Fetch one file (and archive it when asked); nothing of it is left in the archive
        unless it loaded, not even the part of it a killed sync was writing."""
        download = self._download(file)
        if download.state != LOADED and self.archive is not None:
            archived_at(self.archive, file).with_suffix(PART).unlink(missing_ok=True)
        return download

    def _download(self, file: ResultFile) -> Download:
        """Fetch one file; a body cut short is fetched again, as dlt retries a failed request."""
        retry = self.api.retry
        retrying = Retrying(
            stop=stop_after_attempt(retry.max_attempts),
            wait=wait_exponential(multiplier=retry.backoff_factor, max=retry.max_delay_s),
            retry=retry_if_exception_type(UnusableAnswer),
            reraise=True,
        )
        try:
            return retrying(self._fetch, file)
        except HTTPError as error:
            return self._refused(file, error.response)
        except (RequestException, UnusableAnswer) as error:
            return Download(file, FAILED, message=_said(error))

    def _fetch(self, file: ResultFile) -> Download:
        response = self.api.client.get(
            self.url(file.file_id), stream=True, hooks={"response": [_raise_unless_success]}
        )
        path = self.scratch / f"{_safe(file.batch_id)}.{file.kind}.lines"
        with response:
            size, lines = self._save(response, path, file)
        return Download(file, LOADED, path=path, bytes=size, lines=lines)

    def url(self, file_id: str) -> str:
        named = file_id.strip()
        if re.match(r"https?://", named, re.IGNORECASE):
            return named  # a signed storage URL: fetched as it is; the adapter drops the key
        # one path segment whatever it holds: a `/`, `?` or `..` in an id leads nowhere else
        return f"{self.api.base_url}/{FILES_PATH.format(file_id=quote(named, safe=''))}"

    def _save(self, response: Response, path: Path, file: ResultFile) -> tuple[int, int]:
        """Stream the body into the numbered copy (and the archive); both or neither stay."""
        numbered = Numbered(path)
        copies: list[Numbered | Archived] = [numbered]
        if self.archive is not None:
            copies.append(Archived(self.archive, file))
        try:
            check_decodable(response)
            for chunk in unpacked(read_chunks(response, self.api.deadline)):
                for copy in copies:
                    with naming(copy.path):
                        copy.write(chunk)
            for copy in copies:
                with naming(copy.path):
                    copy.close()
            # Content-Length counts the body as sent: gzip-encoded, it is shorter than the file.
            expected, received = response.headers.get("Content-Length", ""), response.raw.tell()
            if expected.isdigit() and int(expected) != received:
                raise BodyCutShort(f"the body ended after {received:,} of {expected} bytes")
            if not is_sized(response) and numbered.ends_inside_a_line():
                raise BodyCutShort(
                    "the connection closed inside a line, and the answer gave no length to "
                    "tell a whole file by"
                )
            check_is_result_file(numbered.head, numbered.lines)
        except BaseException as error:
            for copy in copies:
                copy.discard()
            if isinstance(error, RequestException):
                raise BodyCutShort(_said(error)) from None
            raise
        for copy in copies:
            copy.keep()
        return numbered.bytes, numbered.lines

    def _refused(self, file: ResultFile, response: Response | None) -> Download:
        """A file the API or storage would not serve: gone for good, or failed for now."""
        if response is not None and not is_under(response.url, self.api.base_url):
            return _refused_by_storage(file, response)
        if response is not None and response.status_code == 404:
            return Download(file, GONE, message="the API no longer has it (HTTP 404)")
        failure = self.api.failure(HTTPError(response=response))
        refused = failure if isinstance(failure, AuthError) else None
        said = _said(failure or HTTPError(response=response))
        return Download(file, FAILED, message=said, refused=refused)


def _refused_by_storage(file: ResultFile, response: Response) -> Download:
    """The answer of the storage a signed link (named, or redirected to) points at; never its
    URL, whose query is the credential."""
    status = response.status_code
    if status == 404:
        return Download(file, GONE, message="the storage no longer has it (HTTP 404)")
    if status == 403:
        return Download(file, GONE, message="its signed link expired (HTTP 403)")
    try:
        start = next(response.iter_content(4096), b"")  # an error document; never read it all
    except RequestException:
        start = b""
    code = re.search(rb"<Code>([^<]{1,80})</Code>", start)
    why = f" {code[1].decode(errors='replace')}" if code else ""
    host = urlsplit(response.url).netloc
    return Download(file, FAILED, message=f"the storage at {host} answered HTTP {status}{why}")


class UnusableAnswer(Exception):
    """A 2xx the file cannot be taken from: fetched again, as dlt retries a failed request."""


class BodyCutShort(UnusableAnswer):
    """The body ended before its Content-Length, or the connection broke while reading it."""


class NotAResultFile(UnusableAnswer):
    """A 2xx whose body is no result file: a page (a proxy's HTML, an XML document), or one JSON
    document (SiliconFlow's `{code, message, data}` envelope, a listing, an array). Stored, it
    would pass for the file and never be fetched again."""


def check_is_result_file(head: bytes, lines: int) -> None:
    """Refuse a body by its first line that is not blank, and its count of such lines."""
    if head.lstrip().startswith(b"<"):
        raise NotAResultFile("the answer was a page (HTML or XML), not JSON lines")
    if lines != 1:
        return
    if head.lstrip().startswith(b"["):
        raise NotAResultFile("the answer was one JSON array, not JSON lines")
    try:
        body = json.loads(head)
    except (ValueError, RecursionError):
        return
    if not isinstance(body, dict) or "custom_id" in body:
        return
    if "code" in body:
        message = str(body.get("message") or "no message")[:200]
        raise NotAResultFile(
            f"the answer was SiliconFlow's envelope (code {api_code(body)}: {message})"
        )
    if body.get("object") == "list":
        raise NotAResultFile("the answer was a listing (`object: list`), not JSON lines")


def check_decodable(response: Response) -> None:
    """Refuse a body in a Content-Encoding that urllib3 does not decode (e.g. `br` without the
    brotli package): it would pass through still encoded, and each line be a bad line."""
    sent = [name.strip() for name in response.headers.get("Content-Encoding", "").split(",")]
    known = {"", "identity", *response.raw.CONTENT_DECODERS}
    unknown = [name for name in sent if name.lower() not in known]
    if unknown:
        raise NotAResultFile(
            f"the body is encoded as {', '.join(unknown)}, which this client cannot decode"
        )


def unpacked(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body's chunks, or, when the body is a gzip file itself (an object stored gzipped and
    served without `Content-Encoding`), the file it holds: read as it is, each line would be a bad
    line, and the file loaded, and never fetched again."""
    first = b""
    for chunk in chunks:
        first += chunk
        if len(first) >= len(GZIP_MAGIC):
            break
    body = chain([first], chunks)
    return _gunzipped(body) if first.startswith(GZIP_MAGIC) else body


def _gunzipped(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The content of gzip members in `chunks`, in pieces of at most READ_BYTES: a small body
    may unpack to a great deal."""
    unpack = zlib.decompressobj(wbits=GZIP_WBITS)
    try:
        for chunk in chunks:
            while chunk:
                if unpack.eof:  # another member follows, as `cat a.gz b.gz` makes
                    unpack = zlib.decompressobj(wbits=GZIP_WBITS)
                yield unpack.decompress(chunk, READ_BYTES)
                chunk = unpack.unused_data if unpack.eof else unpack.unconsumed_tail
    except zlib.error as error:
        raise NotAResultFile(f"the body is a gzip file that cannot be unpacked ({error})") from None
    if not unpack.eof:
        raise BodyCutShort("the body is a gzip file that ends before its end")


def is_sized(response: Response) -> bool:
    """Whether the answer says where its body ends (a length, or chunks), rather than ending
    wherever the connection does."""
    chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
    return chunked or "Content-Length" in response.headers


def _raise_unless_success(response: Response, *args: object, **kwargs: object) -> None:
    status = response.status_code
    if response.is_redirect or status == 200:
        return
    if 200 <= status < 300:
        # 206 (a part of the file), 202 (not ready yet), 204 (nothing): none is the whole file
        response.close()
        raise UnusableAnswer(f"the answer was HTTP {status} {response.reason}, not the file")
    raise HTTPError(response=response)


class Numbered:
    """A file of `number SEPARATOR line` rows, written as chunks of a body arrive; each line as
    the reader takes it (`readable`). A line is held only up to LONGEST_LINE."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.out = path.open("wb")
        self.parts: list[bytes] = []  # the start of a line the next chunk goes on with
        self.started = 0  # that line's length so far, counted on once no longer held
        self.bytes = 0
        self.lines = 0
        self.number = 0
        self.head = b""  # the start of the first line that is not blank: what the body is
        self.unended: bytes | None = b""  # the last line when no line end followed it

    def write(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if b"\r" in chunk or SEPARATOR in chunk:
            chunk = chunk.translate(TO_READER)  # seldom: a scan for either costs far less
        *ended, rest = chunk.split(b"\n")
        if ended:
            ended[0] = self._end(ended[0])
            self.out.write(b"".join(self._numbered(ended)))
        self._go_on(rest)

    def _go_on(self, part: bytes) -> None:
        self.started += len(part)
        if self.started <= LONGEST_LINE:
            self.parts.append(part)
        else:
            self.parts.clear()

    def _end(self, part: bytes) -> bytes | None:
        """The line `part` ends, or None when it is too long to hold."""
        self._go_on(part)
        line = b"".join(self.parts) if self.started <= LONGEST_LINE else None
        self.parts, self.started = [], 0
        return line

    def _numbered(self, lines: list[bytes | None]) -> list[bytes]:
        """The parts of `lines` as written, a line's text never copied on the way: a file's
        lines pass here one by one, and a thread that copies them holds up the rest."""
        if self.number == 0 and lines[0] is not None:
            lines[0] = lines[0].removeprefix(BOM)  # a mark of the encoding, not of the line
        if not self.head:
            self.head = next(
                (line[:KEPT_LINE] for line in lines if line and not line.isspace()), b""
            )
        parts: list[bytes] = []
        for number, line in enumerate(lines, self.number + 1):
            # a blank line is no request, but keeps its place in the count
            if line is None or (line and not line.isspace()):
                parts += (b"%d%s" % (number, SEPARATOR), readable(line), b"\n")
        self.number += len(lines)
        self.lines += len(parts) // 3
        return parts

    def close(self) -> None:
        if self.started and not self.out.closed:
            self.unended = self._end(b"")
            self.out.write(b"".join(self._numbered([self.unended])))
        self.out.close()

    def ends_inside_a_line(self) -> bool:
        """Whether the last line has no line end and is no JSON object: what a connection closed
        while a line was on its way leaves."""
        line = self.unended
        return line is None or (bool(line.strip()) and not is_json_object(line))

    def keep(self) -> None:
        """Nothing to move: the caller reads the numbered copy where it is."""

    def discard(self) -> None:
        # on a full disk closing fails too: the copy goes anyway, and the first error stands
        with contextlib.suppress(OSError):
            self.out.close()
        self.path.unlink(missing_ok=True)


def is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def readable(line: bytes | None) -> bytes:
    """A line as the reader takes it: a short one as it is; a long JSON object cut down to the
    fields of REQUEST_FIELDS (its prompt and completion go); anything else NOT_A_REQUEST."""
    if line is None or len(line) > LONGEST_LINE:
        return NOT_A_REQUEST
    if len(line) <= SHORT_LINE:
        return line
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return NOT_A_REQUEST
    if not isinstance(value, dict):
        return NOT_A_REQUEST
    kept = json.dumps(_kept(value, REQUEST_FIELDS)).encode()
    return kept if len(kept) <= KEPT_LINE else NOT_A_REQUEST


def _kept(value: object, shape: object) -> object:
    """The parts of `value` that `shape` names; a value of another shape stays as it is, so the
    reader judges it as it would the whole line."""
    if isinstance(shape, dict) and isinstance(value, dict):
        return {key: _kept(value[key], shape[key]) for key in shape if key in value}
    if isinstance(shape, list) and isinstance(value, list):
        return [_kept(item, shape[0]) for item in value]
    return value


class Archived:
    """The raw file, gzipped under `<dir>/<batch_id>/<kind>.jsonl.gz`; written beside its name
    and moved there only when complete, so an archive never holds part of a file."""

    def __init__(self, folder: Path, file: ResultFile) -> None:
        self.path = archived_at(folder, file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.path.with_suffix(PART)
        # closed by close() or discard(); level 1: the archive must keep up with the download
        self.out = gzip.open(self.part, "wb", compresslevel=1)  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)

    def close(self) -> None:
        self.out.close()

    def keep(self) -> None:
        os.replace(self.part, self.path)

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # as Numbered.discard
            self.out.close()
        self.part.unlink(missing_ok=True)


def archived_at(folder: Path, file: ResultFile) -> Path:
    return folder / _safe(file.batch_id) / f"{file.kind}.jsonl.gz"


def _safe(name: str) -> str:
    """A batch id as a file name of its own: the id itself when it is a plain name, else its
    plain characters, `~` and a digest of the whole id, so that no two ids share a name (a plain
    name holds no `~`) and no id (`..`, `a/b`) names a place outside the folder it is meant for."""
    if re.fullmatch(r"\w[\w.-]{0,119}", name, re.ASCII):
        return name
    plain = re.sub(r"[^\w.-]", "_", name, flags=re.ASCII)[:100]
    digest = hashlib.blake2b(name.encode(errors="surrogatepass"), digest_size=8).hexdigest()
    return f"{plain}~{digest}"


def _said(error: BaseException) -> str:
    return plain_reason(error) if isinstance(error, RequestException) else redact(first_line(error))
