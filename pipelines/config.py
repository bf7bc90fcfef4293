"""Settings from dlt's providers (.dlt/*.toml, environment), checked before anything runs."""

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import dlt

from pipelines.analytics.check import Limits
from pipelines.errors import ConfigError
from pipelines.siliconflow import RetryPolicy
from pipelines.siliconflow.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_PAGE_SIZE,
    DEFAULT_SWEEP_PAGES,
    DEFAULT_SYNC_TIMEOUT_S,
)

KEY = "sources.siliconflow.api_key"
# Environment variables holding the key, in dlt's order of precedence: both beat the toml files.
KEY_VARIABLES = ("SOURCES__SILICONFLOW__API_KEY", "SILICONFLOW_API_KEY")
# What may go into an HTTP header as a bearer token: printable ASCII, no spaces.
HEADER_SAFE = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class SourceConfig:
    api_key: str
    base_url: str = DEFAULT_BASE_URL
    page_size: int = DEFAULT_PAGE_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sweep_pages: int = DEFAULT_SWEEP_PAGES
    sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
    key_source: str = "the caller"
    results: bool = True
    archive_dir: Path | None = None

    def __repr__(self) -> str:
        # Never let the key reach a log line or traceback through this object.
        return f"SourceConfig(base_url={self.base_url!r}, page_size={self.page_size})"


def resolve_source_config() -> SourceConfig:
    api_key, key_source = resolve_api_key()
    return SourceConfig(
        api_key=api_key,
        key_source=key_source,
        base_url=checked_base_url(str(_setting("sources.siliconflow.base_url", DEFAULT_BASE_URL))),
        page_size=_whole_number("sources.siliconflow.page_size", DEFAULT_PAGE_SIZE),
        sweep_pages=_whole_number("sources.siliconflow.sweep_pages", DEFAULT_SWEEP_PAGES, 0),
        sync_timeout_s=_number("sources.siliconflow.sync_timeout", DEFAULT_SYNC_TIMEOUT_S, 1),
        results=_yes_or_no("sources.siliconflow.results", True),
        archive_dir=_folder("sources.siliconflow.archive_dir"),
        retry=RetryPolicy(
            max_attempts=_whole_number("runtime.request_max_attempts", RetryPolicy.max_attempts),
            backoff_factor=_number("runtime.request_backoff_factor", RetryPolicy.backoff_factor),
            max_delay_s=_number("runtime.request_max_retry_delay", RetryPolicy.max_delay_s),
            timeout_s=_number("runtime.request_timeout", RetryPolicy.timeout_s, 0.1),
        ),
    )


def resolve_limits(flags: dict[str, float | None]) -> Limits:
    """`sfbatches check`'s limits: each from its flag, else `alerts.<name>`, else the default."""
    defaults = Limits()
    values = {}
    for name in [limit.name for limit in fields(Limits)]:
        flag = flags.get(name)
        if flag is not None:
            values[name] = flag
            continue
        rate = name == "max_failure_rate"
        values[name] = _number(
            f"alerts.{name}",
            getattr(defaults, name),
            most=1 if rate else math.inf,
            unit="failed requests per request" if rate else "hours",
        )
    return Limits(**values)


def resolve_api_key() -> tuple[str, str]:
    """The key and where it came from: the environment first, then .dlt/secrets.toml."""
    for name in KEY_VARIABLES:
        if os.environ.get(name, "").strip():
            return checked_key(os.environ[name], name), name
    value = dlt.secrets.get(KEY)
    if value is not None and str(value).strip():
        return checked_key(str(value), f"{KEY} in .dlt/secrets.toml"), f"{KEY} (.dlt/secrets.toml)"
    if dlt.config.get(KEY) is not None:
        # config.toml is meant to be shared (committed, copied): a key there is not used
        raise ConfigError(
            "the API key is in .dlt/config.toml, where sfbatches does not read keys: move "
            "api_key under [sources.siliconflow] in .dlt/secrets.toml, or set SILICONFLOW_API_KEY"
        )
    raise ConfigError(
        "no SiliconFlow API key: set SILICONFLOW_API_KEY (or SOURCES__SILICONFLOW__API_KEY, "
        "or api_key under [sources.siliconflow] in .dlt/secrets.toml)"
    )


def checked_key(value: str, source: str) -> str:
    """The key without surrounding whitespace (a trailing CR/LF from a Windows .env file)."""
    key = value.strip()
    bad = next((at for at, char in enumerate(key, 1) if not HEADER_SAFE.fullmatch(char)), None)
    if bad is not None:
        raise ConfigError(
            f"the API key from {source} has a character that cannot go into an HTTP header "
            f"(character {bad} of {len(key)}): copy the key again from the SiliconFlow console"
        )
    return key


def checked_base_url(value: str) -> str:
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "sources.siliconflow.base_url must be a full URL such as "
            f"{DEFAULT_BASE_URL} (or https://api.siliconflow.com/v1), not {value!r}"
        )
    return url


def _setting(key: str, default: object) -> object:
    # dlt reads its runtime settings, typed, at the first lookup of any key: one not of its
    # type fails here, and the CLI names it (`errors.one_line`)
    value = dlt.config.get(key)
    return default if value is None else value


def _yes_or_no(key: str, default: bool) -> bool:
    value = _setting(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{key} must be true or false, not {value!r}")


def _folder(key: str) -> Path | None:
    """A folder a sync writes into, made when missing; refused before the sync starts when it
    names a file or cannot be made, rather than failing each download later."""
    value = _setting(key, None)
    if value is None or not str(value).strip():
        return None
    path = Path(str(value).strip()).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} names {path}, which is a file, not a folder: name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"{key}: cannot make the folder {path} ({error.strerror}); name a folder you can "
            "write to"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}: cannot write in the folder {path}; name a folder you can write to"
        )
    return path


def _whole_number(key: str, default: int, least: int = 1) -> int:
    value = _setting(key, default)
    try:
        number = int(str(value))
    except ValueError:
        number = least - 1
    if number < least:
        raise ConfigError(f"{key} must be a whole number of at least {least}, not {value!r}")
    return number


def _number(
    key: str, default: float, least: float = 0, most: float = math.inf, unit: str = "seconds"
) -> float:
    value = _setting(key, default)
    try:
        number = float(str(value))
    except ValueError:
        number = math.nan
    if not (least <= number <= most and math.isfinite(number)):
        span = f"{least:g} or more" if most == math.inf else f"{least:g} to {most:g}"
        raise ConfigError(f"{key} must be a number of {unit} ({span}), not {value!r}")
    return number
