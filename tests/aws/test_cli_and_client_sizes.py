"""Clients sized for the threads that share them: `cdc-pipeline start`'s, and the Glue job driver's."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from cdc_pipeline import cli, glue_job
from cdc_pipeline.aws import clients


def test_the_glue_job_drivers_s3_client_has_a_connection_for_each_table_of_a_pack_ingested_at_once() -> None:
    assert clients.GLUE_JOB_S3_THREADS == glue_job.PACK_PARALLELISM


def test_start_follows_the_run_with_a_client_from_the_sized_client_factory(
    aws: None, boto_session: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[tuple[str, int]] = []
    original = clients.aws_client

    def aws_client(service: str, *, threads: int, session: Any = None) -> Any:
        built.append((service, threads))
        return original(service, threads=threads, session=session)

    monkeypatch.setattr(clients, "aws_client", aws_client)
    arn = boto_session.client("stepfunctions").create_state_machine(
        name="cdc-pipeline-cdc-pipeline",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    args = argparse.Namespace(
        state_machine_arn=arn,
        load_type="full",
        tables="orders",
        no_follow=True,
        poll_seconds=0.0,
        accept_registry_change=None,
    )

    assert cli._start(args) == cli.EXIT_OK

    assert built == [("stepfunctions", clients.START_SFN_THREADS)]
    started = boto_session.client("stepfunctions").list_executions(stateMachineArn=arn)["executions"]
    assert [execution["executionArn"] for execution in started] == [capsys.readouterr().out.split()[-1]]
