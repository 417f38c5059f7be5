"""Shared fixtures: one local SparkSession for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from cdc_pipeline.spark import local_session

    session = local_session()
    # Test tables are tiny: fewer shuffle partitions mean fewer, faster tasks.
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    session.stop()
