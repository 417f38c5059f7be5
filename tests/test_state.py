"""LocalStateStore: one document replaced by compare-and-swap under a lock file, with a history copy."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cdc_pipeline.errors import CommitConflictError, StateCorruptError
from cdc_pipeline.state import (
    FORMAT_VERSION,
    HISTORY_DIR,
    LOCK_FILE,
    LocalStateStore,
    StateDocument,
    TableState,
)

COMMITTED_AT = "2024-05-01T12:00:00+00:00"


def _tracker(run_id: str, watermark: str | None = "2024-04-30T23:59:59.999999") -> TableState:
    # The location names the run, so "whose document is this" is visible in every tracker.
    return TableState(
        watermark=watermark,
        location=f"/out/orders/snapshots/{run_id}",
        rows=7,
        run_id=run_id,
        committed_at=COMMITTED_AT,
        load_type="incremental",
        mode="dedup",
        watermark_column="updated_at",
    )


def _next_document(base: StateDocument, run_id: str) -> StateDocument:
    return base.with_tables({**base.tables, "orders": _tracker(run_id)}, run_id, COMMITTED_AT)


def _history(directory: Path) -> dict[str, bytes]:
    folder = directory / HISTORY_DIR
    return {path.name: path.read_bytes() for path in folder.iterdir()} if folder.exists() else {}


def _hold_lock(directory: Path, run_id: str) -> int:
    """Take the state lock the way a committing run does; close the returned fd to release it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}).encode())
    return fd


def _lock_is_free(directory: Path) -> bool:
    path = directory / LOCK_FILE
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return path.read_bytes() == b""


def _committed(directory: Path, run_id: str) -> tuple[StateDocument, str]:
    store = LocalStateStore(directory)
    base, version = store.read()
    written = store.write(_next_document(base, run_id), version)
    return store.read()[0], written


# ----------------------------------------------------------------------------------------------
# Reading and writing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["", "not-created-yet"], ids=["empty-directory", "missing-directory"])
def test_a_directory_without_state_reads_as_an_empty_revision_zero_with_no_version(tmp_path, subdir):
    document, version = LocalStateStore(tmp_path / subdir).read()

    assert document == StateDocument()
    assert document.revision == 0
    assert document.tables == {}
    assert version is None


def test_write_then_read_round_trips_every_table_state_field(tmp_path):
    every_field = TableState(
        watermark="2024-04-30T23:59:59.999999",
        location="s3://bucket/out/orders/snapshots/run-1",
        rows=123_456,
        run_id="run-1",
        committed_at=COMMITTED_AT,
        load_type="incremental",
        mode="dedup",
        watermark_column="updated_at",
        previous_locations=(
            "s3://bucket/out/orders/snapshots/run-0",
            "s3://bucket/out/orders/snapshots/run-x",
        ),
    )
    # The other shape a tracker takes: a keyless table reloaded in full keeps no watermark.
    no_watermark = TableState(
        watermark=None,
        location="s3://bucket/out/events/snapshots/run-1",
        rows=0,
        run_id="run-1",
        committed_at=COMMITTED_AT,
        load_type="full",
        mode="append",
    )
    document = StateDocument().with_tables(
        {"orders": every_field, "events": no_watermark}, "run-1", COMMITTED_AT
    )

    written_version = LocalStateStore(tmp_path).write(document, expected_version=None)
    # A fresh store instance: the round trip must go through the file, not through memory.
    read_back, read_version = LocalStateStore(tmp_path).read()

    assert read_back == document
    assert read_back.tables["orders"].previous_locations == every_field.previous_locations
    assert read_back.revision == 1
    assert read_back.run_id == "run-1"
    assert read_back.committed_at == COMMITTED_AT
    assert read_version == written_version
    assert read_version is not None


def test_every_write_leaves_a_history_copy_that_later_writes_do_not_touch(tmp_path):
    store = LocalStateStore(tmp_path)
    first, first_version = _committed(tmp_path, "run-1")
    first_bytes = store.path.read_bytes()
    history_after_first = _history(tmp_path)
    store.write(_next_document(first, "run-2"), first_version)
    second_bytes = store.path.read_bytes()

    history = _history(tmp_path)
    assert len(history_after_first) == 1
    assert len(history) == 2
    # The copy taken at revision 1 is still byte-for-byte the revision-1 document.
    assert history_after_first.items() <= history.items()
    assert sorted(history.values()) == sorted([first_bytes, second_bytes])
    copies = [StateDocument.from_json(json.loads(content), name) for name, content in history.items()]
    assert sorted((copy.revision, copy.run_id) for copy in copies) == [(1, "run-1"), (2, "run-2")]


def test_starting_over_after_deleting_the_state_never_overwrites_an_earlier_history_copy(tmp_path):
    store = LocalStateStore(tmp_path)
    _committed(tmp_path, "run-old")
    old_history = _history(tmp_path)
    # The corrupt-state message invites the operator to delete the document to start over, and also
    # points at history/ as the way back: starting over must not destroy that way back.
    store.path.unlink()

    store.write(_next_document(StateDocument(), "run-new"), expected_version=None)

    history = _history(tmp_path)
    for name, content in old_history.items():
        assert history.get(name) == content, f"history copy {name} of the earlier lineage was overwritten"
    assert store.read()[0].run_id == "run-new"


# ----------------------------------------------------------------------------------------------
# Compare-and-swap
# ----------------------------------------------------------------------------------------------


def test_a_write_from_a_stale_version_is_refused_naming_the_run_that_committed(tmp_path):
    store = LocalStateStore(tmp_path)
    planned_from, planned_version = store.read()  # both runs plan from "no state"
    store.write(_next_document(planned_from, "run-winner"), planned_version)
    state_before, history_before = store.path.read_bytes(), _history(tmp_path)

    with pytest.raises(CommitConflictError) as refused:
        store.write(_next_document(planned_from, "run-late"), planned_version)

    assert refused.value.competing_run_id == "run-winner"
    assert "run-winner" in str(refused.value)
    assert store.path.read_bytes() == state_before
    assert _history(tmp_path) == history_before
    assert _lock_is_free(tmp_path)


def test_a_writer_that_planned_from_a_revision_is_refused_when_the_state_has_gone(tmp_path):
    store = LocalStateStore(tmp_path)
    base, version = _committed(tmp_path, "run-1")
    store.path.unlink()

    # Silently recreating the document from a plan made against revision 1 would resurrect state
    # somebody removed on purpose.
    with pytest.raises(CommitConflictError):
        store.write(_next_document(base, "run-2"), version)

    assert not store.path.exists()


def _write_in_thread(
    directory: Path,
    document: StateDocument,
    version: str | None,
    barrier: threading.Barrier,
    results: dict[str, object],
) -> None:
    barrier.wait(timeout=10)
    try:
        LocalStateStore(directory).write(document, version)
    except Exception as exc:
        results[document.run_id or ""] = exc
    else:
        results[document.run_id or ""] = "won"


def _one_winner(results: dict[str, object]) -> tuple[str, str, CommitConflictError]:
    winners = [run_id for run_id, result in results.items() if result == "won"]
    assert len(winners) == 1, f"expected exactly one winner, got {results!r}"
    (loser,) = set(results) - set(winners)
    conflict = results[loser]
    assert isinstance(conflict, CommitConflictError), f"loser {loser} got {conflict!r}"
    return winners[0], loser, conflict


def test_racing_writers_in_threads_produce_one_winner_and_a_conflict_naming_it(tmp_path):
    base, version = _committed(tmp_path, "run-0")
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}
    racers = [
        threading.Thread(
            target=_write_in_thread,
            args=(tmp_path, _next_document(base, run_id), version, barrier, results),
        )
        for run_id in ("run-a", "run-b")
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=30)

    winner, _, conflict = _one_winner(results)
    assert conflict.competing_run_id == winner
    assert winner in str(conflict)
    final, _ = LocalStateStore(tmp_path).read()
    assert final == _next_document(base, winner)
    assert len(_history(tmp_path)) == 2


def _write_in_process(directory: str, run_id: str, barrier, results) -> None:
    """A racer in its own process: it plans (reads) first, then waits for the other to have planned."""
    try:
        store = LocalStateStore(directory)
        base, version = store.read()
        barrier.wait(timeout=30)
        store.write(_next_document(base, run_id), version)
    except CommitConflictError as exc:
        results.put((run_id, version, "conflict", exc.competing_run_id, str(exc)))
    except Exception as exc:
        results.put((run_id, None, "error", None, repr(exc)))
    else:
        results.put((run_id, version, "won", None, None))


def test_racing_writers_in_processes_produce_one_winner_and_a_conflict_naming_it(tmp_path):
    _, base_version = _committed(tmp_path, "run-0")
    # fork: a real second process (own pid, own lock attempt) without re-importing the test suite.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    results = context.Queue()
    racers = [
        context.Process(target=_write_in_process, args=(str(tmp_path), run_id, barrier, results))
        for run_id in ("run-a", "run-b")
    ]
    for racer in racers:
        racer.start()
    try:
        outcomes = {}
        for _ in racers:
            run_id, version, kind, competing, message = results.get(timeout=60)
            outcomes[run_id] = (version, kind, competing, message)
    except queue.Empty:
        pytest.fail("a racing process reported nothing")
    finally:
        for racer in racers:
            racer.join(timeout=30)

    assert all(version == base_version for version, *_ in outcomes.values()), outcomes
    winners = [run_id for run_id, (_, kind, _, _) in outcomes.items() if kind == "won"]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    (loser,) = set(outcomes) - {winner}
    _, kind, competing, message = outcomes[loser]
    assert kind == "conflict", outcomes[loser]
    assert competing == winner
    assert winner in message
    final, _ = LocalStateStore(tmp_path).read()
    assert final.run_id == winner
    assert final.revision == 2
    assert final.tables["orders"].location.endswith(winner)


# ----------------------------------------------------------------------------------------------
# The lock file
# ----------------------------------------------------------------------------------------------


def test_a_lock_held_by_another_commit_makes_a_writer_give_up_after_the_timeout_naming_the_holder(tmp_path):
    base, version = _committed(tmp_path, "run-0")
    state_before = (tmp_path / "state.json").read_bytes()
    holder = _hold_lock(tmp_path, "run-holding")
    lock_before = (tmp_path / LOCK_FILE).read_bytes()
    store = LocalStateStore(tmp_path, lock_timeout_s=0.2)

    started = time.monotonic()
    try:
        with pytest.raises(CommitConflictError) as refused:
            store.write(_next_document(base, "run-blocked"), version)
        waited = time.monotonic() - started
    finally:
        os.close(holder)

    assert refused.value.competing_run_id == "run-holding"
    assert "run-holding" in str(refused.value)
    # It waited for the holder before giving up: a short-lived lock must not fail a commit at once.
    assert 0.2 <= waited < 5
    assert store.path.read_bytes() == state_before
    # Giving up must not clear somebody else's lock.
    assert (tmp_path / LOCK_FILE).read_bytes() == lock_before


def test_a_lock_whose_holder_crashed_does_not_block_the_next_commit(tmp_path):
    base, version = _committed(tmp_path, "run-0")
    # A separate process takes the lock, names itself, and dies without releasing or cleaning up.
    script = (
        "import fcntl, json, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'run_id': 'run-crashed', 'pid': os.getpid()}).encode())\n"
        "os._exit(9)\n"
    )
    crashed = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path / LOCK_FILE)], check=False)
    assert crashed.returncode == 9
    assert "run-crashed" in (tmp_path / LOCK_FILE).read_text()
    store = LocalStateStore(tmp_path, lock_timeout_s=0.2)

    new_version = store.write(_next_document(base, "run-after-crash"), version)

    document, read_version = store.read()
    assert document.run_id == "run-after-crash"
    assert read_version == new_version
    assert _lock_is_free(tmp_path)


def test_a_half_written_lock_file_does_not_block_the_next_commit(tmp_path):
    base, version = _committed(tmp_path, "run-0")
    (tmp_path / LOCK_FILE).write_bytes(b"")
    store = LocalStateStore(tmp_path, lock_timeout_s=0.2)

    store.write(_next_document(base, "run-next"), version)

    assert store.read()[0].run_id == "run-next"


def test_two_writers_after_a_crashed_holder_do_not_both_commit(tmp_path):
    base, version = _committed(tmp_path, "run-0")
    (tmp_path / LOCK_FILE).write_text(json.dumps({"run_id": "run-crashed", "pid": 1}))
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def racer(run_id: str) -> None:
        start.wait(timeout=5)
        try:
            LocalStateStore(tmp_path, lock_timeout_s=5).write(_next_document(base, run_id), version)
        except CommitConflictError as exc:
            results[run_id] = exc
        else:
            results[run_id] = "won"

    threads = [threading.Thread(target=racer, args=(f"run-{name}",)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    winner, _, conflict = _one_winner(results)
    assert conflict.competing_run_id == winner
    assert LocalStateStore(tmp_path).read()[0].run_id == winner


# ----------------------------------------------------------------------------------------------
# A corrupt document
# ----------------------------------------------------------------------------------------------

VALID = {"format_version": 1, "revision": 3, "run_id": "run-3", "committed_at": COMMITTED_AT, "tables": {}}
CORRUPT_DOCUMENTS = {
    "empty-file": b"",
    "invalid-json": b'{"format_version": 1, "revision": 3, "tables": {',
    "not-utf8": b"\x80\x81\x82",
    "json-array": json.dumps([VALID]).encode(),
    "json-string": json.dumps("state").encode(),
    # A newer format is no corruption (test_formats.py); an unknown older one or a non-number is.
    "unknown-format-version": json.dumps({**VALID, "format_version": 0}).encode(),
    "format-version-not-a-number": json.dumps({**VALID, "format_version": "3"}).encode(),
    "no-format-version": json.dumps({k: v for k, v in VALID.items() if k != "format_version"}).encode(),
    "missing-tables": json.dumps({k: v for k, v in VALID.items() if k != "tables"}).encode(),
    "missing-revision": json.dumps({k: v for k, v in VALID.items() if k != "revision"}).encode(),
    "tables-is-a-list": json.dumps({**VALID, "tables": []}).encode(),
    "tracker-missing-keys": json.dumps({**VALID, "tables": {"orders": {"watermark": "2024-01-01"}}}).encode(),
    "tracker-garbage-watermark": json.dumps(
        {**VALID, "tables": {"orders": {**_tracker("run-3").to_json(), "watermark": "garbage"}}}
    ).encode(),
    "tracker-rows-not-a-count": json.dumps(
        {**VALID, "tables": {"orders": {**_tracker("run-3").to_json(), "rows": "many"}}}
    ).encode(),
    "tracker-no-location": json.dumps(
        {**VALID, "tables": {"orders": {**_tracker("run-3").to_json(), "location": None}}}
    ).encode(),
    "tracker-unknown-key": json.dumps(
        {**VALID, "tables": {"orders": {**_tracker("run-3").to_json(), "surprise": 1}}}
    ).encode(),
}


@pytest.mark.parametrize("content", CORRUPT_DOCUMENTS.values(), ids=CORRUPT_DOCUMENTS.keys())
def test_a_corrupt_state_document_is_an_error_naming_the_file_and_the_history_folder(tmp_path, content):
    store = LocalStateStore(tmp_path)
    store.path.write_bytes(content)

    with pytest.raises(StateCorruptError) as corrupt:
        store.read()

    message = str(corrupt.value)
    assert str(store.path) in message
    assert f"{HISTORY_DIR}/" in message


@pytest.mark.parametrize("content", CORRUPT_DOCUMENTS.values(), ids=CORRUPT_DOCUMENTS.keys())
def test_a_writer_never_replaces_a_corrupt_state_document(tmp_path, content):
    store = LocalStateStore(tmp_path, lock_timeout_s=0.2)
    store.path.write_bytes(content)

    # Planned as if there were no state: treating the corrupt file as empty would let this through.
    with pytest.raises(StateCorruptError):
        store.write(_next_document(StateDocument(), "run-1"), expected_version=None)

    assert store.path.read_bytes() == content
    assert _history(tmp_path) == {}
    assert _lock_is_free(tmp_path)


def test_a_format_1_document_written_before_arrival_reads_is_read_as_it_is(tmp_path) -> None:
    # As the previous release wrote it: no cursor, read mode, epoch unit or tombstones.
    legacy_tracker = {
        "watermark": "2026-11-02T10:07:12.536502Z",
        "watermark_column": "updated_at",
        "location": "/lake/current/customers/snapshots/r7",
        "previous_locations": ["/lake/current/customers/snapshots/r6"],
        "rows": 58,
        "run_id": "r7",
        "committed_at": "2026-11-28T00:40:18+00:00",
        "load_type": "incremental",
        "mode": "dedup",
        "primary_key": ["customer_id"],
        "sequence_column": None,
        "delete_column": "Op",
        "delete_values": ["D"],
    }
    (tmp_path / "state.json").write_text(json.dumps({**VALID, "tables": {"customers": legacy_tracker}}))

    document, version = LocalStateStore(tmp_path).read()

    customers = document.tables["customers"]
    assert (version, customers.location, customers.watermark) == (
        "3",
        legacy_tracker["location"],
        legacy_tracker["watermark"],
    )
    assert (customers.incremental_by, customers.cursor, customers.tombstones) == (None, None, None)
    assert document.to_json()["format_version"] == FORMAT_VERSION == 4


def test_a_tracker_with_a_garbled_file_cursor_is_corrupt_not_empty(tmp_path) -> None:
    tracker = {**_tracker("run-3").to_json(), "cursor": {"mark": "yesterday", "recent": {}}}
    (tmp_path / "state.json").write_text(
        json.dumps({**VALID, "format_version": 2, "tables": {"orders": tracker}})
    )

    with pytest.raises(StateCorruptError, match="is corrupt"):
        LocalStateStore(tmp_path).read()
