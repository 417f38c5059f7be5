"""The Glue job's body: read the arguments Glue passes, build the session, ingest one work item.

``glue_jobs/ingest_table.py`` only calls :func:`run_job`; nothing of the semantics lives there.
Glue adds arguments of its own (``--JOB_ID``, ``--JOB_RUN_ID``, ``--job-bookmark-option``...),
which are ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cdc_pipeline.errors import ConfigurationError
from cdc_pipeline.ingest import ingest_table
from cdc_pipeline.manifest import Manifest
from cdc_pipeline.plan import WorkItem
from cdc_pipeline.spark import configure
from cdc_pipeline.storage import LocalStorage, Storage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


def parse_work_item(argv: Sequence[str]) -> WorkItem:
    """The work item the job arguments name: ``--work_item_location`` (what the state machine
    passes: the item's JSON file) or ``--work_item`` (the item itself, for a run by hand)."""
    parser = argparse.ArgumentParser(prog="ingest_table", add_help=False)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--work_item_location", help="where the plan wrote the item (s3:// or a path)")
    given.add_argument("--work_item", help="the work item as JSON")
    args, _glue_arguments = parser.parse_known_args(list(argv))
    try:
        if args.work_item_location:
            data = storage_for(args.work_item_location).read_json(args.work_item_location)
            if data is None:
                raise ConfigurationError(f"--work_item_location {args.work_item_location} holds no work item")
        else:
            data = json.loads(args.work_item)
        return WorkItem.from_json(data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ConfigurationError(
            f"the job's work item is not one the Plan Lambda writes ({exc}); start the job from the state "
            "machine, or pass --work_item_location of a file under the run's items/ folder"
        ) from exc


def storage_for(location: str) -> Storage:
    if location.startswith("s3://"):
        from cdc_pipeline.aws.clients import GLUE_JOB_S3_THREADS, aws_client
        from cdc_pipeline.aws.s3 import S3Storage

        return S3Storage(client=aws_client("s3", threads=GLUE_JOB_S3_THREADS))
    return LocalStorage()


def run_job(argv: Sequence[str], spark: SparkSession | None = None) -> Manifest:
    """Ingest the work item named by the job arguments; raise (failing the job run) on any error."""
    item = parse_work_item(argv)
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.getOrCreate()
    configure(spark)
    logger.info("run %s: ingesting table %s (%s)", item.run_id, item.table, item.load_type)
    return ingest_table(spark, item, storage_for(item.manifest_location))
