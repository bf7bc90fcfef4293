"""`sfbatches check`: the account's and the warehouse's health, by the six rules of SPEC §6.

The rules read the synced tables, not the analytics views, so that a warehouse whose models were
never built can still be checked; they run on a read-only connection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from pipelines.errors import printable
from pipelines.vocabulary import (
    ALERT_DEFAULTS,
    BATCH_REQUESTS,
    BATCHES,
    DATASET,
    REQUEST_COUNTS,
    STARTED_STATUSES,
    SYNC_RUNS,
    is_terminal_sql,
    status_sql,
)
from pipelines.warehouse.database import open_database
from pipelines.wording import counted

from .report import TABLES_SQL

HOUR = 3600.0
NAMED = 3  # batch ids a text line shows before "and N more"
FAILURE_WINDOW = timedelta(hours=24)
RULES = ("sync_age", "last_sync_failed", "queue", "finalizing", "past_window", "failure_rate")


@dataclass(frozen=True)
class Limits:
    """When a rule trips; SPEC §2 `alerts.*` and its defaults."""

    max_sync_age_hours: float = ALERT_DEFAULTS["max_sync_age_hours"]
    max_queue_hours: float = ALERT_DEFAULTS["max_queue_hours"]
    max_finalizing_hours: float = ALERT_DEFAULTS["max_finalizing_hours"]
    max_failure_rate: float = ALERT_DEFAULTS["max_failure_rate"]

    def described(self) -> str:
        """The limits in a line, each as it was given (0.245 is 24.5%, not 24%)."""
        return (
            f"sync {self.max_sync_age_hours:g} h, queue {self.max_queue_hours:g} h, "
            f"finalizing {self.max_finalizing_hours:g} h, "
            f"failed requests {percent(self.max_failure_rate)}"
        )


@dataclass(frozen=True)
class Problem:
    rule: str
    message: str
    batch_ids: list[str] = field(default_factory=list)
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class OpenBatch:
    batch_id: str
    status: str | None
    created_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class LastRuns:
    """The newest successful sync's end, and the newest sync of all."""

    ok_finished_at: datetime | None = None
    newest_outcome: str | None = None
    newest_finished_at: datetime | None = None
    newest_exit_code: int | None = None
    newest_message: str | None = None


@dataclass(frozen=True)
class Failures:
    """Request counts of the batches that ended in the last 24 h."""

    completed: int = 0
    failed: int = 0
    batch_ids: list[str] = field(default_factory=list)  # those with failed requests, most first

    @property
    def rate(self) -> float | None:
        total = self.completed + self.failed
        return self.failed / total if total else None


@dataclass(frozen=True)
class Facts:
    """What the rules and the monitoring figures are computed from."""

    checked_at: datetime
    runs: LastRuns
    open_batches: list[OpenBatch]
    failures: Failures
    tokens_today: int

    def hours_since(self, moment: datetime) -> float:
        return (self.checked_at - moment).total_seconds() / HOUR

    def in_queue(self) -> list[tuple[OpenBatch, float]]:
        """Open batches not started: no `in_progress_at`, and no status that says otherwise."""
        return self._aged(
            b
            for b in self.open_batches
            if b.in_progress_at is None and b.status not in STARTED_STATUSES
        )

    def finalizing(self) -> list[tuple[OpenBatch, float]]:
        return self._aged(
            (b for b in self.open_batches if b.status == "finalizing"),
            since=lambda b: b.finalizing_at or b.in_progress_at or b.created_at,
        )

    def past_window(self) -> list[tuple[OpenBatch, float]]:
        late = (b for b in self.open_batches if b.expires_at and b.expires_at < self.checked_at)
        return self._aged(late, since=lambda b: b.expires_at)

    def _aged(self, batches, since=lambda b: b.created_at) -> list[tuple[OpenBatch, float]]:
        """Each batch with its hours since `since`, longest first."""
        aged = [(batch, self.hours_since(since(batch))) for batch in batches]
        return sorted(aged, key=lambda pair: (-pair[1], pair[0].batch_id))


@dataclass(frozen=True)
class Health:
    facts: Facts
    limits: Limits
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked_at": self.facts.checked_at.isoformat(),
            "problems": [
                {
                    "rule": p.rule,
                    "message": p.message,
                    "batch_ids": p.batch_ids,
                    "value": p.value,
                    "limit": p.limit,
                }
                for p in self.problems
            ],
        }

    def lines(self) -> list[str]:
        """One line per problem, or the one line that says all is well."""
        if self.problems:
            return [f"sfbatches check: {p.rule}: {printable(p.message)}" for p in self.problems]
        facts = self.facts
        synced = facts.runs.ok_finished_at
        age = f"last sync {hours(facts.hours_since(synced))} ago" if synced else "never synced"
        return [
            f"sfbatches check: ok ({age}; {counted(len(facts.open_batches), 'open batch')}, "
            "none stuck)"
        ]


# --- reading the warehouse ---------------------------------------------------------------------

_LAST_RUNS = f"""
    select
        (select max(finished_at) from {DATASET}.{SYNC_RUNS} where outcome = 'ok'),
        newest.outcome,
        newest.finished_at,
        newest.exit_code,
        newest.message
    from (select 1) as one
    left join (
        select * from {DATASET}.{SYNC_RUNS} order by finished_at desc, run_id limit 1
    ) as newest on true
"""
_OPEN = f"""
    select id, {status_sql("status")}, created_at, in_progress_at, finalizing_at, expires_at
    from {DATASET}.{BATCHES}
    where not {is_terminal_sql("status")}
"""
_ENDED = "coalesce(completed_at, failed_at, expired_at, cancelled_at)"
_FAILURES = f"""
    select batch.id, coalesce(counts.completed, 0), coalesce(counts.failed, 0)
    from {DATASET}.{BATCHES} as batch
    inner join {DATASET}.{REQUEST_COUNTS} as counts on counts.batch_id = batch.id
    where {is_terminal_sql("batch.status")}
        and {_ENDED} > $since
        and {_ENDED} <= $now  -- an end the API dates in the future has not come yet
"""
_TOKENS_TODAY = f"""
    select coalesce(sum(requests.total_tokens), 0)
    from {DATASET}.{BATCH_REQUESTS} as requests
    inner join {DATASET}.{BATCHES} as batch on batch.id = requests.batch_id
    where {_ENDED} >= $midnight
        and {_ENDED} <= $now
"""


def read_facts(con: duckdb.DuckDBPyConnection, now: datetime) -> Facts:
    tables = {name for (name,) in con.execute(TABLES_SQL).fetchall()}
    has_batches = BATCHES in tables
    return Facts(
        checked_at=now,
        runs=_last_runs(con) if SYNC_RUNS in tables else LastRuns(),
        open_batches=[OpenBatch(*row) for row in con.execute(_OPEN).fetchall()]
        if has_batches
        else [],
        failures=_failures(con, now) if {BATCHES, REQUEST_COUNTS} <= tables else Failures(),
        tokens_today=_tokens_today(con, now) if {BATCHES, BATCH_REQUESTS} <= tables else 0,
    )


def _last_runs(con: duckdb.DuckDBPyConnection) -> LastRuns:
    return LastRuns(*con.execute(_LAST_RUNS).fetchone())


def _failures(con: duckdb.DuckDBPyConnection, now: datetime) -> Failures:
    rows = con.execute(_FAILURES, {"since": now - FAILURE_WINDOW, "now": now}).fetchall()
    failing = sorted((row for row in rows if row[2]), key=lambda row: (-row[2], row[0]))
    return Failures(
        completed=sum(row[1] for row in rows),
        failed=sum(row[2] for row in rows),
        batch_ids=[row[0] for row in failing],
    )


def _tokens_today(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(con.execute(_TOKENS_TODAY, {"midnight": midnight, "now": now}).fetchone()[0])


# --- the rules ---------------------------------------------------------------------------------


def apply_rules(facts: Facts, limits: Limits) -> list[Problem]:
    found = [
        sync_age(facts, limits),
        last_sync_failed(facts),
        queue(facts, limits),
        finalizing(facts, limits),
        past_window(facts),
        failure_rate(facts, limits),
    ]
    return [problem for problem in found if problem is not None]


def sync_age(facts: Facts, limits: Limits) -> Problem | None:
    limit = limits.max_sync_age_hours
    synced = facts.runs.ok_finished_at
    if synced is None:
        return Problem(
            "sync_age",
            "no successful sync is recorded in this database: run `sfbatches sync`",
            limit=limit,
        )
    age = facts.hours_since(synced)
    if age <= limit:
        return None
    return Problem(
        "sync_age",
        f"the last successful sync finished {hours(age)} ago (limit {hours(limit)}): "
        "check that the cron job runs `sfbatches sync` and read its output",
        value=age,
        limit=limit,
    )


def last_sync_failed(facts: Facts) -> Problem | None:
    runs = facts.runs
    if runs.newest_outcome != "failed":
        return None
    when = f"{runs.newest_finished_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    return Problem(
        "last_sync_failed",
        f"the last sync failed at {when} with exit {runs.newest_exit_code}: {runs.newest_message}",
        value=runs.newest_exit_code,
    )


def queue(facts: Facts, limits: Limits) -> Problem | None:
    return _stuck(
        "queue",
        facts.in_queue(),
        limits.max_queue_hours,
        "waiting in the queue (not yet in progress) for more than {limit}, the longest {value}",
    )


def finalizing(facts: Facts, limits: Limits) -> Problem | None:
    return _stuck(
        "finalizing",
        facts.finalizing(),
        limits.max_finalizing_hours,
        "finalizing for more than {limit}, the longest {value}",
    )


def past_window(facts: Facts) -> Problem | None:
    return _stuck(
        "past_window",
        facts.past_window(),
        0.0,
        "still open past the end of the completion window, the most overdue by {value}",
    )


def _stuck(
    rule: str, aged: list[tuple[OpenBatch, float]], limit: float, what: str
) -> Problem | None:
    over = [(batch, age) for batch, age in aged if age > limit]
    if not over:
        return None
    ids = [batch.batch_id for batch, _ in over]
    value = over[0][1]
    text = what.format(limit=hours(limit), value=hours(value))
    return Problem(rule, f"{counted(len(ids), 'batch')} {text}: {named(ids)}", ids, value, limit)


def failure_rate(facts: Facts, limits: Limits) -> Problem | None:
    failures, limit = facts.failures, limits.max_failure_rate
    rate = failures.rate
    if rate is None or rate <= limit:
        return None
    requests = failures.failed + failures.completed
    return Problem(
        "failure_rate",
        f"{rate:.1%} of requests failed in the batches that ended in the last 24 h "
        f"(limit {percent(limit)}; {failures.failed:,} of {requests:,}), "
        f"most in {named(failures.batch_ids)}",
        failures.batch_ids,
        rate,
        limit,
    )


# --- words ---------------------------------------------------------------------------------------


def percent(fraction: float) -> str:
    """A fraction as a percentage, to the digits it holds: 0.1 is 10%, 0.005 is 0.5%."""
    return f"{fraction * 100:.6g}%"


def hours(value: float) -> str:
    """Hours as a person reads them: '12 s', '0.36 s', '40 min', '3.2 h', '2.5 days'."""
    if value * 60 < 1:
        return f"{max(value * 3600, 0):.2g} s"
    if value < 1:
        return f"{value * 60:.0f} min"
    if value < 48:
        return f"{value:.1f} h"
    return f"{value / 24:.1f} days"


def named(ids: list[str]) -> str:
    shown = ", ".join(ids[:NAMED])
    rest = len(ids) - NAMED
    return f"{shown} and {rest:,} more" if rest > 0 else shown


# --- entry points ------------------------------------------------------------------------------


def check(con: duckdb.DuckDBPyConnection, limits: Limits, now: datetime | None = None) -> Health:
    facts = read_facts(con, now or datetime.now(UTC))
    return Health(facts, limits, apply_rules(facts, limits))


def check_at(db_path: str | Path, limits: Limits) -> Health:
    """Open the DuckDB file at `db_path` read-only and check it."""
    with open_database(db_path, read_only=True) as con:
        return check(con, limits)


def problem_counts(health: Health) -> dict[str, int]:
    """Per rule, the batches it names (1 for a rule about the warehouse itself), 0 when quiet."""
    found = {problem.rule: max(len(problem.batch_ids), 1) for problem in health.problems}
    return {rule: found.get(rule, 0) for rule in RULES}


def oldest_seconds(aged: list[tuple[OpenBatch, float]]) -> float:
    """The longest age in seconds, 0 when none; a time the API dates ahead of this clock
    counts as just now, so a gauge never reads a negative age."""
    return max(aged[0][1], 0.0) * HOUR if aged else 0.0


def figures(health: Health) -> dict[str, tuple[float, str]]:
    """The figures behind the rules, for monitoring systems: name → (value, help)."""
    facts = health.facts
    synced = facts.runs.ok_finished_at
    queued, final = facts.in_queue(), facts.finalizing()
    rate = facts.failures.rate
    return {
        "check_ok": (float(health.ok), "1 when no rule of `sfbatches check` trips, else 0"),
        "last_sync_age_seconds": (
            facts.hours_since(synced) * HOUR if synced else math.nan,
            "seconds since the last successful sync finished (NaN: none recorded)",
        ),
        "last_sync_failed": (
            float(facts.runs.newest_outcome == "failed"),
            "1 when the newest recorded sync failed",
        ),
        "open_batches": (float(len(facts.open_batches)), "batches not yet in a final status"),
        "oldest_queue_age_seconds": (
            oldest_seconds(queued),
            "age of the oldest batch not yet in progress (0: none waiting)",
        ),
        "finalizing_age_seconds": (
            oldest_seconds(final),
            "longest time a batch has been finalizing (0: none finalizing)",
        ),
        "past_window_batches": (
            float(len(facts.past_window())),
            "open batches past the end of their completion window",
        ),
        "failure_rate_24h": (
            rate if rate is not None else math.nan,
            "failed / (completed + failed) requests of batches ended in the last 24 h (NaN: none)",
        ),
        "tokens_today": (
            float(facts.tokens_today),
            "total tokens in the result files of batches that ended today (UTC)",
        ),
    }
