"""What the deployed entrypoints build: clients sized and retrying, and work items of one format.

Every boto3 client the Lambdas and the Glue job use comes from ``cdc_pipeline.aws.clients``
(pooled for its threads, ``standard`` retries); a Glue job handed a work item of a format it does
not know (a Plan of another release) fails that table, saying so.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cdc_pipeline.aws.clients import GLUE_JOB_S3_THREADS, POOL_HEADROOM
from cdc_pipeline.errors import ConfigurationError, NewerFormatError
from cdc_pipeline.glue_job import parse_work_items, storage_for
from cdc_pipeline.plan import WORK_ITEM_FORMAT

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINTS = [*sorted((ROOT / "lambdas").glob("*/app.py")), ROOT / "cdc_pipeline" / "glue_job.py"]
# Adapters that make a default boto3 client when given none.
ADAPTERS = {"S3Storage", "S3StateStore", "S3RegistrySource", "GlueCatalog", "GlueOutputCatalog"}
CLIENT_ARGUMENTS = {"client", "s3_client"}


def test_the_glue_jobs_s3_client_is_pooled_and_retries_in_standard_mode() -> None:
    client = storage_for("s3://bucket/state/runs/r1/items/orders.json").client  # type: ignore[attr-defined]

    assert client.meta.config.max_pool_connections == GLUE_JOB_S3_THREADS + POOL_HEADROOM
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_client_an_entrypoint_uses_comes_from_the_sized_client_factory(entrypoint: Path) -> None:
    tree = ast.parse(entrypoint.read_text())
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
        where = f"{entrypoint.relative_to(ROOT)}:{call.lineno}"
        assert name not in ("client", "resource"), f"{where} builds a boto3 client itself: use aws_client"
        if name in ADAPTERS:
            given = {keyword.arg for keyword in call.keywords}
            assert given & CLIENT_ARGUMENTS, f"{where}: {name} would make a default client: pass client="


@pytest.mark.parametrize("version", [WORK_ITEM_FORMAT - 1, None])
def test_a_glue_job_given_a_work_item_of_another_format_fails_that_table_saying_so(
    version: int | None,
) -> None:
    item = {"table": "orders", "run_id": "r1", "format_version": version}

    with pytest.raises(ConfigurationError) as raised:
        parse_work_items(["--work_item", json.dumps(item), "--JOB_RUN_ID", "jr_1"])

    message = str(raised.value)
    assert "'orders'" in message
    assert f"format {version!r}; this cdc-pipeline reads format {WORK_ITEM_FORMAT}" in message
    assert "deploy one version of both" in message


def test_a_glue_job_given_a_work_item_of_a_newer_format_says_a_newer_version_wrote_it() -> None:
    item = {"table": "orders", "run_id": "r1", "format_version": WORK_ITEM_FORMAT + 1}

    with pytest.raises(NewerFormatError) as raised:
        parse_work_items(["--work_item", json.dumps(item), "--JOB_RUN_ID", "jr_1"])

    message = str(raised.value)
    assert f"'orders' was written by a newer cdc-pipeline (format {WORK_ITEM_FORMAT + 1};" in message
    assert "deploy one version of the Plan and the ingest" in message
