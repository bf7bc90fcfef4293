"""Settings from dlt's providers (.dlt/*.toml, environment), checked before anything runs."""

import os
from dataclasses import dataclass, field

import dlt

from pipelines.errors import ConfigError
from pipelines.siliconflow import RetryPolicy
from pipelines.siliconflow.settings import DEFAULT_BASE_URL, DEFAULT_PAGE_SIZE


@dataclass(frozen=True)
class SourceConfig:
    api_key: str
    base_url: str = DEFAULT_BASE_URL
    page_size: int = DEFAULT_PAGE_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __repr__(self) -> str:
        # Never let the key reach a log line or traceback through this object.
        return f"SourceConfig(base_url={self.base_url!r}, page_size={self.page_size})"


def resolve_source_config() -> SourceConfig:
    api_key = dlt.secrets.get("sources.siliconflow.api_key") or os.environ.get(
        "SILICONFLOW_API_KEY"
    )
    if not api_key:
        raise ConfigError(
            "no SiliconFlow API key: set SILICONFLOW_API_KEY (or SOURCES__SILICONFLOW__API_KEY, "
            "or api_key under [sources.siliconflow] in .dlt/secrets.toml)"
        )
    return SourceConfig(
        api_key=str(api_key),
        base_url=str(_setting("sources.siliconflow.base_url", DEFAULT_BASE_URL)).rstrip("/"),
        page_size=_positive_int("sources.siliconflow.page_size", DEFAULT_PAGE_SIZE),
        retry=RetryPolicy(
            max_attempts=_positive_int("runtime.request_max_attempts", RetryPolicy.max_attempts),
            backoff_factor=_number("runtime.request_backoff_factor", RetryPolicy.backoff_factor),
            max_delay_s=_number("runtime.request_max_retry_delay", RetryPolicy.max_delay_s),
            timeout_s=_number("runtime.request_timeout", RetryPolicy.timeout_s),
        ),
    )


def _setting(key: str, default: object) -> object:
    value = dlt.config.get(key)
    return default if value is None else value


def _positive_int(key: str, default: int) -> int:
    value = _setting(key, default)
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{key} must be a whole number of at least 1, not {value!r}")
    return number


def _number(key: str, default: float) -> float:
    value = _setting(key, default)
    try:
        number = float(str(value))
    except ValueError:
        number = -1.0
    if number < 0:
        raise ConfigError(f"{key} must be a number of seconds (0 or more), not {value!r}")
    return number
