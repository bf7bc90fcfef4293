"""Failures a user can act on, each with the exit code the CLI reports for it."""


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


class ModelError(ConfigError):
    """A SQL model could not be built; `path` and `line` locate the failing file when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line


class ReportError(ConfigError):
    """The report cannot be made from this database; the message says what to do."""


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
    if isinstance(error, SfBatchesError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    return 2 if _is_file_error(error) else 1


def one_line(error: BaseException) -> str:
    """The line the CLI prints for `error` (without the `sfbatches: ` in front)."""
    if isinstance(error, SfBatchesError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; the database keeps its last complete sync"
    if _is_file_error(error):
        return f"cannot use {error.filename}: {error.strerror}; check the path and its permissions"
    # dlt's wrappers say only where a step failed: the innermost error says why
    cause = _chain(error)[-1]
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    return (
        f"unexpected {type(cause).__name__}: {first} "
        "(rerun with --verbose for details, and report it)"
    )


def _is_file_error(error: BaseException) -> bool:
    """A file or folder the user named could not be used (a path, a permission, a full disk)."""
    return isinstance(error, OSError) and getattr(error, "filename", None) is not None
