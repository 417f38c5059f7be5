"""The boto3 clients of the pipeline, each with a connection pool as large as the threads sharing it.

botocore gives a client 10 pooled connections per host unless told otherwise. The Plan lists
tables on ``PLAN_THREADS`` threads and writes work items on ``IO_THREADS``; the Commit reads
manifests on ``IO_THREADS`` and publishes on ``PUBLISH_THREADS``. With more threads than
connections, urllib3 opens a connection for each request beyond the tenth and throws it away
afterwards ("Connection pool is full, discarding connection"): every such request pays a new TCP
and TLS handshake, and the log fills with warnings. So each client is built here, sized from the
thread counts the code really uses, with botocore's ``standard`` retries: the Lambdas' clients and
the Glue job's (``cdc_pipeline.glue_job``) alike.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from cdc_pipeline.aws.glue import PUBLISH_THREADS
from cdc_pipeline.commit import IO_THREADS
from cdc_pipeline.plan import PLAN_THREADS

# Spare connections beyond the threads, for callers outside the pools (the handler's own thread
# reading the registry and the state) and for a retry that replaces a connection S3 dropped.
POOL_HEADROOM = 4
# Attempts in all, the first included (``Config``'s ``max_attempts`` would count retries only).
# Throttling backs off from 1 s doubling to 20 s: 8 attempts wait 35 s on average, at most 71 s,
# well inside a Lambda's 900 s, where botocore's default of 3 gives up after at most 3 s.
TOTAL_MAX_ATTEMPTS = 8
RETRY_MODE = "standard"

# The threads that share each client of each Lambda.
PLAN_S3_THREADS = max(PLAN_THREADS, IO_THREADS)  # tables listed, then work items written
PLAN_GLUE_THREADS = PLAN_THREADS  # partitioned tables' GetPartitions
COMMIT_S3_THREADS = IO_THREADS  # manifests read, expired snapshots deleted
COMMIT_GLUE_THREADS = PUBLISH_THREADS  # output tables updated
# The Glue job's driver reads and writes each table's manifest on the threads that ingest a pack's
# tables side by side (Spark reads and writes the data through its own S3 connector). That count is
# cdc_pipeline.glue_job.PACK_PARALLELISM, not imported: glue_job imports pyspark, which the Lambdas
# that import this module do not have. tests/aws/test_cli_and_client_sizes.py keeps the two equal.
GLUE_JOB_S3_THREADS = 4
# `cdc-pipeline start` follows a run on one thread; its client gets the standard retries too.
START_SFN_THREADS = 1


def client_config(threads: int) -> Config:
    """The botocore configuration of a client shared by ``threads`` threads.

    Parameters
    ----------
    threads
        How many threads call the client at once (at least 1).

    Returns
    -------
    Config
        ``max_pool_connections`` of ``threads`` plus :data:`POOL_HEADROOM`, and ``standard`` retries
        of :data:`TOTAL_MAX_ATTEMPTS` attempts in all. Standard, not adaptive: adaptive's client-side
        rate limiter is documented as experimental, and standard already backs throttling off from 1 s.

    Raises
    ------
    ValueError
        When ``threads`` is below 1.
    """
    if threads < 1:
        raise ValueError(f"a client is shared by at least 1 thread, got {threads}")
    return Config(
        max_pool_connections=threads + POOL_HEADROOM,
        retries={"mode": RETRY_MODE, "total_max_attempts": TOTAL_MAX_ATTEMPTS},
    )


def aws_client(service: str, *, threads: int, session: boto3.session.Session | None = None) -> Any:
    """A boto3 client of ``service`` sized for ``threads`` threads (see :func:`client_config`).

    Parameters
    ----------
    service
        The boto3 service name (``"s3"``, ``"glue"``).
    threads
        How many threads share the client; e.g. :data:`PLAN_S3_THREADS`.
    session
        The boto3 session to build it from; boto3's default session when omitted.

    Returns
    -------
    Any
        The client (boto3 clients are thread-safe; their connection pool is what must be sized).
    """
    config = client_config(threads)
    if session is None:
        return boto3.client(service, config=config)
    return session.client(service, config=config)
