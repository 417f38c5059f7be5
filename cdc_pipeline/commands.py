"""The operator subcommands of ``cdc-pipeline``: history, reset, rollback and vacuum.

Each parses its arguments, builds the ports for a local state folder or an ``s3://`` state (the
AWS ones imported only then) and hands them to ``cdc_pipeline.operations``, which decides.
``add_operator_commands`` registers them on the main parser; each sets ``operator`` to its handler.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cdc_pipeline.commit import IO_THREADS
from cdc_pipeline.errors import ConfigurationError
from cdc_pipeline.lease import (
    Lease,
    LeaseStore,
    LocalLeaseStore,
    free_because,
    in_progress,
    local_owner_ended,
    utc_now,
)
from cdc_pipeline.operations import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MIN_AGE,
    HistoryEntry,
    Vacuum,
    reset_tables,
    rollback_table,
    table_history,
    vacuum,
)
from cdc_pipeline.plan import Layout
from cdc_pipeline.state import LocalStateStore, RevisionHistory
from cdc_pipeline.storage import LocalStorage, Storage
from cdc_pipeline.watermark import parse_lookback

S3 = "s3://"
EXIT_OK = 0
STATE_HELP = "the state folder of the runs (cdc_path): a local directory or an s3:// URI"


def add_operator_commands(commands: Any) -> None:
    """Add history, reset, rollback and vacuum to the ``add_subparsers`` object ``commands``."""
    history = commands.add_parser("history", help="the last runs of each table, from the state's history")
    history.add_argument("--state", required=True, help=STATE_HELP)
    history.add_argument("--table", action="append", help="only this table (repeatable)")
    history.add_argument(
        "--limit", type=int, default=DEFAULT_HISTORY_LIMIT, help="runs per table (default %(default)s)"
    )
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.set_defaults(operator=_history)

    reset = commands.add_parser("reset", help="make the next run fully reload these tables")
    reset.add_argument("--state", required=True, help=STATE_HELP)
    reset.add_argument(
        "--table", required=True, action="extend", nargs="+", help="the tables to reload (one or more)"
    )
    reset.set_defaults(operator=_reset)

    rollback = commands.add_parser(
        "rollback", help="make a retained earlier snapshot current again, with its watermark and cursor"
    )
    rollback.add_argument("--state", required=True, help=STATE_HELP)
    rollback.add_argument("--table", required=True)
    rollback.add_argument(
        "--to", dest="to_run_id", help="the run whose snapshot to restore (default: the one before)"
    )
    rollback.set_defaults(operator=_rollback)

    clean = commands.add_parser(
        "vacuum", help="list (with --apply, delete) output folders no committed state references"
    )
    clean.add_argument("--state", required=True, help=STATE_HELP)
    clean.add_argument(
        "--output", required=True, help="the output path of the runs (output_path): a directory or s3:// URI"
    )
    clean.add_argument("--apply", action="store_true", help="delete them (default: only list them)")
    clean.add_argument(
        "--min-age",
        default=DEFAULT_MIN_AGE,
        help="leave the folders of a run without a report alone until it started this long ago, as an "
        "ISO-8601 duration; longer than any run takes (default %(default)s)",
    )
    clean.add_argument("--json", action="store_true", help="machine-readable output")
    clean.set_defaults(operator=_vacuum)


@dataclass(frozen=True)
class _Ports:
    store: RevisionHistory
    storage: Storage
    cdc_path: str  # as the runs spell it: an absolute local path, or the s3:// URI
    leases: LeaseStore

    def running(self) -> Lease | None:
        """The lease of a run in progress on this state, if one is: unexpired, and (locally) its
        process alive."""
        lease, _ = self.leases.read()
        owner_ended = None if self.cdc_path.startswith(S3) else local_owner_ended
        return lease if lease is not None and free_because(lease, utc_now(), owner_ended) is None else None

    def refuse_while_running(self) -> None:
        """RunInProgressError (exit 75) while a run holds the lease: its commit would be refused
        by the change anyway, and the operator should decide after it ends."""
        lease = self.running()
        if lease is not None:
            raise in_progress(lease, "run this command again when it has ended")


def _ports(state: str) -> _Ports:
    if state.startswith(S3):
        from cdc_pipeline.aws.clients import aws_client
        from cdc_pipeline.aws.s3 import S3LeaseStore, S3StateStore, S3Storage

        client = aws_client("s3", threads=IO_THREADS)
        return _Ports(
            S3StateStore(state, client=client),
            S3Storage(client=client),
            state.rstrip("/"),
            S3LeaseStore(state, client=client),
        )
    path = Path(state)
    if not path.is_dir():
        raise ConfigurationError(f"state directory {state} does not exist; pass the --state of your runs")
    # Runs record absolute locations (runner.run_local): so are these.
    return _Ports(LocalStateStore(path), LocalStorage(), str(path.resolve()), LocalLeaseStore(path))


def _output_path(output: str, state: str) -> str:
    if output.startswith(S3) != state.startswith(S3):
        raise ConfigurationError(
            f"--output {output} and --state {state} must both be local or both s3:// locations"
        )
    if output.startswith(S3):
        return output.rstrip("/")
    if not Path(output).is_dir():
        raise ConfigurationError(f"output directory {output} does not exist; pass the --output of your runs")
    return str(Path(output).resolve())


def _history(args: argparse.Namespace) -> int:
    ports = _ports(args.state)
    # History reads the state side only (the runs' reports); no output path is involved.
    layout = Layout(output_path="", cdc_path=ports.cdc_path)
    found = table_history(ports.store, ports.storage, layout, tables=args.table, limit=args.limit)
    if args.json:
        print(
            json.dumps({"tables": {name: [e.to_json() for e in entries] for name, entries in found.items()}})
        )
    else:
        print(render_history(found))
    return EXIT_OK


def _reset(args: argparse.Namespace) -> int:
    ports = _ports(args.state)
    ports.refuse_while_running()
    document = reset_tables(ports.store, args.table)
    names = ", ".join(dict.fromkeys(args.table))
    print(
        f"reset {names}: committed state revision {document.revision} (run id {document.run_id}). The "
        "next run fully reloads them; until it succeeds, readers keep their current snapshots."
    )
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    ports = _ports(args.state)
    ports.refuse_while_running()
    done = rollback_table(ports.store, ports.storage, args.table, to_run_id=args.to_run_id)
    print(
        f"table {done.table!r} rolled back to the snapshot of run {done.restored.run_id} "
        f"({done.restored.location}): committed state revision {done.document.revision} (run id "
        f"{done.document.run_id}).\nThe next run re-applies every file that arrived after it. The "
        f"snapshot of run {done.replaced.run_id} stays retained until then: `cdc-pipeline rollback "
        f"--state {args.state} --table {done.table} --to {done.replaced.run_id}` rolls forward again."
    )
    return EXIT_OK


def _vacuum(args: argparse.Namespace) -> int:
    try:
        min_age = timedelta(microseconds=parse_lookback(args.min_age))
    except ValueError as exc:
        raise ConfigurationError(f"--min-age: {str(exc).replace('lookback', 'duration')}") from exc
    ports = _ports(args.state)
    layout = Layout(output_path=_output_path(args.output, args.state), cdc_path=ports.cdc_path)
    running = ports.running()
    result = vacuum(
        ports.store,
        ports.storage,
        layout,
        min_age=min_age,
        apply=args.apply,
        running=running.run_id if running else None,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(render_vacuum(result, args.min_age))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# Text output
# ----------------------------------------------------------------------------------------------

_HISTORY_HEADERS = (
    "run id",
    "time",
    "revision",
    "outcome",
    "load",
    "rows",
    "files",
    "watermark",
    "file mark",
)


def render_history(found: dict[str, list[HistoryEntry]]) -> str:
    if not found:
        return "no table committed yet"
    blocks = []
    for name, entries in found.items():
        rows = [_history_row(entry) for entry in entries]
        lines = [f"{name}: last {len(entries)} run(s), newest first", *_columns(_HISTORY_HEADERS, rows)]
        lines += [f"  {entry.run_id}: {entry.message}" for entry in entries if entry.message]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _history_row(entry: HistoryEntry) -> tuple[str, ...]:
    mark = "-"
    if entry.cursor_mark is not None or entry.cursor_recent_files is not None:
        mark = f"{entry.cursor_mark or '-'} (+{entry.cursor_recent_files or 0} recent)"
    return (
        entry.run_id,
        entry.time or "-",
        _text(entry.revision),
        entry.outcome,
        entry.load_type or "-",
        _text(entry.rows),
        _text(entry.files_read),
        entry.watermark or "-",
        mark,
    )


def render_vacuum(result: Vacuum, min_age: str) -> str:
    headers = ("kind", "table", "run id", "size", "location")
    lines: list[str] = []
    total = sum(folder.bytes for folder in result.orphans)
    if result.orphans:
        verb = "deleted" if result.applied else "would delete"
        lines.append(f"{verb} {len(result.orphans)} folder(s) no committed state references, {_size(total)}:")
        rows = [(f.kind, f.table, f.run_id, _size(f.bytes), f.location) for f in result.orphans]
        lines += ["  " + line for line in _columns(headers, rows)]
    else:
        lines.append("no folder to delete: the committed state references every folder of runs that are over")
    if result.in_progress:
        lines += [
            "",
            f"left alone: {len(result.in_progress)} unreferenced folder(s) of runs with no report that "
            f"started less than {min_age} ago (they may still be running):",
        ]
        rows = [(f.kind, f.table, f.run_id, _size(f.bytes), f.location) for f in result.in_progress]
        lines += ["  " + line for line in _columns(headers, rows)]
    if result.orphans and not result.applied:
        lines += ["", "dry run: nothing was deleted; run again with --apply to delete them"]
    elif result.applied and len(result.deleted) < len(result.orphans):
        spared = len(result.orphans) - len(result.deleted)
        lines.append(f"({spared} of them were already gone, or referenced by a commit made meanwhile)")
    return "\n".join(lines)


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _columns(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(tuple("-" * width for width in widths)), *(line(row) for row in rows)]
