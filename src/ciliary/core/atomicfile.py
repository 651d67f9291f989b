"""Crash-safe JSON (and small text) files: the one writer for every state file ciliary keeps
(agent endpoint and identity records, IPAM state, policy revision, lab records).

Every write goes to a temporary file in the same directory, is fsync'ed and renamed over the
target, then the directory is fsync'ed: after a ``kill -9`` at any point a reader sees either the
old or the new document, never half of one. The agent's restart contract rests on this.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
