"""The ``cdc-pipeline`` command: run the pipeline locally, show the committed state.

Exit codes: 0 every table succeeded; 1 some table failed (the others were committed) or the
commit was refused; 2 a usage or configuration error (nothing ran); 75 (EX_TEMPFAIL) another run
holds the run lease on the state (nothing ran; try again later, or ``--wait-for-lease``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW
from cdc_pipeline.commands import add_operator_commands
from cdc_pipeline.commit import DEFAULT_RETAINED_SNAPSHOTS
from cdc_pipeline.errors import CommitConflictError, ConfigurationError, RunInProgressError
from cdc_pipeline.packs import DEFAULT_PACK_BYTES, MIB
from cdc_pipeline.plan import LoadType
from cdc_pipeline.report import render_report, render_status
from cdc_pipeline.runner import DEFAULT_PARALLELISM, RunSettings, run_local
from cdc_pipeline.state import LocalStateStore

EXIT_OK, EXIT_TABLE_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_RUN_IN_PROGRESS = 75  # EX_TEMPFAIL (sysexits.h): a temporary condition, worth retrying later


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    run.add_argument("--json", action="store_true", help="print the report as JSON")

    start = commands.add_parser(
        "start", help="start a run of the deployed state machine on AWS and follow it table by table"
    )
    start.add_argument("--state-machine-arn", required=True, help="the StateMachineArn stack output")
    start.add_argument("--load-type", choices=[t.value for t in LoadType], default="incremental")
    start.add_argument("--tables", help="comma-separated table names (default: every table)")
    start.add_argument("--no-follow", action="store_true", help="print the execution ARN and return")
    start.add_argument("--poll-seconds", type=float, default=10.0)

    status = commands.add_parser("status", help="show every table's committed tracker")
    status.add_argument("--state", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_operator_commands(commands)  # history, reset, rollback, vacuum
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    handlers = {"run": _run, "start": _start, "status": _status}
    try:
        if getattr(args, "operator", None) is not None:
            return int(args.operator(args))
        return handlers[args.command](args)
    except CommitConflictError as exc:
        print(f"commit refused: {exc}", file=sys.stderr)
        return EXIT_TABLE_FAILED
    except RunInProgressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_IN_PROGRESS
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    settings = RunSettings(
        source=args.source,
        output=args.output,
        state=args.state,
        registry=args.registry,
        load_type=LoadType(args.load_type) if args.load_type else None,
        tables=tuple(name.strip() for name in (args.tables or "").split(",") if name.strip()),
        parallelism=args.parallelism,
        retained_snapshots=args.retain_snapshots,
        settle_window=args.settle_window,
        pack_bytes=args.pack_mib * MIB,
        lease_wait_s=args.wait_for_lease,
    )
    lock = threading.Lock()

    def progress(table: str, message: str) -> None:
        with lock:
            print(f"[{table}] {message}", file=sys.stderr if args.json else sys.stdout, flush=True)

    report = run_local(settings, progress=progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print()
        print(render_report(report))
    return EXIT_TABLE_FAILED if report.failed else EXIT_OK


def _start(args: argparse.Namespace, sfn: object | None = None) -> int:
    from cdc_pipeline.aws.clients import START_SFN_THREADS, aws_client
    from cdc_pipeline.aws.executions import RUN_IN_PROGRESS, follow_run, start_run

    client = sfn or aws_client("stepfunctions", threads=START_SFN_THREADS)
    tables = [name.strip() for name in (args.tables or "").split(",") if name.strip()]
    execution_arn = start_run(client, args.state_machine_arn, args.load_type, tables or None)
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
    return EXIT_OK if execution["status"] == "SUCCEEDED" else EXIT_TABLE_FAILED


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


def _configure_logging() -> None:
    # The terminal gets progress, the report and errors; every warning of a run goes to the run's
    # run.log (see runner.py) and into its report.
    if not any(getattr(h, "_cdc_pipeline", False) for h in logging.getLogger().handlers):
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(logging.ERROR)
        terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        terminal._cdc_pipeline = True  # type: ignore[attr-defined]
        logging.getLogger().addHandler(terminal)
    logging.getLogger("py4j").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
