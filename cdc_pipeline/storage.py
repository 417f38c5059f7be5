"""Small JSON documents and run-specific folders: the plan, the manifests, cleanup of old snapshots.

Locations are plain strings (local paths here, ``s3://`` URIs on AWS) so that one work item means
the same thing to the Lambdas, the Glue job and the local runner.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol


class Storage(Protocol):
    def write_json(self, location: str, data: Any) -> None:
        """Write any JSON value (an object, or an array such as a Map's item list)."""
        ...

    def read_json(self, location: str) -> Any:
        """The JSON value at ``location``, or None when there is none."""
        ...

    def delete_tree(self, location: str) -> bool:
        """Remove everything at and below ``location``; False when there was nothing there."""
        ...

    def file_sizes(self, location: str) -> dict[str, int]:
        """The bytes of every file below the folder ``location``, by path relative to it (none: {})."""
        ...

    def list_folders(self, location: str) -> list[str]:
        """The names of the folders directly below the folder ``location``, sorted (none: [])."""
        ...


class LocalStorage:
    """Storage on the local file system; writes are atomic (write, then rename)."""

    def write_json(self, location: str, data: Any) -> None:
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(temporary, path)

    def read_json(self, location: str) -> Any:
        try:
            text = Path(location).read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{location} is not valid JSON: {exc}") from exc

    def delete_tree(self, location: str) -> bool:
        path = Path(location)
        if not path.exists():
            return False
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True

    def file_sizes(self, location: str) -> dict[str, int]:
        root = Path(location)
        return {
            path.relative_to(root).as_posix(): path.stat().st_size
            for path in root.rglob("*")
            if path.is_file()
        }

    def list_folders(self, location: str) -> list[str]:
        try:
            return sorted(path.name for path in Path(location).iterdir() if path.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
