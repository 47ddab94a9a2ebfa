"""Read-only access to task directories for the API and the CLI; never opens anything for writing.

Every path is built from a validated task id and opened relative to the logs directory without following
symlinks, so no request can read outside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .fsio import DIR_FLAGS, open_file, read_file
from .projector import AGENT_OUTPUT, FINAL_RESULT, INPUT, METADATA, USER_INPUTS, WEBHOOK_FLOW
from .wire import check_name

#: The compat object of GET /tasks/{id}/logs: key -> file.
COMPAT_KEYS = {
    "metadata": METADATA,
    "input": INPUT,
    "webhook_flow": WEBHOOK_FLOW,
    "agent_output": AGENT_OUTPUT,
    "user_inputs": USER_INPUTS,
    "final_result": FINAL_RESULT,
}


class TaskNotFound(LookupError):
    """Raised when the logs directory has no directory for a (valid) task id."""


class TaskDir:
    """An open, validated task directory. Use as a context manager."""

    def __init__(self, logs_dir: Path, task_id: str) -> None:
        check_name(task_id)  # raises UnsafeTaskId before the id comes near a path
        self.task_id = task_id
        root = os.open(logs_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            self.fd = os.open(task_id, DIR_FLAGS, dir_fd=root)
        except (FileNotFoundError, NotADirectoryError):
            raise TaskNotFound(task_id) from None
        except OSError as exc:
            raise TaskNotFound(task_id) from exc  # a symlink (ELOOP) is treated as absent, never followed
        finally:
            os.close(root)

    def __enter__(self) -> TaskDir:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def json(self, name: str) -> dict[str, Any] | None:
        """A JSON view, or None when it does not exist yet."""
        raw = read_file(self.fd, name)
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return doc if isinstance(doc, dict) else None

    def records(self, name: str) -> Iterator[dict[str, Any]]:
        """The records of a JSONL file in order; a partial last line (a write in progress) is not yielded."""
        fd = open_file(self.fd, name)
        if fd is None:
            return
        with os.fdopen(fd, "rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    yield orjson.loads(line)

    def compat(self) -> dict[str, Any]:
        """The object GET /tasks/{id}/logs has always returned."""
        out: dict[str, Any] = {}
        for key, name in COMPAT_KEYS.items():
            out[key] = self.json(name) if name.endswith(".json") else list(self.records(name))
        return out


def task_exists(logs_dir: Path, task_id: str) -> bool:
    """Whether a valid task id has a directory."""
    try:
        with TaskDir(logs_dir, task_id):
            return True
    except TaskNotFound:
        return False
