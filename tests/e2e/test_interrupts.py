"""SIGINT (Ctrl-C) and SIGTERM in the middle of a run's ingest: the run ends cleanly (exit 130 or
143, no traceback), publishes nothing, leaves none of its folders in the output, and the next run
goes on from the committed state as if the stopped one had never started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tests.e2e.helpers import read_status, run_pipeline, write_parquet

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("version", pa.int64())])
TABLES = ("customers", "orders")
BIG = 300_000  # rows per table in the stopped run: seconds of ingest, however fast the machine


def land(root: Path, table: str, name: str, ids: range, version: int) -> None:
    rows = [{"id": i, "name": f"{table}-{i}-v{version}", "version": version} for i in ids]
    write_parquet(root / "raw" / table / f"{name}.parquet", rows, SCHEMA)


def output_folders(root: Path) -> set[str]:
    """Every run folder in the output: snapshots, tombstones and quarantine of every table."""
    return {
        str(folder.relative_to(root))
        for kind in ("snapshots", "tombstones", "quarantine")
        for folder in (root / "out").glob(f"*/{kind}/*")
    }


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_signalled_mid_ingest_ends_cleanly_and_the_next_run_goes_on(tmp_path, spark, signum) -> None:
    root = tmp_path
    (root / "registry").mkdir()
    (root / "registry" / "tables.csv").write_text(
        "table_name,primary_key,sequence_column\n" + "".join(f"{t},id,version\n" for t in TABLES)
    )
    paths = [root / "raw", root / "out", root / "state", root / "registry"]
    for table in TABLES:
        land(root, table, "001", range(100), version=1)
    assert run_pipeline(*paths) == 0
    state_before = (root / "state" / "state.json").read_bytes()
    folders_before = output_folders(root)
    for table in TABLES:
        land(root, table, "002", range(BIG), version=2)

    # WHEN a run of its own process is signalled once its ingest has started
    command = [sys.executable, "-m", "cdc_pipeline", "run"]
    for option, path in zip(("--source", "--output", "--state", "--registry"), paths, strict=True):
        command += [option, str(path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if "started" in line:
            break
    time.sleep(1.0)
    process.send_signal(signum)
    rest, err = process.communicate(timeout=300)
    console = "".join(seen) + rest + err

    # THEN it ends cleanly, having published nothing and left none of its folders
    assert process.returncode == 128 + signum, console
    assert "Traceback" not in console
    assert f"interrupted by {signal.Signals(signum).name} before the commit" in err
    assert (root / "state" / "state.json").read_bytes() == state_before
    assert output_folders(root) == folders_before
    stopped = max((root / "state" / "runs").iterdir())
    report = json.loads((stopped / "report.json").read_text())
    assert {outcome["table"]: outcome["status"] for outcome in report["tables"]} == dict.fromkeys(
        TABLES, "failed"
    )
    assert all("before the commit" in outcome["message"] for outcome in report["tables"])

    # AND the next run reads the files the stopped one did not commit, as if it had never started
    assert run_pipeline(*paths) == 0
    status = read_status(root / "state")["tables"]
    assert {name: tracker["rows"] for name, tracker in status.items()} == dict.fromkeys(TABLES, BIG)
    assert all(tracker["run_id"] != stopped.name for tracker in status.values())
