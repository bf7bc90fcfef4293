"""The `sfbatches` command line: parse arguments, run one command, map failures to exit codes."""

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pipelines.errors import ConfigError, SfBatchesError

if TYPE_CHECKING:
    from pipelines.config import SourceConfig

DEMO_DB = "demo.duckdb"
DEMO_BATCHES = 5_000


def entry_point() -> NoReturn:
    """The `sfbatches` and `python -m pipelines` process."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # dlt reads this when it first logs. Without --verbose our own summary, warnings and one
    # error line say what matters; dlt would add tracebacks of errors it retries itself.
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "INFO" if args.verbose else "CRITICAL")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.command(args)
    except SfBatchesError as error:
        return _fail(str(error), error.exit_code, args.verbose)
    except KeyboardInterrupt:
        return _fail("interrupted; the database keeps its last complete sync", 130, args.verbose)
    except BrokenPipeError:
        return _reader_gone()
    except OSError as error:
        if error.filename is None:
            raise
        return _fail(
            f"cannot use {error.filename}: {error.strerror}; check the path and its permissions",
            2,
            args.verbose,
        )
    except Exception as error:
        return _fail(
            f"unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            " (rerun with --verbose for details, and report it)",
            1,
            args.verbose,
        )


def _reader_gone() -> int:
    """The reader of our output went away (`sfbatches report | head`): the work is done, and
    nothing more can be said; later writes, at exit too, go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"sfbatches: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show details and tracebacks")
    parser = argparse.ArgumentParser(
        prog="sfbatches",
        description="Sync SiliconFlow batch jobs into DuckDB and report on them.",
        parents=[common],
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_: str):
        sub = commands.add_parser(name, help=help_, description=help_, parents=[common])
        sub.set_defaults(command=handler)
        return sub

    sync = command("sync", cmd_sync, "incremental sync from the API, then rebuild the models")
    _db_option(sync)
    sync.add_argument("--full-refresh", action="store_true", help="re-read every batch")
    sync.add_argument("--no-models", action="store_true", help="skip rebuilding the SQL models")

    _db_option(command("models", cmd_models, "(re)build the SQL models"))

    report = command("report", cmd_report, "print the throughput and turnaround summary")
    _db_option(report)
    report.add_argument("--days", type=_positive, default=7, help="look back N days (7)")

    demo = command("demo", cmd_demo, "simulator + sync + models + report, no API key needed")
    demo.add_argument(
        "--db",
        default=DEMO_DB,
        help=f"DuckDB file for the demo (default: {DEMO_DB}); a database an earlier demo left "
        "there is replaced, any other file is refused",
    )
    _batches_option(demo)

    simulate = command("simulate", cmd_simulate, "serve the API simulator until stopped")
    simulate.add_argument("--port", type=_port, default=8800, help="port on 127.0.0.1 (8800)")
    _batches_option(simulate)
    simulate.add_argument("--seed", type=int, default=7, help="the simulated world's seed (7)")
    simulate.add_argument("--latency-ms", type=float, default=0.0, help="delay every answer")
    return parser


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="DuckDB file (default: $SFBATCHES_DB, else siliconflow.duckdb)"
    )


def _batches_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches",
        type=_positive,
        default=DEMO_BATCHES,
        help=f"batches in the simulated account ({DEMO_BATCHES:,})",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {value}")
    return value


def cmd_sync(args: argparse.Namespace) -> int:
    from pipelines.config import resolve_source_config
    from pipelines.warehouse.database import resolve_db_path

    config = resolve_source_config()
    _sync_and_build(resolve_db_path(args.db), config, args.full_refresh, not args.no_models)
    return 0


def _sync_and_build(
    db_path: Path, config: "SourceConfig", full_refresh: bool, models: bool
) -> None:
    from pipelines.warehouse.sync import run_sync

    result = run_sync(
        db_path, full_refresh=full_refresh, config=config, progress=sys.stderr.isatty()
    )
    for warning in result.stats.warnings:
        print(f"sfbatches: warning: {warning}", file=sys.stderr)
    line = result.summary()
    if models:
        line += f"; {len(_build_models(db_path))} models built"
    print(line)


def cmd_models(args: argparse.Namespace) -> int:
    from pipelines.warehouse.database import resolve_db_path

    db_path = resolve_db_path(args.db)
    print(f"sfbatches: built {len(_build_models(db_path))} models in {db_path}")
    return 0


def _build_models(db_path: Path) -> list[str]:
    from pipelines.analytics.models import build_models_at

    return build_models_at(db_path)


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.warehouse.database import resolve_db_path

    print(_report(resolve_db_path(args.db), args.days))
    return 0


def _report(db_path: Path, days: int) -> str:
    from pipelines.analytics.report import render_report_at

    return render_report_at(db_path, days)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.config import SourceConfig
    from pipelines.simulator import Simulator, World
    from pipelines.warehouse.database import mark_as_demo, remove_demo_database

    db_path = Path(args.db)
    remove_demo_database(db_path)
    with Simulator(World(batches=args.batches)) as simulator:
        print(f"sfbatches: demo simulator with {args.batches:,} batches at {simulator.base_url}")
        config = SourceConfig(api_key=simulator.api_key, base_url=simulator.base_url)
        _sync_and_build(db_path, config, full_refresh=False, models=True)
    mark_as_demo(db_path)
    print()
    print(_report(db_path, days=7))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipelines.simulator import serve

    try:
        serve(port=args.port, batches=args.batches, seed=args.seed, latency_ms=args.latency_ms)
    except OSError as error:
        reason = "is in use" if error.errno == errno.EADDRINUSE else f"failed: {error.strerror}"
        raise ConfigError(f"port {args.port} {reason}: choose another with --port") from None
    return 0
