"""`cdc-pipeline start`: the input it starts an execution with, and how it follows the tables."""

from __future__ import annotations

import json
from typing import Any

from cdc_pipeline.aws.executions import follow_run, start_run


class FakeStepFunctions:
    """Answers like Step Functions for one execution whose Map finishes children over three polls."""

    def __init__(self) -> None:
        self.started: dict[str, Any] = {}
        self.polls = 0
        self.children = {
            "c-customers": (
                "SUCCEEDED",
                {"table": "customers"},
                {"table": "customers", "status": "SUCCEEDED"},
            ),
            "c-orders": (
                "SUCCEEDED",
                {"table": "orders"},
                {
                    "table": "orders",
                    "status": "FAILED",
                    "error": {"Error": "States.TaskFailed", "Cause": "bad file"},
                },
            ),
            "c-payments": ("FAILED", {"table": "payments"}, None),
        }

    def start_execution(self, **kwargs: Any) -> dict[str, str]:
        self.started = kwargs
        return {"executionArn": "arn:execution"}

    def describe_execution(self, executionArn: str) -> dict[str, Any]:
        if executionArn == "arn:execution":
            self.polls += 1
            return {"status": "RUNNING" if self.polls < 3 else "FAILED", "error": "TablesFailed"}
        status, run_input, output = self.children[executionArn]
        described = {"status": status, "input": json.dumps(run_input)}
        if output is not None:
            described["output"] = json.dumps(output)
        else:
            described |= {"error": "States.Timeout", "cause": "child timed out"}
        return described

    def list_map_runs(self, executionArn: str) -> dict[str, Any]:
        return {"mapRuns": [{"mapRunArn": "arn:map"}]}

    def get_paginator(self, name: str) -> FakeStepFunctions:
        assert name == "list_executions"
        return self

    def paginate(self, mapRunArn: str, statusFilter: str) -> list[dict[str, Any]]:
        # A child shows up as finished only from the poll at which it finished.
        finished = list(self.children)[: self.polls]
        return [
            {
                "executions": [
                    {"executionArn": arn, "name": arn}
                    for arn in finished
                    if self.children[arn][0] == statusFilter
                ]
            }
        ]


def test_start_gives_the_execution_the_schedules_input_and_a_unique_name() -> None:
    sfn = FakeStepFunctions()

    arn = start_run(sfn, "arn:sm", "full", ["orders"])

    assert arn == "arn:execution"
    assert json.loads(sfn.started["input"]) == {"load_type": "full", "tables": ["orders"]}
    assert sfn.started["name"].startswith("manual-")


def test_follow_reports_each_table_once_as_it_finishes_and_returns_the_final_state() -> None:
    sfn = FakeStepFunctions()
    lines: list[str] = []

    final = follow_run(
        sfn, "arn:execution", lambda table, message: lines.append(f"{table}: {message}"), sleep=lambda s: None
    )

    assert final["status"] == "FAILED"
    assert lines == [
        "customers: ingested",
        "orders: FAILED: States.TaskFailed: bad file",
        "payments: FAILED: States.Timeout: child timed out",
    ]
