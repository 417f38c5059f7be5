"""The Glue job's body: read the arguments Glue passes, build the session, ingest one work item or
one pack of them (small tables sharing the run, see :mod:`cdc_pipeline.packs`).

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

from cdc_pipeline.errors import ConfigurationError, PipelineError, TableError
from cdc_pipeline.ingest import ingest_items
from cdc_pipeline.manifest import Manifest
from cdc_pipeline.packs import work_items
from cdc_pipeline.plan import WorkItem
from cdc_pipeline.spark import configure
from cdc_pipeline.storage import LocalStorage, Storage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


# Tables of one pack ingested at once: a small table's few tasks leave the workers' cores idle.
PACK_PARALLELISM = 4
# A failed pack's error names this many of its failed tables (the commit report names them all).
NAMED_FAILURES = 5


def parse_work_items(argv: Sequence[str]) -> list[WorkItem]:
    """The work items the job arguments name: ``--work_item_location`` (what the state machine
    passes: a work item's or a pack's JSON file) or ``--work_item`` (one item, for a run by hand)."""
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
        return work_items(data)
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


def run_job(argv: Sequence[str], spark: SparkSession | None = None) -> list[Manifest]:
    """Ingest the work items named by the job arguments, each on its own; then raise (failing the
    job run) if any failed. Every table leaves its manifest or its failure record first."""
    items = parse_work_items(argv)
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.getOrCreate()
    configure(spark)
    logger.info(
        "run %s: ingesting %d table(s): %s", items[0].run_id, len(items), ", ".join(i.table for i in items)
    )
    ingested = ingest_items(
        spark, items, storage_for(items[0].manifest_location), parallelism=PACK_PARALLELISM
    )
    failures = ingested.failures
    if len(items) == 1 and failures:
        raise TableError(items[0].table, failures[items[0].table].removeprefix(f"table {items[0].table!r}: "))
    if failures:
        named = "; ".join(failures[table] for table in sorted(failures)[:NAMED_FAILURES])
        more = f" (and {len(failures) - NAMED_FAILURES} more)" if len(failures) > NAMED_FAILURES else ""
        raise PipelineError(f"{len(failures)} of the {len(items)} tables of this run failed: {named}{more}")
    return [ingested.manifests[item.table] for item in items]
