"""The Plan at scale: clients sized for their threads, and a 1,000-table plan on moto that stays small.

The 10,000-table figures come from ``python -m benchmarks.plan_scale``; here the same scenario runs
on 1,000 tables and the test asserts what does not depend on the machine: item counts, API call
counts and the sizes of what the plan writes and returns, never times.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks import plan_scale
from cdc_pipeline.aws.clients import (
    COMMIT_GLUE_THREADS,
    COMMIT_S3_THREADS,
    PLAN_GLUE_THREADS,
    PLAN_S3_THREADS,
    POOL_HEADROOM,
    aws_client,
    client_config,
)
from cdc_pipeline.aws.glue import PUBLISH_THREADS
from cdc_pipeline.commit import IO_THREADS
from cdc_pipeline.packs import PACK_MAX_TABLES
from cdc_pipeline.plan import PLAN_THREADS
from cdc_pipeline.stages import EARLY_WRITE_THREADS

ROOT = Path(__file__).resolve().parents[2]
TABLES = 1_000
KIB = 1024


# ---------------------------------------------------------------------------------------------
# Clients sized for their threads
# ---------------------------------------------------------------------------------------------


def test_a_clients_pool_holds_its_threads_plus_headroom_and_it_retries_in_standard_mode() -> None:
    config = client_config(32)

    assert config.max_pool_connections == 32 + POOL_HEADROOM
    assert config.retries == {"mode": "standard", "total_max_attempts": 8}


def test_client_config_refuses_a_client_shared_by_no_thread() -> None:
    with pytest.raises(ValueError, match="at least 1 thread"):
        client_config(0)


def test_each_lambda_client_is_sized_for_every_pool_that_shares_it() -> None:
    # The Plan's S3 client lists tables (PLAN_THREADS) while it writes the work items of tables with
    # a Glue run of their own (EARLY_WRITE_THREADS), then writes the rest (IO_THREADS).
    assert max(PLAN_THREADS + EARLY_WRITE_THREADS, IO_THREADS) <= PLAN_S3_THREADS
    assert PLAN_GLUE_THREADS >= PLAN_THREADS
    assert COMMIT_S3_THREADS >= IO_THREADS
    assert COMMIT_GLUE_THREADS >= PUBLISH_THREADS


def load_app(function: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{function}_app", ROOT / "lambdas" / function / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("function", "s3_threads", "glue_threads"),
    [("plan", PLAN_S3_THREADS, PLAN_GLUE_THREADS), ("commit", COMMIT_S3_THREADS, COMMIT_GLUE_THREADS)],
)
def test_the_lambdas_build_their_clients_sized_for_their_threads(
    aws: None, monkeypatch: pytest.MonkeyPatch, function: str, s3_threads: int, glue_threads: int
) -> None:
    for name, value in {
        "SOURCE_DATABASE": "raw",
        "OUTPUT_DATABASE": "current",
        "OUTPUT_PATH": "s3://bucket/current",
        "CDC_PATH": "s3://bucket/state",
        "REGISTRY_PREFIX": "s3://bucket/registry",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "cdc-pipeline-test",
    }.items():
        monkeypatch.setenv(name, value)

    app = load_app(function)

    for client, threads in ((app.s3, s3_threads), (app.glue, glue_threads)):
        assert client.meta.config.max_pool_connections == threads + POOL_HEADROOM
        assert client.meta.config.retries["mode"] == "standard"


class _SlowListing(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with an empty listing after 20 ms, keeping the
    connection open (HTTP/1.1), so that concurrent callers hold several connections at once."""

    protocol_version = "HTTP/1.1"
    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>bucket</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
        b"<IsTruncated>false</IsTruncated></ListBucketResult>"
    )

    def do_GET(self) -> None:
        time.sleep(0.02)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def slow_s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowListing)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    yield url
    server.shutdown()
    server.server_close()


def discarded_connections(client: Any, threads: int, caplog: pytest.LogCaptureFixture) -> int:
    """How many connections urllib3 threw away while ``threads`` threads listed through ``client``."""
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"),
        ThreadPoolExecutor(max_workers=threads) as pool,
    ):
        list(pool.map(lambda _: client.list_objects_v2(Bucket="bucket"), range(threads * 4)))
    return sum("Connection pool is full" in record.getMessage() for record in caplog.records)


def test_a_client_sized_for_its_threads_keeps_every_connection_where_the_default_discards_them(
    slow_s3_endpoint: str, boto_session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    threads = PLAN_S3_THREADS

    default_discards = discarded_connections(boto_session.client("s3"), threads, caplog)
    sized_discards = discarded_connections(
        aws_client("s3", threads=threads, session=boto_session), threads, caplog
    )

    assert default_discards > 0  # botocore's 10 connections: the rest opened and thrown away
    assert sized_discards == 0


# ---------------------------------------------------------------------------------------------
# A 1,000-table plan
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scale(boto_session: Any) -> dict[str, Any]:
    """The benchmark's scenario at 1,000 tables: full plan, commit, 5% new files, incremental plan."""
    return plan_scale.run(TABLES, memory=False, profile=False, session=boto_session)


@pytest.fixture(scope="module", autouse=True)
def _quiet_first_loads() -> Iterator[None]:
    # Every table's first load warns that it has no committed tracker: 1,000 expected lines.
    logger = logging.getLogger("cdc_pipeline")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_a_full_plan_of_1000_tables_gives_each_a_small_work_item_and_returns_a_tiny_payload(scale) -> None:
    full = scale["full"]

    # Small tables: packs of PACK_MAX_TABLES share a Glue run, and the Map gets one item per pack.
    runs = TABLES // PACK_MAX_TABLES
    assert (full["table_count"], full["unchanged_count"]) == (TABLES, 0)
    assert (full["item_count"], full["pack_files"], full["item_files"]) == (runs, runs, 0)
    assert full["payload_bytes"] < 1 * KIB  # Step Functions allows 256 KiB
    assert full["pack_bytes_total"] < 2 * KIB * TABLES
    assert full["items_bytes"] < 150 * TABLES  # the Map's list: a table name and a location each
    assert full["plan_bytes"] < 2 * KIB * TABLES


def test_a_full_plan_makes_one_listing_per_table_and_one_write_per_glue_run(scale) -> None:
    operations = scale["full"]["operations"]

    assert operations["s3:ListObjectsV2"] == TABLES + 1  # and the registry's prefix
    assert operations["s3:PutObject"] == TABLES // PACK_MAX_TABLES + 2  # and plan.json, items.json
    assert operations["s3:GetObject"] == 2  # the registry and the state
    # The benchmark's moto answers GetTables in pages of 100, as AWS does (moto alone: one page).
    assert (
        operations["glue:GetTables"] == scale["aws_projection"]["full"]["get_tables_pages"] == TABLES // 100
    )


def test_tables_are_listed_while_later_pages_of_the_catalog_are_still_being_read(scale) -> None:
    # Besides the registry's listing, the files of the first pages' tables were being listed when
    # the last of the 10 GetTables pages was asked for.
    assert scale["full"]["lists_before_last_get_tables_page"] > 1
    assert scale["aws_projection"]["full"]["pipelined"] is True


def test_the_plan_calls_from_many_threads_at_once(scale) -> None:
    full = scale["full"]

    assert full["calling_threads"] > 1
    assert 1 < full["peak_in_flight"] <= PLAN_THREADS + IO_THREADS


def test_an_incremental_plan_after_5_percent_got_a_new_file_plans_those_and_lists_the_rest_unchanged(
    scale,
) -> None:
    incremental = scale["incremental"]
    changed = len(plan_scale.changed_tables(plan_scale.table_names(TABLES)))

    assert changed == TABLES // 20
    assert (incremental["table_count"], incremental["unchanged_count"]) == (changed, TABLES - changed)
    assert (incremental["item_count"], incremental["pack_files"]) == (1, 1)  # 50 small tables: one run
    assert incremental["operations"]["s3:ListObjectsV2"] == TABLES + 1  # every table is still listed
    assert incremental["operations"]["s3:PutObject"] == 1 + 2
    assert incremental["payload_bytes"] < 1 * KIB
    # plan.json holds the work items and the unchanged tables' names, not their trackers.
    assert incremental["plan_bytes"] < scale["full"]["plan_bytes"] / 5


def test_with_aws_latency_the_plan_keeps_each_thread_pool_busy(boto_session: Any) -> None:
    # moto answers at once and under the GIL, so only held-back answers show the threads overlapping
    # their waits: listings on PLAN_THREADS, and without packing every table's work item file
    # written on EARLY_WRITE_THREADS while tables are still being listed.
    emulated = plan_scale.run(
        200, memory=False, profile=False, session=boto_session, emulate="high", pack_bytes=0
    )

    full = emulated["full"]["emulated"]
    assert full["mean_in_flight_by_operation"]["s3:ListObjectsV2"] > PLAN_THREADS / 2
    assert full["mean_in_flight_by_operation"]["s3:PutObject"] > EARLY_WRITE_THREADS / 2
    assert full["puts_before_last_list"] > 0
