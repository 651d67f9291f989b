"""Crash-safe JSON state files for the node-local IPAM.

An allocation the agent has answered with must survive ``kill -9`` and a power cut: the file is
written to a temporary sibling, fsynced, renamed over the old one and the directory fsynced, so a
reader sees the old state or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ciliary.agent.ipam.types import IPAMError


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when there is no file."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise IPAMError(f"cannot read IPAM state {path}: {err}", "invalid") from err
    if not isinstance(data, dict):
        raise IPAMError(f"IPAM state {path} is not a JSON object", "invalid")
    return data
