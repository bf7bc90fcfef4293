"""Pages of API batches into Arrow tables, page by page, then one chunk per warehouse table."""

import json
import threading
import time
from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest

from pipelines.siliconflow import paging
from pipelines.siliconflow.prefetch import prefetched
from pipelines.siliconflow.rows import ExtraColumns, TableChunk
from pipelines.simulator import World


def batch(batch_id: str, **fields: object) -> dict:
    return {"id": batch_id, "status": "completed", "created_at": 1_764_000_000, **fields}


def test_a_chunk_of_pages_is_one_table_per_warehouse_table():
    chunk = TableChunk(ExtraColumns())
    chunk.add(
        [
            batch(
                "b1", request_counts={"total": 3, "completed": 2, "failed": 1}, metadata={"k": "v"}
            ),
            batch("b2", errors=["bad line"]),
        ]
    )
    chunk.add([batch("b3", completed_at=1_764_000_060)])

    tables = chunk.take()

    assert tables["batches"].column("id").to_pylist() == ["b1", "b2", "b3"]
    assert tables["batches"].column("completed_at").to_pylist() == [
        None,
        None,
        datetime(2025, 11, 24, 16, 1, tzinfo=UTC),
    ]
    assert tables["batch_request_counts"].to_pylist() == [
        {"batch_id": "b1", "total": 3, "completed": 2, "failed": 1}
    ]
    assert tables["batch_metadata"].to_pylist() == [{"batch_id": "b1", "key": "k", "value": "v"}]
    assert tables["batch_errors"].column("message").to_pylist() == ["bad line"]
    assert chunk.rows == 0 and chunk.take()["batches"].num_rows == 0


@pytest.mark.parametrize(
    ("errors", "messages"),
    [
        (None, []),
        ([], []),
        ({}, []),
        ({"object": "list"}, []),
        ({"object": "list", "data": None}, []),
        ({"object": "list", "data": [{"code": "c", "message": "wrapped"}]}, ["wrapped"]),
        (["one", "two"], ["one", "two"]),
        ("plain", ["plain"]),
        ({"code": "c", "message": "bare"}, ["bare"]),
    ],
)
def test_errors_of_every_shape_give_one_row_per_error(errors, messages):
    chunk = TableChunk(ExtraColumns())
    chunk.add([batch("b1", errors=errors)])

    assert chunk.take()["batch_errors"].column("message").to_pylist() == messages


def test_a_new_field_missing_from_some_pages_is_null_there():
    chunk = TableChunk(ExtraColumns())
    chunk.add([batch("b1", model="qwen", usage={"total_tokens": 7})])
    chunk.add([batch("b2")])

    table = chunk.take()["batches"]

    assert table.column("model").to_pylist() == ["qwen", None]
    assert table.column("usage__total_tokens").to_pylist() == [7, None]


def test_a_new_field_that_is_a_number_on_one_page_and_text_on_another_is_kept_as_text():
    chunk = TableChunk(ExtraColumns())
    chunk.add([batch("b1", priority=3)])
    chunk.add([batch("b2", priority="high")])

    table = chunk.take()["batches"]

    assert table.column("priority").to_pylist() == ["3", "high"]


def test_an_empty_chunk_still_has_every_column():
    tables = TableChunk(ExtraColumns()).take()

    assert "cancelled_at" in tables["batches"].column_names
    assert str(tables["batches"].schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert tables["batch_errors"].column_names[:2] == ["batch_id", "position"]
    assert all(table.num_rows == 0 for table in tables.values())


@pytest.mark.parametrize(
    ("values", "wanted_type", "wanted"),
    [
        ([1, None, 2.5], "double", [1.0, None, 2.5]),
        ([2**53 + 1, 2.5], "string", [str(2**53 + 1), "2.5"]),  # a double would round it
        ([2**63, 1], "string", [str(2**63), "1"]),  # beyond BIGINT
        ([True, 1], "string", ["true", "1"]),
        ([False, None], "bool", [False, None]),
        ([-(2**63), 7], "int64", [-(2**63), 7]),
        (["a", 3, 0.5, None], "string", ["a", "3", "0.5", None]),
    ],
    ids=["int-float", "big-int-float", "beyond-bigint", "bool-int", "bool", "bigint", "mixed"],
)
def test_an_added_field_takes_the_narrowest_type_that_changes_no_value(values, wanted_type, wanted):
    pages = [[batch(f"b{n}", priority=value)] for n, value in enumerate(values)]

    column = chunk_of(pages)["batches"].column("priority")

    assert str(column.type) == wanted_type
    assert column.to_pylist() == wanted


@pytest.mark.parametrize(
    ("counts", "row"),
    [
        (None, None),
        ({}, None),
        ({"total": None, "completed": None, "failed": None}, None),
        ({"cancelled": 1}, None),
        ({"total": 2, "cancelled": 1}, (2, None, None)),
        ({"total": 0, "completed": 0, "failed": 0}, (0, 0, 0)),
        ({"total": "12", "completed": None}, (12, None, None)),
    ],
)
def test_a_batch_has_a_request_counts_row_when_they_hold_a_count(counts, row):
    rows = chunk_of([[batch("b", request_counts=counts)]])["batch_request_counts"].to_pylist()

    names = ("total", "completed", "failed")
    expected = [] if row is None else [dict(zip(names, row, strict=True))]
    assert [{name: r[name] for name in names} for r in rows] == expected


def odd_shapes() -> list[dict]:
    return [
        batch("o1", request_counts={}, metadata={"n": 3, "obj": {"a": [1]}, "none": None}),
        batch("o2", request_counts=None, errors={"data": [{"code": "x", "line": 4}]}),
        batch("o3", errors=[{"message": "m", "param": None}, "plain"], metadata={}),
        batch("o4", request_counts={"total": 2, "cancelled": 1}, priority=2**60),
        batch("o5", usage={"total_tokens": 9, "details": {"cached": 1}}, tags=["a", "b"]),
        batch("o7", errors={"code": "x", "message": "sent bare"}),
    ]


def chunk_of(pages: list[list[dict]]) -> dict:
    chunk = TableChunk(ExtraColumns())
    for page in pages:
        chunk.add(page)
    return chunk.take()


def test_the_json_reader_and_the_conversion_value_by_value_agree_on_every_variant():
    # ~5 MB of lines: more than one block of the reader
    listed = json.loads(json.dumps(World(batches=9000, seed=7).visible()))
    pages = [listed[start : start + 100] for start in range(0, len(listed), 100)]
    pages.append(odd_shapes())
    # A count the JSON reader refuses sends the whole chunk value by value.
    refused = batch("o6", request_counts={"total": "12", "completed": 5})

    read = chunk_of(pages)
    converted = chunk_of([*pages, [refused]])

    counts = converted["batch_request_counts"].to_pylist()
    assert {"batch_id": "o6", "total": 12, "completed": 5, "failed": None} in counts
    for name, table in converted.items():
        kept = table.filter(pc.invert(pc.equal(table.column(0), "o6")))
        columns = sorted(read[name].column_names)  # dlt stores columns by name
        assert sorted(kept.column_names) == columns, name
        assert kept.select(columns).schema == read[name].select(columns).schema, name
        assert kept.select(columns).to_pylist() == read[name].select(columns).to_pylist(), name
    assert read["batches"].num_rows == len(listed) + len(odd_shapes())
    assert read["batches"].column("id").num_chunks > 1
    assert {"model", "usage__total_tokens", "priority", "tags"} <= set(read["batches"].column_names)


def test_long_values_of_added_fields_are_kept_whole():
    pages = [
        [batch(f"b{page}-{n}", note="x" * 3_000 + str(n)) for n in range(100)] for page in range(50)
    ]
    pages.append([batch("huge", note="y" * (5 << 20))])  # one line longer than a reader block

    table = chunk_of(pages)["batches"]

    notes = dict(zip(table.column("id").to_pylist(), table.column("note").to_pylist(), strict=True))
    assert len(notes) == 5_001
    assert notes["b49-99"] == "x" * 3_000 + "99" and notes["huge"] == "y" * (5 << 20)


def test_prefetched_yields_everything_in_order():
    assert list(prefetched((n for n in range(100)), depth=3)) == list(range(100))


def test_prefetched_raises_the_producers_error_after_what_came_before():
    def items():
        yield 1
        yield 2
        raise ValueError("page 3 was bad")

    received = []
    with pytest.raises(ValueError, match="page 3 was bad"):
        for item in prefetched(items(), depth=5):
            received.append(item)
    assert received == [1, 2]


def test_a_caller_that_stops_early_stops_the_producer():
    produced = []
    finished = threading.Event()

    def items():
        try:
            for number in range(1_000):
                produced.append(number)
                yield number
        finally:
            finished.set()

    for item in prefetched(items(), depth=2):
        if item == 5:
            break

    assert finished.wait(timeout=5)
    time.sleep(0.3)  # had it not stopped, it would go on producing meanwhile
    assert len(produced) <= 5 + 1 + 2 + 1


def test_the_ids_a_sync_loaded_are_known_across_merges(monkeypatch):
    monkeypatch.setattr(paging, "MERGE_AFTER", 7)
    seen = paging.IdSet()
    pages = [[hash(f"b{page}-{row}") for row in range(5)] for page in range(40)]
    for keys in pages:
        assert seen.holds(keys) == [False] * 5
        seen.add(set(keys))

    assert len(seen.merged) + len(seen.recent) == 200
    assert len(seen.merged) > 100 and seen.recent, "both parts must be asked"
    asked = [keys[0] for keys in pages] + [hash("other"), pages[-1][-1]]
    assert seen.holds(asked) == [True] * 40 + [False, True]


def test_a_batch_read_twice_in_a_sync_is_loaded_from_its_first_read_alone():
    fingerprints = paging.Fingerprints()
    first = fingerprints.changed([batch("a", metadata={"read": "1"}), batch("b"), batch("a")])
    again = fingerprints.changed([batch("c"), batch("a", metadata={"read": "2"})])

    assert [(b["id"], b.get("metadata")) for b in first] == [("a", {"read": "1"}), ("b", None)]
    assert [b["id"] for b in again] == ["c"]
