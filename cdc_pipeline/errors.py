"""The exceptions the pipeline raises; each message names the table, file or column and the fix."""

from __future__ import annotations

import signal
from typing import Any


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigurationError(PipelineError):
    """The run cannot start: bad arguments, registry or environment (CLI exit code 2)."""


class RegistryError(ConfigurationError):
    """The table-settings registry is missing, empty or malformed."""


class StateCorruptError(ConfigurationError):
    """The committed state document cannot be read; it is never treated as "no state"."""


UPGRADE = "upgrade cdc-pipeline to read it, and leave the document as it is"


class NewerFormatError(ConfigurationError):
    """A document (state, plan, work item, pack, manifest) of a format newer than this code reads.

    Not corrupt: a newer cdc-pipeline wrote it, and only a newer one can read it. Restoring an older
    revision or deleting it would throw away what that version recorded, so the fix is to upgrade.
    """

    def __init__(self, what: str, found: int, newest: int, upgrade: str = UPGRADE) -> None:
        super().__init__(
            f"{what} was written by a newer cdc-pipeline (format {found}; this one reads up to format "
            f"{newest}): {upgrade}"
        )
        self.found = found
        self.newest = newest

    @staticmethod
    def check(what: str, found: object, newest: int, upgrade: str = UPGRADE) -> None:
        """Raise when ``found`` is a format number above ``newest`` (other values: the caller judges)."""
        if isinstance(found, int) and not isinstance(found, bool) and found > newest:
            raise NewerFormatError(what, found, newest, upgrade)


class TableError(PipelineError):
    """One table cannot be processed; the other tables of the run go on."""

    def __init__(self, table: str, message: str) -> None:
        super().__init__(f"table {table!r}: {message}")
        self.table = table


class CommitConflictError(PipelineError):
    """Another run committed (or is committing) the state since this run planned."""

    def __init__(self, message: str, competing_run_id: str | None = None) -> None:
        super().__init__(message)
        self.competing_run_id = competing_run_id


class JavaNotFoundError(ConfigurationError):
    """PySpark cannot start because no Java runtime is installed."""


class RunInProgressError(PipelineError):
    """Another run holds the run lease on the state: this run did nothing (CLI exit code 75; on AWS
    the execution fails with ``RunInProgress`` before any Glue run)."""

    def __init__(self, message: str, *, run_id: str, owner: str, since: str, expires_at: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.owner = owner
        self.since = since
        self.expires_at = expires_at


class LeaseLostError(CommitConflictError):
    """This run's lease expired and another run took it over: its commit is refused (exit code 1)."""


class UnexpectedError(PipelineError):
    """An error no check foresaw, in one line; its trace is in the log file it names (CLI exit code 1)."""

    def __init__(self, cause: BaseException, log: str, detail: str = "") -> None:
        super().__init__(
            f"unexpected {type(cause).__name__}: {root_cause(cause)}{detail}; the trace is in {log}"
        )
        self.log = log


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM stopped the run (CLI exit code 128 + the signal's number).

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way takes it
    for a failure of the step it interrupted. ``report`` is the stopped run's report (JSON), once
    the runner has written it.
    """

    def __init__(self, signum: int, message: str | None = None, report: dict[str, Any] | None = None) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.report = report
        super().__init__(message or f"interrupted by {self.signal_name}")


_MAX_CAUSES = 64  # a cause chain longer than this is a loop


def cause_messages(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of its causes, outermost first.

    The Python chain (``raise ... from``) first; then, for an error raised in Spark's JVM, the
    Java exception's own chain (``getCause()``): py4j's ``Py4JJavaError`` holds it as
    ``java_exception``, PySpark's captured exceptions (``AnalysisException`` and the others of
    ``pyspark.errors``) as ``_origin``. A Java exception's text is ``getMessage()``, or its class
    name when it has none; a Python exception's is its ``str``. Spark wraps the cause a person needs
    (a corrupt page, a duplicate column) in several layers of "Job aborted" and "Task failed", and
    its first message often ends at "Details:".
    """
    messages: list[str] = []
    current: BaseException | None = exc
    java = None
    for _ in range(_MAX_CAUSES):
        if current is None:
            break
        java = getattr(current, "java_exception", None)
        if java is None:
            java = getattr(current, "_origin", None)
        if java is not None:
            break
        messages.append(str(current).strip() or type(current).__name__)
        current = current.__cause__
    if java is not None:
        messages += _java_messages(java)
    return messages


def _java_messages(java: Any) -> list[str]:
    from py4j.protocol import Py4JError

    messages: list[str] = []
    try:
        for _ in range(_MAX_CAUSES):
            message = java.getMessage()
            messages.append(str(message).strip() if message else str(java.getClass().getName()))
            cause = java.getCause()
            if cause is None or cause.equals(java):
                break
            java = cause
    except Py4JError:
        # The JVM is gone (a run being stopped): the causes read so far are all there are.
        return messages or ["the JVM stopped before it said why"]
    return messages


def root_cause(exc: BaseException) -> str:
    """The first line of the deepest cause's message: what went wrong, without Spark's wrappers."""
    deepest = cause_messages(exc)[-1]
    return deepest.splitlines()[0] if deepest else type(exc).__name__
