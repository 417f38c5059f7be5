"""Plan Lambda: take the run lease, list the source tables and write the run's work items for the
Distributed Map."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdc_pipeline.aws.clients import PLAN_GLUE_THREADS, PLAN_S3_THREADS, aws_client
from cdc_pipeline.aws.executions import execution_ended
from cdc_pipeline.aws.glue import GlueCatalog
from cdc_pipeline.aws.s3 import S3LeaseStore, S3RegistrySource, S3StateStore, S3Storage
from cdc_pipeline.settings import PlanSettings
from cdc_pipeline.tasks import plan_task

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = PlanSettings.from_env(os.environ)
s3 = aws_client("s3", threads=PLAN_S3_THREADS)
glue = aws_client("glue", threads=PLAN_GLUE_THREADS)
# Asks whether the execution holding the run lease is still running.
sfn = aws_client("stepfunctions", threads=1)


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    catalog = GlueCatalog(
        settings.source_database,
        client=glue,
        include=settings.table_include,
        exclude=settings.table_exclude,
        s3_client=s3,
    )
    result = plan_task(
        event,
        settings,
        catalog=catalog,
        registry_source=S3RegistrySource(settings.registry_prefix, client=s3),
        state_store=S3StateStore(settings.cdc_path, client=s3),
        storage=S3Storage(client=s3),
        lease_store=S3LeaseStore(settings.cdc_path, client=s3),
        owner_ended=execution_ended(sfn),
    )
    metrics.add_metric(name="TablesPlanned", unit="Count", value=result["item_count"])
    return result
