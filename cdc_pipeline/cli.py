"""The ``cdc-pipeline`` command: run the pipeline locally, show the committed state.

Exit codes (docs/operations.md#exit-codes-and-failures says what to do after each):

- 0: every table succeeded (or was unchanged).
- 1: some table failed (the others were committed); the commit was refused (another run committed
  first: nothing of this run was published); or an unexpected error (one line on the terminal,
  its trace in the log file that line names).
- 2: a usage or configuration error: bad arguments, registry, locations, a corrupt state document
  or one written by a newer cdc-pipeline, no Java. Nothing ran.
- 75 (EX_TEMPFAIL): another run holds the run lease on the state (nothing ran; try again later,
  or ``--wait-for-lease``).
- 130 / 143: interrupted by SIGINT (Ctrl-C) / SIGTERM (128 + the signal's number): the run was
  stopped, nothing of it published (a signal during the commit lets the commit finish first),
  its unpublished folders removed.

No failure a person can cause prints a Python traceback. With ``--json``, every outcome prints
one JSON object on stdout: ``{"outcome": ..., "message": ..., "exit_code": ...}``, plus the run
report's fields when there is a report; the outcome is one of ``OUTCOMES``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW
from cdc_pipeline.commands import add_operator_commands
from cdc_pipeline.commit import DEFAULT_RETAINED_SNAPSHOTS
from cdc_pipeline.errors import (
    CommitConflictError,
    ConfigurationError,
    PipelineError,
    RunInProgressError,
    RunInterrupted,
    UnexpectedError,
)
from cdc_pipeline.packs import DEFAULT_PACK_BYTES, MIB
from cdc_pipeline.plan import LoadType
from cdc_pipeline.report import render_report, render_status
from cdc_pipeline.runner import DEFAULT_PARALLELISM, Interrupts, RunSettings, run_local
from cdc_pipeline.state import LocalStateStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_TABLE_FAILED = EXIT_FAILED  # its earlier name
EXIT_RUN_IN_PROGRESS = 75  # EX_TEMPFAIL (sysexits.h): a temporary condition, worth retrying later
EXIT_SIGNAL_BASE = 128  # + the signal's number: 130 for SIGINT, 143 for SIGTERM, as shells report them
# The "outcome" of the --json object: every run and every failure ends with one of these.
OUTCOMES = ("ok", "failed", "commit_refused", "config_error", "run_in_progress", "interrupted", "error")

# The failures a command may end with, each printed as one line: the first class that matches
# gives the outcome, the line's prefix and the exit code. A failure with an outcome or code of its
# own is one more row, above the class it specialises. (Interrupts and unexpected errors are
# handled in _dispatch: their exit code and message are their own.)
FAILURES: list[tuple[type[PipelineError], str, str, int]] = [
    (RunInProgressError, "run_in_progress", "error: ", EXIT_RUN_IN_PROGRESS),
    (CommitConflictError, "commit_refused", "commit refused: ", EXIT_FAILED),
    (ConfigurationError, "config_error", "error: ", EXIT_USAGE),
    (PipelineError, "error", "error: ", EXIT_FAILED),
]


class UsageExit(SystemExit):
    """argparse's usage error (exit code 2), keeping its message for the --json object."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageExit(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cdc-pipeline",
        description="Deduplicated current-state Parquet tables from raw change tables, committed atomically.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="plan, ingest and commit one run on local directories")
    run.add_argument("--source", required=True, type=Path, help="directory whose subdirectories are tables")
    run.add_argument("--output", required=True, type=Path, help="where snapshots are written (output_path)")
    run.add_argument("--state", required=True, type=Path, help="where the CDC trackers live (cdc_path)")
    run.add_argument("--registry", required=True, type=Path, help="directory of table-settings CSV files")
    run.add_argument("--load-type", choices=[t.value for t in LoadType], help="force a load type")
    run.add_argument("--tables", help="comma-separated table names (default: every table)")
    run.add_argument(
        "--parallelism",
        type=int,
        default=DEFAULT_PARALLELISM,
        help="tables ingested at once (default %(default)s)",
    )
    run.add_argument(
        "--retain-snapshots",
        type=int,
        default=DEFAULT_RETAINED_SNAPSHOTS,
        help="snapshots kept per table, current included (default %(default)s)",
    )
    run.add_argument(
        "--settle-window",
        default=DEFAULT_SETTLE_WINDOW,
        help="how long a file may take to appear after the time it is stamped with, as an ISO-8601 "
        "duration (default %(default)s; see docs/semantics.md)",
    )
    run.add_argument(
        "--pack-mib",
        type=int,
        default=DEFAULT_PACK_BYTES // MIB,
        help="small tables whose work is under this many MiB share one Glue run on AWS; locally it only "
        "shapes the report's Glue DPU-minute estimate (default %(default)s, 0: one run per table)",
    )
    run.add_argument(
        "--wait-for-lease",
        nargs="?",
        type=float,
        const=math.inf,
        default=0.0,
        metavar="SECONDS",
        help="when another run is in progress on the state, wait for it (at most SECONDS; without a "
        f"number, until it ends) instead of exiting with code {EXIT_RUN_IN_PROGRESS}",
    )
    run.add_argument("--json", action="store_true", help="print the report (or the failure) as JSON")
    run.add_argument(
        "--verbose",
        action="store_true",
        help="also show Spark's own console output (progress bars, log4j warnings) and the run's log lines",
    )
    run.add_argument(
        "--accept-registry-change",
        metavar="TABLE[,TABLE...]",
        help="rebuild these tables with the settings of the newest registry file, which changed how their "
        "rows are keyed, ordered or deleted (or no longer lists them); without it they fail",
    )

    start = commands.add_parser(
        "start", help="start a run of the deployed state machine on AWS and follow it table by table"
    )
    start.add_argument("--state-machine-arn", required=True, help="the StateMachineArn stack output")
    start.add_argument("--load-type", choices=[t.value for t in LoadType], default="incremental")
    start.add_argument("--tables", help="comma-separated table names (default: every table)")
    start.add_argument("--no-follow", action="store_true", help="print the execution ARN and return")
    start.add_argument("--poll-seconds", type=float, default=10.0)
    start.add_argument("--accept-registry-change", metavar="TABLE[,TABLE...]", help="as for run")

    status = commands.add_parser("status", help="show every table's committed tracker")
    status.add_argument("--state", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_operator_commands(commands)  # history, reset, rollback, vacuum
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(build_parser(), sys.argv[1:] if argv is None else list(argv))
    verbose = getattr(args, "verbose", False)
    # A run says everything in its progress lines and report, and logs the rest in its run.log.
    _configure_logging(
        logging.INFO if verbose else logging.CRITICAL if args.command == "run" else logging.ERROR
    )
    # The operator commands (commands.py) name their handler themselves.
    operator = getattr(args, "operator", None)
    return _dispatch(operator or COMMANDS[args.command], args)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except UsageExit as usage:
        if "--json" in argv:
            _print_json("config_error", usage.message, EXIT_USAGE)
        raise


def _dispatch(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command``; whatever it ends with is one line on stderr (and, with --json, one object on
    stdout) and an exit code. No Python traceback reaches the terminal: an unexpected error's trace
    goes to the run's log, or to a file of its own when there is no run."""
    try:
        return command(args)
    except RunInterrupted as stop:
        return _fail(args, "interrupted", "", str(stop), EXIT_SIGNAL_BASE + stop.signum, report=stop.report)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", "", "interrupted by SIGINT", EXIT_SIGNAL_BASE + signal.SIGINT)
    except UnexpectedError as exc:
        return _fail(args, "error", "error: ", str(exc), EXIT_FAILED, log=exc.log)
    except PipelineError as exc:
        outcome, prefix, code = next((o, p, c) for kind, o, p, c in FAILURES if isinstance(exc, kind))
        return _fail(args, outcome, prefix, str(exc), code)
    except Exception as exc:  # noqa: BLE001 - the one place any error becomes a line, its trace a file
        log = _trace_file(exc)
        return _fail(args, "error", "error: ", str(UnexpectedError(exc, log)), EXIT_FAILED, log=log)


def _fail(
    args: argparse.Namespace,
    outcome: str,
    prefix: str,
    message: str,
    code: int,
    *,
    report: dict[str, Any] | None = None,
    log: str | None = None,
) -> int:
    print(prefix + message, file=sys.stderr)
    if getattr(args, "json", False):
        _print_json(outcome, message, code, report, **({"log": log} if log else {}))
    return code


def _print_json(
    outcome: str, message: str | None, code: int, report: dict[str, Any] | None = None, **extra: Any
) -> None:
    print(
        json.dumps(
            {"outcome": outcome, "message": message, "exit_code": code, **extra, **(report or {})}, indent=2
        ),
        flush=True,
    )


def _trace_file(exc: BaseException) -> str:
    """A file holding ``exc``'s trace, for an unexpected error raised outside a run (no run.log)."""
    with tempfile.NamedTemporaryFile("w", prefix="cdc-pipeline-error-", suffix=".log", delete=False) as file:
        file.write("".join(traceback.format_exception(exc)))
    return file.name


def _table_names(option: str | None) -> tuple[str, ...]:
    """The tables ``--tables`` names; () when it is not given: every table."""
    if option is None:
        return ()
    names = tuple(name.strip() for name in option.split(",") if name.strip())
    if not names:
        raise ConfigurationError(
            f"--tables {option!r} names no table; name at least one, or leave --tables out to run every table"
        )
    return names


def _run(args: argparse.Namespace) -> int:
    settings = RunSettings(
        source=args.source,
        output=args.output,
        state=args.state,
        registry=args.registry,
        load_type=LoadType(args.load_type) if args.load_type else None,
        tables=_table_names(args.tables),
        parallelism=args.parallelism,
        retained_snapshots=args.retain_snapshots,
        settle_window=args.settle_window,
        pack_bytes=args.pack_mib * MIB,
        lease_wait_s=args.wait_for_lease,
        accept_registry_change=_names(args.accept_registry_change),
    )
    lock = threading.Lock()

    def progress(table: str, message: str) -> None:
        with lock:
            print(f"[{table}] {message}", file=sys.stderr if args.json else sys.stdout, flush=True)

    with Interrupts() as interrupts:
        report = run_local(settings, progress=progress, interrupts=interrupts, verbose=args.verbose)
    code = EXIT_FAILED if report.failed else EXIT_OK
    message = None
    if interrupts.received is not None:
        # The signal came while the commit was being written: the commit finished first.
        code = EXIT_SIGNAL_BASE + interrupts.received
        message = (
            f"interrupted by {signal.Signals(interrupts.received).name} after the commit finished: run "
            f"{report.run_id}, state revision {report.revision}; nothing to undo"
        )
    if args.json:
        outcome = "interrupted" if message else "failed" if report.failed else "ok"
        _print_json(outcome, message, code, report.to_json())
    else:
        print()
        print(render_report(report))
    if message:
        print(message, file=sys.stderr)
    return code


def _start(args: argparse.Namespace, sfn: object | None = None) -> int:
    from cdc_pipeline.aws.clients import START_SFN_THREADS, aws_client
    from cdc_pipeline.aws.executions import RUN_IN_PROGRESS, follow_run, start_run

    client = sfn or aws_client("stepfunctions", threads=START_SFN_THREADS)
    tables = list(_table_names(args.tables))
    execution_arn = start_run(
        client,
        args.state_machine_arn,
        args.load_type,
        tables or None,
        accept_registry_change=list(_names(args.accept_registry_change)) or None,
    )
    print(f"started {execution_arn}", flush=True)
    if args.no_follow:
        return EXIT_OK
    execution = follow_run(
        client,
        execution_arn,
        lambda table, message: print(f"[{table}] {message}", flush=True),
        args.poll_seconds,
    )
    print(f"execution {execution['status']}")
    if execution.get("output"):
        print(json.dumps(json.loads(execution["output"]).get("commit", {}), indent=2))
    if execution.get("error"):
        print(f"{execution['error']}: {execution.get('cause', '')}", file=sys.stderr)
    if execution.get("error") == RUN_IN_PROGRESS:
        return EXIT_RUN_IN_PROGRESS
    return EXIT_OK if execution["status"] == "SUCCEEDED" else EXIT_FAILED


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def _status(args: argparse.Namespace) -> int:
    if not args.state.is_dir():
        raise ConfigurationError(
            f"state directory {args.state} does not exist; pass the --state of your runs"
        )
    document, _ = LocalStateStore(args.state).read()
    if args.json:
        payload = {
            "revision": document.revision,
            "run_id": document.run_id,
            "committed_at": document.committed_at,
            "tables": {
                # What a reader reads: the snapshot folder, or a partitioned snapshot's partition folders.
                name: {
                    **table.to_json(),
                    "locations": table.partition_locations()
                    if table.partitions is not None
                    else [table.location],
                }
                for name, table in sorted(document.tables.items())
            },
        }
        print(json.dumps(payload, indent=2))
    else:
        print(render_status(document))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"run": _run, "start": _start, "status": _status}


class _OneLine(logging.Formatter):
    """A log record as one line on the terminal; its trace, if any, is in the run's log."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().splitlines() or [""]
        return f"{record.levelname} {record.name}: {lines[0]}"


def _configure_logging(level: int) -> None:
    # The terminal gets progress, the report and errors; every warning of a run goes to the run's
    # run.log (see runner.py) and into its report. Reconfigured on every call (tests call main often).
    root = logging.getLogger()
    terminal = next((h for h in root.handlers if getattr(h, "_cdc_pipeline", False)), None)
    if terminal is None:
        terminal = logging.StreamHandler(sys.stderr)
        terminal._cdc_pipeline = True  # type: ignore[attr-defined]
        root.addHandler(terminal)
    terminal.setLevel(level)
    terminal.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s") if level <= logging.INFO else _OneLine()
    )
    # py4j logs its connection's end (a run being stopped) as errors of its own.
    logging.getLogger("py4j").setLevel(logging.ERROR if level <= logging.INFO else logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
