"""Dedup and merge semantics on a local SparkSession, checked against a plain-Python model."""

from __future__ import annotations

import functools
import itertools
import random
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import types as T

from cdc_pipeline.transform import (
    DedupStrategy,
    full_load_tombstones,
    incremental_rows,
    latest_per_key,
    merge_into_snapshot,
    watermark_micros,
)
from cdc_pipeline.watermark import Watermark, WatermarkKind

pytestmark = pytest.mark.spark

SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("value", T.StringType()),
        T.StructField("seq", T.LongType()),
        T.StructField("op", T.StringType()),
        T.StructField("updated_at", T.TimestampType()),
    ]
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def frame(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def merge(snapshot, batch, strategy=DedupStrategy.WINDOW, tombstones=None, small=False):
    return merge_with_tombstones(snapshot, batch, strategy, tombstones, small=small).snapshot


# The two ways a merge finds the newest version: among the changed keys only (joins), or by one
# aggregation over every row in one partition (small tables). Both must give the same result.
MERGE_PATHS = pytest.mark.parametrize("small", [False, True], ids=["changed-keys", "small-one-partition"])


def merged_by(small: bool):
    return functools.partial(merge_with_tombstones, small=small)


def merge_with_tombstones(
    snapshot, batch, strategy=DedupStrategy.WINDOW, tombstones=None, now=0, *, small=False
):
    return merge_into_snapshot(
        snapshot,
        batch,
        primary_key=["id"],
        ordering=["updated_at", "seq"],
        delete_column="op",
        delete_values=["D"],
        strategy=strategy,
        tombstones=tombstones,
        now_micros=now,
        tombstone_retention_micros=1_000,
        small=small,
    )


def as_set(df) -> set[tuple]:
    return {(row.id, row.value) for row in df.collect()}


@pytest.mark.parametrize("strategy", list(DedupStrategy))
def test_latest_version_wins_by_watermark_then_sequence(spark, strategy) -> None:
    batch = frame(
        spark,
        [
            (1, "old", 9, "U", at(1)),
            (1, "new", 1, "U", at(2)),
            (2, "seq-1", 1, "U", at(5)),
            (2, "seq-2", 2, "U", at(5)),
        ],
    )

    assert as_set(merge(None, batch, strategy)) == {(1, "new"), (2, "seq-2")}


@MERGE_PATHS
@pytest.mark.parametrize("strategy", list(DedupStrategy))
def test_late_older_version_never_overwrites_newer_snapshot_row(spark, strategy, small) -> None:
    snapshot = frame(spark, [(1, "newer", 1, "U", at(10))])
    late = frame(spark, [(1, "older", 1, "U", at(5)), (2, "fresh", 1, "I", at(5))])

    assert as_set(merge(snapshot, late, strategy, small=small)) == {(1, "newer"), (2, "fresh")}


@MERGE_PATHS
@pytest.mark.parametrize("strategy", list(DedupStrategy))
def test_delete_marker_removes_the_key_and_a_newer_insert_brings_it_back(spark, strategy, small) -> None:
    snapshot = frame(spark, [(1, "a", 1, "I", at(1)), (2, "b", 1, "I", at(1))])
    batch = frame(spark, [(1, "a", 2, "D", at(2)), (2, "b", 2, "D", at(2)), (2, "b2", 3, "I", at(3))])

    assert as_set(merge(snapshot, batch, strategy, small=small)) == {(2, "b2")}


@pytest.mark.parametrize("strategy", list(DedupStrategy))
def test_null_watermark_sorts_below_every_stamped_version(spark, strategy) -> None:
    batch = frame(
        spark, [(1, "unstamped", 99, "U", None), (1, "stamped", 1, "U", at(0)), (2, "only", 1, "I", None)]
    )

    assert as_set(merge(None, batch, strategy)) == {(1, "stamped"), (2, "only")}


@MERGE_PATHS
@pytest.mark.parametrize("strategy", list(DedupStrategy))
def test_batch_copy_wins_a_full_tie_with_the_snapshot(spark, strategy, small) -> None:
    # Same (watermark, sequence) on both sides happens when the boundary instant is re-read.
    snapshot = frame(spark, [(1, "snapshot", 1, "U", at(1))])
    batch = frame(spark, [(1, "batch", 1, "U", at(1))])

    assert as_set(merge(snapshot, batch, strategy, small=small)) == {(1, "batch")}


def test_remaining_ties_resolve_the_same_whatever_the_input_order(spark) -> None:
    rows = [(1, f"candidate-{n}", 1, "U", at(1)) for n in range(3)]
    winners = set()
    for permutation in itertools.permutations(rows):
        for strategy in DedupStrategy:
            df = frame(spark, list(permutation)).repartition(3)
            winners |= as_set(latest_per_key(df, ["id"], ["updated_at", "seq"], strategy))
    assert len(winners) == 1


def _history(seed: int, keys: int, batches: int) -> tuple[list[list[tuple]], set[tuple]]:
    """Random versions per key spread over batches (in any order, duplicated at times) and the
    expected final state from a plain-Python model. A delete is a key's last version and may arrive
    before older versions of its key: its tombstone keeps them out."""
    rnd = random.Random(seed)
    arrivals: list[list[tuple]] = [[] for _ in range(batches)]
    expected = set()
    for key in range(keys):
        versions = []
        stamp = 0.0
        for n in range(rnd.randint(1, 5)):
            stamp += rnd.choice([0, 0.000001, 1.5])
            versions.append((key, f"k{key}v{n}", n, "U", at(stamp)))
        deleted = rnd.random() < 0.25
        if deleted:
            versions.append((key, f"k{key}del", len(versions), "D", at(stamp + 1)))
        slots = [rnd.randrange(batches) for _ in versions]
        for version, slot in zip(versions, slots, strict=True):
            arrivals[slot].append(version)
            if rnd.random() < 0.2:
                arrivals[slot].append(version)  # the same change landing twice
        if not deleted:
            expected.add((key, versions[-1][1]))
    for batch in arrivals:
        rnd.shuffle(batch)
    return arrivals, expected


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    batches=st.integers(1, 4),
    strategy=st.sampled_from(list(DedupStrategy)),
    small=st.booleans(),
)
def test_merging_batch_after_batch_equals_the_model_of_all_versions(
    spark, seed, batches, strategy, small
) -> None:
    arrivals, expected = _history(seed, keys=20, batches=batches)

    snapshot = tombstones = None
    for batch in arrivals:
        merged = merge_with_tombstones(snapshot, frame(spark, batch), strategy, tombstones, small=small)
        snapshot, tombstones = merged.snapshot.localCheckpoint(), merged.tombstones.localCheckpoint()

    assert snapshot is not None
    assert as_set(snapshot) == expected


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    versions=st.lists(
        st.tuples(
            st.integers(0, 6),  # key
            st.sampled_from(["a", "b", "c"]),  # value
            st.one_of(st.none(), st.integers(0, 2)),  # seq: ties and nulls on purpose
            st.sampled_from(["U", "U", "D", None]),  # op
            st.one_of(st.none(), st.integers(0, 2)),  # stamp
        ),
        max_size=40,
    ),
    strategy=st.sampled_from(list(DedupStrategy)),
)
def test_full_load_tombstones_from_deletes_and_written_keys_equal_the_merges_own(
    spark, versions, strategy
) -> None:
    batch = frame(spark, [(k, v, q, op, None if t is None else at(t)) for k, v, q, op, t in versions])
    merged = merge_with_tombstones(None, batch, strategy, now=7)

    found = full_load_tombstones(
        batch,
        merged.snapshot.localCheckpoint(),
        primary_key=["id"],
        ordering=["updated_at", "seq"],
        delete_column="op",
        delete_values=["D"],
        now_micros=7,
    )

    assert found.schema == merged.tombstones.schema
    assert sorted(found.collect()) == sorted(merged.tombstones.collect())


@MERGE_PATHS
def test_a_delete_remembered_as_a_tombstone_keeps_a_later_arriving_older_update_out(spark, small) -> None:
    deleted = merged_by(small)(None, frame(spark, [(1, "a", 1, "U", at(0)), (1, "gone", 2, "D", at(2))]))
    assert as_set(deleted.snapshot) == set()

    late = merged_by(small)(
        deleted.snapshot, frame(spark, [(1, "late", 1, "U", at(1))]), tombstones=deleted.tombstones
    )

    assert as_set(late.snapshot) == set()
    assert [row.id for row in late.tombstones.collect()] == [1]
    reinserted = merged_by(small)(
        late.snapshot, frame(spark, [(1, "back", 3, "I", at(3))]), tombstones=late.tombstones
    )
    assert as_set(reinserted.snapshot) == {(1, "back")}
    assert reinserted.tombstones.count() == 0


@MERGE_PATHS
def test_tombstones_past_their_retention_are_dropped_and_a_late_update_then_returns(spark, small) -> None:
    deleted = merged_by(small)(None, frame(spark, [(1, "gone", 2, "D", at(2))]), now=0)
    expired = merged_by(small)(
        deleted.snapshot,
        frame(spark, [(2, "other", 1, "U", at(5))]),
        tombstones=deleted.tombstones,
        now=5_000,
    )
    assert expired.tombstones.count() == 0

    late = merged_by(small)(
        expired.snapshot, frame(spark, [(1, "late", 1, "U", at(1))]), tombstones=expired.tombstones
    )

    assert as_set(late.snapshot) == {(1, "late"), (2, "other")}


@pytest.mark.parametrize(
    ("kind", "spark_type", "values"),
    [
        (WatermarkKind.TIMESTAMP, T.TimestampType(), [at(0), at(0.000001), at(0.000002)]),
        (
            WatermarkKind.TIMESTAMP_NTZ,
            T.TimestampNTZType(),
            [datetime(2026, 1, 1, 0, 0, 0, n) for n in (0, 1, 2)],
        ),
        (WatermarkKind.DATE, T.DateType(), [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)]),
    ],
)
def test_incremental_bound_is_exact_to_the_microsecond_for_each_kind(spark, kind, spark_type, values) -> None:
    df = spark.createDataFrame([(v,) for v in values], T.StructType([T.StructField("w", spark_type)]))
    # Spark, not Python, turns the values into micros: collected datetimes depend on the local zone.
    micros = [r["m"] for r in df.select(watermark_micros("w", kind).alias("m")).orderBy("m").collect()]
    bound = Watermark.from_micros(micros[1], kind)

    def read(inclusive: bool) -> list[int]:
        rows = incremental_rows(df, "w", kind, bound, inclusive=inclusive)
        return sorted(r["m"] for r in rows.select(watermark_micros("w", kind).alias("m")).collect())

    assert read(inclusive=True) == micros[1:]
    assert read(inclusive=False) == micros[2:]


def test_watermark_micros_of_a_timestamp_matches_python_exactly(spark) -> None:
    instant = datetime(2031, 7, 4, 23, 59, 59, 999_999, tzinfo=UTC)
    df = spark.createDataFrame([(instant,)], T.StructType([T.StructField("w", T.TimestampType())]))

    micros = df.select(watermark_micros("w", WatermarkKind.TIMESTAMP).alias("m")).first()["m"]

    assert Watermark.from_micros(micros, WatermarkKind.TIMESTAMP).iso() == "2031-07-04T23:59:59.999999Z"


def test_a_null_watermark_is_never_an_incremental_row(spark) -> None:
    df = spark.createDataFrame([(None,), (at(5),)], T.StructType([T.StructField("w", T.TimestampType())]))
    bound = Watermark.parse("2026-01-01T00:00:00Z")

    read = incremental_rows(df, "w", WatermarkKind.TIMESTAMP, bound, inclusive=True)

    assert read.count() == 1


@pytest.mark.parametrize("strategy", list(DedupStrategy))
def test_rows_with_map_columns_are_deduplicated_too(spark, strategy) -> None:
    schema = T.StructType(
        [
            T.StructField("id", T.LongType()),
            T.StructField("tags", T.MapType(T.StringType(), T.StringType())),
            T.StructField("updated_at", T.TimestampType()),
        ]
    )
    df = spark.createDataFrame(
        [(1, {"v": "old"}, at(1)), (1, {"v": "new"}, at(2)), (1, {"v": "tie"}, at(2))], schema
    )

    winners = latest_per_key(df, ["id"], ["updated_at"], strategy).collect()
    again = latest_per_key(df.repartition(2), ["id"], ["updated_at"], strategy).collect()

    assert len(winners) == 1
    assert winners[0].tags["v"] in {"new", "tie"}
    assert again[0].tags == winners[0].tags


@MERGE_PATHS
def test_an_expired_tombstone_no_longer_keeps_a_late_update_of_its_key_out(spark, small) -> None:
    deleted = merged_by(small)(None, frame(spark, [(1, "gone", 2, "D", at(2))]), now=0)

    late = merged_by(small)(
        deleted.snapshot, frame(spark, [(1, "late", 1, "U", at(1))]), tombstones=deleted.tombstones, now=5_000
    )

    assert as_set(late.snapshot) == {(1, "late")}
    assert late.tombstones.count() == 0
