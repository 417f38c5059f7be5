"""Packs: which tables share a Glue run, the pack file, and the DPU-minute estimate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_pipeline.errors import ConfigurationError, NewerFormatError
from cdc_pipeline.packs import (
    BILLED_MINIMUM_S,
    MIB,
    PACK_MAX_TABLES,
    RUN_START_S,
    Pack,
    estimate_dpu_minutes,
    glue_dpu,
    pack,
    work_bytes,
)
from cdc_pipeline.plan import WorkItem


def item(
    table: str, input_bytes: int | None, snapshot_bytes: int | None = None, *, incremental=False
) -> WorkItem:
    return WorkItem(
        run_id="r1",
        table=table,
        location=f"/raw/{table}",
        format="parquet",
        columns=[{"name": "id", "type": "bigint"}],
        partition_keys=[],
        mode="dedup",
        load_type="incremental" if incremental else "full",
        primary_key=["id"],
        watermark_column=None,
        sequence_column=None,
        delete_column=None,
        delete_values=[],
        lookback_micros=0,
        last_watermark=None,
        current_snapshot=f"/out/{table}/snapshots/r0" if incremental else None,
        output_location=f"/out/{table}/snapshots/r1",
        quarantine_location=f"/out/{table}/quarantine/r1",
        manifest_location=f"/state/runs/r1/manifests/{table}.json",
        input_bytes=input_bytes,
        snapshot_bytes=snapshot_bytes,
    )


def tables(runs: list[list[WorkItem]]) -> list[list[str]]:
    return [[i.table for i in run] for run in runs]


def test_an_incremental_run_weighs_its_new_files_and_the_snapshot_it_rewrites() -> None:
    assert work_bytes(item("a", 10)) == 10
    assert work_bytes(item("a", 10, 500, incremental=True)) == 510
    # A snapshot committed before sizes were recorded, or a source with no files to list: unknown.
    assert work_bytes(item("a", 10, None, incremental=True)) is None
    assert work_bytes(item("a", None)) is None


def test_small_tables_share_runs_up_to_the_pack_bytes_largest_first() -> None:
    items = [item("a", 40), item("b", 70), item("c", 30), item("d", 60), item("e", 5)]

    runs = pack(items, pack_bytes=100)

    # First fit, largest first: b(70)+c(30) | d(60)+a(40) | e(5); within a run, the plan's order.
    assert tables(runs) == [["b", "c"], ["a", "d"], ["e"]]


def test_tables_of_unknown_size_or_at_least_the_pack_bytes_run_alone() -> None:
    items = [item("big", 100), item("unknown", None), item("s1", 1), item("s2", 2)]

    assert tables(pack(items, pack_bytes=100)) == [["big"], ["unknown"], ["s1", "s2"]]


def test_packing_off_gives_every_table_its_own_run() -> None:
    items = [item(f"t{n}", 1) for n in range(5)]

    assert tables(pack(items, pack_bytes=0)) == [[f"t{n}"] for n in range(5)]


def test_a_pack_holds_at_most_the_table_limit() -> None:
    items = [item(f"t{n:04d}", 1) for n in range(2 * PACK_MAX_TABLES + 1)]

    runs = pack(items, pack_bytes=512 * MIB)

    assert [len(run) for run in runs] == [PACK_MAX_TABLES, PACK_MAX_TABLES, 1]


def test_negative_pack_bytes_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="pack bytes must be 0"):
        pack([item("a", 1)], pack_bytes=-1)


@given(
    sizes=st.lists(st.one_of(st.none(), st.integers(0, 300)), max_size=60),
    pack_bytes=st.integers(0, 400),
)
def test_every_table_is_in_exactly_one_run_and_no_pack_is_over_its_limits(sizes, pack_bytes) -> None:
    items = [item(f"t{n}", size) for n, size in enumerate(sizes)]

    runs = pack(items, pack_bytes)

    assert sorted(i.table for run in runs for i in run) == sorted(i.table for i in items)
    for run in runs:
        if len(run) > 1:
            assert sum(work_bytes(i) or 0 for i in run) <= pack_bytes
            assert len(run) <= PACK_MAX_TABLES
            assert all(work_bytes(i) is not None and work_bytes(i) < pack_bytes for i in run)


def test_a_pack_file_round_trips_and_a_newer_format_is_refused_as_such() -> None:
    packed = Pack("r1", "pack-0001", [item("a", 1), item("b", 2)])

    data = packed.to_json()

    assert Pack.is_pack(data)
    assert not Pack.is_pack(item("a", 1).to_json())
    assert Pack.from_json(data) == packed
    with pytest.raises(
        NewerFormatError, match=r"pack 'pack-0001' was written by a newer cdc-pipeline \(format 2; this one"
    ):
        Pack.from_json({**data, "format_version": 2})
    with pytest.raises(
        ConfigurationError, match="pack 'pack-0001' has format 0; this cdc-pipeline reads format 1"
    ):
        Pack.from_json({**data, "format_version": 0})


def test_the_estimate_bills_each_run_at_least_a_minute_and_packs_share_their_start() -> None:
    seconds = {"a": 2.0, "b": 3.0, "c": 200.0}

    estimate = estimate_dpu_minutes([["a", "b"], ["c"]], seconds, dpu_per_run=2.0)

    packed_run = max(BILLED_MINIMUM_S, RUN_START_S + 5.0)
    big_run = RUN_START_S + 200.0
    assert (estimate.runs, estimate.runs_unpacked) == (2, 3)
    assert estimate.dpu_minutes == round((packed_run + big_run) / 60 * 2.0, 1)
    assert estimate.dpu_minutes_unpacked == round((2 * BILLED_MINIMUM_S + big_run) / 60 * 2.0, 1)


def test_a_thousand_small_tables_with_five_percent_changed_cost_a_few_dpu_minutes_packed() -> None:
    changed = [f"t{n}" for n in range(50)]
    runs = tables(pack([item(t, 1 * MIB, 4 * MIB, incremental=True) for t in changed], pack_bytes=512 * MIB))

    estimate = estimate_dpu_minutes(runs, dict.fromkeys(changed, 1.5), dpu_per_run=2.0)

    assert estimate.runs == 1
    assert estimate.dpu_minutes <= 10
    assert estimate.dpu_minutes_unpacked == 100.0  # 50 runs x the 1-minute minimum x 2 DPU


def test_glue_dpu_comes_from_the_worker_type_and_count() -> None:
    assert glue_dpu("G.1X", 2) == 2.0
    assert glue_dpu("G.2X", 10) == 20.0
    with pytest.raises(ConfigurationError, match=r"worker type 'G\.3X' is not one of"):
        glue_dpu("G.3X", 2)
