"""The StateStore contract: every implementation (local directory, S3) reads, swaps and refuses alike."""

from __future__ import annotations

import json

import pytest

from cdc_pipeline.errors import CommitConflictError, NewerFormatError, StateCorruptError
from cdc_pipeline.state import HISTORY_DIR, Revision, StateDocument, TableState
from tests.contract.conftest import StateStoreCase

COMMITTED_AT = "2024-05-01T12:00:00+00:00"


def _tracker(run_id: str) -> TableState:
    return TableState(
        watermark="2024-04-30T23:59:59.999999",
        location=f"s3://lake/orders/snapshots/{run_id}",
        rows=7,
        run_id=run_id,
        committed_at=COMMITTED_AT,
        load_type="incremental",
        mode="dedup",
        watermark_column="updated_at",
        previous_locations=("s3://lake/orders/snapshots/run-before",),
    )


def _next_document(base: StateDocument, run_id: str) -> StateDocument:
    return base.with_tables({**base.tables, "orders": _tracker(run_id)}, run_id, COMMITTED_AT)


def _commit(case: StateStoreCase, run_id: str) -> tuple[StateDocument, str]:
    store = case.make()
    base, version = store.read()
    return _next_document(base, run_id), store.write(_next_document(base, run_id), version)


def test_an_empty_store_reads_as_revision_zero_with_no_version(state_store_case):
    document, version = state_store_case.make().read()

    assert document == StateDocument()
    assert document.revision == 0
    assert version is None


def test_a_written_document_reads_back_equal_with_the_version_the_write_returned(state_store_case):
    written, written_version = _commit(state_store_case, "run-1")

    # A fresh instance: the round trip must go through storage, not memory.
    read_back, read_version = state_store_case.make().read()

    assert read_back == written
    assert read_back.revision == 1
    assert read_back.tables["orders"].previous_locations == ("s3://lake/orders/snapshots/run-before",)
    assert read_version == written_version
    assert read_version is not None


def test_each_commit_gets_a_new_version(state_store_case):
    _, first_version = _commit(state_store_case, "run-1")
    second, second_version = _commit(state_store_case, "run-2")

    assert second_version != first_version
    assert state_store_case.make().read() == (second, second_version)


def test_a_write_from_a_stale_version_is_refused_naming_the_winner_and_changes_nothing(state_store_case):
    _commit(state_store_case, "run-0")
    store = state_store_case.make()
    planned_from, planned_version = store.read()  # both runs plan from revision 1
    store.write(_next_document(planned_from, "run-winner"), planned_version)
    state_before, history_before = state_store_case.get_raw(), state_store_case.history()

    with pytest.raises(CommitConflictError) as refused:
        store.write(_next_document(planned_from, "run-late"), planned_version)

    assert refused.value.competing_run_id == "run-winner"
    assert "run-winner" in str(refused.value)
    assert state_store_case.get_raw() == state_before
    assert state_store_case.history() == history_before
    assert store.read()[0].run_id == "run-winner"


def test_a_first_write_is_refused_when_a_document_appeared_since_planning(state_store_case):
    store = state_store_case.make()
    planned_from, planned_version = store.read()  # both runs plan from "no state"
    store.write(_next_document(planned_from, "run-first"), planned_version)
    state_before = state_store_case.get_raw()

    with pytest.raises(CommitConflictError) as refused:
        store.write(_next_document(planned_from, "run-second"), planned_version)

    assert refused.value.competing_run_id == "run-first"
    assert "run-first" in str(refused.value)
    assert state_store_case.get_raw() == state_before


def test_a_write_planned_from_a_revision_is_refused_when_the_document_has_gone(state_store_case):
    base, version = _commit(state_store_case, "run-1")
    state_store_case.remove()

    # Recreating the document from a plan made against revision 1 would resurrect removed state.
    with pytest.raises(CommitConflictError) as refused:
        state_store_case.make().write(_next_document(base, "run-2"), version)

    assert refused.value.competing_run_id is None
    assert state_store_case.get_raw() is None


def test_every_commit_leaves_a_history_copy_named_by_revision_and_run(state_store_case):
    _commit(state_store_case, "run-1")
    first_state = state_store_case.get_raw()
    after_first = state_store_case.history()
    _commit(state_store_case, "run-2")

    history = state_store_case.history()
    assert sorted(history) == ["0000000001-run-1.json", "0000000002-run-2.json"]
    assert history["0000000001-run-1.json"] == after_first["0000000001-run-1.json"] == first_state
    assert history["0000000002-run-2.json"] == state_store_case.get_raw()


def test_starting_over_after_deleting_the_state_keeps_the_earlier_history(state_store_case):
    _commit(state_store_case, "run-old")
    old_history = state_store_case.history()
    state_store_case.remove()

    _commit(state_store_case, "run-new")

    history = state_store_case.history()
    assert old_history.items() <= history.items()
    assert "0000000001-run-new.json" in history


def test_history_lists_every_committed_revision_oldest_first_and_reads_each_back(state_store_case):
    first, _ = _commit(state_store_case, "run-1")
    second, _ = _commit(state_store_case, "run-2")
    store = state_store_case.make()

    history = store.history()

    assert history == [
        Revision(1, "run-1", "0000000001-run-1.json"),
        Revision(2, "run-2", "0000000002-run-2.json"),
    ]
    assert [store.read_revision(revision) for revision in history] == [first, second]


def test_history_of_an_empty_store_is_empty(state_store_case):
    assert state_store_case.make().history() == []


def test_history_keeps_both_lineages_of_a_state_started_over(state_store_case):
    old, _ = _commit(state_store_case, "run-old")
    state_store_case.remove()
    new, _ = _commit(state_store_case, "run-new")
    store = state_store_case.make()

    history = store.history()

    assert [(revision.revision, revision.run_id) for revision in history] == [(1, "run-new"), (1, "run-old")]
    assert {revision.run_id: store.read_revision(revision) for revision in history} == {
        "run-old": old,
        "run-new": new,
    }


VALID = {"format_version": 1, "revision": 3, "run_id": "run-3", "committed_at": COMMITTED_AT, "tables": {}}
CORRUPT_DOCUMENTS = {
    "empty": b"",
    "invalid-json": b'{"format_version": 1, "revision": 3, "tables": {',
    "not-utf8": b"\x80\x81\x82",
    "json-array": json.dumps([VALID]).encode(),
    "unknown-format-version": json.dumps({**VALID, "format_version": 0}).encode(),
    "missing-tables": json.dumps({k: v for k, v in VALID.items() if k != "tables"}).encode(),
    "tracker-missing-keys": json.dumps({**VALID, "tables": {"orders": {"watermark": "x"}}}).encode(),
}


@pytest.mark.parametrize("content", CORRUPT_DOCUMENTS.values(), ids=CORRUPT_DOCUMENTS.keys())
def test_a_corrupt_document_is_an_error_naming_it_and_the_history_folder(state_store_case, content):
    state_store_case.put_raw(content)

    with pytest.raises(StateCorruptError) as corrupt:
        state_store_case.make().read()

    assert state_store_case.document_name in str(corrupt.value)
    assert f"{HISTORY_DIR}/" in str(corrupt.value)


@pytest.mark.parametrize("content", CORRUPT_DOCUMENTS.values(), ids=CORRUPT_DOCUMENTS.keys())
def test_a_writer_never_replaces_a_corrupt_document(state_store_case, content):
    state_store_case.put_raw(content)

    # Planned as if there were no state: reading the corrupt document as empty would let this through.
    with pytest.raises(StateCorruptError):
        state_store_case.make().write(_next_document(StateDocument(), "run-1"), expected_version=None)

    assert state_store_case.get_raw() == content
    assert state_store_case.history() == {}


def test_a_document_of_a_newer_format_is_refused_as_newer_and_never_replaced(state_store_case):
    content = json.dumps({**VALID, "format_version": 99}).encode()
    state_store_case.put_raw(content)

    with pytest.raises(NewerFormatError, match=r"written by a newer cdc-pipeline \(format 99;") as refused:
        state_store_case.make().read()
    with pytest.raises(NewerFormatError):
        state_store_case.make().write(_next_document(StateDocument(), "run-1"), expected_version=None)

    assert "corrupt" not in str(refused.value)
    assert state_store_case.get_raw() == content
    assert state_store_case.history() == {}
