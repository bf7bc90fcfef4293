"""The `sfbatches` command line: parse arguments, run one command, map failures to exit codes."""

import argparse
import errno
import io
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO, TypeVar

from pipelines.errors import STOPS, ConfigError, exit_code_of, one_line, printable
from pipelines.vocabulary import ALERT_DEFAULTS
from pipelines.wording import counted

if TYPE_CHECKING:
    from pipelines.config import SourceConfig

DEMO_DB = "demo.duckdb"
PROBLEMS_FOUND = 6  # `check`'s exit code when a rule trips
# check's limit flags: flag, the alerts.* name it overrides, what it limits
CHECK_LIMITS = (
    ("--max-sync-age", "max_sync_age_hours", "hours since the last successful sync"),
    ("--max-queue", "max_queue_hours", "hours a batch may wait in the queue"),
    ("--max-finalizing", "max_finalizing_hours", "hours a batch may be finalizing"),
    ("--max-failure-rate", "max_failure_rate", "share of requests failed in the last 24 h"),
)
DEMO_BATCHES = 2_000
# Requests a simulated batch holds at most: real batches hold up to 50,000 (OpenAI) or 5,000
# (SiliconFlow), but the demo's result files should download in seconds.
DEMO_REQUESTS = 200
Number = TypeVar("Number", int, float)
MOST_DAYS = 36_500  # a report's window; far more would start before year 1


def entry_point() -> NoReturn:
    """The `sfbatches` and `python -m pipelines` process."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # a batch id in Chinese must not fail a report or check read through an ASCII locale
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    # dlt reads this when it first logs. Without --verbose our own summary, warnings and one
    # error line say what matters; dlt would add tracebacks of errors it retries itself.
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "INFO" if args.verbose else "CRITICAL")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # matplotlib warns of a home folder it cannot write (it then uses a temporary one) and of
    # fonts it looks for and lacks: nothing the report's reader has to act on
    logging.getLogger("matplotlib").setLevel(logging.INFO if args.verbose else logging.ERROR)
    with STOPS.noted():
        try:
            return args.command(args)
        except BrokenPipeError:
            return _reader_gone()
        except (Exception, KeyboardInterrupt) as error:
            return _fail(one_line(error), exit_code_of(error), args.verbose)


def _reader_gone() -> int:
    """The reader of our output went away (`sfbatches report | head`): the work is done, and
    nothing more can be said; later writes, at exit too, go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def say(text: str) -> None:
    """Print `text` for the reader; one who left early (`| head`) changes no exit code."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _reader_gone()


def on_a_terminal(stream: TextIO | None) -> bool:
    """Whether `stream` is a terminal; a closed one (a daemon's `2>&-`) is None, and no terminal."""
    return stream is not None and stream.isatty()


def _fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"sfbatches: {printable(message)}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfbatches",
        description="Sync SiliconFlow batch jobs into DuckDB and report on them.",
    )
    parser.add_argument("--verbose", action="store_true", help="show details and tracebacks")
    # also after the command; unset there, so that `sfbatches --verbose sync` keeps it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show details and tracebacks",
    )
    parser.add_argument("--version", action="version", version=f"sfbatches {version('sfbatches')}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_: str):
        sub = commands.add_parser(name, help=help_, description=help_, parents=[common])
        sub.set_defaults(command=handler)
        return sub

    sync = command("sync", cmd_sync, "incremental sync from the API, then rebuild the models")
    _db_option(sync)
    sync.add_argument("--full-refresh", action="store_true", help="re-read every batch")
    sync.add_argument("--no-models", action="store_true", help="skip rebuilding the SQL models")
    sync.add_argument(
        "--no-results", action="store_true", help="skip downloading the result files this time"
    )

    _db_option(command("models", cmd_models, "(re)build the SQL models"))

    report = command("report", cmd_report, "print the throughput and turnaround summary")
    _db_option(report)
    report.add_argument("--days", type=_days, default=7, help="look back N days (7)")
    report.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write the report as one self-contained web page with charts to FILE instead",
    )

    check = command(
        "check",
        cmd_check,
        "health of the account and of the warehouse: exit 0 when healthy, 6 on problems",
    )
    _db_option(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--prometheus",
        type=Path,
        metavar="FILE",
        help="also write the figures behind the rules to FILE (node_exporter's textfile format)",
    )
    for flag, name, limits in CHECK_LIMITS:
        rate = name == "max_failure_rate"
        check.add_argument(
            flag,
            dest=name,
            type=_rate if rate else _hours,
            metavar="R" if rate else "H",
            help=f"{limits} (default: alerts.{name} in .dlt/config.toml, "
            f"else {ALERT_DEFAULTS[name]:g})",
        )

    demo = command("demo", cmd_demo, "simulator + sync + models + report, no API key needed")
    demo.add_argument(
        "--db",
        type=_named,
        default=DEMO_DB,
        help=f"DuckDB file for the demo (default: {DEMO_DB}); a database an earlier demo left "
        "there is replaced, any other file is refused",
    )
    _batches_option(demo)

    simulate = command("simulate", cmd_simulate, "serve the API simulator until stopped")
    simulate.add_argument("--port", type=_port, default=8800, help="port on 127.0.0.1 (8800)")
    _batches_option(simulate)
    simulate.add_argument("--seed", type=int, default=7, help="the simulated world's seed (7)")
    simulate.add_argument(
        "--max-requests",
        type=_positive,
        default=DEMO_REQUESTS,
        help=f"most requests a simulated batch holds ({DEMO_REQUESTS})",
    )
    simulate.add_argument("--latency-ms", type=float, default=0.0, help="delay every answer")
    return parser


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", type=_named, help="DuckDB file (default: $SFBATCHES_DB, else siliconflow.duckdb)"
    )


def _batches_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches",
        type=_positive,
        default=DEMO_BATCHES,
        help=f"batches in the simulated account ({DEMO_BATCHES:,})",
    )


def _hours(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be hours of 0 or more, not {text}")
    return value


def _rate(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, not {text}")
    return value


def _float(text: str) -> float:
    value = _parsed(float, text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _named(text: str) -> str:
    # `--db "$DB"` with DB unset must not fall back to the default file unnoticed
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file, not be empty")
    return text


def _whole(text: str) -> int:
    return _parsed(int, text, "a whole number")


def _parsed(kind: Callable[[str], Number], text: str, what: str) -> Number:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _days(text: str) -> int:
    value = _positive(text)
    if value > MOST_DAYS:
        raise argparse.ArgumentTypeError(f"must be at most {MOST_DAYS:,} (a century), not {value}")
    return value


def _port(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {value}")
    return value


def cmd_sync(args: argparse.Namespace) -> int:
    from pipelines.config import resolve_source_config
    from pipelines.warehouse.database import resolve_db_path

    config = resolve_source_config()
    if args.no_results:
        config = replace(config, results=False)
    _sync_and_build(resolve_db_path(args.db), config, args.full_refresh, not args.no_models)
    return 0


def _sync_and_build(
    db_path: Path, config: "SourceConfig", full_refresh: bool, models: bool
) -> None:
    from pipelines.warehouse.sync import run_sync

    result = run_sync(
        db_path, full_refresh=full_refresh, config=config, progress=on_a_terminal(sys.stderr)
    )
    for warning in result.warnings:
        print(f"sfbatches: warning: {printable(warning)}", file=sys.stderr)
    line = result.summary()
    if models:
        line += f"; {len(_build_models(db_path))} models built"
    say(line)
    if result.failure is not None:
        raise result.failure


def cmd_models(args: argparse.Namespace) -> int:
    from pipelines.warehouse.database import resolve_db_path

    db_path = resolve_db_path(args.db)
    say(f"sfbatches: built {len(_build_models(db_path))} models in {db_path}")
    return 0


def _build_models(db_path: Path) -> list[str]:
    from pipelines.analytics.models import build_models_at

    return build_models_at(db_path)


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.warehouse.database import resolve_db_path

    db_path = resolve_db_path(args.db)
    if args.html is None:
        say(_report(db_path, args.days))
        return 0
    from pipelines.analytics.dashboard import render_html_at
    from pipelines.analytics.publish import HTML_MARK, refuse_if_not_ours, write_ours
    from pipelines.config import resolve_limits

    refuse_if_not_ours(args.html, HTML_MARK)
    write_ours(args.html, render_html_at(db_path, resolve_limits({}), args.days), HTML_MARK)
    return 0


def _report(db_path: Path, days: int) -> str:
    from pipelines.analytics.report import render_report_at

    return render_report_at(db_path, days)


def cmd_check(args: argparse.Namespace) -> int:
    from pipelines.analytics.check import check_at, figures, problem_counts
    from pipelines.analytics.publish import PROMETHEUS_MARK, prometheus_text, write_ours
    from pipelines.config import resolve_limits
    from pipelines.warehouse.database import resolve_db_path

    limits = resolve_limits({name: getattr(args, name) for _, name, _ in CHECK_LIMITS})
    health = check_at(resolve_db_path(args.db), limits)
    if args.prometheus:
        text = prometheus_text(figures(health), problem_counts(health))
        write_ours(args.prometheus, text, PROMETHEUS_MARK)
    if args.json:
        say(json.dumps(health.as_json(), indent=2))
    else:
        say("\n".join(health.lines()))
    return 0 if health.ok else PROBLEMS_FOUND


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.config import SourceConfig
    from pipelines.simulator.process import served_elsewhere
    from pipelines.warehouse.database import local_file, new_demo_database

    db_path = local_file(args.db)
    new_demo_database(db_path)
    with served_elsewhere("--batches", str(args.batches)) as simulator:
        say(
            f"sfbatches: demo simulator at {simulator.base_url} listing "
            f"{counted(simulator.visible, 'batch')} (of {args.batches:,}: the rest are created "
            "later in its simulated time)"
        )
        config = SourceConfig(api_key=simulator.api_key, base_url=simulator.base_url)
        _sync_and_build(db_path, config, full_refresh=False, models=True)
    say("")
    say(_report(db_path, days=7))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipelines.simulator import serve

    try:
        serve(
            port=args.port,
            batches=args.batches,
            seed=args.seed,
            latency_ms=args.latency_ms,
            max_requests=args.max_requests,
        )
    except OSError as error:
        reason = "is in use" if error.errno == errno.EADDRINUSE else f"failed: {error.strerror}"
        raise ConfigError(f"port {args.port} {reason}: choose another with --port") from None
    return 0
