"""The run report and status, as text a person reads in a terminal."""

from __future__ import annotations

from collections.abc import Sequence

from cdc_pipeline.commit import CommitReport, TableOutcome
from cdc_pipeline.state import StateDocument

_HEADERS = (
    "table",
    "status",
    "load",
    "files",
    "read",
    "written",
    "set aside",
    "watermark before -> after",
    "seconds",
)


def render_report(report: CommitReport) -> str:
    rows = [_row(outcome) for outcome in report.outcomes]
    registry = f", registry file {report.registry_file}" if report.registry_file else ""
    lines = [f"run {report.run_id}: state revision {report.revision}{registry}", *_table(_HEADERS, rows)]
    notes = [(o.table, w) for o in report.outcomes for w in o.warnings]
    notes += [(o.table, f"{o.status.upper()}: {o.message}") for o in report.outcomes if o.message]
    notes += [("(run)", w) for w in report.warnings]
    if notes:
        lines += ["", "warnings and errors:"]
        lines += [f"  {table}: {_one_line(message)}" for table, message in notes]
    failed = len(report.failed)
    unchanged = sum(1 for o in report.outcomes if o.status == "unchanged")
    lines += [
        "",
        f"{len(report.outcomes) - failed} of {len(report.outcomes)} table(s) ok ({unchanged} unchanged), "
        f"{failed} failed",
    ]
    if report.glue_estimate:
        estimate = report.glue_estimate
        lines.append(
            f"on Glue: {estimate['glue_runs']} job run(s) of {estimate['dpu_per_run']:g} DPU, about "
            f"{estimate['dpu_minutes']:g} DPU-minutes (one run per table: {estimate['glue_runs_unpacked']} "
            f"runs, {estimate['dpu_minutes_unpacked']:g} DPU-minutes)"
        )
    return "\n".join(lines)


def _one_line(message: str) -> str:
    """A message as one line of the report: a longer one (a trace) is whole in the run's report.json."""
    lines = message.strip().splitlines() or [""]
    return lines[0] if len(lines) == 1 else f"{lines[0]} (cut: the whole message is in report.json)"


def render_status(document: StateDocument) -> str:
    headers = ("table", "watermark", "rows", "run id", "committed at", "location")
    rows = [
        (name, t.watermark or "-", str(t.rows), t.run_id, t.committed_at, t.location)
        for name, t in sorted(document.tables.items())
    ]
    head = f"state revision {document.revision}, last run {document.run_id or '-'}"
    return "\n".join([head, *_table(headers, rows)]) if rows else head + "\n(no table committed yet)"


def _row(outcome: TableOutcome) -> tuple[str, ...]:
    def number(value: int | None) -> str:
        return "-" if value is None else str(value)

    watermark = f"{outcome.watermark_before or '-'} -> {outcome.watermark_after or '-'}"
    seconds = "-" if outcome.duration_s is None else f"{outcome.duration_s:.1f}"
    return (
        outcome.table,
        outcome.status,
        outcome.load_type or "-",
        number(outcome.files_read),
        number(outcome.rows_read),
        number(outcome.rows_written),
        number(outcome.rows_set_aside),
        watermark,
        seconds,
    )


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(tuple("-" * width for width in widths)), *(line(row) for row in rows)]
