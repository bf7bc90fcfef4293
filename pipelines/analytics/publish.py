"""Files other programs read (a web page, a node_exporter textfile): written whole or not at
all, and never over a file sfbatches did not write."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from pipelines.errors import ConfigError, naming

PREFIX = "sfbatches"
# What the first bytes of each kind of file we write look like.
HTML_MARK = "<!DOCTYPE html>\n<!-- sfbatches report --html -->\n"
PROMETHEUS_MARK = f"# HELP {PREFIX}_"
# Others read these files (a web server, node_exporter): readable by all, as `touch` would make.
MODE = 0o644


def write_ours(path: Path, text: str, mark: str) -> None:
    """Replace `path` with `text` in one step: readers see the old file or the new one, never
    part of one. A file already there must be a plain file starting with `mark`; a link is
    followed, and the file it points at replaced."""
    refuse_if_not_ours(path, mark)
    path = path.resolve()
    folder = path.parent
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise ConfigError(
            f"cannot write in {folder} ({error.strerror}): choose a file in a folder you can write"
        ) from None
    try:
        with naming(path), os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, MODE & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def refuse_if_not_ours(path: Path, mark: str) -> None:
    """Refuse a folder, a device, pipe or socket, and a file that does not start with `mark`
    (an empty one too): only what sfbatches wrote, or nothing, may be replaced."""
    try:
        kind = path.stat().st_mode
        if stat.S_ISDIR(kind):
            raise ConfigError(f"{path} is a folder: give the file to write, e.g. {path / 'x'}")
        if not stat.S_ISREG(kind):
            raise ConfigError(
                f"{path} is not a plain file (a device, pipe or socket): it is left as it is; "
                "choose a file to write"
            )
        with path.open("rb") as existing:
            start = existing.read(len(mark.encode()))
    except FileNotFoundError:
        return
    except OSError as error:
        raise ConfigError(f"cannot read {path} ({error.strerror}): choose another file") from None
    if start != mark.encode():
        raise ConfigError(
            f"{path} exists and was not written by sfbatches: it is left as it is; "
            "choose another file, or remove it first"
        )


def prometheus_text(figures: dict[str, tuple[float, str]], problems: dict[str, int]) -> str:
    """node_exporter's textfile format: each figure as a gauge `sfbatches_<name>`, and per rule
    the number of batches it names (1 for a rule about the warehouse, 0 when quiet)."""
    registry = CollectorRegistry()
    for name, (value, text) in figures.items():
        Gauge(f"{PREFIX}_{name}", text, registry=registry).set(value)
    per_rule = Gauge(
        f"{PREFIX}_check_problems",
        "what each rule of `sfbatches check` found: batches named, or 1 (0: quiet)",
        ["rule"],
        registry=registry,
    )
    for rule, count in problems.items():
        per_rule.labels(rule=rule).set(count)
    return generate_latest(registry).decode()
