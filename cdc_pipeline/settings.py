"""The deployed pipeline's settings, read once from the environment and validated.

The names keep the original Glue script's parameters where they mean the same thing:
``SOURCE_DATABASE`` is ``athena_database_name``, ``OUTPUT_PATH`` is ``output_path``, ``CDC_PATH``
is ``cdc_path``, ``REGISTRY_PREFIX`` is ``primary_key_s3_prefix``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW, settle_micros
from cdc_pipeline.commit import DEFAULT_RETAINED_SNAPSHOTS
from cdc_pipeline.errors import ConfigurationError
from cdc_pipeline.packs import DEFAULT_GLUE_DPU, DEFAULT_PACK_BYTES, MIB, glue_dpu


def _required(environ: Mapping[str, str], name: str, meaning: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(
            f"environment variable {name} ({meaning}) is not set; set it in template.yaml"
        )
    return value


def _s3_uri(environ: Mapping[str, str], name: str, meaning: str) -> str:
    value = _required(environ, name, meaning)
    if not value.startswith("s3://"):
        raise ConfigurationError(
            f"environment variable {name} ({meaning}) must be an s3:// URI, got {value!r}"
        )
    return value.rstrip("/")


def _patterns(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in environ.get(name, "").split(",") if part.strip())


@dataclass(frozen=True)
class PlanSettings:
    source_database: str
    output_path: str
    cdc_path: str
    registry_prefix: str
    table_include: tuple[str, ...] = ()
    table_exclude: tuple[str, ...] = ()
    settle_window: str = DEFAULT_SETTLE_WINDOW
    pack_bytes: int = DEFAULT_PACK_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PlanSettings:
        settle_window = environ.get("SETTLE_WINDOW", "").strip() or DEFAULT_SETTLE_WINDOW
        try:
            settle_micros(settle_window)
        except ValueError as exc:
            raise ConfigurationError(f"environment variable SETTLE_WINDOW: {exc}") from exc
        pack_mib = environ.get("PACK_MIB", "").strip() or str(DEFAULT_PACK_BYTES // MIB)
        if not pack_mib.isdigit():
            raise ConfigurationError(
                f"environment variable PACK_MIB must be a whole number of MiB (0: no packing), "
                f"got {pack_mib!r}"
            )
        return cls(
            source_database=_required(environ, "SOURCE_DATABASE", "the source Glue database"),
            output_path=_s3_uri(environ, "OUTPUT_PATH", "where snapshots are written"),
            cdc_path=_s3_uri(environ, "CDC_PATH", "where the state document lives"),
            registry_prefix=_s3_uri(environ, "REGISTRY_PREFIX", "the table-settings registry prefix"),
            table_include=_patterns(environ, "TABLE_INCLUDE"),
            table_exclude=_patterns(environ, "TABLE_EXCLUDE"),
            settle_window=settle_window,
            pack_bytes=int(pack_mib) * MIB,
        )


@dataclass(frozen=True)
class CommitSettings:
    output_path: str
    cdc_path: str
    output_database: str
    retained_snapshots: int
    glue_dpu: float = DEFAULT_GLUE_DPU

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CommitSettings:
        retained = environ.get("RETAINED_SNAPSHOTS", str(DEFAULT_RETAINED_SNAPSHOTS))
        if not retained.isdigit() or int(retained) < 1:
            raise ConfigurationError(f"RETAINED_SNAPSHOTS must be a whole number ≥ 1, got {retained!r}")
        return cls(
            output_path=_s3_uri(environ, "OUTPUT_PATH", "where snapshots are written"),
            cdc_path=_s3_uri(environ, "CDC_PATH", "where the state document lives"),
            output_database=_required(environ, "OUTPUT_DATABASE", "the Glue database of the output tables"),
            retained_snapshots=int(retained),
            glue_dpu=_glue_dpu(environ),
        )


def _glue_dpu(environ: Mapping[str, str]) -> float:
    """One ingest run's DPUs, for the report's cost estimate; the stack's job when unset."""
    worker_type = environ.get("GLUE_WORKER_TYPE", "").strip()
    workers = environ.get("GLUE_NUMBER_OF_WORKERS", "").strip()
    if not worker_type and not workers:
        return DEFAULT_GLUE_DPU
    if not workers.isdigit():
        raise ConfigurationError(f"GLUE_NUMBER_OF_WORKERS must be a whole number, got {workers!r}")
    return glue_dpu(worker_type, int(workers))
