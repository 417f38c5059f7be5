"""The CLI's failures: checked before any work, one line each, never a traceback, every outcome a
JSON object with --json, exit codes; root causes of Spark errors; signals around the commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc_pipeline import runner
from cdc_pipeline.cli import main
from cdc_pipeline.errors import (
    CommitConflictError,
    ConfigurationError,
    RunInterrupted,
    UnexpectedError,
    cause_messages,
    root_cause,
)
from cdc_pipeline.report import render_report
from cdc_pipeline.runner import Interrupts
from cdc_pipeline.state import FORMAT_VERSION

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


class Lake:
    """A raw zone with one table, a registry, and the output and state folders' paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "registry").mkdir()
        (root / "registry" / "tables.csv").write_text("table_name,primary_key\npeople,id\n")
        self.land("people", [{"id": 1, "name": "ada"}])

    def land(self, table: str, rows: list[dict], schema: pa.Schema = SCHEMA, name: str = "part-001") -> Path:
        path = self.root / "raw" / table / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        return path

    def args(self, **paths: Path) -> list[str]:
        where = {name: self.root / name for name in ("raw", "out", "state", "registry")} | paths
        return [
            "run",
            "--source",
            str(where["raw"]),
            "--output",
            str(where["out"]),
            "--state",
            str(where["state"]),
            "--registry",
            str(where["registry"]),
        ]

    def run(self, *extra: str, **paths: Path) -> int:
        return main([*self.args(**paths), *extra])

    def run_folders(self) -> list[Path]:
        runs = self.root / "state" / "runs"
        return sorted(runs.iterdir()) if runs.exists() else []


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path)


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


# ----------------------------------------------------------------------------------------------
# Usage and locations: exit 2 before any work
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tables", ["", " , ,"])
def test_tables_naming_no_table_is_a_usage_error_not_every_table(lake, capsys, tables) -> None:
    assert lake.run("--tables", tables) == 2

    assert_one_line_error(capsys.readouterr().err, "--tables", "names no table")
    assert lake.run_folders() == []


def test_a_state_path_that_is_a_regular_file_exits_2_without_a_traceback(lake, capsys) -> None:
    state = lake.root / "state-file"
    state.write_text("not a folder")

    assert lake.run(state=state) == 2

    assert_one_line_error(capsys.readouterr().err, f"--state {state} is a file, not a directory")
    assert state.read_text() == "not a folder"


def test_an_output_path_below_a_regular_file_cannot_be_created_and_exits_2(lake, capsys) -> None:
    (lake.root / "file").write_text("x")

    assert lake.run(out=lake.root / "file" / "out") == 2

    assert_one_line_error(capsys.readouterr().err, f"{lake.root / 'file'} is a file, not a directory")


@pytest.mark.parametrize("option", ["raw", "registry"])
def test_a_source_or_registry_missing_or_a_file_exits_2_before_any_run_folder(lake, capsys, option) -> None:
    flag = {"raw": "--source", "registry": "--registry"}[option]
    missing = lake.root / "typo"
    a_file = lake.root / "raw" / "people" / "part-001.parquet"

    assert lake.run(**{option: missing}) == 2
    assert_one_line_error(capsys.readouterr().err, f"{flag} {missing} does not exist")
    assert lake.run(**{option: a_file}) == 2
    assert_one_line_error(capsys.readouterr().err, f"{flag} {a_file} is a file, not a directory")
    assert lake.run_folders() == []


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` made unwritable even for root (who ignores permission bits): the immutable flag."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root where chattr +i does not work: no folder is unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("folder", ["state", "state/runs", "out"])
def test_an_unwritable_state_or_output_folder_exits_2_before_any_work(lake, capsys, folder) -> None:
    (lake.root / "state" / "runs").mkdir(parents=True)
    (lake.root / "out").mkdir()

    with unwritable(lake.root / folder):
        assert lake.run() == 2

    flag = "--output" if folder == "out" else "--state"
    assert_one_line_error(capsys.readouterr().err, f"{flag} {lake.root / folder} is not writable")
    assert lake.run_folders() == []
    assert list((lake.root / "out").iterdir()) == []


def test_the_write_probe_is_what_refuses_an_unwritable_folder(lake, capsys, monkeypatch) -> None:
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if ".cdc-pipeline-probe-" in str(path) and str(path).startswith(str(lake.root / "state")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(runner.os, "open", refusing_open)

    assert lake.run() == 2

    assert_one_line_error(capsys.readouterr().err, "--state", "is not writable (Permission denied)")
    assert not any(path.name.startswith(".cdc-pipeline-probe") for path in (lake.root / "state").iterdir())


# ----------------------------------------------------------------------------------------------
# Format versions at the command line
# ----------------------------------------------------------------------------------------------


def test_a_state_document_of_a_newer_format_is_refused_saying_upgrade_and_left_as_it_is(lake, capsys) -> None:
    state = lake.root / "state" / "state.json"
    state.parent.mkdir()
    content = json.dumps({"format_version": FORMAT_VERSION + 1, "revision": 4, "tables": {}})
    state.write_text(content)

    assert lake.run() == 2
    run_err = capsys.readouterr().err
    assert main(["status", "--state", str(state.parent)]) == 2
    status_err = capsys.readouterr().err

    for err in (run_err, status_err):
        assert_one_line_error(err, "was written by a newer cdc-pipeline", "upgrade cdc-pipeline")
        assert "corrupt" not in err
        assert "delete" not in err
    assert state.read_text() == content


# ----------------------------------------------------------------------------------------------
# --json: every outcome one object on stdout; unexpected errors: one line and a trace file
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    error: BaseException
    outcome: str
    code: int
    line: str


FAILURES = {
    "config": Failure(ConfigurationError("registry is bad"), "config_error", 2, "error: registry is bad"),
    "refused": Failure(
        CommitConflictError("run 'b' came first"), "commit_refused", 1, "commit refused: run 'b'"
    ),
    "interrupted": Failure(
        RunInterrupted(
            signal.SIGTERM, "interrupted by SIGTERM before the commit", {"run_id": "r1", "tables": []}
        ),
        "interrupted",
        143,
        "interrupted by SIGTERM before the commit",
    ),
    "ctrl-c": Failure(KeyboardInterrupt(), "interrupted", 130, "interrupted by SIGINT"),
    "unexpected": Failure(
        UnexpectedError(ValueError("boom"), "/runs/r1/run.log"),
        "error",
        1,
        "error: unexpected ValueError: boom;",
    ),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_with_json_every_failure_prints_one_json_object_and_one_line(
    lake, capsys, monkeypatch, failure
) -> None:
    def failing(*args, **kwargs):
        raise failure.error

    monkeypatch.setattr("cdc_pipeline.cli.run_local", failing)

    assert lake.run("--json") == failure.code

    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["outcome"] == failure.outcome
    assert printed["exit_code"] == failure.code
    assert failure.line.split(": ", 1)[-1] in printed["message"]
    assert_one_line_error(captured.err, failure.line)
    if failure.outcome == "interrupted" and failure.code == 143:
        assert printed["run_id"] == "r1"  # the interrupted run's report


def test_with_json_a_usage_error_prints_a_json_object_too(lake, capsys) -> None:
    with pytest.raises(SystemExit) as usage:
        lake.run("--json", "--load-type", "sideways")

    assert usage.value.code == 2
    printed = json.loads(capsys.readouterr().out)
    assert printed["outcome"] == "config_error"
    assert "--load-type" in printed["message"]


def test_with_json_a_config_error_from_the_plan_prints_a_json_object(lake, capsys) -> None:
    assert lake.run("--json", "--tables", "nope") == 2

    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "outcome": "config_error",
        "message": "--tables names 'nope', which the source does not hold; its tables are: 'people'",
        "exit_code": 2,
    }


def test_an_unexpected_error_outside_a_run_is_one_line_naming_a_file_that_holds_its_trace(
    lake, capsys, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("surprise\nsecond line")

    monkeypatch.setattr("cdc_pipeline.cli.LocalStateStore", broken)
    (lake.root / "state").mkdir()

    assert main(["status", "--state", str(lake.root / "state")]) == 1

    err = capsys.readouterr().err
    assert_one_line_error(err, "error: unexpected RuntimeError: surprise; the trace is in ")
    trace = Path(err.strip().rsplit("the trace is in ", 1)[1])
    try:
        assert "Traceback" in trace.read_text()
        assert "surprise" in trace.read_text()
    finally:
        trace.unlink()


def test_an_unexpected_error_in_a_run_names_its_run_log_which_holds_the_trace(
    lake, capsys, monkeypatch
) -> None:
    def broken_plan(**kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "plan_stage", broken_plan)

    assert lake.run() == 1

    err = capsys.readouterr().err
    (run_folder,) = lake.run_folders()
    assert_one_line_error(
        err,
        "error: unexpected OSError: [Errno 28] No space left on device",
        f"the trace is in {run_folder / 'run.log'}",
    )
    log = (run_folder / "run.log").read_text()
    assert "Traceback" in log
    assert "broken_plan" in log


# ----------------------------------------------------------------------------------------------
# Root causes
# ----------------------------------------------------------------------------------------------


class FakeThrowable:
    """What py4j gives for a Java exception: getMessage, getCause, getClass().getName()."""

    def __init__(self, name: str, message: str | None, cause: FakeThrowable | None = None) -> None:
        self.name, self.message, self.cause = name, message, cause

    def getMessage(self) -> str | None:
        return self.message

    def getCause(self) -> FakeThrowable | None:
        return self.cause

    def getClass(self) -> FakeThrowable:
        return self

    def getName(self) -> str:
        return self.name

    def equals(self, other: object) -> bool:
        return other is self


class FakePy4JJavaError(Exception):
    def __init__(self, java_exception: FakeThrowable) -> None:
        super().__init__(
            "An error occurred while calling o41.parquet.\n: org.apache.spark.SparkException ..."
        )
        self.java_exception = java_exception


def spark_wrapped(root: FakeThrowable) -> FakeThrowable:
    """Spark's layers around a reading error, as a failed write reports it."""
    reading = FakeThrowable(
        "org.apache.spark.SparkException",
        "Encountered error while reading file file:///lake/raw/people/part-001.parquet. Details:",
        root,
    )
    task = FakeThrowable("org.apache.spark.SparkException", "[TASK_WRITE_FAILED] Task failed", reading)
    return FakeThrowable("org.apache.spark.SparkException", "Job aborted due to stage failure: ...", task)


def test_the_root_cause_is_the_deepest_java_exceptions_message() -> None:
    error = FakePy4JJavaError(spark_wrapped(FakeThrowable("java.io.IOException", "can not read page header")))

    assert root_cause(error) == "can not read page header"
    assert cause_messages(error)[0].startswith("Job aborted")


def test_the_root_cause_follows_the_python_chain_into_the_java_one() -> None:
    java = FakeThrowable(
        "org.apache.spark.SparkRuntimeException", 'Found duplicate field(s) "tier": [tier, Tier]'
    )
    try:
        try:
            raise FakePy4JJavaError(spark_wrapped(java))
        except FakePy4JJavaError as exc:
            raise RuntimeError("table 'people': Spark failed") from exc
    except RuntimeError as outer:
        error = outer

    assert root_cause(error) == 'Found duplicate field(s) "tier": [tier, Tier]'


def test_a_java_cause_without_a_message_is_named_by_its_class_and_a_cause_loop_ends() -> None:
    looping = FakeThrowable("java.lang.IllegalStateException", "loop")
    looping.cause = looping
    error = FakePy4JJavaError(
        FakeThrowable("x.Wrapper", "wrapper", FakeThrowable("java.lang.NullPointerException", None))
    )

    assert root_cause(error) == "java.lang.NullPointerException"
    assert root_cause(FakePy4JJavaError(looping)) == "loop"
    assert root_cause(ValueError("plain\nsecond line")) == "plain"


def test_the_report_shows_a_multi_line_message_as_its_first_line() -> None:
    from cdc_pipeline.commit import CommitReport, TableOutcome

    outcome = TableOutcome("people", "failed", message="first line\n\tat org.apache.Some(Some.java:1)")
    report = CommitReport("r1", 0, "2026-01-01T00:00:00+00:00", [outcome], [], [])

    rendered = render_report(report)

    assert "people: FAILED: first line (cut: the whole message is in report.json)" in rendered
    assert "at org.apache" not in rendered


# ----------------------------------------------------------------------------------------------
# Signals: outside the commit they stop the run; during it they wait for its end
# ----------------------------------------------------------------------------------------------


def test_a_signal_outside_the_commit_raises_run_interrupted_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)

    def signalled() -> None:
        with Interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in the main thread long before this ends

    with pytest.raises(RunInterrupted) as stopped:
        signalled()

    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_during_the_commit_is_only_recorded_until_the_commit_ends() -> None:
    with Interrupts() as interrupts:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one, too, waits
            time.sleep(0.2)
            finished = True

        assert finished
        assert interrupts.received == signal.SIGINT


def clashing_table(lake: Lake) -> None:
    """A table the plan fails (two columns differing only by case): a run with no Spark work."""
    clash = pa.schema([("id", pa.int64()), ("tier", pa.string()), ("Tier", pa.string())])
    lake.land("people", [{"id": 1, "tier": "a", "Tier": "b"}], clash)


def test_a_signal_during_the_commit_lets_it_finish_then_exits_130(lake, capsys, monkeypatch) -> None:
    clashing_table(lake)
    commit_stage = runner.commit_stage

    def signalled_commit(**kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        return commit_stage(**kwargs)

    monkeypatch.setattr(runner, "commit_stage", signalled_commit)

    assert lake.run("--json") == 130

    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["outcome"] == "interrupted"
    assert "after the commit finished" in printed["message"]
    assert printed["tables"][0]["status"] == "failed"  # the report of the finished run
    (run_folder,) = lake.run_folders()
    assert (run_folder / "report.json").exists()
    assert "Traceback" not in captured.err


def test_a_signal_during_the_plan_stops_the_run_with_an_interrupted_report(lake, capsys, monkeypatch) -> None:
    plan_stage = runner.plan_stage

    def signalled_plan(**kwargs):
        plan = plan_stage(**kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return plan

    monkeypatch.setattr(runner, "plan_stage", signalled_plan)

    assert lake.run("--json") == 143

    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["outcome"] == "interrupted"
    assert printed["message"].startswith("interrupted by SIGTERM before the commit")
    assert printed["tables"] == []  # the plan was not back yet
    (run_folder,) = lake.run_folders()
    report = json.loads((run_folder / "report.json").read_text())
    assert report["warnings"][0].startswith("run interrupted by SIGTERM before the commit")
    assert not (lake.root / "state" / "state.json").exists()
    assert_one_line_error(captured.err, "interrupted by SIGTERM before the commit")


# ----------------------------------------------------------------------------------------------
# Spark failures on the console: the root cause, no Java trace, no Spark chatter
# ----------------------------------------------------------------------------------------------


def corrupt_parquet(path: Path) -> None:
    """A file whose footer (what the plan reads) is intact and whose pages are not."""
    rows = [{"id": i, "name": "x" * 50 + str(i)} for i in range(2000)]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=SCHEMA), path, compression="snappy", use_dictionary=False
    )
    data = bytearray(path.read_bytes())
    for i in range(100, len(data) // 2):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))


@pytest.mark.spark
def test_a_spark_failure_prints_its_root_cause_and_no_java_trace_and_run_log_holds_the_trace(lake) -> None:
    # A process of its own: the console is what its JVM prints too, which no capture in this one sees.
    path = lake.root / "raw" / "people" / "part-001.parquet"
    corrupt_parquet(path)

    done = subprocess.run(
        [sys.executable, "-m", "cdc_pipeline", *lake.args()],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )

    console = done.stdout + done.stderr
    assert done.returncode == 1, console
    assert f"people: FAILED: table 'people': Spark failed reading file {path}: " in console
    for noise in ("Traceback", "\tat ", "WARN", "ERROR", "[Stage", "Setting default log level"):
        assert noise not in console
    assert len(console.splitlines()) < 25
    (run_folder,) = lake.run_folders()
    log = (run_folder / "run.log").read_text()
    assert "Spark failed reading file" in log
    assert "\tat org.apache." in log  # the Java trace


@pytest.mark.spark
def test_an_unexpected_error_after_the_commit_says_the_run_committed_and_keeps_what_it_published(
    lake, capsys, monkeypatch, spark
) -> None:
    commit_stage = runner.commit_stage

    def failing_after_the_commit(**kwargs):
        commit_stage(**kwargs)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(runner, "commit_stage", failing_after_the_commit)

    assert lake.run() == 1

    err = capsys.readouterr().err
    (run_folder,) = lake.run_folders()
    assert_one_line_error(
        err, "error: unexpected OSError", f"(after run {run_folder.name} committed revision 1)", "run.log"
    )
    assert main(["status", "--state", str(lake.root / "state"), "--json"]) == 0
    tracker = json.loads(capsys.readouterr().out)["tables"]["people"]
    assert tracker["run_id"] == run_folder.name
    assert pq.read_table(tracker["location"]).num_rows == 1
