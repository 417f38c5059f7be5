"""The result manifest: what one table's ingest produced, written before anything is published.

A success manifest is written last, once every output file is; a failed ingest writes a short
failure record in its place, so a Glue run that ingests several tables gives the commit one
outcome per table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cdc_pipeline.errors import NewerFormatError

SUCCEEDED = "succeeded"
FAILED = "failed"
# 1: the first numbered format; manifests written before numbering (no format_version) read as 1.
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    run_id: str
    table: str
    status: str
    load_type: str
    mode: str
    rows_read: int
    rows_written: int
    rows_set_aside: int
    null_watermark_rows: int
    watermark_column: str | None
    watermark_before: str | None
    watermark_after: str | None
    schema: list[dict[str, str]]
    output_location: str
    quarantine_location: str | None
    started_at: str
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    # The dedup settings the snapshot was built with; a later change forces a full load.
    primary_key: list[str] = field(default_factory=list)
    sequence_column: str | None = None
    delete_column: str | None = None
    delete_values: list[str] = field(default_factory=list)
    incremental_by: str | None = None
    # Data files read (None: the whole location), and the table's file cursor once committed.
    files_read: int | None = None
    cursor: dict[str, Any] | None = None
    watermark_unit: str | None = None
    tombstones_location: str | None = None
    bytes_written: int | None = None  # the snapshot's size on storage
    partition_by: list[str] = field(default_factory=list)
    partitions: dict[str, dict[str, Any]] | None = None  # the new snapshot's (state.TableState)
    format_version: int = MANIFEST_FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """The manifest ``data`` holds; NewerFormatError when a newer ingest wrote it."""
        NewerFormatError.check(
            f"the manifest of run {data.get('run_id')!r} table {data.get('table')!r}",
            data.get("format_version", MANIFEST_FORMAT),
            MANIFEST_FORMAT,
            "upgrade the Commit's cdc-pipeline: deploy one version of the ingest and the Commit",
        )
        return cls(**data)


def failure_record(run_id: str, table: str, message: str) -> dict[str, Any]:
    """What a failed ingest leaves where its manifest would be."""
    return {"run_id": run_id, "table": table, "status": FAILED, "message": message}
