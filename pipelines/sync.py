"""One incremental sync: lock the database, plan from what it holds, run dlt, record history."""

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import dlt
import duckdb
import pyarrow as pa
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

from pipelines import database, warehouse
from pipelines.config import SourceConfig, resolve_source_config
from pipelines.errors import ConfigError, DatabaseBusy, SfBatchesError, find_error
from pipelines.siliconflow import Deadline, ReadStats, siliconflow
from pipelines.siliconflow.settings import DATASET_NAME

PIPELINE_NAME = "sfbatches"

# dlt settings this pipeline relies on (the environment wins over .dlt/*.toml, so set them there):
DLT_SETTINGS = {
    # Arrow tables skip dlt's row normalizer, which is what would stamp `_dlt_load_id`; the load
    # id tells a batch's current child rows from stale ones, and when a status was observed.
    "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "true",
    # DuckDB writes one table at a time anyway; parallel load jobs only add up their memory (at
    # 1M batches they ran DuckDB out of its cap now and then).
    "LOAD__WORKERS": "1",
}


@dataclass
class SyncResult:
    db_path: Path
    full: bool
    stats: ReadStats
    new: int = 0
    changed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        kind = "full" if self.full else "incremental"
        return (
            f"sfbatches: {kind} sync of {self.db_path.name}: {self.stats.batches:,} batches read "
            f"({self.new:,} new, {self.changed:,} changed) from {self.stats.pages:,} pages "
            f"and {self.stats.lookups:,} lookups in {self.seconds:.1f} s"
        )


def run_sync(
    db_path: Path,
    *,
    full_refresh: bool = False,
    config: SourceConfig | None = None,
    progress: bool = False,
) -> SyncResult:
    """Bring `db_path` up to date with the API; the database changes only by whole dlt loads."""
    started = time.monotonic()
    config = config or resolve_source_config()
    deadline = Deadline(config.sync_timeout_s)
    database.check_is_duckdb(db_path)
    with database_lock(db_path):
        pipeline = open_pipeline(db_path, progress)
        leftovers = finish_pending_loads(pipeline, db_path)
        stats = ReadStats()
        if leftovers is Leftovers.UNLOADABLE:
            stats.warn(
                "a killed sync left data dlt could not load; it was discarded and every page is "
                "read again"
            )
            pipeline = open_pipeline(db_path, progress, fresh=True)
        plan = warehouse.read_plan(db_path, full=full_refresh or leftovers is Leftovers.UNLOADABLE)
        source = siliconflow(
            api_key=config.api_key,
            base_url=config.base_url,
            page_size=config.page_size,
            plan=plan,
            retry=config.retry,
            stats=stats,
            sweep_pages=config.sweep_pages,
            deadline=deadline,
            key_source=config.key_source,
        )
        _guard(lambda: pipeline.extract(source))
        _guard(pipeline.normalize)
        stats.warnings += stats.columns.warnings
        deadline.check()
        # Arrow's allocator keeps what the chunks used for reuse; DuckDB is about to take its
        # 64 MB, so hand it back first (30 MB off a 1M-batch sync's peak).
        pa.default_memory_pool().release_unused()
        # One connection for the load and the bookkeeping after it, rather than one per table
        # job, each closed with a checkpoint. Opened only now, so readers (notebooks, the DuckDB
        # shell) are shut out for the load alone, not for the whole download.
        with database.connect(db_path, config=database.sync_config(db_path)) as con:
            warehouse.widen_columns(con, stats.columns.widened)
            _guard(lambda: pipeline.load(credentials=load_credentials(con)))
            # Rows the load merged stay in memory until a checkpoint; at 1M batches they left
            # the bookkeeping's join over the history too little of the 64 MB.
            con.execute("checkpoint")
            new, changed = warehouse.record_observations(con)
    return SyncResult(
        db_path=db_path,
        full=plan.is_full,
        stats=stats,
        new=new,
        changed=changed,
        seconds=time.monotonic() - started,
    )


@contextmanager
def database_lock(db_path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """One sync per database: wait up to `timeout_s` for another one to finish, then give up."""
    timeout_s = database.LOCK_WAIT_S if timeout_s is None else timeout_s
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(lock_path, "a")  # noqa: SIM115 - held open while the sync runs
    except OSError as error:
        raise ConfigError(
            f"cannot write {lock_path} ({error.strerror}): choose a --db in a folder you can write"
        ) from None
    with lock_file:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatabaseBusy(
                        f"another sync is using {db_path} (waited {timeout_s:.0f} s): "
                        "let it finish, or check for a stuck sfbatches process"
                    ) from None
                time.sleep(0.2)
        yield


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
            credentials=DuckDbCredentials(str(db_path), global_config=database.sync_config(db_path))
        ),
        dataset_name=DATASET_NAME,
        progress=dlt.progress.log(log_period=2.0, logger=sys.stderr) if progress else None,
    )


def load_credentials(con: duckdb.DuckDBPyConnection) -> DuckDbCredentials:
    """dlt's credentials for loading through `con`, a connection of `database.connect`.

    That connection attaches the database (to write it in sfbatches' row groups), and the
    copies dlt loads through start out in DuckDB's in-memory catalog: each one is pointed at
    the attached database before dlt sets its own schema.
    """
    return DuckDbCredentials(con, local_config={"schema": f"{database.ATTACHED_AS}.main"})


class Leftovers(Enum):
    """What a killed sync left in dlt's working folder, and what became of it."""

    NONE = "none"
    LOADED = "loaded"
    UNLOADABLE = "unloadable"


def finish_pending_loads(pipeline: dlt.Pipeline, db_path: Path) -> Leftovers:
    """Load what a killed sync left behind, before planning, so this run still extracts."""
    if not pipeline.has_pending_data:
        return Leftovers.NONE
    try:
        if pipeline.list_extracted_load_packages():
            _guard(pipeline.normalize)
        if pipeline.list_normalized_load_packages():
            with database.connect(db_path, config=database.sync_config(db_path)) as con:
                _guard(lambda: pipeline.load(credentials=load_credentials(con)))
    except SfBatchesError:
        raise
    except Exception:
        # Killed halfway through dlt's own bookkeeping, a package may never load; reading
        # everything again (and merging) is what makes the database whole after that.
        return Leftovers.UNLOADABLE
    return Leftovers.LOADED


def _guard(step: Callable[[], object]) -> None:
    """Run a dlt step; surface our own errors and a locked database instead of dlt's wrappers."""
    try:
        step()
    except Exception as error:
        if ours := find_error(error):
            raise ours from None
        if database.is_lock_error(error):
            raise DatabaseBusy(database.busy_message()) from None
        raise
