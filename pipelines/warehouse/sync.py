"""One sync: lock the database, plan from what it holds, extract, load, record."""

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import dlt
import duckdb
import pyarrow as pa
from dlt.common.storages import NormalizeStorage
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.sources import DltSource

from pipelines.config import SourceConfig, resolve_source_config
from pipelines.errors import (
    STOPS,
    ConfigError,
    DatabaseBusy,
    SfBatchesError,
    disk_full,
    exit_code_of,
    find_error,
    first_line,
    one_line,
)
from pipelines.siliconflow import (
    Deadline,
    ReadStats,
    ResultStats,
    SyncPlan,
    result_files,
    siliconflow,
)
from pipelines.vocabulary import DATASET
from pipelines.wording import counted

from . import database, history, plan

PIPELINE_NAME = "sfbatches"
# Where dlt keeps a pipeline's extracted packages, under its working folder.
DLT_NORMALIZE_FOLDER = "normalize"

# dlt settings this pipeline relies on (the environment wins over .dlt/*.toml, so set them there):
DLT_SETTINGS = {
    # The resources stamp `_dlt_load_id` on their Arrow tables themselves (`with_load_id`).
    "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "false",
    # DuckDB writes one table at a time anyway; parallel load jobs only add up their memory.
    "LOAD__WORKERS": "1",
    # A loaded job's file is of no use: a cron job must not pile them up.
    "LOAD__DELETE_COMPLETED_JOBS": "true",
    # `STOPS.held()` lets a load finish and then stops; dlt's own handler would forget a signal
    # that came during the package's last job, and the run would go on.
    "RUNTIME__INTERCEPT_SIGNALS": "false",
}


@dataclass
class SyncResult:
    """What one sync did, filled in as it goes: its summary line and its `sync_runs` row."""

    db_path: Path
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    stats: ReadStats = field(default_factory=ReadStats)
    files: ResultStats = field(default_factory=ResultStats)
    full: bool = False
    new: int = 0
    changed: int = 0
    seconds: float = 0.0

    @property
    def warnings(self) -> list[str]:
        return self.stats.warnings + self.files.warnings

    @property
    def failure(self) -> SfBatchesError | None:
        """Why a sync that stored all it read still failed: the API refused the key for the
        result files, which a cron job must hear of."""
        return self.files.refused

    def summary(self) -> str:
        kind = "full" if self.full else "incremental"
        stats, files = self.stats, self.files
        return (
            f"sfbatches: {kind} sync of {self.db_path.name}: "
            f"{counted(stats.batches, 'batch')} read "
            f"({self.new:,} new, {self.changed:,} changed) from {counted(stats.pages, 'page')} "
            f"and {counted(stats.lookups, 'lookup')}, {counted(files.loaded, 'result file')} "
            f"({counted(files.lines, 'request line')}) in {self.seconds:.1f} s"
        )

    def run_row(self, error: BaseException | None = None) -> dict[str, object]:
        """This sync as a `sync_runs` row: ok, or failed with the exit code and line the CLI
        gives for `error`."""
        return {
            "run_id": uuid.uuid4().hex,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC),
            "kind": "full" if self.full else "incremental",
            "outcome": "ok" if error is None else "failed",
            "exit_code": 0 if error is None else exit_code_of(error),
            "message": self.summary().removeprefix("sfbatches: ")
            if error is None
            else one_line(error),
            "batches_read": self.stats.batches,
            "batches_new": self.new,
            "batches_changed": self.changed,
            "pages": self.stats.pages,
            "lookups": self.stats.lookups,
            "files_loaded": self.files.loaded if self.files.stored else 0,
            "request_lines": self.files.lines if self.files.stored else 0,
            "warnings": len(self.warnings),
        }


def run_sync(
    db_path: Path,
    *,
    full_refresh: bool = False,
    config: SourceConfig | None = None,
    progress: bool = False,
) -> SyncResult:
    """Bring `db_path` up to date with the API: the batches, then (unless `config.results` is
    false) the result files of the ended ones. The database changes only by whole dlt loads,
    and each sync that got the database leaves a `sync_runs` row, ok or failed."""
    started = time.monotonic()
    config = config or resolve_source_config()
    database.check_is_duckdb(db_path)
    with database.sync_lock(db_path):
        result = SyncResult(db_path)
        try:
            sync_into(result, config, full_refresh, progress)
        except BaseException as error:
            # a sync stopped (Ctrl-C, SIGTERM) or kept out of the database by another process
            # is not held up again by a second wait for the database, only to record that
            waited = isinstance(error, (KeyboardInterrupt, DatabaseBusy))
            history.record_failed_run(db_path, result.run_row(error), wait=not waited)
            raise
        result.seconds = time.monotonic() - started
        history.record_run(db_path, result.run_row(result.failure))
    return result


def sync_into(result: SyncResult, config: SourceConfig, full_refresh: bool, progress: bool) -> None:
    """The steps of one sync, each filling in `result`."""
    deadline = Deadline(config.sync_timeout_s)
    db_path = result.db_path
    pipeline, sync_plan = prepare(db_path, full_refresh, progress, result.stats)
    result.full = sync_plan.is_full
    extract(pipeline, source(config, sync_plan, result.stats, deadline))
    deadline.check()
    with database.connect_for_sync(db_path) as con:
        with STOPS.held():
            result.new, result.changed = load_and_record(pipeline, con, result.stats)
        todo = plan.pending_files(con, config.results, retry_gone=full_refresh)
    fetch_results(pipeline, db_path, todo, config, deadline, result.files)


def prepare(
    db_path: Path, full_refresh: bool, progress: bool, stats: ReadStats
) -> tuple[dlt.Pipeline, SyncPlan]:
    """The pipeline, once a killed sync's leftovers are loaded, and what the warehouse holds."""
    pipeline = open_pipeline(db_path, progress)
    drop_unfinished_extracts(pipeline)
    if finish_pending_loads(pipeline, db_path) is Leftovers.UNLOADABLE:
        stats.warn(
            "a killed sync left data dlt could not load; it was discarded and every page is "
            "read again"
        )
        pipeline = open_pipeline(db_path, progress, fresh=True)
        full_refresh = True
    return pipeline, plan.read_plan(db_path, full=full_refresh)


def source(
    config: SourceConfig, sync_plan: SyncPlan, stats: ReadStats, deadline: Deadline
) -> DltSource:
    return siliconflow(
        api_key=config.api_key,
        base_url=config.base_url,
        page_size=config.page_size,
        plan=sync_plan,
        retry=config.retry,
        stats=stats,
        sweep_pages=config.sweep_pages,
        deadline=deadline,
        key_source=config.key_source,
    )


def extract(pipeline: dlt.Pipeline, batches: DltSource) -> None:
    """Read the API into a load package; the database is not opened meanwhile, so notebooks
    and DuckDB shells are shut out for the load alone, not for the whole download."""
    _guard(pipeline, lambda: pipeline.extract(batches))
    with STOPS.held():
        _guard(pipeline, pipeline.normalize)
    # Arrow's allocator keeps what the chunks used for reuse; DuckDB is about to take its
    # memory, so hand it back first.
    pa.default_memory_pool().release_unused()


def fetch_results(
    pipeline: dlt.Pipeline,
    db_path: Path,
    todo: plan.FilePlan,
    config: SourceConfig,
    deadline: Deadline,
    stats: ResultStats,
) -> None:
    """Load the result files `todo` names, now that the batches are stored.

    Runs with no files too while the result tables do not exist yet (the batches' load creates
    them unless a killed sync's leftovers came first). Past the deadline it loads the files it
    has finished and leaves the rest for the next sync.
    """
    stats.left = todo.pending - len(todo.files)
    if not todo.files and todo.tables_exist:
        return
    extract(
        pipeline,
        result_files(
            todo.files,
            database.work_dir(db_path) / "results",
            api_key=config.api_key,
            base_url=config.base_url,
            archive=config.archive_dir,
            retry=config.retry,
            deadline=deadline,
            stats=stats,
            key_source=config.key_source,
        ),
    )
    with database.connect_for_sync(db_path) as con, STOPS.held():
        load_and_record(pipeline, con)
        stats.stored = True


def load_and_record(
    pipeline: dlt.Pipeline, con: duckdb.DuckDBPyConnection, stats: ReadStats | None = None
) -> tuple[int, int]:
    """Load the package through `con` and do the bookkeeping on it; return (new, changed).
    Callers hold stops meanwhile (`STOPS.held()`): until the bookkeeping ends a table may hold a
    key twice, and the run's record should count what was loaded."""
    if stats is not None:
        history.widen_columns(con, stats.columns.widened)
    _guard(pipeline, lambda: pipeline.load(credentials=load_credentials(con)))
    # Rows the load merged stay in memory until a checkpoint: on a long history they would leave
    # the bookkeeping's join over the history too little of DuckDB's memory.
    con.execute("checkpoint")
    new, changed = history.record_observations(con)
    drop_loaded_packages(pipeline)
    return new, changed


def open_pipeline(db_path: Path, progress: bool, fresh: bool = False) -> dlt.Pipeline:
    """The dlt pipeline of this database; `fresh` drops its working folder first."""
    for name, value in DLT_SETTINGS.items():
        os.environ.setdefault(name, value)
    workdir = database.work_dir(db_path)
    if fresh or not db_path.exists():
        # A deleted database's packages and schema belong to nothing now; dlt restores what it
        # needs of a live one from the database itself.
        shutil.rmtree(workdir, ignore_errors=True)
    return dlt.pipeline(
        pipeline_name=PIPELINE_NAME,
        pipelines_dir=str(workdir),
        destination=dlt.destinations.duckdb(
            credentials=DuckDbCredentials(
                str(db_path.absolute()), global_config=database.sync_config(db_path)
            )
        ),
        dataset_name=DATASET,
        progress=progress_log() if progress else None,
    )


def progress_log() -> dlt.common.runtime.collector.LogCollector:
    """dlt's counts of pages, files and rows on the terminal every 2 s; without the process's
    memory and CPU, which need psutil (not installed with sfbatches) and tell a user nothing."""
    return dlt.progress.log(log_period=2.0, logger=sys.stderr, dump_system_stats=False)


def load_credentials(con: duckdb.DuckDBPyConnection) -> DuckDbCredentials:
    """dlt's credentials for loading through `con`, a connection of `database.connect`.

    That connection attaches the database (to write it in sfbatches' row groups), and the
    copies dlt loads through start out in DuckDB's in-memory catalog: each one is pointed at
    the attached database before dlt sets its own schema.
    """
    return DuckDbCredentials(con, local_config={"schema": f"{database.ATTACHED_AS}.main"})


def drop_loaded_packages(pipeline: dlt.Pipeline) -> None:
    """Delete the load packages dlt keeps after loading them: under cron they pile up."""
    for load_id in pipeline.list_completed_load_packages():
        shutil.rmtree(pipeline.get_load_package_info(load_id).package_path, ignore_errors=True)


def drop_unfinished_extracts(pipeline: dlt.Pipeline) -> None:
    """Delete what extracts killed halfway left in dlt's working folder: under cron, one
    package a kill, for good.

    dlt writes each extract in a folder of its own under `normalize/` and moves the package to
    `normalize/extracted/` once the extract is complete; it never removes a folder an extract
    died in. Under the sync's lock no other extract is running, so every such folder is dead.
    """
    normalize = Path(pipeline.working_dir) / DLT_NORMALIZE_FOLDER
    if not normalize.is_dir():
        return
    for folder in normalize.iterdir():
        if folder.is_dir() and folder.name != NormalizeStorage.EXTRACTED_FOLDER:
            shutil.rmtree(folder, ignore_errors=True)


class Leftovers(Enum):
    """What a killed sync left in dlt's working folder, and what became of it."""

    NONE = "none"
    LOADED = "loaded"
    UNLOADABLE = "unloadable"


def finish_pending_loads(pipeline: dlt.Pipeline, db_path: Path) -> Leftovers:
    """Load what a killed sync left behind, before planning, so this run still extracts.

    A package holds the pages it read and where the next sync goes on (its walk's floor, the
    sweep's cursor), so loading it keeps both consistent.
    """
    if not pipeline.has_pending_data:
        return Leftovers.NONE
    try:
        with STOPS.held():
            if pipeline.list_extracted_load_packages():
                _guard(pipeline, pipeline.normalize)
            if pipeline.list_normalized_load_packages():
                with database.connect_for_sync(db_path) as con:
                    _guard(pipeline, lambda: pipeline.load(credentials=load_credentials(con)))
    except SfBatchesError:
        raise
    except Exception:
        # Killed halfway through dlt's own bookkeeping, a package may never load; reading
        # everything again (and merging) is what makes the database whole after that.
        return Leftovers.UNLOADABLE
    return Leftovers.LOADED


def _guard(pipeline: dlt.Pipeline, step: Callable[[], object]) -> None:
    """Run a dlt step; surface our own errors, a locked database and a full disk under dlt's
    working folder instead of dlt's wrappers."""
    try:
        step()
    except Exception as error:
        if ours := find_error(error):
            raise ours from None
        if database.is_lock_error(error):
            raise DatabaseBusy(database.busy_message()) from None
        full = disk_full(error)
        # DuckDB names the file it could not write; a file dlt writes in its folder is unnamed
        if isinstance(full, OSError) and full.filename is None:
            raise ConfigError(
                f"the disk holding dlt's working folder {pipeline.pipelines_dir} is full "
                f"({first_line(full)}); free some space there and run again"
            ) from None
        raise
