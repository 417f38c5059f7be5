"""Packs: small tables share one Glue job run, planned by bytes; and what a run costs in DPU-minutes.

Glue bills every job run at least one minute of all its workers, and each run first spends seconds
starting Spark. A table of a few megabytes takes a second or two of Spark work, so one run per table
would bill a minute for each: 1,000 small tables at 2 DPU cost 2,000 DPU-minutes a tick. The plan
therefore groups tables whose work (the bytes of the files to read plus the current snapshot's) is
small into packs of at most ``pack_bytes`` and ``PACK_MAX_TABLES`` tables; each pack is one item of
the Distributed Map and one Glue run, which ingests its tables one by one on its session
(``ingest.ingest_items``), so one table's failure fails only that table. A table whose size is not
known, or larger than ``pack_bytes``, has a run of its own. ``pack_bytes`` 0 turns packing off.

The pack file names no locations the work items do not: it holds the items themselves, so a Glue
run reads one object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_pipeline.errors import ConfigurationError, NewerFormatError
from cdc_pipeline.plan import UPGRADE_INGEST, WorkItem

MIB = 1024 * 1024
DEFAULT_PACK_BYTES = 512 * MIB
# Bounds a pack's run time (tables are ingested one after another) and its file's size.
PACK_MAX_TABLES = 100
PACK_FORMAT = 1

# The DPU-minute estimate's model of a Glue run: billed per second with a one-minute minimum; the
# run's own start (driver, SparkSession) before the first table, an assumption for Glue 5.
BILLED_MINIMUM_S = 60.0
RUN_START_S = 15.0
DPU_PER_WORKER = {"G.025X": 0.25, "G.1X": 1.0, "G.2X": 2.0, "G.4X": 4.0, "G.8X": 8.0}
DEFAULT_GLUE_DPU = 2.0  # the stack's default job: 2 G.1X workers


def work_bytes(item: WorkItem) -> int | None:
    """What the ingest reads: the new files and, for an incremental run, the current snapshot."""
    if item.input_bytes is None:
        return None
    if item.current_snapshot is None:
        return item.input_bytes
    if item.snapshot_bytes is None:
        return None
    return item.input_bytes + item.snapshot_bytes


def runs_alone(item: WorkItem, pack_bytes: int) -> bool:
    """Whether ``pack`` gives the item a Glue run of its own whatever the other items are: its size
    is not known, or not under ``pack_bytes``. (A small item may still end up alone.)"""
    size = work_bytes(item)
    return size is None or size >= pack_bytes


def pack(items: Sequence[WorkItem], pack_bytes: int) -> list[list[WorkItem]]:
    """The Glue runs of a plan: each a list of items; a pack when it holds more than one.

    Largest first, each table into the first pack with room for it (first-fit decreasing), so the
    packs are few and full; the order of items within a pack is the plan's.
    """
    if pack_bytes < 0:
        raise ConfigurationError(f"pack bytes must be 0 (no packing) or more, got {pack_bytes}")
    alone: list[list[WorkItem]] = []
    small: list[tuple[int, int, WorkItem]] = []
    for position, item in enumerate(items):
        if runs_alone(item, pack_bytes):
            alone.append([item])
        else:
            small.append((work_bytes(item) or 0, position, item))
    packs: list[tuple[int, list[tuple[int, WorkItem]]]] = []
    for size, position, item in sorted(small, key=lambda entry: (-entry[0], entry[1])):
        for index, (used, members) in enumerate(packs):
            if used + size <= pack_bytes and len(members) < PACK_MAX_TABLES:
                members.append((position, item))
                packs[index] = (used + size, members)
                break
        else:
            packs.append((size, [(position, item)]))
    grouped = [[item for _, item in sorted(members, key=lambda m: m[0])] for _, members in packs]
    return alone + grouped


@dataclass(frozen=True)
class Pack:
    """Several tables' work items for one Glue run; travels as one JSON file."""

    run_id: str
    label: str
    items: list[WorkItem]
    format_version: int = PACK_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "run_id": self.run_id,
            "pack": self.label,
            "work_items": [item.to_json() for item in self.items],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pack:
        NewerFormatError.check(
            f"pack {data.get('pack')!r}", data.get("format_version"), PACK_FORMAT, UPGRADE_INGEST
        )
        if data.get("format_version") != PACK_FORMAT:
            raise ConfigurationError(
                f"pack {data.get('pack')!r} has format {data.get('format_version')!r}; this cdc-pipeline "
                f"reads format {PACK_FORMAT}. The Plan and the ingest come from different versions: "
                "deploy one version of both and start a new run"
            )
        return cls(
            run_id=data["run_id"],
            label=data["pack"],
            items=[WorkItem.from_json(item) for item in data["work_items"]],
        )

    @staticmethod
    def is_pack(data: Any) -> bool:
        return isinstance(data, dict) and "work_items" in data


def work_items(data: Any) -> list[WorkItem]:
    """The work items of one Glue run's document: a pack's, or the one work item it is."""
    return Pack.from_json(data).items if Pack.is_pack(data) else [WorkItem.from_json(data)]


def glue_dpu(worker_type: str, workers: int) -> float:
    """The DPUs of one Glue run of ``workers`` workers of ``worker_type``."""
    if worker_type not in DPU_PER_WORKER:
        raise ConfigurationError(
            f"Glue worker type {worker_type!r} is not one of {', '.join(sorted(DPU_PER_WORKER))}"
        )
    if workers < 1:
        raise ConfigurationError(f"Glue workers must be at least 1, got {workers}")
    return DPU_PER_WORKER[worker_type] * workers


@dataclass(frozen=True)
class DpuEstimate:
    """What a run's ingest would bill on Glue, from the seconds each table's ingest took."""

    runs: int
    dpu_per_run: float
    dpu_minutes: float
    runs_unpacked: int
    dpu_minutes_unpacked: float

    def to_json(self) -> dict[str, Any]:
        return {
            "glue_runs": self.runs,
            "dpu_per_run": self.dpu_per_run,
            "dpu_minutes": self.dpu_minutes,
            "glue_runs_unpacked": self.runs_unpacked,
            "dpu_minutes_unpacked": self.dpu_minutes_unpacked,
        }


def estimate_dpu_minutes(
    runs: Iterable[Sequence[str]], seconds: Mapping[str, float], dpu_per_run: float
) -> DpuEstimate:
    """Each Glue run billed for its start plus its tables' ingest seconds, one after another (a
    packed run that overlaps its tables bills less), at least a minute; against one run per table."""
    runs = [list(tables) for tables in runs]

    def billed(tables: Sequence[str]) -> float:
        busy = RUN_START_S + sum(seconds.get(table, 0.0) for table in tables)
        return max(BILLED_MINIMUM_S, busy) / 60 * dpu_per_run

    every_table = [[table] for tables in runs for table in tables]
    return DpuEstimate(
        runs=len(runs),
        dpu_per_run=dpu_per_run,
        dpu_minutes=round(sum(billed(tables) for tables in runs), 1),
        runs_unpacked=len(every_table),
        dpu_minutes_unpacked=round(sum(billed(tables) for tables in every_table), 1),
    )
