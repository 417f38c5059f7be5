"""Commit Lambda: publish every table the run ingested in one atomic write of the state, then give
back the run lease; on the state machine's failure path, only give it back."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdc_pipeline.aws.clients import COMMIT_GLUE_THREADS, COMMIT_S3_THREADS, aws_client
from cdc_pipeline.aws.glue import GlueOutputCatalog
from cdc_pipeline.aws.s3 import S3LeaseStore, S3StateStore, S3Storage
from cdc_pipeline.settings import CommitSettings
from cdc_pipeline.tasks import commit_task, release_task

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = CommitSettings.from_env(os.environ)
s3 = aws_client("s3", threads=COMMIT_S3_THREADS)
glue = aws_client("glue", threads=COMMIT_GLUE_THREADS)


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    lease_store = S3LeaseStore(settings.cdc_path, client=s3)
    if "release_lease" in event:
        return release_task(event, lease_store=lease_store)
    result = commit_task(
        event,
        settings,
        state_store=S3StateStore(settings.cdc_path, client=s3),
        storage=S3Storage(client=s3),
        output_catalog=GlueOutputCatalog(settings.output_database, client=glue),
        lease_store=lease_store,
    )
    metrics.add_metric(name="TablesSucceeded", unit="Count", value=result["succeeded_count"])
    metrics.add_metric(name="TablesFailed", unit="Count", value=result["failed_count"])
    metrics.add_metric(name="TablesUnchanged", unit="Count", value=result["unchanged_count"])
    metrics.add_metric(name="RowsRead", unit="Count", value=result["rows_read"])
    metrics.add_metric(name="RowsWritten", unit="Count", value=result["rows_written"])
    metrics.add_metric(name="RunDurationSeconds", unit="Seconds", value=result["run_duration_s"])
    return result
