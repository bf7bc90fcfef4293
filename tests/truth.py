"""Expected warehouse tables worked out in plain Python from the API objects (no project code)."""

import json
from datetime import UTC, datetime
from typing import Any

import duckdb

SCALARS = (
    "id",
    "object",
    "endpoint",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "file_name",
)
TIMES = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def _ts(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def expected_batches(api: list[dict]) -> set[tuple]:
    return {
        tuple(batch.get(name) for name in SCALARS) + tuple(_ts(batch.get(n)) for n in TIMES)
        for batch in api
    }


def expected_request_counts(api: list[dict]) -> set[tuple]:
    return {
        (b["id"], c.get("total"), c.get("completed"), c.get("failed"))
        for b in api
        if (c := b.get("request_counts"))
        and any(c.get(name) is not None for name in ("total", "completed", "failed"))
    }


def expected_metadata(api: list[dict]) -> set[tuple]:
    return {(b["id"], k, v) for b in api for k, v in (b.get("metadata") or {}).items()}


def expected_errors(api: list[dict]) -> set[tuple]:
    rows = set()
    for b in api:
        errors = b.get("errors")
        if isinstance(errors, dict):  # OpenAI's list object, or one error sent bare
            errors = (
                errors.get("data") if "data" in errors or errors.keys() <= {"object"} else [errors]
            )
        for position, error in enumerate(errors or []):
            if isinstance(error, str):
                rows.add((b["id"], position, None, error, None, None))
            else:
                code, line = error.get("code"), error.get("line")
                rows.add(
                    (
                        b["id"],
                        position,
                        None if code is None else str(code),
                        error.get("message"),
                        error.get("param"),
                        line,
                    )
                )
    return rows


def actual(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def assert_warehouse_equals(db_path: Any, api: list[dict]) -> None:
    """Every table equals what the API returned: row for row, column for column, no id twice."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        batches = actual(con, f"select {', '.join(SCALARS + TIMES)} from siliconflow.batches")
        assert len(batches) == len(api), "row count of batches"
        assert len({row[0] for row in batches}) == len(batches), "an id appears twice"
        assert set(batches) == expected_batches(api)
        counts = actual(
            con, "select batch_id, total, completed, failed from siliconflow.batch_request_counts"
        )
        assert len(counts) == len(set(counts))
        assert set(counts) == expected_request_counts(api)
        metadata = actual(con, "select batch_id, key, value from siliconflow.batch_metadata")
        assert len(metadata) == len(set(metadata))
        assert set(metadata) == expected_metadata(api)
        errors = actual(
            con,
            "select batch_id, position, code, message, param, line from siliconflow.batch_errors",
        )
        assert len(errors) == len(set(errors))
        assert set(errors) == expected_errors(api)


def latest_history(db_path: Any) -> dict[str, tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute(
            """
            select batch_id, status, requests_total, requests_completed, requests_failed
            from siliconflow.batch_status_history
            qualify row_number() over (partition by batch_id order by observed_at desc) = 1
            """
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def count_of(batch: dict, key: str) -> Any:
    """One of a batch's request counts; None where the API sent no counts or not this one."""
    return (batch.get("request_counts") or {}).get(key)


def expected_latest_history(api: list[dict]) -> dict[str, tuple]:
    return {
        b["id"]: (b["status"], *(count_of(b, key) for key in ("total", "completed", "failed")))
        for b in api
    }


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def served(sim: Any) -> list[dict]:
    """Every batch the simulator lists now, as it serves it (its settings applied), once per id:
    what a warehouse must hold after a complete sync. Needs no one-shot fault pending."""
    import requests

    assert sim.faults.pending() == 0, "a queued fault would be used up by this reference read"
    batches: dict[str, dict] = {}
    params: dict[str, Any] = {"limit": 100}
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    with requests.Session() as session:
        while True:
            page = session.get(f"{sim.base_url}/batches", params=params, headers=headers).json()
            for batch in page["data"]:
                batches.setdefault(batch["id"], batch)
            if not page["has_more"]:
                return list(batches.values())
            params["after"] = page.get("last_id") or page["data"][-1]["id"]


def _dig(value: Any, *path: Any) -> Any:
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def request_row(batch_id: str, kind: str, line: int, raw: bytes) -> tuple | None:
    """The `batch_requests` row SPEC asks for one line of a result file; None for a line that is
    not a JSON object (a bad line)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    body = _dig(obj, "response", "body")
    usage = _dig(body, "usage")
    return (
        batch_id,
        kind,
        line,
        _text(obj.get("custom_id")),
        _whole(_dig(obj, "response", "status_code")),
        _text(_dig(obj, "response", "request_id")),
        _text(_dig(body, "model")),
        _text(_dig(body, "choices", 0, "finish_reason")),
        _whole(_dig(usage, "prompt_tokens")),
        _whole(_dig(usage, "completion_tokens")),
        _whole(_dig(usage, "total_tokens")),
        _whole(_dig(usage, "completion_tokens_details", "reasoning_tokens")),
        _whole(_dig(usage, "prompt_tokens_details", "cached_tokens")),
        _text(_first(_dig(obj, "error", "code"), _dig(body, "error", "code"))),
        _text(
            _first(
                _dig(obj, "error", "message"),
                _dig(body, "error", "message"),
                _plain(obj.get("error")),
                _plain(_dig(body, "error")),
            )
        ),
    )


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _plain(error: Any) -> str | None:
    """An error sent as a bare string: its text, unless blank."""
    return error if isinstance(error, str) and error.strip(" \t\r\n") else None


def expected_requests(files: Any) -> tuple[set[tuple], dict[tuple[str, str], int]]:
    """Rows of every served (not gone) result file, and each file's count of bad lines."""
    rows: set[tuple] = set()
    bad: dict[tuple[str, str], int] = {}
    for file in files:
        if file.gone:
            continue
        key = (file.batch_id, file.kind)
        bad[key] = 0
        for line, raw in enumerate(b"".join(file.lines()).split(b"\n"), 1):
            if not raw.strip():
                continue
            row = request_row(file.batch_id, file.kind, line, raw)
            if row is None:
                bad[key] += 1
            else:
                rows.add(row)
    return rows, bad


# The result-file tables as a sync creates them, for tests that build a warehouse by hand.
RESULT_TABLES_DDL = """
create table siliconflow.batch_files (
    batch_id varchar, kind varchar, file_id varchar, state varchar, bytes bigint, lines bigint,
    bad_lines bigint, attempts bigint, loaded_at timestamptz, message varchar
);
create table siliconflow.batch_requests (
    batch_id varchar, kind varchar, line bigint, custom_id varchar, status_code bigint,
    request_id varchar, model varchar, finish_reason varchar, prompt_tokens bigint,
    completion_tokens bigint, total_tokens bigint, reasoning_tokens bigint,
    cached_tokens bigint, error_code varchar, error_message varchar
);
"""
