"""The DuckDB file: which one, whether it is ours, opening it while another process may hold it,
and the scratch folder dlt works in beside it."""

import errno
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import duckdb
import platformdirs
from filelock import FileLock, Timeout

from pipelines.errors import DAMAGED_ADVICE, ConfigError, DatabaseBusy, damaged, disk_full
from pipelines.vocabulary import DATASET

log = logging.getLogger(__name__)

DEFAULT_DB = "siliconflow.duckdb"
# How long to wait for a lock held by another process before exit 5 (cron runs overlap rarely).
LOCK_TIMEOUT_ENV = "SFBATCHES_LOCK_TIMEOUT"
DEFAULT_LOCK_WAIT_S = 10.0
# Bytes 8-11 of every DuckDB file; anything else at --db is someone else's file.
DUCKDB_MAGIC = b"DUCK"

# DuckDB would take most of the machine's memory for a merge or a window over the history; a
# cron job should stay small. With dlt loading one job at a time (sync.py) and no
# deduplicating window in its merges (siliconflow/__init__.py), 64 MB carries a full refresh
# of a long history (bench/README.md); what does not fit spills into dlt's work folder.
MEMORY_LIMIT = "64MB"
# Every sfbatches connection that writes keeps the tables in row groups of this many rows. At
# DuckDB's default (122,880) a full sync of a modest account fills no row group, so DuckDB logs
# every row to the WAL and compresses it all again in the checkpoint at close; at this size it
# writes a large insert straight into the file. A checkpoint by a connection with another size
# regroups every table once: a DuckDB shell opened read-write does that, read-only ones never.
ROW_GROUP_SIZE = 16_384
# Every connection attaches the file under this name: only an attached database takes a row
# group size, and opened by its path a file keeps the name of its stem, so the default
# `siliconflow.duckdb` would name a database `siliconflow` beside the schema `siliconflow`, and
# DuckDB refuses `siliconflow.batches` as ambiguous.
ATTACHED_AS = "warehouse"
# New files are written in the storage format of DuckDB 1.0, which every DuckDB since reads:
# the DuckDB users already have (pip's duckdb-cli 1.5, notebooks) cannot open DuckDB 2.0's own.
# A file made by an earlier sfbatches keeps its format (DuckDB cannot lower it).
STORAGE_VERSION = "v1.0.0"
# A table only `sfbatches demo` creates: a database holding it may be replaced by the next demo.
DEMO_MARK = "_sfbatches_demo"
# Characters dlt and DuckDB read as templates, globs, quotes or hive partitions in a file path.
PLAIN_PATH = re.compile(r"[\w/. +@,:~-]+")


# Names DuckDB opens as something other than a local file: memory, MotherDuck, object stores.
NOT_A_FILE = re.compile(r":memory:|(md|motherduck):|[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def resolve_db_path(cli_value: str | None) -> Path:
    """The file `--db` names, else SFBATCHES_DB (blank counts as unset), else the default; a
    leading `~` is the home folder, as a shell would have it but a crontab line does not."""
    return local_file(cli_value or os.environ.get("SFBATCHES_DB", "").strip() or DEFAULT_DB)


def local_file(named: str) -> Path:
    """The local file `named` names, `~` expanded; refused when DuckDB would open something
    else (memory, a service) or could not be given it."""
    if NOT_A_FILE.match(named):
        raise ConfigError(
            f"{named} is not a file on this machine: the warehouse is a local DuckDB file; "
            "point --db or SFBATCHES_DB at one"
        )
    path = Path(named).expanduser()
    check_nameable(path)
    return path


def check_nameable(path: Path) -> None:
    """Refuse a path DuckDB cannot be given: one not in UTF-8, one with a backslash (a folder
    separator to DuckDB, a character in a name to this system), or a loop of symbolic links."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        raise ConfigError(
            f"{path}: the name is not valid UTF-8, which DuckDB needs; rename it, or choose "
            "another --db"
        ) from None
    if os.sep != "\\" and "\\" in str(path):
        raise ConfigError(
            f"{path}: DuckDB reads the backslash in it as a folder separator; rename it, or "
            "choose another --db"
        )
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a loop of symbolic links: point --db at a file, or a link to one"
            ) from None


def sync_config(db_path: Path) -> dict[str, object]:
    """DuckDB settings of a sync's connections; what spills goes to dlt's work folder."""
    return {
        "memory_limit": MEMORY_LIMIT,
        "preserve_insertion_order": False,
        "temp_directory": str(work_dir(db_path) / "duckdb.tmp"),
    }


def make_room_for_wal(db_path: Path) -> None:
    """Create the folder DuckDB keeps the WAL in when the database's path has a `?`.

    DuckDB reads what follows a `?` in a path as options and puts the WAL of `a?b/w.duckdb` at
    `a.wal?b/w.duckdb`, for every client that opens the file: without that folder no write
    commits. (Links do not help: DuckDB resolves them.)
    """
    path = str(db_path.absolute())
    if "?" in path:
        at = path.index("?")
        Path(f"{path[:at]}.wal{path[at:]}").parent.mkdir(parents=True, exist_ok=True)


def check_is_duckdb(db_path: Path) -> None:
    """Refuse a path that holds something other than a DuckDB database, touching nothing."""
    if not db_path.exists():
        return
    if not db_path.is_file():
        raise ConfigError(f"{db_path} is not a file: point --db at a DuckDB file or a new path")
    try:
        with db_path.open("rb") as file:
            head = file.read(12)
    except OSError as error:
        raise ConfigError(
            f"cannot read {db_path} ({error.strerror}): check its permissions"
        ) from None
    if head[8:12] != DUCKDB_MAGIC:
        what = "empty" if not head else "not a DuckDB database"
        raise ConfigError(
            f"{db_path} is {what}; it was left as it is: point --db at a DuckDB file "
            "or at a path that does not exist yet"
        )


def is_lock_error(error: BaseException) -> bool:
    if isinstance(error, duckdb.IOException) and "lock" in str(error).lower():
        return True
    return error.__cause__ is not None and is_lock_error(error.__cause__)


def busy_message(db_path: Path | str = "the database") -> str:
    return (
        f"{db_path} is locked by another process (a running sync, or a notebook or DuckDB "
        "shell holding it open): close it or wait, then run again"
    )


def lock_wait_s() -> float:
    """Seconds to wait for a lock: SFBATCHES_LOCK_TIMEOUT, read when a lock is wanted."""
    value = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_LOCK_WAIT_S
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ConfigError(
            f"{LOCK_TIMEOUT_ENV} must be a number of seconds (0 or more), not {value!r}"
        )
    return seconds


@contextmanager
def sync_lock(db_path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """One sync per database: wait up to `timeout_s` for another one to finish, then give up.

    A lock file beside the database, held through the whole sync: DuckDB's own lock covers only
    the moments a connection is open, and the download runs without one.
    """
    timeout_s = lock_wait_s() if timeout_s is None else timeout_s
    # beside the file itself: two paths to it (a link, `..`) must meet at one lock
    real = db_path.resolve()
    lock_path = real.with_name(real.name + ".lock")
    lock = FileLock(lock_path, timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise DatabaseBusy(
            f"another sync is using {db_path} (waited {timeout_s:.0f} s): "
            "let it finish, or check for a stuck sfbatches process"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"cannot write {lock_path} ({error.strerror}): choose a --db in a folder you can write"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def open_database(
    db_path: str | Path, read_only: bool = False, wait_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Connect to an existing DuckDB file, waiting a little while another process holds it.

    Raises ConfigError when the file does not exist and DatabaseBusy when it stays locked.
    """
    if not Path(db_path).exists():
        raise ConfigError(f"database {db_path} not found: run `sfbatches sync` first")
    with connect(db_path, read_only=read_only, wait_s=wait_s) as con:
        yield con


def open_failure(db_path: Path | str, error: duckdb.Error, read_only: bool) -> ConfigError:
    """Why DuckDB could not open the file, as one line; a lock is handled by the caller."""
    text = str(error)
    if disk_full(error):
        return ConfigError(
            f"cannot write {db_path}: the disk is full; free some space and run again"
        )
    if "permission denied" in text.lower() or "read-only file system" in text.lower():
        need = "read" if read_only else "write"
        return ConfigError(
            f"cannot {need} {db_path} (permission denied): use a file and folder you can {need}"
        )
    if damaged(error):
        return ConfigError(f"{db_path} is damaged ({_first_line(text)}): {DAMAGED_ADVICE}")
    if "version" in text.lower():
        return ConfigError(
            f"{db_path} was written by a DuckDB this sfbatches cannot read ({_first_line(text)})"
        )
    return ConfigError(f"cannot open {db_path}: {_first_line(text)}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else "no reason given"


@contextmanager
def connect(
    db_path: Path | str,
    read_only: bool = False,
    wait_s: float | None = None,
    config: dict[str, object] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database, waiting a little while another process holds DuckDB's file lock."""
    check_is_duckdb(Path(db_path))
    wait_s = lock_wait_s() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            con = _open(db_path, read_only, config or {})
            break
        except duckdb.Error as error:
            if not is_lock_error(error):
                raise open_failure(db_path, error, read_only) from None
            if time.monotonic() >= deadline:
                raise DatabaseBusy(busy_message(db_path)) from None
            if not waiting:
                log.info("another process holds %s: waiting up to %g s", db_path, wait_s)
                waiting = True
            time.sleep(0.2)
    try:
        yield con
    finally:
        con.close()


def connect_for_sync(
    db_path: Path, wait_s: float | None = None
) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """`connect` with a sync's settings (`sync_config`)."""
    return connect(db_path, wait_s=wait_s, config=sync_config(db_path))


def _open(
    db_path: Path | str, read_only: bool, config: dict[str, object]
) -> duckdb.DuckDBPyConnection:
    # absolute: DuckDB reads `sqlite:`, `hf:` and the like at the start of a name as the kind
    # of database to attach, not as part of a file's name
    path = str(Path(db_path).absolute())
    options = ["read_only"] if read_only else [f"row_group_size {ROW_GROUP_SIZE}"]
    if not read_only:
        make_room_for_wal(Path(db_path))
        if not Path(db_path).exists():
            _create(Path(db_path).resolve())  # where a link that points nowhere yet points
    con = duckdb.connect(config=config)
    try:
        con.execute(f"attach ? as {ATTACHED_AS} ({', '.join(options)})", [path])
        con.execute(f"use {ATTACHED_AS}")
        # UTC whatever the machine's zone, as SPEC's times are: DuckDB hands TIMESTAMPTZ values
        # to Python, and casts them to dates, in the session's zone.
        con.execute("set TimeZone = 'UTC'")
    except BaseException:
        con.close()
        raise
    return con


def _create(db_path: Path) -> None:
    """Make a new, empty database under another name and give it its own once whole: a sync
    killed or out of disk while DuckDB writes the header leaves no half-written file at
    `db_path`, which every later sync would refuse as no DuckDB database."""
    part = db_path.with_name(db_path.name + ".new")
    try:
        part.unlink(missing_ok=True)
        with duckdb.connect() as con:
            con.execute(f"attach ? as created (storage_version '{STORAGE_VERSION}')", [str(part)])
        part.rename(db_path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def work_dir(db_path: Path) -> Path:
    """dlt's working folder for this database: scratch only, its state lives in the database.

    It is not kept beside the database because dlt hands its file paths to DuckDB inside SQL
    and to Python format templates: a folder named `a'b`, `k=v`, `50%` or `why?` would break
    the load. So it lives in the user's cache (else the temporary folder), one per database.
    """
    digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:16]
    name = re.sub(r"[^\w.-]", "_", f"{db_path.name[:40]}-{digest}")
    user = getattr(os, "getuid", lambda: "user")()
    for root in (
        platformdirs.user_cache_path("sfbatches") / "pipelines",
        Path(tempfile.gettempdir()) / f"sfbatches-{user}",
    ):
        if PLAIN_PATH.fullmatch(str(root / name)) and _writable(root / name):
            return root / name
    raise ConfigError(
        "no folder for dlt's working files: the user cache folder and the temporary folder "
        "are not writable or have quotes, %, =, ? or brackets in their path; set XDG_CACHE_HOME "
        "or TMPDIR to a plain, writable folder"
    )


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def new_demo_database(db_path: Path) -> None:
    """An empty demo database at `db_path` in place of the one an earlier demo left (any other
    file there is refused, never replaced), once no sync or demo is using it. Marked before it
    holds anything, so that the next demo replaces one this demo leaves half made."""
    with sync_lock(db_path):
        _remove_demo_database(db_path)
        _mark_as_demo(db_path)


def _remove_demo_database(db_path: Path) -> None:
    if not db_path.exists():
        return
    with connect(db_path, read_only=True) as con:
        (is_demo,) = con.execute(
            "select count(*) > 0 from duckdb_tables() where schema_name = ? and table_name = ?",
            [DATASET, DEMO_MARK],
        ).fetchone()
    if not is_demo:
        raise ConfigError(
            f"{db_path} is not a demo database, and a demo starts from an empty one: "
            "choose another --db"
        )
    db_path.unlink()
    db_path.with_name(f"{db_path.name}.wal").unlink(missing_ok=True)
    shutil.rmtree(work_dir(db_path), ignore_errors=True)


def _mark_as_demo(db_path: Path) -> None:
    with connect(db_path) as con:
        con.execute(f"create schema if not exists {DATASET}")
        con.execute(f"create table if not exists {DATASET}.{DEMO_MARK} as select now() as made_at")
