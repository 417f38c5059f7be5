"""commit_run: publish a run's successful tables in one state write, then prune old snapshots."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdc_pipeline.commit import CommitReport, TableOutcome, commit_run
from cdc_pipeline.errors import CommitConflictError, ConfigurationError, StateCorruptError
from cdc_pipeline.manifest import SUCCEEDED, Manifest
from cdc_pipeline.plan import Layout, Plan, WorkItem
from cdc_pipeline.state import HISTORY_DIR, LocalStateStore, StateDocument, TableState
from cdc_pipeline.storage import LocalStorage

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
COMMITTED_AT = NOW.isoformat(timespec="seconds")


@dataclass(frozen=True)
class Env:
    root: Path
    layout: Layout
    store: LocalStateStore
    storage: LocalStorage

    def state(self) -> tuple[StateDocument, str | None]:
        return self.store.read()

    def state_bytes(self) -> bytes:
        return self.store.path.read_bytes()

    def revisions_in_history(self) -> int:
        folder = self.store.directory / HISTORY_DIR
        return len(list(folder.iterdir())) if folder.exists() else 0

    def snapshot(self, table: str, run_id: str) -> str:
        return self.layout.snapshot(table, run_id)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    state_dir = tmp_path / "state"
    return Env(
        root=tmp_path,
        layout=Layout(output_path=str(tmp_path / "output"), cdc_path=str(state_dir)),
        store=LocalStateStore(state_dir, lock_timeout_s=5),
        storage=LocalStorage(),
    )


def work_item(env: Env, table: str, run_id: str, tracker: TableState | None = None) -> WorkItem:
    """The work item the planner would make for ``table`` given its committed ``tracker``."""
    incremental = tracker is not None
    return WorkItem(
        run_id=run_id,
        table=table,
        location=str(env.root / "source" / table),
        format="parquet",
        columns=[{"name": "id", "type": "bigint"}, {"name": "updated_at", "type": "timestamp"}],
        partition_keys=[],
        mode="dedup",
        load_type="incremental" if incremental else "full",
        primary_key=["id"],
        watermark_column="updated_at",
        sequence_column=None,
        delete_column=None,
        delete_values=[],
        lookback_micros=0,
        last_watermark=tracker.watermark if tracker else None,
        current_snapshot=tracker.location if tracker else None,
        output_location=env.layout.snapshot(table, run_id),
        quarantine_location=env.layout.quarantine(table, run_id),
        manifest_location=env.layout.manifest(table, run_id),
    )


def make_plan(
    run_id: str,
    items: list[WorkItem],
    state_version: str | None,
    *,
    failed: dict[str, str] | None = None,
    skipped: dict[str, str] | None = None,
) -> Plan:
    return Plan(
        run_id=run_id,
        created_at=COMMITTED_AT,
        requested_load_type=None,
        state_version=state_version,
        items=items,
        failed=failed or {},
        skipped=skipped or {},
        warnings=[],
    )


def plan_from_state(env: Env, run_id: str, tables: list[str]) -> Plan:
    state, version = env.state()
    return make_plan(run_id, [work_item(env, t, run_id, state.tables.get(t)) for t in tables], version)


def write_snapshot(location: str) -> None:
    """A stand-in for a Spark output folder: all commit does with it is keep or delete it."""
    folder = Path(location)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-00000.parquet").write_bytes(b"not really parquet")


def ingest_succeeded(env: Env, item: WorkItem, watermark_after: str | None, **overrides: Any) -> Manifest:
    """What a successful ingest leaves: its snapshot folder and its manifest."""
    manifest = Manifest(
        run_id=item.run_id,
        table=item.table,
        status=SUCCEEDED,
        load_type=item.load_type,
        mode=item.mode,
        rows_read=12,
        rows_written=10,
        rows_set_aside=1,
        null_watermark_rows=0,
        watermark_column=item.watermark_column,
        watermark_before=item.last_watermark,
        watermark_after=watermark_after,
        schema=[{"name": "id", "type": "bigint"}, {"name": "updated_at", "type": "timestamp"}],
        output_location=item.output_location,
        quarantine_location=None,
        started_at=COMMITTED_AT,
        duration_s=1.5,
    )
    manifest = replace(manifest, **overrides)
    if manifest.output_location == item.output_location:
        write_snapshot(item.output_location)
    env.storage.write_json(item.manifest_location, manifest.to_json())
    return manifest


def run(env: Env, run_id: str, watermarks: dict[str, str], retained_snapshots: int = 2) -> CommitReport:
    """One whole run in which every table ingests successfully."""
    plan = plan_from_state(env, run_id, list(watermarks))
    for item in plan.items:
        ingest_succeeded(env, item, watermarks[item.table])
    return commit_run(plan, env.store, env.storage, retained_snapshots=retained_snapshots, now=NOW)


def outcome(report: CommitReport, table: str) -> TableOutcome:
    (found,) = [o for o in report.outcomes if o.table == table]
    return found


def exists(location: str) -> bool:
    return Path(location).exists()


# ----------------------------------------------------------------------------------------------
# Publishing
# ----------------------------------------------------------------------------------------------


def test_each_successful_run_commits_one_revision_holding_every_tables_new_tracker(env):
    first = run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-02T00:00:00"})

    state, _ = env.state()
    assert state.revision == first.revision == 1
    assert state.run_id == "run-1"
    assert env.revisions_in_history() == 1
    for table, watermark in {"customers": "2024-04-01T00:00:00", "orders": "2024-04-02T00:00:00"}.items():
        assert state.tables[table] == TableState(
            watermark=watermark,
            location=env.snapshot(table, "run-1"),
            rows=10,
            run_id="run-1",
            committed_at=COMMITTED_AT,
            load_type="full",
            mode="dedup",
            watermark_column="updated_at",
            previous_locations=(),
        )

    second = run(env, "run-2", {"customers": "2024-04-03T00:00:00", "orders": "2024-04-04T00:00:00"})

    state, _ = env.state()
    assert state.revision == second.revision == 2
    assert env.revisions_in_history() == 2
    assert state.tables["orders"].location == env.snapshot("orders", "run-2")
    assert state.tables["orders"].watermark == "2024-04-04T00:00:00"
    assert state.tables["orders"].run_id == "run-2"
    assert state.tables["orders"].previous_locations == (env.snapshot("orders", "run-1"),)
    assert [o.table for o in second.outcomes] == ["customers", "orders"]
    assert second.failed == []
    orders = outcome(second, "orders")
    assert orders.status == "succeeded"
    assert (orders.watermark_before, orders.watermark_after) == ("2024-04-02T00:00:00", "2024-04-04T00:00:00")
    assert (orders.rows_read, orders.rows_written, orders.rows_set_aside) == (12, 10, 1)
    assert orders.location == env.snapshot("orders", "run-2")
    assert orders.load_type == "incremental"
    assert outcome(first, "orders").watermark_before is None


@pytest.mark.parametrize("how", ["reported-by-the-runner", "no-manifest"])
def test_a_table_whose_ingest_failed_keeps_its_tracker_while_the_others_commit(env, how):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-02T00:00:00"})
    before, _ = env.state()
    plan = plan_from_state(env, "run-2", ["customers", "orders"])
    customers, orders = plan.items
    ingest_succeeded(env, customers, "2024-04-03T00:00:00")
    # The failed ingest got as far as writing part of its output, but no manifest.
    write_snapshot(orders.output_location)
    failures = {"orders": "Spark job aborted: executor lost"} if how == "reported-by-the-runner" else {}

    report = commit_run(plan, env.store, env.storage, failures=failures, now=NOW)

    after, _ = env.state()
    assert after.revision == 2
    assert after.tables["orders"] == before.tables["orders"]
    assert after.tables["customers"].run_id == "run-2"
    assert after.tables["customers"].watermark == "2024-04-03T00:00:00"
    assert not exists(orders.output_location)
    assert orders.output_location in report.deleted_locations
    assert exists(before.tables["orders"].location)
    failed = outcome(report, "orders")
    assert failed.status == "failed"
    assert report.failed == [failed]
    assert failed.watermark_before == failed.watermark_after == "2024-04-02T00:00:00"
    if how == "reported-by-the-runner":
        assert failed.message == "Spark job aborted: executor lost"
    else:
        assert orders.manifest_location in (failed.message or "")
    assert outcome(report, "customers").status == "succeeded"


@pytest.mark.parametrize(
    "overrides",
    [{"run_id": "run-other"}, {"table": "customers"}, {"status": "failed"}],
    ids=["another-run", "another-table", "status-failed"],
)
def test_a_manifest_that_is_not_a_success_of_this_run_and_table_is_not_published(env, overrides):
    run(env, "run-1", {"orders": "2024-04-02T00:00:00"})
    state_before = env.state_bytes()
    plan = plan_from_state(env, "run-2", ["orders"])
    ingest_succeeded(env, plan.items[0], "2099-01-01T00:00:00", **overrides)

    report = commit_run(plan, env.store, env.storage, now=NOW)

    assert env.state_bytes() == state_before
    assert report.revision == 1
    failed = outcome(report, "orders")
    assert failed.status == "failed"
    assert plan.items[0].manifest_location in (failed.message or "")


def test_a_table_listed_as_failed_is_not_published_though_its_success_manifest_exists(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-02T00:00:00"})
    before, _ = env.state()
    plan = plan_from_state(env, "run-2", ["customers", "orders"])
    customers, orders = plan.items
    for item in plan.items:
        ingest_succeeded(env, item, "2024-04-03T00:00:00")

    # Its own Glue run failed after the ingest had written the manifest (a timeout, a crash at exit):
    # the table's own failure wins over its manifest, and its files are read again next run.
    commit_run(plan, env.store, env.storage, failures={"orders": "its Glue run failed"}, now=NOW)

    after, _ = env.state()
    assert after.tables["orders"] == before.tables["orders"]
    assert not exists(orders.output_location)
    assert exists(before.tables["orders"].location)
    assert after.tables["customers"].location == customers.output_location


def test_a_success_manifest_is_published_though_the_glue_run_of_its_pack_failed(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-02T00:00:00"})
    plan = plan_from_state(env, "run-2", ["customers", "orders"])
    for item in plan.items:
        ingest_succeeded(env, item, "2024-04-03T00:00:00")

    # A pack's run fails when any of its tables failed; the tables it finished are published.
    pack_failed = dict.fromkeys(["customers", "orders"], "1 of the 2 tables of this run failed")
    commit_run(plan, env.store, env.storage, run_failures=pack_failed, now=NOW)

    after, _ = env.state()
    for item in plan.items:
        assert after.tables[item.table].location == item.output_location
        assert after.tables[item.table].watermark == "2024-04-03T00:00:00"
        assert exists(item.output_location)


def test_an_overlapping_runs_manifest_is_not_published_and_its_output_is_left_alone(env):
    run(env, "run-1", {"orders": "2024-04-02T00:00:00"})
    plan = plan_from_state(env, "run-2", ["orders"])
    # Another run's manifest ended up where this run looks (a copied or misrouted file); the
    # snapshot it names belongs to that run, which may still commit it.
    foreign_output = env.snapshot("orders", "run-other")
    write_snapshot(foreign_output)
    ingest_succeeded(
        env, plan.items[0], "2099-01-01T00:00:00", run_id="run-other", output_location=foreign_output
    )

    report = commit_run(plan, env.store, env.storage, now=NOW)

    assert env.state()[0].tables["orders"].location == env.snapshot("orders", "run-1")
    assert exists(foreign_output)
    assert foreign_output not in report.deleted_locations


def test_plan_level_failed_and_skipped_tables_are_reported_with_their_messages(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-02T00:00:00"})
    before, version = env.state()
    plan = make_plan(
        "run-2",
        [work_item(env, "orders", "run-2", before.tables["orders"])],
        version,
        failed={"customers": "table 'customers': watermark column 'updated_at' has type string"},
        skipped={"returns": "no data files yet; its state is left as it was"},
    )
    ingest_succeeded(env, plan.items[0], "2024-04-04T00:00:00")

    report = commit_run(plan, env.store, env.storage, now=NOW)

    customers = outcome(report, "customers")
    assert customers.status == "failed"
    assert customers.message == "table 'customers': watermark column 'updated_at' has type string"
    returns = outcome(report, "returns")
    assert returns.status == "skipped"
    assert returns.message == "no data files yet; its state is left as it was"
    assert outcome(report, "orders").status == "succeeded"
    assert report.failed == [customers]
    after, _ = env.state()
    assert after.tables["customers"] == before.tables["customers"]
    assert "returns" not in after.tables


# One retained snapshot is the harshest setting for the current snapshot; two is where it could
# wrongly be kept twice, as current and as its own predecessor.
@pytest.mark.parametrize("retained", [1, 2])
def test_an_incremental_run_that_read_nothing_keeps_its_current_snapshot(env, retained):
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    run(env, "run-2", {"orders": "2024-04-02T00:00:00"})
    current = env.snapshot("orders", "run-2")
    plan = plan_from_state(env, "run-3", ["orders"])
    # Nothing new: the ingest points its manifest at the snapshot that is already current.
    ingest_succeeded(env, plan.items[0], "2024-04-02T00:00:00", rows_read=0, output_location=current)

    report = commit_run(plan, env.store, env.storage, retained_snapshots=retained, now=NOW)

    tracker = env.state()[0].tables["orders"]
    assert tracker.location == current
    assert tracker.watermark == "2024-04-02T00:00:00"
    assert tracker.previous_locations == (() if retained == 1 else (env.snapshot("orders", "run-1"),))
    assert exists(current)
    assert current not in report.deleted_locations
    assert outcome(report, "orders").location == current


# ----------------------------------------------------------------------------------------------
# Retention
# ----------------------------------------------------------------------------------------------


def test_retention_of_two_deletes_the_oldest_snapshot_on_the_third_commit(env):
    oldest, middle, newest = (env.snapshot("orders", f"run-{n}") for n in (1, 2, 3))
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"}, retained_snapshots=2)
    second = run(env, "run-2", {"orders": "2024-04-02T00:00:00"}, retained_snapshots=2)

    assert second.deleted_locations == []
    assert exists(oldest)
    assert exists(middle)

    third = run(env, "run-3", {"orders": "2024-04-03T00:00:00"}, retained_snapshots=2)

    assert third.deleted_locations == [oldest]
    assert not exists(oldest)
    assert exists(middle)
    assert exists(newest)
    tracker = env.state()[0].tables["orders"]
    assert (tracker.location, tracker.previous_locations) == (newest, (middle,))


def test_a_location_still_referenced_by_the_state_is_never_deleted(env):
    shared, old, new = (env.snapshot("orders", f"run-{n}") for n in ("a", "b", "c"))
    for location in (shared, old):
        write_snapshot(location)
    tracker = TableState(
        watermark="2024-04-01T00:00:00",
        location=old,
        rows=10,
        run_id="run-b",
        committed_at=COMMITTED_AT,
        load_type="full",
        mode="dedup",
        watermark_column="updated_at",
        previous_locations=(shared,),
    )
    # A tracker restored by hand to another table's older snapshot: that snapshot is live again.
    restored = replace(tracker, location=shared, previous_locations=())
    env.store.write(
        StateDocument().with_tables({"orders": tracker, "orders_restored": restored}, "run-b", COMMITTED_AT),
        None,
    )
    plan = plan_from_state(env, "run-c", ["orders"])
    ingest_succeeded(env, plan.items[0], "2024-04-02T00:00:00")

    report = commit_run(plan, env.store, env.storage, retained_snapshots=1, now=NOW)

    assert exists(shared)
    assert report.deleted_locations == [old]
    assert not exists(old)
    assert exists(new)


def test_retained_snapshots_below_one_is_a_configuration_error(env):
    plan = plan_from_state(env, "run-1", ["orders"])
    ingest_succeeded(env, plan.items[0], "2024-04-01T00:00:00")

    with pytest.raises(ConfigurationError):
        commit_run(plan, env.store, env.storage, retained_snapshots=0, now=NOW)

    assert env.state() == (StateDocument(), None)


# ----------------------------------------------------------------------------------------------
# Conflicts and retries
# ----------------------------------------------------------------------------------------------


def test_a_commit_planned_from_a_stale_state_publishes_nothing_and_deletes_nothing(env):
    first = env.snapshot("orders", "run-1")
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    # run-3 planned while run-2 was still running, so from revision 1.
    late = plan_from_state(env, "run-3", ["orders"])
    run(env, "run-2", {"orders": "2024-04-02T00:00:00"})
    second = env.snapshot("orders", "run-2")
    ingest_succeeded(env, late.items[0], "2024-04-03T00:00:00")
    state_before, history_before = env.state_bytes(), env.revisions_in_history()

    # Had it been accepted, keeping one snapshot would have deleted both older ones.
    with pytest.raises(CommitConflictError) as refused:
        commit_run(late, env.store, env.storage, retained_snapshots=1, now=NOW)

    assert refused.value.competing_run_id == "run-2"
    assert "run-2" in str(refused.value)
    assert env.state_bytes() == state_before
    assert env.revisions_in_history() == history_before
    assert exists(first)
    assert exists(second)


class RivalCommitsAfterRead:
    """A state store through which another run commits just after this commit has read the state,
    so the refusal comes from the compare-and-swap write itself rather than from the early check."""

    def __init__(self, store: LocalStateStore, rival) -> None:
        self.store = store
        self.rival = rival

    def read(self) -> tuple[StateDocument, str | None]:
        result = self.store.read()
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        return result

    def write(self, document: StateDocument, expected_version: str | None) -> str:
        return self.store.write(document, expected_version)


def test_a_commit_refused_at_write_time_deletes_nothing(env):
    first = env.snapshot("orders", "run-1")
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    plan = plan_from_state(env, "run-2", ["orders"])
    ingest_succeeded(env, plan.items[0], "2024-04-02T00:00:00")
    racing = RivalCommitsAfterRead(
        env.store, lambda: run(env, "run-rival", {"orders": "2024-04-03T00:00:00"}, retained_snapshots=2)
    )

    # Keeping one snapshot, an accepted commit would have deleted run-1's; the rival still keeps it.
    with pytest.raises(CommitConflictError) as refused:
        commit_run(plan, racing, env.storage, retained_snapshots=1, now=NOW)

    assert refused.value.competing_run_id == "run-rival"
    state, _ = env.state()
    assert state.run_id == "run-rival"
    assert exists(first)
    assert state.tables["orders"].previous_locations == (first,)
    assert exists(state.tables["orders"].location)


def test_a_commit_planned_before_the_first_run_committed_is_refused(env):
    late = plan_from_state(env, "run-late", ["orders"])
    run(env, "run-first", {"orders": "2024-04-01T00:00:00"})
    ingest_succeeded(env, late.items[0], "2024-04-02T00:00:00")

    with pytest.raises(CommitConflictError) as refused:
        commit_run(late, env.store, env.storage, now=NOW)

    assert refused.value.competing_run_id == "run-first"
    assert env.state()[0].tables["orders"].run_id == "run-first"


def test_racing_commits_produce_one_winner_and_a_conflict_naming_it(env):
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    plans = [plan_from_state(env, run_id, ["orders"]) for run_id in ("run-a", "run-b")]
    for plan in plans:
        ingest_succeeded(env, plan.items[0], "2024-04-02T00:00:00")
    barrier = threading.Barrier(len(plans))
    results: dict[str, object] = {}

    def commit(plan: Plan) -> None:
        barrier.wait(timeout=10)
        try:
            results[plan.run_id] = commit_run(plan, env.store, env.storage, retained_snapshots=1, now=NOW)
        except Exception as exc:
            results[plan.run_id] = exc

    racers = [threading.Thread(target=commit, args=(plan,)) for plan in plans]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=30)

    winners = [run_id for run_id, result in results.items() if isinstance(result, CommitReport)]
    assert len(winners) == 1, results
    (winner,) = winners
    (loser,) = {"run-a", "run-b"} - {winner}
    assert isinstance(results[loser], CommitConflictError), results[loser]
    assert results[loser].competing_run_id == winner
    state, _ = env.state()
    assert (state.revision, state.run_id) == (2, winner)
    # The loser must not have pruned anything on the strength of a state it never wrote.
    assert exists(state.tables["orders"].location)


def test_committing_the_same_plan_twice_writes_no_new_revision_and_deletes_nothing_referenced(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-01T00:00:00"})
    run(env, "run-2", {"customers": "2024-04-02T00:00:00", "orders": "2024-04-02T00:00:00"})
    plan = plan_from_state(env, "run-3", ["customers", "orders"])
    for item in plan.items:
        ingest_succeeded(env, item, "2024-04-03T00:00:00")
    first = commit_run(plan, env.store, env.storage, retained_snapshots=2, now=NOW)
    state_after_first, history_after_first = env.state_bytes(), env.revisions_in_history()

    # The Commit Lambda timed out after writing and is retried with the same input, later.
    retry = commit_run(
        plan, env.store, env.storage, retained_snapshots=2, now=datetime(2024, 5, 2, tzinfo=UTC)
    )

    assert env.state_bytes() == state_after_first
    assert env.revisions_in_history() == history_after_first
    assert retry.revision == first.revision == 3
    assert retry.committed_at == first.committed_at
    assert retry.deleted_locations == []
    assert [(o.table, o.status, o.watermark_after) for o in retry.outcomes] == [
        (o.table, o.status, o.watermark_after) for o in first.outcomes
    ]
    for tracker in env.state()[0].tables.values():
        for location in (tracker.location, *tracker.previous_locations):
            assert exists(location), location


def test_a_retried_commit_that_now_sees_a_table_as_failed_keeps_its_committed_snapshot(env):
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    plan = plan_from_state(env, "run-2", ["orders"])
    ingest_succeeded(env, plan.items[0], "2024-04-02T00:00:00")
    commit_run(plan, env.store, env.storage, now=NOW)
    state_after_first = env.state_bytes()

    # The retry's input says the ingest failed, yet the first attempt already published its output:
    # the cleanup of "failed" output must not delete what the state now points at.
    commit_run(plan, env.store, env.storage, failures={"orders": "lost"}, now=NOW)

    assert env.state_bytes() == state_after_first
    assert exists(plan.items[0].output_location)
    assert env.state()[0].tables["orders"].location == plan.items[0].output_location


def test_a_corrupt_state_document_stops_the_commit_instead_of_starting_over(env):
    plan = plan_from_state(env, "run-1", ["orders"])
    ingest_succeeded(env, plan.items[0], "2024-04-01T00:00:00")
    env.store.path.parent.mkdir(parents=True, exist_ok=True)
    env.store.path.write_text('{"format_version": 1, "revision": 4, "tables": {"ord')

    with pytest.raises(StateCorruptError):
        commit_run(plan, env.store, env.storage, now=NOW)

    assert env.store.path.read_text() == '{"format_version": 1, "revision": 4, "tables": {"ord'
    assert exists(plan.items[0].output_location)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"run_id": "run-2"}'],
    ids=["invalid-json", "not-an-object", "missing-fields"],
)
def test_an_unreadable_manifest_fails_only_its_table(env, content):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-01T00:00:00"})
    plan = plan_from_state(env, "run-2", ["customers", "orders"])
    customers, orders = plan.items
    ingest_succeeded(env, customers, "2024-04-02T00:00:00")
    ingest_succeeded(env, orders, "2024-04-02T00:00:00")
    Path(orders.manifest_location).write_text(content)

    report = commit_run(plan, env.store, env.storage, now=NOW)

    state, _ = env.state()
    assert state.tables["customers"].run_id == "run-2"
    assert state.tables["orders"].run_id == "run-1"
    failed = outcome(report, "orders")
    assert failed.status == "failed"
    assert "unreadable" in (failed.message or "")


def test_a_commit_retried_after_a_later_run_committed_is_recognised_not_refused(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-01T00:00:00"})
    plan = plan_from_state(env, "run-2", ["customers", "orders"])
    for item in plan.items:
        ingest_succeeded(env, item, "2024-04-02T00:00:00")
    commit_run(plan, env.store, env.storage, now=NOW)
    run(env, "run-3", {"customers": "2024-04-03T00:00:00"})  # orders still carries run-2's tracker
    state_before = env.state_bytes()

    retry = commit_run(plan, env.store, env.storage, now=NOW)

    assert env.state_bytes() == state_before
    assert retry.failed == []
    assert exists(env.state()[0].tables["orders"].location)


def test_a_refused_commit_removes_its_own_unpublished_snapshots(env):
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    loser = plan_from_state(env, "run-loser", ["orders"])
    ingest_succeeded(env, loser.items[0], "2024-04-02T00:00:00")
    run(env, "run-winner", {"orders": "2024-04-03T00:00:00"})

    with pytest.raises(CommitConflictError):
        commit_run(loser, env.store, env.storage, now=NOW)

    assert not exists(loser.items[0].output_location)
    state, _ = env.state()
    assert exists(state.tables["orders"].location)
    assert all(exists(location) for location in state.tables["orders"].previous_locations)


# ----------------------------------------------------------------------------------------------
# Unchanged tables
# ----------------------------------------------------------------------------------------------


def test_a_run_where_every_table_is_unchanged_writes_no_revision_and_reports_each(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00"})
    before = env.state_bytes()
    _, version = env.state()

    report = commit_run(
        replace(make_plan("run-2", [], version), unchanged=["customers"]), env.store, env.storage, now=NOW
    )

    assert env.state_bytes() == before
    customers = outcome(report, "customers")
    assert (customers.status, customers.rows_read, customers.files_read) == ("unchanged", 0, 0)
    assert customers.location == env.snapshot("customers", "run-1")
    assert report.failed == []


def test_a_settled_file_cursor_of_an_unchanged_table_is_committed_alone(env):
    run(env, "run-1", {"customers": "2024-04-01T00:00:00", "orders": "2024-04-01T00:00:00"})
    state, version = env.state()
    settled = {"mark": "2024-05-01T11:45:00.000000Z", "recent": {}}
    plan = replace(
        make_plan("run-2", [], version),
        unchanged=["customers", "orders"],
        refreshed_cursors={"orders": settled},
    )

    report = commit_run(plan, env.store, env.storage, now=NOW)

    after, _ = env.state()
    assert after.revision == state.revision + 1 == report.revision
    assert after.tables["orders"] == replace(state.tables["orders"], cursor=settled)
    assert after.tables["customers"] == state.tables["customers"]
    assert {o.status for o in report.outcomes} == {"unchanged"}


def test_a_run_folder_and_the_partitions_inside_it_expiring_together_are_deleted_once(tmp_path) -> None:
    from cdc_pipeline.commit import _delete_unreferenced
    from cdc_pipeline.storage import LocalStorage

    run_folder = tmp_path / "orders" / "snapshots" / "r1"
    partitions = [run_folder / f"cdc_partition=p{n}" for n in range(40)]
    for partition in partitions:
        partition.mkdir(parents=True)
        (partition / "part-0.parquet").write_bytes(b"x")
    doomed = [str(p) for p in partitions] + [str(run_folder)] + [str(p) for p in reversed(partitions)]

    deleted = _delete_unreferenced(LocalStorage(), doomed, StateDocument())

    assert deleted == [str(run_folder)]
    assert not run_folder.exists()
