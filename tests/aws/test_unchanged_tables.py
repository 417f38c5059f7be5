"""Tables with no new file since their last commit, through the state machine EXECUTED by moto.

The Plan gives an unchanged table no work item, so the Distributed Map never starts a Glue job run
for it, and the Commit reports it as unchanged and leaves its tracker exactly as it was. A run in
which no table has a new file skips the Map, still writes its report, and writes no new state.
The pipeline (real ASL, real Plan and Commit handlers, a stand-in Glue job) is the ``pipeline``
fixture of test_state_machine.py.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import test_state_machine
from .conftest import BUCKET, OUTPUT_DATABASE
from .fakes import land_files, work_items_at
from .test_state_machine import JOB_NAME, Pipeline

pipeline = test_state_machine.pipeline  # that module's fixture, made visible to the tests here

TABLES = [f"table_{n:03d}" for n in range(100)]
CHANGED = TABLES[7::20]  # five tables spread over the listing: table_007, table_027, ... table_087
UNCHANGED = [table for table in TABLES if table not in CHANGED]


@dataclass(frozen=True)
class Run:
    """One finished execution, as the tests observe it."""

    execution: dict[str, Any]
    plan: dict[str, Any]
    commit: dict[str, Any]
    items: list[dict[str, Any]]  # the items.json the Plan wrote for the Map
    glue_starts: Counter[str]  # StartJobRun calls during the execution, by table
    glue_runs: list[list[str]]  # the job runs moto holds for this run's work items: their tables
    states_entered: list[str]

    def report(self, pipeline: Pipeline) -> dict[str, Any]:
        report = pipeline.storage.read_json(self.commit["report_location"])
        assert isinstance(report, dict), f"no report at {self.commit['report_location']}"
        return report


def execute(pipeline: Pipeline) -> Run:
    """Run one execution to its end and collect what it did."""
    starts_before = Counter(pipeline.attempts)
    execution = pipeline.run({"load_type": "incremental"})
    assert execution["status"] == "SUCCEEDED", execution
    output = json.loads(execution["output"])
    plan, commit = output["plan"], output["commit"]
    items = pipeline.storage.read_json(f"s3://{plan['items_bucket']}/{plan['items_key']}")
    assert isinstance(items, list), f"no items.json at s3://{plan['items_bucket']}/{plan['items_key']}"
    # Counter subtraction keeps only the tables whose count rose during this execution.
    glue_starts = Counter(pipeline.attempts) - starts_before
    run_dir = f"/runs/{plan['run_id']}/"
    glue_runs = [
        sorted(
            item.table for item in work_items_at(pipeline.storage, run["Arguments"]["--work_item_location"])
        )
        for page in pipeline.glue.get_paginator("get_job_runs").paginate(JobName=JOB_NAME)
        for run in page["JobRuns"]
        if run_dir in run.get("Arguments", {}).get("--work_item_location", "")
    ]
    history = pipeline.sfn.get_execution_history(executionArn=execution["executionArn"])["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    return Run(execution, plan, commit, items, glue_starts, sorted(glue_runs), entered)


def statuses(report: dict[str, Any]) -> dict[str, list[str]]:
    by_status: dict[str, list[str]] = {}
    for outcome in report["tables"]:
        by_status.setdefault(outcome["status"], []).append(outcome["table"])
    return {status: sorted(tables) for status, tables in by_status.items()}


def output_locations(pipeline: Pipeline) -> dict[str, str]:
    """Where the output catalog points each table."""
    return {
        table["Name"]: table["StorageDescriptor"]["Location"].rstrip("/")
        for page in pipeline.glue.get_paginator("get_tables").paginate(DatabaseName=OUTPUT_DATABASE)
        for table in page["TableList"]
    }


def test_only_tables_with_a_new_file_are_ingested_and_the_rest_keep_their_trackers(pipeline) -> None:
    pipeline.land(TABLES)
    first = execute(pipeline)
    assert sorted(table for run in first.glue_runs for table in run) == TABLES
    before, _ = pipeline.state.read()
    assert sorted(before.tables) == TABLES

    land_files(pipeline.s3, BUCKET, CHANGED, "CDC-2.parquet")
    second = execute(pipeline)

    run_id = second.plan["run_id"]
    # The five small changed tables share one Glue run.
    assert second.plan["item_count"] == 1
    assert second.glue_starts == Counter(dict.fromkeys(CHANGED, 1))
    assert second.glue_runs == [CHANGED]
    assert "IngestTables" in second.states_entered
    assert statuses(second.report(pipeline)) == {"succeeded": CHANGED, "unchanged": UNCHANGED}
    assert (second.commit["succeeded_count"], second.commit["failed_count"]) == (len(CHANGED), 0)

    after, _ = pipeline.state.read()
    assert (after.revision, after.run_id) == (before.revision + 1, run_id)
    assert sorted(after.tables) == TABLES
    for table in UNCHANGED:
        assert after.tables[table] == before.tables[table], table
    for table in CHANGED:
        tracker, previous = after.tables[table], before.tables[table]
        assert tracker.run_id == run_id
        assert tracker.location == f"s3://{BUCKET}/current/{table}/snapshots/{run_id}"
        assert tracker.previous_locations == (previous.location,)
        assert "CDC-2.parquet" in tracker.cursor["recent"]
        assert "CDC-2.parquet" not in previous.cursor["recent"]
    published = output_locations(pipeline)
    assert {table: published[table] for table in TABLES} == {
        table: tracker.location for table, tracker in after.tables.items()
    }


def test_a_run_with_no_new_file_skips_the_map_and_writes_no_state(pipeline) -> None:
    pipeline.land(TABLES)
    execute(pipeline)
    land_files(pipeline.s3, BUCKET, CHANGED, "CDC-2.parquet")
    execute(pipeline)
    before, version_before = pipeline.state.read()

    third = execute(pipeline)

    assert third.plan["item_count"] == 0
    assert third.items == []
    assert not third.glue_starts
    assert third.glue_runs == []
    assert "SkipIngest" in third.states_entered
    assert "IngestTables" not in third.states_entered
    report = third.report(pipeline)
    assert report["run_id"] == third.plan["run_id"]
    assert statuses(report) == {"unchanged": TABLES}
    assert {outcome["table"]: outcome["location"] for outcome in report["tables"]} == {
        table: tracker.location for table, tracker in before.tables.items()
    }
    assert (third.commit["succeeded_count"], third.commit["failed_count"]) == (0, 0)
    assert third.commit["revision"] == before.revision
    after, version_after = pipeline.state.read()
    assert version_after == version_before
    assert after == before
