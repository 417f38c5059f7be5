"""Documents written by a newer cdc-pipeline are refused as such: never called corrupt, never with
advice to restore or delete them (that would throw away what the newer version recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdc_pipeline.commit import commit_run
from cdc_pipeline.errors import NewerFormatError, StateCorruptError
from cdc_pipeline.manifest import MANIFEST_FORMAT, Manifest
from cdc_pipeline.packs import Pack, work_items
from cdc_pipeline.plan import WORK_ITEM_FORMAT, Layout
from cdc_pipeline.state import FORMAT_VERSION, LocalStateStore, StateDocument, parse_state_document
from cdc_pipeline.storage import LocalStorage
from tests.test_commit import NOW, Env, ingest_succeeded, make_plan, work_item

NEWER_STATE = {"format_version": FORMAT_VERSION + 1, "revision": 9, "run_id": "r9", "tables": {}}


def assert_refused_as_newer(error: BaseException, found: int, newest: int) -> None:
    message = str(error)
    assert (
        f"was written by a newer cdc-pipeline (format {found}; this one reads up to format {newest})"
        in message
    )
    assert "upgrade" in message
    for misleading in ("corrupt", "delete", "restore", "history/"):
        assert misleading not in message


def test_a_state_document_of_a_newer_format_is_refused_as_newer_not_corrupt(tmp_path) -> None:
    store = LocalStateStore(tmp_path)
    store.path.write_text(json.dumps(NEWER_STATE))

    with pytest.raises(NewerFormatError) as refused:
        store.read()

    assert not isinstance(refused.value, StateCorruptError)
    assert str(store.path) in str(refused.value)
    assert_refused_as_newer(refused.value, FORMAT_VERSION + 1, FORMAT_VERSION)


def test_a_writer_never_replaces_a_state_document_of_a_newer_format(tmp_path) -> None:
    store = LocalStateStore(tmp_path, lock_timeout_s=0.2)
    content = json.dumps(NEWER_STATE).encode()
    store.path.write_bytes(content)

    with pytest.raises(NewerFormatError):
        store.write(StateDocument(revision=1, run_id="r1", committed_at="2026-01-01T00:00:00+00:00"), None)

    assert store.path.read_bytes() == content
    assert not (tmp_path / "history").exists()


@pytest.mark.parametrize("version", [0, -1, "4", None, 2.5])
def test_a_state_document_of_an_unknown_older_or_garbage_format_is_still_corrupt(version) -> None:
    with pytest.raises(StateCorruptError, match="is corrupt"):
        parse_state_document(
            json.dumps({**NEWER_STATE, "format_version": version}).encode(), "s3://b/state.json"
        )


def test_a_work_item_of_a_newer_format_is_refused_as_newer(tmp_path) -> None:
    item = work_item(env_at(tmp_path), "orders", "r1").to_json()

    with pytest.raises(NewerFormatError, match="the work item of table 'orders'") as refused:
        work_items({**item, "format_version": WORK_ITEM_FORMAT + 1})

    assert_refused_as_newer(refused.value, WORK_ITEM_FORMAT + 1, WORK_ITEM_FORMAT)
    assert "deploy one version of the Plan and the ingest" in str(refused.value)


def test_a_pack_holding_a_work_item_of_a_newer_format_is_refused_as_newer(tmp_path) -> None:
    item = work_item(env_at(tmp_path), "orders", "r1")
    pack = Pack("r1", "pack-0001", [item]).to_json()
    pack["work_items"][0]["format_version"] = WORK_ITEM_FORMAT + 1

    with pytest.raises(NewerFormatError, match="the work item of table 'orders'"):
        work_items(pack)


def test_a_manifest_without_a_format_version_reads_as_format_1_and_round_trips(tmp_path) -> None:
    env = env_at(tmp_path)
    manifest = ingest_succeeded(env, work_item(env, "orders", "r1"), "2024-05-01T00:00:00Z")
    data = manifest.to_json()
    assert data["format_version"] == MANIFEST_FORMAT

    del data["format_version"]

    assert Manifest.from_json(data) == manifest


def test_a_manifest_of_a_newer_format_fails_its_table_as_newer_and_the_others_are_committed(tmp_path) -> None:
    env = env_at(tmp_path)
    plan = make_plan("r1", [work_item(env, "orders", "r1"), work_item(env, "customers", "r1")], None)
    newer = ingest_succeeded(env, plan.items[0], "2024-05-01T00:00:00Z")
    ingest_succeeded(env, plan.items[1], "2024-05-01T00:00:00Z")
    future = {**newer.to_json(), "format_version": MANIFEST_FORMAT + 1, "a_field_of_the_future": 1}
    env.storage.write_json(plan.items[0].manifest_location, future)

    report = commit_run(plan, env.store, env.storage, now=NOW)

    statuses = {outcome.table: outcome.status for outcome in report.outcomes}
    assert statuses == {"orders": "failed", "customers": "succeeded"}
    failed = next(outcome for outcome in report.outcomes if outcome.table == "orders")
    assert_refused_as_newer(RuntimeError(failed.message), MANIFEST_FORMAT + 1, MANIFEST_FORMAT)
    assert set(env.state()[0].tables) == {"customers"}


def env_at(root: Path) -> Env:
    state_dir = root / "state"
    return Env(
        root=root,
        layout=Layout(output_path=str(root / "output"), cdc_path=str(state_dir)),
        store=LocalStateStore(state_dir, lock_timeout_s=5),
        storage=LocalStorage(),
    )
