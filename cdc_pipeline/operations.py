"""Operator commands on a committed state: each table's history, reset, rollback and vacuum.

They work through the ports a run uses (a state store with its history, a storage, the layout), so
one implementation serves a local state folder and an ``s3://`` state alike.

- **reset** and **rollback** change the state the way a run's commit does: read the document,
  build the next revision under a run id of their own (``<time>Z-reset-<hex>``,
  ``<time>Z-rollback-<hex>``, sortable with the runs' ids) and write it by the same
  compare-and-swap. A run that planned before them is refused at its commit; they are refused when
  a run committed after they read the state. Neither deletes anything: every folder the state
  referenced before is still referenced after.
- **history** reads the state's revision history (a table appears in a revision when its tracker
  changed) and the run reports, for the runs that failed a table and so changed nothing.
- **vacuum** writes no state. It deletes snapshot, tombstone, partition and quarantine folders
  that the committed state does not reference, of runs that are over: runs that wrote their report
  (whatever became of them), and runs without a report (crashed, interrupted) started longer ago
  than a guard age, so that the folders of a run still in progress are never taken for orphans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cdc_pipeline.commit import IO_THREADS
from cdc_pipeline.errors import ConfigurationError
from cdc_pipeline.plan import Layout, new_run_id
from cdc_pipeline.state import Revision, RevisionHistory, StateDocument, TableState
from cdc_pipeline.storage import Storage

DEFAULT_HISTORY_LIMIT = 10
# A folder of a run with no report is left alone until its run started this long ago: longer than
# any run takes, so that only crashed or interrupted runs' folders qualify (docs/operations.md).
DEFAULT_MIN_AGE = "P1D"
RESET, ROLLBACK = "reset", "rollback"
_RUN_STARTED = re.compile(r"(?P<stamp>[0-9]{8}T[0-9]{6})Z-")

# History outcomes: what a run or an operator command did to one table.
SUCCEEDED = "succeeded"  # a run committed a new snapshot
FAILED = "failed"  # a run failed the table: nothing of it was committed
CURSOR_SETTLED = "cursor settled"  # an unchanged table's file cursor forgot files that have settled
ROLLED_BACK = "rolled back"
WAS_RESET = "reset"
CHANGED = "changed"  # any other change of the tracker (a state edited by hand)

# Vacuum's kinds of folder.
SNAPSHOT, PARTITION, TOMBSTONES, QUARANTINE = "snapshot", "partition", "tombstones", "quarantine"


def operation_run_id(kind: str, now: datetime | None = None) -> str:
    """A run id for an operator command's revision: the runs' form, its kind after the time."""
    stamp, _, suffix = new_run_id(now).partition("-")
    return f"{stamp}-{kind}-{suffix}"


def run_started(run_id: str) -> datetime | None:
    """When a run (or operator command) started, from its id; None for an id of another form."""
    match = _RUN_STARTED.match(run_id)
    if match is None:
        return None
    return datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def _operation_kind(run_id: str | None) -> str | None:
    parts = (run_id or "").split("-")
    if run_started(run_id or "") is not None and len(parts) == 3 and parts[1] in (RESET, ROLLBACK):
        return parts[1]
    return None


def _known(document: StateDocument, tables: Iterable[str]) -> dict[str, TableState]:
    """The trackers of ``tables``; a ConfigurationError naming the unknown ones and the known."""
    wanted = list(dict.fromkeys(tables))
    unknown = [name for name in wanted if name not in document.tables]
    if unknown:
        raise ConfigurationError(
            f"the state (revision {document.revision}) has no table {', '.join(map(repr, unknown))}; "
            f"its tables are: {', '.join(sorted(document.tables)) or '(none committed yet)'}"
        )
    return {name: document.tables[name] for name in wanted}


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _earlier_revisions(store: RevisionHistory, head: StateDocument) -> Iterator[StateDocument]:
    """The committed revisions before ``head``, newest first, each read when reached.

    A state started over has two copies of its first revisions, one per lineage: of those, the
    one committed last, but not after the revision that follows it here, belongs to ``head``'s.
    """
    copies: dict[int, list[Revision]] = {}
    for revision in store.history():
        copies.setdefault(revision.revision, []).append(revision)
    bound = head.committed_at or ""
    for number in sorted((number for number in copies if number < head.revision), reverse=True):
        documents = [store.read_revision(revision) for revision in copies[number]]
        before = [document for document in documents if (document.committed_at or "") <= bound]
        document = max(before or documents, key=lambda document: document.committed_at or "")
        bound = document.committed_at or bound
        yield document


# ----------------------------------------------------------------------------------------------
# history
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One run (or operator command) of one table, as ``cdc-pipeline history`` shows it.

    ``revision`` is the state revision it committed; for a failed run, which committed nothing of
    the table, the revision it left in place, and ``time`` is when that run started (otherwise when
    its revision was committed). ``rows``, ``watermark`` and the cursor are the tracker's after it
    (for a failed run: the watermark it started from); ``files_read`` comes from the run's report.
    """

    run_id: str
    time: str | None
    outcome: str
    revision: int | None = None
    load_type: str | None = None
    rows: int | None = None
    files_read: int | None = None
    watermark: str | None = None
    cursor_mark: str | None = None
    cursor_recent_files: int | None = None
    location: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def table_history(
    store: RevisionHistory,
    storage: Storage,
    layout: Layout,
    *,
    tables: list[str] | None = None,
    limit: int = DEFAULT_HISTORY_LIMIT,
) -> dict[str, list[HistoryEntry]]:
    """The last ``limit`` runs of each table (of ``tables``, or of every table), newest first.

    Revisions are read newest first until every table has ``limit`` entries (or the history
    ends); then the reports of the runs in that span are read, for the runs that failed a table.
    Without ``tables``, a table that appears only in reports (it never committed) is shown too.

    Raises
    ------
    ConfigurationError
        When ``tables`` names a table the state does not hold, or ``limit`` is below 1.
    """
    if limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {limit}")
    current, _ = store.read()
    selected = list(_known(current, tables)) if tables else sorted(current.tables)
    entries: dict[str, list[HistoryEntry]] = {name: [] for name in selected}

    def complete() -> bool:
        return all(len(found) >= limit for found in entries.values())

    newer = current
    if current.revision and not complete():
        for older in _earlier_revisions(store, current):
            _add_changes(entries, newer, older)
            newer = older
            if complete():
                break
        else:
            if newer.revision == 1:  # the first revision: every tracker in it is new
                _add_changes(entries, newer, StateDocument())

    # A failed run older than every table's last ``limit`` entries cannot be among them.
    oldest = min((entry.run_id for found in entries.values() for entry in found), default="")
    oldest = oldest if complete() else ""
    _add_reports(entries, storage, layout, since=oldest, any_table=not tables)
    return {
        name: sorted(found, key=_commit_order, reverse=True)[:limit]
        for name, found in sorted(entries.items())
    }


def _commit_order(entry: HistoryEntry) -> tuple[int, int, str]:
    """Oldest first: by revision; a failed run after the revision it left in place, by start."""
    failed = entry.outcome == FAILED
    return (entry.revision if entry.revision is not None else -1, 1 if failed else 0, entry.run_id)


def _add_changes(entries: dict[str, list[HistoryEntry]], newer: StateDocument, older: StateDocument) -> None:
    for name, found in entries.items():
        tracker = newer.tables.get(name)
        if tracker is not None and tracker != older.tables.get(name):
            found.append(_revision_entry(newer, tracker, older.tables.get(name)))


def _revision_entry(document: StateDocument, tracker: TableState, before: TableState | None) -> HistoryEntry:
    run_id = document.run_id or "unknown"
    kind = _operation_kind(run_id)
    message = None
    if kind == RESET:
        outcome = WAS_RESET
        message = "watermark and file cursor dropped: the next run fully reloads the table"
    elif kind == ROLLBACK:
        outcome = ROLLED_BACK
        message = f"to the snapshot of run {tracker.run_id} ({tracker.location})"
    elif tracker.run_id == run_id:
        outcome = SUCCEEDED
    elif before is not None and replace(before, cursor=tracker.cursor) == tracker:
        outcome = CURSOR_SETTLED
    else:
        outcome = CHANGED
    cursor = tracker.cursor or {}
    return HistoryEntry(
        run_id=run_id,
        time=document.committed_at,
        outcome=outcome,
        revision=document.revision,
        load_type=tracker.load_type if outcome == SUCCEEDED else None,
        rows=tracker.rows,
        watermark=tracker.watermark,
        cursor_mark=cursor.get("mark"),
        cursor_recent_files=len(cursor["recent"]) if cursor else None,
        location=tracker.location,
        message=message,
    )


def _add_reports(
    entries: dict[str, list[HistoryEntry]], storage: Storage, layout: Layout, *, since: str, any_table: bool
) -> None:
    """Failed tables from the reports of the runs since ``since`` (a run id), and the files each
    committed run read."""
    runs = [run_id for run_id in storage.list_folders(_parent(layout.run_dir("-"))) if run_id >= since]
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        reports = list(pool.map(lambda run_id: _report(storage, layout, run_id), runs))
    for run_id, (revision, report) in zip(runs, reports, strict=True):
        for outcome in report:
            name = outcome.get("table")
            if not isinstance(name, str) or (name not in entries and not any_table):
                continue
            if outcome.get("status") == FAILED:
                started = run_started(run_id)
                entries.setdefault(name, []).append(
                    HistoryEntry(
                        run_id=run_id,
                        time=started.isoformat() if started else None,
                        outcome=FAILED,
                        revision=revision if isinstance(revision, int) else None,
                        load_type=outcome.get("load_type"),
                        watermark=outcome.get("watermark_before"),
                        message=outcome.get("message"),
                    )
                )
            elif outcome.get("status") == SUCCEEDED and name in entries:
                found = entries[name]
                for index, entry in enumerate(found):
                    if entry.run_id == run_id and entry.outcome == SUCCEEDED:
                        found[index] = replace(entry, files_read=outcome.get("files_read"))


def _report(storage: Storage, layout: Layout, run_id: str) -> tuple[object, list[dict[str, Any]]]:
    """A run's state revision and per-table outcomes; none when it left no readable report (it is
    running, or crashed)."""
    try:
        report = storage.read_json(layout.report(run_id))
    except ValueError:
        return None, []
    if not isinstance(report, dict) or not isinstance(report.get("tables"), list):
        return None, []
    return report.get("revision"), [outcome for outcome in report["tables"] if isinstance(outcome, dict)]


def _parent(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


# ----------------------------------------------------------------------------------------------
# reset
# ----------------------------------------------------------------------------------------------


def reset_tables(store: RevisionHistory, tables: list[str], *, now: datetime | None = None) -> StateDocument:
    """Make the next run fully reload ``tables``: commit their trackers without watermark or cursor.

    Each keeps its snapshot (readers go on reading it, retention goes on counting it) until the
    next run that succeeds for it replaces it with a complete rebuild from every file. Returns the
    committed document.

    Raises
    ------
    ConfigurationError
        When ``tables`` is empty or names a table the state does not hold.
    CommitConflictError
        When a run committed after the state was read; nothing is written then.
    """
    if not tables:
        raise ConfigurationError("name the tables to reset (--table T ...)")
    current, version = store.read()
    trackers = _known(current, tables)
    moment = _now(now)
    reset = {name: replace(tracker, watermark=None, cursor=None) for name, tracker in trackers.items()}
    document = current.with_tables(
        {**current.tables, **reset},
        operation_run_id(RESET, moment),
        moment.isoformat(timespec="seconds"),
    )
    store.write(document, expected_version=version)
    return document


# ----------------------------------------------------------------------------------------------
# rollback
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollback:
    """What ``rollback_table`` committed: ``restored`` is now current, ``replaced`` was."""

    table: str
    document: StateDocument
    restored: TableState
    replaced: TableState


def rollback_table(
    store: RevisionHistory,
    storage: Storage,
    table: str,
    *,
    to_run_id: str | None = None,
    now: datetime | None = None,
) -> Rollback:
    """Make a retained earlier snapshot of ``table`` current again, with the tracker it was
    committed with, so that the next run re-applies every file that arrived after it.

    The snapshot is the one run ``to_run_id`` committed, or by default the one before the current.
    Its tracker is read from the revision that run committed. The current snapshot (and every other
    retained one) stays retained: a rollback deletes nothing, and rolling forward again is a
    rollback ``--to`` the run rolled back from, before the next run of the table.

    Raises
    ------
    ConfigurationError
        When the table is unknown; when the snapshot is the current one, no longer retained, or
        missing on storage; when no revision of the history committed it; or when the table's
        settings (key, ordering, deletes, read mode, partitioning) changed since it was built.
    CommitConflictError
        When a run committed after the state was read; nothing is written then.
    """
    current, version = store.read()
    tracker = _known(current, [table])[table]
    if to_run_id is not None and to_run_id == tracker.run_id:
        raise ConfigurationError(f"run {to_run_id}'s snapshot is already table {table!r}'s current snapshot")
    if to_run_id is None and not tracker.previous_locations:
        raise ConfigurationError(
            f"table {table!r} has no earlier snapshot retained (only its current one, "
            f"{tracker.location}); nothing to roll back to"
        )
    target = _committed_tracker(store, current, table, tracker, to_run_id)
    _check_restorable(storage, table, tracker, target)
    restored = replace(
        target,
        previous_locations=_others(tracker.location, tracker.previous_locations, target.location),
        previous_tombstones=_others(tracker.tombstones, tracker.previous_tombstones, target.tombstones),
        retained_partitions=_other_partitions(tracker, target),
    )
    moment = _now(now)
    document = current.with_tables(
        {**current.tables, table: restored},
        operation_run_id(ROLLBACK, moment),
        moment.isoformat(timespec="seconds"),
    )
    store.write(document, expected_version=version)
    return Rollback(table, document, restored, tracker)


def _committed_tracker(
    store: RevisionHistory, current: StateDocument, table: str, tracker: TableState, to_run_id: str | None
) -> TableState:
    """The tracker of the wanted snapshot as the run that wrote it committed it."""
    wanted = tracker.previous_locations[0] if to_run_id is None else None
    for document in _earlier_revisions(store, current):
        found = document.tables.get(table)
        if found is None or found.run_id != document.run_id:
            continue  # not the revision that committed this tracker's snapshot
        if found.location == wanted or found.run_id == to_run_id:
            return found
    retained = ", ".join(tracker.previous_locations) or "none"
    if to_run_id is not None:
        raise ConfigurationError(
            f"the state's history holds no snapshot of table {table!r} committed by run {to_run_id!r}; "
            f"its retained earlier snapshots are: {retained} (`cdc-pipeline history --table {table}` "
            "lists its runs)"
        )
    raise ConfigurationError(
        f"the state's history holds no revision that committed table {table!r}'s snapshot {wanted}, so "
        "its tracker (watermark, file cursor) is unknown; it cannot be rolled back to. `cdc-pipeline "
        f"reset --table {table}` reloads the table in full instead"
    )


def _settings(tracker: TableState) -> tuple[object, ...]:
    """What a snapshot was built with that the next run would otherwise rebuild it for."""
    return (
        tracker.dedup_settings(),
        tuple(column.lower() for column in tracker.partition_by),
        tracker.incremental_by,
        (tracker.watermark_column or "").lower(),
    )


def _needed(tracker: TableState) -> list[str]:
    """The folders a tracker's current snapshot needs: what a reader reads, and its tombstones."""
    readers = tracker.partition_locations() if tracker.partitions is not None else [tracker.location]
    return [*readers, *([tracker.tombstones] if tracker.tombstones else [])]


def _check_restorable(storage: Storage, table: str, tracker: TableState, target: TableState) -> None:
    expired = [
        location for location in [target.location, *_needed(target)] if location not in tracker.locations()
    ]
    if expired:
        raise ConfigurationError(
            f"run {target.run_id}'s snapshot of table {table!r} is no longer retained "
            f"({', '.join(expired)} expired); the retained earlier snapshots are: "
            f"{', '.join(tracker.previous_locations) or 'none'}. Retention is --retain-snapshots "
            "(RetainedSnapshots on AWS)"
        )
    if _settings(target) != _settings(tracker):
        raise ConfigurationError(
            f"table {table!r}'s settings changed since run {target.run_id} built that snapshot (key, "
            f"ordering, deletes, read mode or partitioning: then {_settings(target)!r}, now "
            f"{_settings(tracker)!r}); the next run would rebuild it in full anyway. `cdc-pipeline reset "
            f"--table {table}` does that"
        )
    missing = [location for location in _needed(target) if not storage.file_sizes(location)]
    if missing:
        raise ConfigurationError(
            f"run {target.run_id}'s snapshot of table {table!r} is recorded as retained, but "
            f"{', '.join(missing)} holds no file on storage (deleted by hand?); it cannot be restored"
        )


def _others(current: str | None, previous: tuple[str, ...], restored: str | None) -> tuple[str, ...]:
    """The folders kept beside the restored one, newest first: the current one, then the others."""
    kept = [location for location in (current, *previous) if location and location != restored]
    return tuple(dict.fromkeys(kept))


def _other_partitions(tracker: TableState, target: TableState) -> tuple[dict[str, dict[str, Any]], ...]:
    if target.partitions is None:
        return ()
    earlier = [
        *([tracker.partitions] if tracker.partitions is not None else []),
        *tracker.retained_partitions,
    ]
    if target.partitions in earlier:
        earlier.remove(target.partitions)
    return tuple(earlier)


# ----------------------------------------------------------------------------------------------
# vacuum
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Folder:
    """A folder under the output path that the committed state does not reference."""

    location: str
    table: str
    kind: str  # snapshot | partition | tombstones | quarantine
    run_id: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Vacuum:
    """``orphans``: of runs that are over, deleted when applied; ``in_progress``: of runs that may
    still be writing them (no report, started less than the guard age ago), left alone."""

    orphans: list[Folder]
    in_progress: list[Folder]
    deleted: list[str]
    applied: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "orphans": [folder.to_json() for folder in self.orphans],
            "orphan_bytes": sum(folder.bytes for folder in self.orphans),
            "in_progress": [folder.to_json() for folder in self.in_progress],
            "deleted": self.deleted,
        }


def vacuum(
    store: RevisionHistory,
    storage: Storage,
    layout: Layout,
    *,
    min_age: timedelta,
    apply: bool = False,
    now: datetime | None = None,
    running: str | None = None,
) -> Vacuum:
    """Find (and with ``apply`` delete) the folders under ``layout.output_path`` that no committed
    tracker references, of runs that are over.

    A table's snapshot, tombstone and quarantine folders are one per run
    (``<output>/<table>/<area>/<run_id>``); a quarantine folder belongs with its run's snapshot
    and goes when that is no longer retained. Inside a snapshot folder that partitions of the
    state name, a partition folder none names is an orphan too. Before deleting, the state is read
    again and any folder it now references is spared.

    Raises
    ------
    ConfigurationError
        When there is no committed state (every folder would look orphaned), or the state's
        snapshots are not under ``layout.output_path`` (the wrong output path).
    """
    current, _ = store.read()
    if current.revision == 0:
        raise ConfigurationError(
            "there is no committed state, so every folder of the output path would look orphaned; pass "
            "the --state of the runs that wrote --output"
        )
    root = layout.output_path.rstrip("/") + "/"
    elsewhere = sorted(
        name for name, tracker in current.tables.items() if not tracker.location.startswith(root)
    )
    if elsewhere:
        example = current.tables[elsewhere[0]].location
        raise ConfigurationError(
            f"the state's snapshots are not under --output {layout.output_path} (table "
            f"{elsewhere[0]!r} is at {example}); pass the output path its runs wrote to"
        )
    referenced = _References.of(current)
    deadline = _now(now) - min_age
    finished: dict[str, bool] = {}

    def over(run_id: str) -> bool:
        if run_id == running:
            return False
        if run_id not in finished:
            started = run_started(run_id)
            old = started is not None and started <= deadline
            finished[run_id] = old or _report_exists(storage, layout, run_id)
        return finished[run_id]

    orphans: list[Folder] = []
    in_progress: list[Folder] = []
    for table, kind, run_id, location in _unreferenced(storage, layout, referenced):
        folder = Folder(location, table, kind, run_id, sum(storage.file_sizes(location).values()))
        (orphans if over(run_id) else in_progress).append(folder)
    deleted: list[str] = []
    if apply and orphans:
        fresh, _ = store.read()
        still = _References.of(fresh)
        doomed = [folder.location for folder in orphans if not still.keep(folder.location)]
        with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
            existed = list(pool.map(storage.delete_tree, doomed))
        deleted = [location for location, was_there in zip(doomed, existed, strict=True) if was_there]
    return Vacuum(orphans, in_progress, deleted, apply)


def _report_exists(storage: Storage, layout: Layout, run_id: str) -> bool:
    try:
        return storage.read_json(layout.report(run_id)) is not None
    except ValueError:
        return True  # a report, if an unreadable one: the run got as far as writing it


@dataclass(frozen=True)
class _References:
    """The folders the committed trackers reference, and every folder above one of them."""

    folders: frozenset[str]
    above: frozenset[str]

    @classmethod
    def of(cls, document: StateDocument) -> _References:
        folders = {
            location.rstrip("/") for tracker in document.tables.values() for location in tracker.locations()
        }
        above = {folder.rsplit("/", depth)[0] for folder in folders for depth in range(1, folder.count("/"))}
        return cls(frozenset(folders), frozenset(above))

    def keep(self, location: str) -> bool:
        """Whether ``location`` is referenced, or holds a referenced folder."""
        return location.rstrip("/") in self.folders or location.rstrip("/") in self.above


def _unreferenced(
    storage: Storage, layout: Layout, referenced: _References
) -> Iterator[tuple[str, str, str, str]]:
    """(table, kind, run id, location) of every run folder under the output that nothing references."""
    areas = {SNAPSHOT: layout.snapshot, TOMBSTONES: layout.tombstones, QUARANTINE: layout.quarantine}
    for table in storage.list_folders(layout.output_path):
        for kind, location_of in areas.items():
            for run_id in storage.list_folders(_parent(location_of(table, "-"))):
                location = location_of(table, run_id)
                if kind == QUARANTINE:
                    # Kept as long as its run's snapshot (or one of its partitions) is retained.
                    snapshot = layout.snapshot(table, run_id)
                    if not referenced.keep(snapshot):
                        yield table, kind, run_id, location
                elif location in referenced.folders and location in referenced.above:
                    # A run folder holding partitions that some snapshot names: the others are orphans.
                    for name in storage.list_folders(location):
                        partition = f"{location}/{name}"
                        if partition not in referenced.folders:
                            yield table, PARTITION, run_id, partition
                elif not referenced.keep(location):
                    yield table, kind, run_id, location
