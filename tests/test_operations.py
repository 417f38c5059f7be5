"""Operator commands on a local state folder: history, reset, rollback and vacuum.

The trackers here are built as a commit builds them (snapshot, tombstones, retained earlier ones)
and committed through the state store, so the commands meet the history a real run leaves. The
same scenarios run on moto's S3 in tests/aws/test_operations_s3.py through the ``Lake`` below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdc_pipeline.cli import main
from cdc_pipeline.errors import CommitConflictError, ConfigurationError
from cdc_pipeline.lease import LocalLeaseStore, acquire, local_owner
from cdc_pipeline.operations import (
    CURSOR_SETTLED,
    FAILED,
    PARTITION,
    QUARANTINE,
    ROLLED_BACK,
    SNAPSHOT,
    SUCCEEDED,
    TOMBSTONES,
    WAS_RESET,
    reset_tables,
    rollback_table,
    table_history,
    vacuum,
)
from cdc_pipeline.plan import Layout
from cdc_pipeline.state import LocalStateStore, Revision, RevisionHistory, StateDocument, TableState
from cdc_pipeline.storage import LocalStorage, Storage

NOW = datetime(2024, 5, 3, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
R1, R2, R3 = "20240501T100000Z-aaaa0001", "20240501T110000Z-aaaa0002", "20240501T120000Z-aaaa0003"
FAILED_RUN = "20240501T130000Z-aaaa0004"


@dataclass
class Lake:
    """A state store, a storage and a layout over one place (a local folder or an S3 prefix), with
    what a test needs to fill it as runs would."""

    store: RevisionHistory
    storage: Storage
    layout: Layout
    put_file: Callable[[str, bytes], None]  # a file's location and content

    def folder(self, location: str, size: int = 10) -> str:
        self.put_file(f"{location}/part-00000.zstd.parquet", b"x" * size)
        return location

    def commit(self, run_id: str, changed: dict[str, TableState], minute: int = 0) -> StateDocument:
        current, version = self.store.read()
        at = (
            datetime(2024, 5, 1, 10, tzinfo=UTC) + timedelta(hours=current.revision, minutes=minute)
        ).isoformat()
        document = current.with_tables({**current.tables, **changed}, run_id, at)
        self.store.write(document, version)
        return document

    def report(self, run_id: str, outcomes: list[dict[str, Any]]) -> None:
        """The run's report, at the state's revision as its commit left it."""
        revision = self.store.read()[0].revision
        report = {"run_id": run_id, "revision": revision, "tables": outcomes}
        self.storage.write_json(self.layout.report(run_id), report)

    def tracker(
        self,
        table: str,
        run_id: str,
        before: TableState | None = None,
        *,
        rows: int = 5,
        mark: str = "2024-05-01T09:45:00.000000Z",
        retained: int = 3,
        **settings: Any,
    ) -> TableState:
        """The tracker a commit of ``run_id`` leaves for ``table``: its folders written, the
        ``retained - 1`` snapshots before it kept."""
        location = self.folder(self.layout.snapshot(table, run_id))
        tombstones = self.folder(self.layout.tombstones(table, run_id))
        earlier = [before.location, *before.previous_locations] if before else []
        earlier_tombstones = [before.tombstones, *before.previous_tombstones] if before else []
        fields: dict[str, Any] = {
            "watermark": "2024-05-01T09:00:00.000000Z",
            "location": location,
            "rows": rows,
            "run_id": run_id,
            "committed_at": "2024-05-01T10:00:00+00:00",
            "load_type": "incremental" if before else "full",
            "mode": "dedup",
            "watermark_column": "updated_at",
            "previous_locations": tuple(earlier[: retained - 1]),
            "primary_key": ("id",),
            "delete_column": "op",
            "delete_values": ("D",),
            "incremental_by": "arrival",
            "cursor": {"mark": mark, "recent": {f"{run_id}.parquet": mark}},
            "tombstones": tombstones,
            "previous_tombstones": tuple(t for t in earlier_tombstones[: retained - 1] if t),
        }
        return TableState(**{**fields, **settings})


def local_lake(root: Path) -> Lake:
    def put_file(location: str, content: bytes) -> None:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(content)

    return Lake(
        store=LocalStateStore(root / "state"),
        storage=LocalStorage(),
        layout=Layout(output_path=str(root / "output"), cdc_path=str(root / "state")),
        put_file=put_file,
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return local_lake(tmp_path)


def three_runs(lake: Lake) -> dict[str, TableState]:
    """orders committed by R1, R2 and R3 (three snapshots retained); customers by R1 only, then
    failed by FAILED_RUN; R3 also settled customers' file cursor."""
    orders1 = lake.tracker("orders", R1, rows=3, mark="2024-05-01T09:45:00.000000Z")
    customers1 = lake.tracker("customers", R1, rows=4)
    lake.commit(R1, {"orders": orders1, "customers": customers1})
    lake.report(R1, [{"table": "orders", "status": SUCCEEDED, "files_read": 2}])
    orders2 = lake.tracker("orders", R2, orders1, rows=6, mark="2024-05-01T10:45:00.000000Z")
    lake.commit(R2, {"orders": orders2})
    orders3 = lake.tracker("orders", R3, orders2, rows=9, mark="2024-05-01T11:45:00.000000Z")
    settled = replace(customers1, cursor={"mark": "2024-05-01T11:45:00.000000Z", "recent": {}})
    lake.commit(R3, {"orders": orders3, "customers": settled})
    lake.report(
        FAILED_RUN,
        [
            {"table": "customers", "status": FAILED, "load_type": "incremental", "message": "bad file"},
            {"table": "orders", "status": "unchanged"},
        ],
    )
    return {"orders1": orders1, "orders2": orders2, "orders3": orders3, "customers1": customers1}


def referenced(document: StateDocument) -> set[str]:
    return {location for tracker in document.tables.values() for location in tracker.locations()}


# ----------------------------------------------------------------------------------------------
# history
# ----------------------------------------------------------------------------------------------


def test_history_shows_each_tables_runs_newest_first_failed_runs_included(lake):
    three_runs(lake)
    reset_tables(lake.store, ["orders"], now=NOW)

    found = table_history(lake.store, lake.storage, lake.layout)

    orders = found["orders"]
    assert [(e.outcome, e.revision) for e in orders] == [
        (WAS_RESET, 4),
        (SUCCEEDED, 3),
        (SUCCEEDED, 2),
        (SUCCEEDED, 1),
    ]
    assert orders[0].run_id.startswith("20240503T120000Z-reset-")
    assert (orders[0].watermark, orders[0].cursor_mark, orders[0].rows) == (None, None, 9)
    assert (orders[1].run_id, orders[1].rows, orders[1].cursor_mark) == (R3, 9, "2024-05-01T11:45:00.000000Z")
    assert (orders[3].load_type, orders[3].files_read) == ("full", 2)  # files read from R1's report
    customers = found["customers"]
    assert [(e.run_id, e.outcome) for e in customers] == [
        (FAILED_RUN, FAILED),
        (R3, CURSOR_SETTLED),
        (R1, SUCCEEDED),
    ]
    assert customers[0].message == "bad file"
    assert customers[0].time == "2024-05-01T13:00:00+00:00"  # a failed run: when it started


def test_history_is_in_commit_order_whatever_the_run_ids_sort_as(lake):
    lake.commit(R1, {"orders": lake.tracker("orders", R1)})
    reset_tables(lake.store, ["orders"], now=datetime(2024, 5, 1, 13, tzinfo=UTC))
    # A run started in the same second as the reset, committed after it: its id sorts before it.
    same_second = "20240501T130000Z-0000aaaa"
    lake.commit(
        same_second, {"orders": lake.tracker("orders", same_second, lake.store.read()[0].tables["orders"])}
    )

    found = table_history(lake.store, lake.storage, lake.layout)

    assert [entry.outcome for entry in found["orders"]] == [SUCCEEDED, WAS_RESET, SUCCEEDED]


def test_history_limit_and_table_choose_what_is_shown(lake):
    three_runs(lake)

    found = table_history(lake.store, lake.storage, lake.layout, tables=["orders"], limit=2)

    assert list(found) == ["orders"]
    assert [entry.run_id for entry in found["orders"]] == [R3, R2]


def test_history_reads_only_the_revisions_it_needs(lake):
    three_runs(lake)
    read: list[Revision] = []
    real = lake.store.read_revision

    def counting(revision: Revision) -> StateDocument:
        read.append(revision)
        return real(revision)

    lake.store.read_revision = counting  # type: ignore[method-assign]

    table_history(lake.store, lake.storage, lake.layout, tables=["orders"], limit=1)

    assert [revision.revision for revision in read] == [2]  # revision 3 is the state itself


def test_history_of_an_unknown_table_names_the_known_ones(lake):
    three_runs(lake)

    with pytest.raises(ConfigurationError, match=r"no table 'order'.*customers, orders"):
        table_history(lake.store, lake.storage, lake.layout, tables=["order"])


def test_history_follows_the_lineage_of_a_state_started_over(lake):
    lake.commit(R1, {"orders": lake.tracker("orders", R1, rows=1)})
    Path(lake.layout.cdc_path, "state.json").unlink()  # started over: revision 1 again
    lake.commit(R2, {"orders": lake.tracker("orders", R2, rows=2)}, minute=30)
    lake.commit(R3, {"orders": lake.tracker("orders", R3, rows=3)}, minute=30)

    found = table_history(lake.store, lake.storage, lake.layout)

    assert [entry.run_id for entry in found["orders"]] == [R3, R2]


def test_history_of_a_state_restored_from_an_older_lineage_follows_that_lineage(lake):
    lake.commit(R1, {"orders": lake.tracker("orders", R1, rows=1)})
    lake.commit(R2, {"orders": lake.tracker("orders", R2, rows=2)})
    state = Path(lake.layout.cdc_path, "state.json")
    state.unlink()  # started over: revision 1 again, committed later than R2
    lake.commit(R3, {"orders": lake.tracker("orders", R3, rows=3)}, minute=120)
    # Then restored from the history copy of R2, as docs/operations.md says for a corrupt state.
    state.write_bytes(Path(lake.layout.cdc_path, "history", f"0000000002-{R2}.json").read_bytes())

    found = table_history(lake.store, lake.storage, lake.layout)

    assert [entry.run_id for entry in found["orders"]] == [R2, R1]


# ----------------------------------------------------------------------------------------------
# reset
# ----------------------------------------------------------------------------------------------


def test_reset_drops_the_watermark_and_cursor_and_keeps_every_folder(lake):
    trackers = three_runs(lake)
    before, _ = lake.store.read()

    document = reset_tables(lake.store, ["orders"], now=NOW)

    assert lake.store.read()[0] == document
    assert document.revision == before.revision + 1
    assert "-reset-" in (document.run_id or "")
    assert document.tables["orders"] == replace(trackers["orders3"], watermark=None, cursor=None)
    assert document.tables["customers"] == before.tables["customers"]
    assert referenced(document) == referenced(before)


def test_reset_of_an_unknown_table_names_it_and_the_known_ones_and_writes_nothing(lake):
    three_runs(lake)
    state_before = Path(lake.layout.cdc_path, "state.json").read_bytes()

    with pytest.raises(ConfigurationError, match=r"no table 'nope'.*customers, orders"):
        reset_tables(lake.store, ["orders", "nope"])

    assert Path(lake.layout.cdc_path, "state.json").read_bytes() == state_before


class _StaleStore:
    """A state store whose reads return what it held before another commit landed."""

    def __init__(self, store: RevisionHistory, stale: tuple[StateDocument, str | None]) -> None:
        self.store, self.stale = store, stale

    def read(self) -> tuple[StateDocument, str | None]:
        return self.stale

    def write(self, document: StateDocument, expected_version: str | None) -> str:
        return self.store.write(document, expected_version)

    def history(self) -> list[Revision]:
        return self.store.history()

    def read_revision(self, revision: Revision) -> StateDocument:
        return self.store.read_revision(revision)


def test_reset_and_rollback_are_refused_when_a_run_committed_after_they_read_the_state(lake):
    trackers = three_runs(lake)
    stale = _StaleStore(lake.store, lake.store.read())
    lake.commit(
        "20240501T140000Z-aaaa0005", {"customers": lake.tracker("customers", "20240501T140000Z-aaaa0005")}
    )
    after = lake.store.read()

    with pytest.raises(CommitConflictError, match="20240501T140000Z-aaaa0005"):
        reset_tables(stale, ["orders"])
    with pytest.raises(CommitConflictError, match="20240501T140000Z-aaaa0005"):
        rollback_table(stale, lake.storage, "orders")

    assert lake.store.read() == after
    assert after[0].tables["orders"] == trackers["orders3"]


# ----------------------------------------------------------------------------------------------
# rollback
# ----------------------------------------------------------------------------------------------


def test_rollback_restores_the_previous_snapshot_with_the_tracker_it_was_committed_with(lake):
    trackers = three_runs(lake)
    before, _ = lake.store.read()

    done = rollback_table(lake.store, lake.storage, "orders", now=NOW)

    restored = lake.store.read()[0].tables["orders"]
    assert restored == done.restored
    assert (restored.location, restored.cursor, restored.rows) == (
        trackers["orders2"].location,
        trackers["orders2"].cursor,
        6,
    )
    assert restored.tombstones == trackers["orders2"].tombstones
    # The snapshot rolled back from stays retained (newest first), so nothing was dropped.
    assert restored.previous_locations == (trackers["orders3"].location, trackers["orders1"].location)
    assert restored.previous_tombstones == (trackers["orders3"].tombstones, trackers["orders1"].tombstones)
    assert referenced(lake.store.read()[0]) == referenced(before)
    assert "-rollback-" in (done.document.run_id or "")
    history = table_history(lake.store, lake.storage, lake.layout, tables=["orders"], limit=1)["orders"]
    assert (history[0].outcome, history[0].location) == (ROLLED_BACK, trackers["orders2"].location)


def test_rollback_to_a_named_run_and_forward_again(lake):
    trackers = three_runs(lake)

    rollback_table(lake.store, lake.storage, "orders", to_run_id=R1)
    assert lake.store.read()[0].tables["orders"].location == trackers["orders1"].location
    rollback_table(lake.store, lake.storage, "orders", to_run_id=R3)

    assert lake.store.read()[0].tables["orders"] == replace(
        trackers["orders3"],
        previous_locations=(trackers["orders1"].location, trackers["orders2"].location),
        previous_tombstones=(trackers["orders1"].tombstones, trackers["orders2"].tombstones),
    )


def test_rollback_to_a_snapshot_past_retention_is_refused_naming_the_retained_ones(lake):
    orders1 = lake.tracker("orders", R1, retained=2)
    lake.commit(R1, {"orders": orders1})
    orders2 = lake.tracker("orders", R2, orders1, retained=2)
    lake.commit(R2, {"orders": orders2})
    lake.commit(R3, {"orders": lake.tracker("orders", R3, orders2, retained=2)})

    retained = re.escape(f"retained earlier snapshots are: {orders2.location}.")
    with pytest.raises(ConfigurationError, match=f"no longer retained.*{retained}"):
        rollback_table(lake.store, lake.storage, "orders", to_run_id=R1)


@pytest.mark.parametrize(
    ("to_run_id", "message"),
    [
        (R3, "already table 'orders'.s current snapshot"),
        ("20240501T000000Z-nope", "no snapshot of table 'orders' committed by run"),
    ],
)
def test_rollback_to_the_current_or_an_unknown_run_is_refused(lake, to_run_id, message):
    three_runs(lake)

    with pytest.raises(ConfigurationError, match=message):
        rollback_table(lake.store, lake.storage, "orders", to_run_id=to_run_id)


def test_rollback_with_no_earlier_snapshot_is_refused(lake):
    lake.commit(R1, {"orders": lake.tracker("orders", R1)})

    with pytest.raises(ConfigurationError, match="no earlier snapshot retained"):
        rollback_table(lake.store, lake.storage, "orders")


def test_rollback_is_refused_when_the_settings_changed_since_that_snapshot(lake):
    orders1 = lake.tracker("orders", R1)
    lake.commit(R1, {"orders": orders1})
    lake.commit(R2, {"orders": lake.tracker("orders", R2, orders1, primary_key=("id", "line"))})

    with pytest.raises(ConfigurationError, match=r"settings changed since run .* built that snapshot"):
        rollback_table(lake.store, lake.storage, "orders")


def test_rollback_is_refused_when_the_snapshot_folder_is_missing(lake):
    trackers = three_runs(lake)
    lake.storage.delete_tree(trackers["orders2"].location)
    state_before = lake.store.read()

    with pytest.raises(ConfigurationError, match=f"{trackers['orders2'].location} holds no file"):
        rollback_table(lake.store, lake.storage, "orders")

    assert lake.store.read() == state_before


def test_rollback_is_refused_when_the_history_lacks_the_revision_that_committed_it(lake):
    three_runs(lake)
    for revision in lake.store.history():
        if revision.run_id == R2:
            Path(lake.layout.cdc_path, "history", revision.name).unlink()

    with pytest.raises(ConfigurationError, match="history holds no revision that committed"):
        rollback_table(lake.store, lake.storage, "orders")


def test_rollback_of_a_partitioned_table_exchanges_the_current_and_retained_partitions(lake):
    def partitions(run_id: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        folder = lake.layout.snapshot("events", run_id)
        return {
            pid: {
                "location": lake.folder(f"{folder}/cdc_partition={pid}"),
                "values": [pid],
                "rows": 1,
                "bytes": 10,
            }
            for pid in ids
        }

    first = partitions(R1, ["p1", "p2"])
    events1 = lake.tracker("events", R1, partition_by=("day",), partitions=first)
    lake.commit(R1, {"events": events1})
    second = {**first, **partitions(R2, ["p2"])}
    events2 = lake.tracker(
        "events", R2, events1, partition_by=("day",), partitions=second, retained_partitions=(first,)
    )
    lake.commit(R2, {"events": events2})

    rollback_table(lake.store, lake.storage, "events")

    restored = lake.store.read()[0].tables["events"]
    assert (restored.partitions, restored.retained_partitions) == (first, (second,))
    assert restored.locations() == events2.locations()


# ----------------------------------------------------------------------------------------------
# vacuum
# ----------------------------------------------------------------------------------------------


def crashed_and_failed_runs(lake: Lake) -> dict[str, str]:
    """Folders no commit references: of a run that crashed two days ago (no report), of a run whose
    table failed (report written), and of a run that started half an hour ago (no report yet)."""
    crashed, young = "20240501T080000Z-dead0001", "20240503T113000Z-live0001"
    return {
        "crashed snapshot": lake.folder(lake.layout.snapshot("orders", crashed), 100),
        "crashed quarantine": lake.folder(lake.layout.quarantine("orders", crashed), 7),
        "failed snapshot": lake.folder(lake.layout.snapshot("customers", FAILED_RUN), 50),
        "failed tombstones": lake.folder(lake.layout.tombstones("customers", FAILED_RUN)),
        "young snapshot": lake.folder(lake.layout.snapshot("orders", young)),
    }


def test_vacuum_lists_unreferenced_folders_of_runs_that_are_over_and_deletes_nothing(lake):
    three_runs(lake)
    folders = crashed_and_failed_runs(lake)
    kept_quarantine = lake.folder(lake.layout.quarantine("orders", R2))  # R2's snapshot is retained

    result = vacuum(lake.store, lake.storage, lake.layout, min_age=DAY, now=NOW)

    assert {(f.location, f.kind, f.bytes) for f in result.orphans} == {
        (folders["crashed snapshot"], SNAPSHOT, 100),
        (folders["crashed quarantine"], QUARANTINE, 7),
        (folders["failed snapshot"], SNAPSHOT, 50),
        (folders["failed tombstones"], TOMBSTONES, 10),
    }
    assert [f.location for f in result.in_progress] == [folders["young snapshot"]]
    assert result.deleted == []
    assert all(lake.storage.file_sizes(location) for location in folders.values())
    assert lake.storage.file_sizes(kept_quarantine)


def test_vacuum_apply_deletes_only_the_orphans(lake):
    three_runs(lake)
    folders = crashed_and_failed_runs(lake)
    document, _ = lake.store.read()

    result = vacuum(lake.store, lake.storage, lake.layout, min_age=DAY, apply=True, now=NOW)

    assert sorted(result.deleted) == sorted(f.location for f in result.orphans)
    assert {location for location in folders.values() if lake.storage.file_sizes(location)} == {
        folders["young snapshot"]
    }
    assert all(lake.storage.file_sizes(location) for location in referenced(document))


def test_vacuum_takes_a_snapshot_past_retention_left_by_a_crash_after_its_commit(lake):
    orders1 = lake.tracker("orders", R1, retained=1)
    lake.commit(R1, {"orders": orders1})
    lake.report(R1, [])
    lake.commit(R2, {"orders": lake.tracker("orders", R2, orders1, retained=1)})  # R1's folders not deleted

    result = vacuum(lake.store, lake.storage, lake.layout, min_age=timedelta(days=3650), now=NOW)

    assert {f.location for f in result.orphans} == {orders1.location, orders1.tombstones}


def test_vacuum_takes_partition_folders_no_snapshot_names_inside_a_run_folder_one_does(lake):
    folder = lake.layout.snapshot("events", R1)
    named = {
        "p1": {"location": lake.folder(f"{folder}/cdc_partition=p1"), "values": ["a"], "rows": 1, "bytes": 10}
    }
    stale = lake.folder(f"{folder}/cdc_partition=p2")
    lake.commit(R1, {"events": lake.tracker("events", R1, partition_by=("day",), partitions=named)})
    lake.report(R1, [])

    result = vacuum(lake.store, lake.storage, lake.layout, min_age=DAY, now=NOW)

    assert [(f.location, f.kind) for f in result.orphans] == [(stale, PARTITION)]


def test_vacuum_spares_a_folder_a_commit_references_by_the_time_it_deletes(lake):
    three_runs(lake)
    late = "20240501T080000Z-late0001"
    folder = lake.folder(lake.layout.snapshot("customers", late))
    current, _ = lake.store.read()

    class CommitsMeanwhile(_StaleStore):
        def read(self) -> tuple[StateDocument, str | None]:
            reads.append(1)
            if len(reads) == 1:
                return self.store.read()
            lake.commit(late, {"customers": replace(current.tables["customers"], location=folder)})
            return self.store.read()

    reads: list[int] = []
    result = vacuum(
        CommitsMeanwhile(lake.store, (current, None)),
        lake.storage,
        lake.layout,
        min_age=DAY,
        apply=True,
        now=NOW,
    )

    assert folder in [f.location for f in result.orphans]
    assert folder not in result.deleted
    assert lake.storage.file_sizes(folder)


def test_vacuum_refuses_without_a_committed_state(lake):
    lake.folder(lake.layout.snapshot("orders", R1))

    with pytest.raises(ConfigurationError, match="no committed state"):
        vacuum(lake.store, lake.storage, lake.layout, min_age=DAY, apply=True, now=NOW)


def test_vacuum_refuses_an_output_path_the_state_does_not_use(lake, tmp_path):
    three_runs(lake)
    elsewhere = Layout(output_path=str(tmp_path / "other"), cdc_path=lake.layout.cdc_path)

    with pytest.raises(ConfigurationError, match="not under --output"):
        vacuum(lake.store, lake.storage, elsewhere, min_age=DAY, apply=True, now=NOW)


# ----------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------


def test_the_cli_commands_exit_2_on_usage_errors_naming_the_problem(lake, capsys):
    three_runs(lake)
    state = lake.layout.cdc_path

    assert main(["reset", "--state", state, "--table", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    assert main(["rollback", "--state", state, "--table", "nope"]) == 2
    assert main(["history", "--state", state, "--table", "nope"]) == 2
    assert main(["history", "--state", str(Path(state) / "missing")]) == 2
    assert main(["vacuum", "--state", state, "--output", lake.layout.output_path, "--min-age", "soon"]) == 2
    assert "--min-age" in capsys.readouterr().err


def test_operators_wait_for_a_run_holding_the_lease_and_vacuum_spares_its_folders(lake, capsys):
    three_runs(lake)
    folders = crashed_and_failed_runs(lake)
    state = lake.layout.cdc_path
    # A run in progress for three days, its lease renewed: its folders are not orphans, however old.
    running = "20240501T080000Z-dead0001"
    acquire(LocalLeaseStore(state), running, local_owner(), 600.0)
    reset_before, _ = lake.store.read()

    assert main(["reset", "--state", state, "--table", "orders"]) == 75
    assert f"run {running} has been in progress" in capsys.readouterr().err
    assert main(["rollback", "--state", state, "--table", "orders"]) == 75
    assert lake.store.read()[0] == reset_before
    assert main(["vacuum", "--state", state, "--output", lake.layout.output_path, "--apply"]) == 0

    assert lake.storage.file_sizes(folders["crashed snapshot"])
    assert lake.storage.file_sizes(folders["crashed quarantine"])
    assert not lake.storage.file_sizes(folders["failed snapshot"])
