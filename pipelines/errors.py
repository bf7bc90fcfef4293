"""Failures a user can act on, each with the exit code the CLI reports for it."""

import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# How the system says a disk or quota is full: DuckDB's errors carry only this text, no errno.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = tuple(os.strerror(code) for code in DISK_FULL_ERRNOS)
# How DuckDB says a database file is damaged (cut short, or bytes changed under it)
DUCKDB_DAMAGED = ("Corrupt database file", "Could not read enough bytes from file")
DAMAGED_ADVICE = (
    "restore it from a backup, or move it aside and run `sfbatches sync` to rebuild it "
    "(result files whose links expired are lost unless archive_dir kept them)"
)
# How DuckDB says it may not create or write a file; it raises no OSError
DUCKDB_CANNOT_OPEN = re.compile(
    r'Cannot open file "(?P<path>[^"]+)": (?P<why>'
    + "|".join(os.strerror(code) for code in (errno.EACCES, errno.EROFS))
    + ")"
)


class SfBatchesError(Exception):
    """A failure whose message says what failed and what to do."""

    exit_code = 1


class ConfigError(SfBatchesError):
    exit_code = 2


class AuthError(SfBatchesError):
    exit_code = 3


class ApiError(SfBatchesError):
    exit_code = 4


class SyncTimeout(ApiError):
    """The sync ran past its deadline; nothing it read is loaded."""


class RateLimited(ApiError):
    """The API asked to wait longer than the retries may wait."""


class DatabaseBusy(SfBatchesError):
    exit_code = 5


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, systemd, a cron wrapper stopping the run), raised as Ctrl-C is, so
    that the same clean-up runs and the run is recorded."""


class Stops:
    """The stop signals (Ctrl-C, SIGTERM) received while a command runs.

    DuckDB catches the KeyboardInterrupt that a signal raises inside a query and raises
    `RuntimeError: Query interrupted` instead: this record still tells that the run was
    stopped, and by which signal. Within `held()` a stop waits for the block to end.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.holding = 0

    @contextmanager
    def noted(self) -> Iterator[None]:
        """Within the block Ctrl-C and SIGTERM are noted and raised (SIGTERM as `Terminated`),
        where their handlers are still Python's defaults (only the main thread may set them)."""
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        ours = [
            number
            for number, default in defaults.items()
            if _on_main_thread() and signal.getsignal(number) is default
        ]
        for number in ours:
            signal.signal(number, self._stop)
        try:
            yield
        finally:
            for number in ours:
                signal.signal(number, defaults[number])
            self.received.clear()

    @contextmanager
    def held(self) -> Iterator[None]:
        """A stop that comes within the block is raised at its end, so that a write to the
        database finishes with its bookkeeping; a second stop is raised at once. Signals reach
        the main thread alone: elsewhere this holds nothing."""
        if not _on_main_thread():
            yield
            return
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not self.holding:
            self.check()

    def check(self) -> None:
        """Raise the stop the command received, if any: at a held block's end, and in download
        threads, which signals do not reach, so that a large file is not read on for nothing."""
        if self.received:
            raise _stop_error(self.received[0])

    def _stop(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if not self.holding or len(self.received) > 1:
            raise _stop_error(signum)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop_error(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


STOPS = Stops()


class ModelError(ConfigError):
    """A SQL model could not be built; `path` and `line` locate the failing file when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line


class ReportError(ConfigError):
    """The report cannot be made from this database; the message says what to do."""


class ViewsOutOfDate(ReportError):
    """The analytics views are missing, or were built by another version of sfbatches."""

    def __init__(self) -> None:
        super().__init__(
            "the analytics views are missing or out of date: run `sfbatches sync` (it builds "
            "them) or `sfbatches models`"
        )


def find_error(exc: BaseException) -> SfBatchesError | None:
    """Find our own error inside the wrappers dlt puts around exceptions raised in a resource."""
    return next((e for e in _chain(exc) if isinstance(e, SfBatchesError)), None)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def exit_code_of(error: BaseException) -> int:
    """The exit code the CLI gives for `error`."""
    if _interrupted(error):
        return 128 + _stopped_by(error)
    if isinstance(error, SfBatchesError):
        return error.exit_code
    return 2 if _setup_problem(error) else 1


def one_line(error: BaseException) -> str:
    """The line the CLI prints for `error` (without the `sfbatches: ` in front)."""
    if _interrupted(error):
        how = "stopped by SIGTERM" if _stopped_by(error) == signal.SIGTERM else "interrupted"
        return f"{how}; the database keeps its last complete sync"
    if isinstance(error, SfBatchesError):
        return str(error)
    if said := _setup_problem(error):
        return said
    # dlt's wrappers say only where a step failed: the innermost error says why
    cause = _chain(error)[-1]
    return (
        f"unexpected {type(cause).__name__}: {first_line(cause)} "
        "(rerun with --verbose for details, and report it)"
    )


def _setup_problem(error: BaseException) -> str | None:
    """What the user must fix on this machine (a full disk, a setting, a folder), found in an
    error a library raised and wrapped; None when `error` is none of these."""
    if full := disk_full(error):
        return f"the disk is full ({first_line(full)}); free some space and run again"
    if damage := damaged(error):
        return f"the database file is damaged ({first_line(damage)}): {DAMAGED_ADVICE}"
    if toml := _bad_toml(error):
        # dlt names every place it looks: only those that hold the file are the one to fix
        found = [path for path in toml.full_paths if os.path.isfile(path)]
        where = " or ".join(found or toml.full_paths)
        if isinstance(unread := toml.__context__, OSError):  # the file is fine, not its access
            return (
                f"cannot read {toml.file_name} ({unread.strerror}): let the user who runs "
                f"sfbatches read it, in {where}"
            )
        why = " ".join(str(toml).splitlines()[1:]) or "unreadable"
        return f"{toml.file_name} is not valid TOML ({why}): fix it in {where}"
    if mistyped := _mistyped(error):
        kind = getattr(mistyped.hint, "__name__", str(mistyped.hint))
        return (
            f"the setting {mistyped.field_name} must be of type {kind}, not "
            f"{mistyped.field_value!r}: fix it in .dlt/config.toml or the environment"
        )
    if level := _bad_log_level(error):
        return (
            "runtime.log_level must be one of DEBUG, INFO, WARNING, ERROR or CRITICAL "
            f"({first_line(level)}): fix it in .dlt/config.toml or the environment"
        )
    if refused := _unwritable(error):
        path, why = refused
        return (
            f"cannot write {path} ({why}): DuckDB keeps a file of its own beside the database, "
            "so its folder must be writable too; fix the permissions or choose another --db"
        )
    if _is_file_error(error):
        return f"cannot use {error.filename}: {error.strerror}; check the path and its permissions"
    return None


def _interrupted(error: BaseException) -> bool:
    """Ctrl-C or a signal, also where dlt wrapped it (dlt's own signal error is a
    KeyboardInterrupt too) or a library turned it into an error of its own."""
    chain = _chain(error)
    return bool(STOPS.received) or any(isinstance(cause, KeyboardInterrupt) for cause in chain)


def _stopped_by(error: BaseException) -> int:
    """The signal that stopped the run: SIGTERM (ours, or dlt's record of it), else SIGINT."""
    if STOPS.received:
        return STOPS.received[0]
    for cause in _chain(error):
        if isinstance(cause, Terminated) or getattr(cause, "signal_code", None) == signal.SIGTERM:
            return signal.SIGTERM
    return signal.SIGINT


def printable(text: str) -> str:
    """`text` with its control characters (a newline, a terminal's escape) written as escapes:
    what an API sends must neither start a line of its own nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def first_line(error: BaseException) -> str:
    """The first line of what `error` says, or its kind when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def disk_full(error: BaseException) -> BaseException | None:
    """The error, in `error`'s chain, that says a disk is full: the database's own disk, dlt's
    working folder or a file written for the user, wherever a library wrapped it; one that
    names its file (`naming`) before the innermost."""
    found = [cause for cause in reversed(_chain(error)) if _says_disk_full(cause)]
    named = [cause for cause in found if getattr(cause, "filename", None)]
    return (named or found or [None])[0]


def _says_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    return any(text in str(error) for text in DISK_FULL_TEXTS)


def damaged(error: BaseException) -> BaseException | None:
    """The error, in `error`'s chain, in which DuckDB says a database file is damaged."""
    return next(
        (cause for cause in _chain(error) if any(t in str(cause) for t in DUCKDB_DAMAGED)), None
    )


def _bad_toml(error: BaseException) -> Any:
    """dlt's error for a `.dlt/*.toml` it could not parse, in `error`'s chain."""
    return _dlt_error(error, "providers.toml", "TomlProviderReadException")


def _unwritable(error: BaseException) -> tuple[str, str] | None:
    """The file and reason in DuckDB's refusal to write a file (its WAL beside the database in
    a folder the user cannot write), wherever it was wrapped."""
    for cause in _chain(error):
        found = DUCKDB_CANNOT_OPEN.search(str(cause))
        if found:
            return found["path"], found["why"]
    return None


def _bad_log_level(error: BaseException) -> BaseException | None:
    """The logging module's refusal of the level dlt was told to log at (runtime.log_level),
    which dlt meets when it first reads any setting."""
    return next(
        (
            cause
            for cause in _chain(error)
            if isinstance(cause, ValueError) and str(cause).startswith("Unknown level: ")
        ),
        None,
    )


def _mistyped(error: BaseException) -> Any:
    """dlt's error for a setting of a typed dlt configuration that is not of its type (a
    timeout of "x"), in `error`'s chain, whichever file or variable it came from."""
    return _dlt_error(error, "exceptions", "ConfigValueCannotBeCoercedException")


def _dlt_error(error: BaseException, module: str, name: str) -> Any:
    """An error of dlt's configuration `module` of class `name` in `error`'s chain. Looked for
    only where dlt was imported: this module imports no dlt, so that every command starts fast."""
    found = sys.modules.get(f"dlt.common.configuration.{module}")
    if found is None:
        return None
    kind = getattr(found, name)
    return next((cause for cause in _chain(error) if isinstance(cause, kind)), None)


def _is_file_error(error: BaseException) -> bool:
    """A file or folder the user named could not be used (a path, a permission)."""
    return isinstance(error, OSError) and getattr(error, "filename", None) is not None


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """A failure to write names `path`: Python's own does not, and a full disk must say
    which disk."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
