"""The exceptions the pipeline raises; each message names the table, file or column and the fix."""


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigurationError(PipelineError):
    """The run cannot start: bad arguments, registry or environment (CLI exit code 2)."""


class RegistryError(ConfigurationError):
    """The table-settings registry is missing, empty or malformed."""


class StateCorruptError(ConfigurationError):
    """The committed state document cannot be read; it is never treated as "no state"."""


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
