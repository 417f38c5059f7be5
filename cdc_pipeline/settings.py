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

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PlanSettings:
        settle_window = environ.get("SETTLE_WINDOW", "").strip() or DEFAULT_SETTLE_WINDOW
        try:
            settle_micros(settle_window)
        except ValueError as exc:
            raise ConfigurationError(f"environment variable SETTLE_WINDOW: {exc}") from exc
        return cls(
            source_database=_required(environ, "SOURCE_DATABASE", "the source Glue database"),
            output_path=_s3_uri(environ, "OUTPUT_PATH", "where snapshots are written"),
            cdc_path=_s3_uri(environ, "CDC_PATH", "where the state document lives"),
            registry_prefix=_s3_uri(environ, "REGISTRY_PREFIX", "the table-settings registry prefix"),
            table_include=_patterns(environ, "TABLE_INCLUDE"),
            table_exclude=_patterns(environ, "TABLE_EXCLUDE"),
            settle_window=settle_window,
        )


@dataclass(frozen=True)
class CommitSettings:
    output_path: str
    cdc_path: str
    output_database: str
    retained_snapshots: int

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
        )
