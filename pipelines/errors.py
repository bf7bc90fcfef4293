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
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SfBatchesError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
