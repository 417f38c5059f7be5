"""Catalog-driven CDC ingestion: plan, ingest and commit deduplicated current-state Parquet tables."""

__version__ = "0.1.0"
