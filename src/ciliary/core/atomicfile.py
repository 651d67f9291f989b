"""Crash-safe JSON (and small text) files: the one writer for every state file ciliary keeps
(agent endpoint and identity records, IPAM state, policy revision, lab records).

Every write goes to a temporary file in the same directory and is renamed over the target: after
a ``kill -9`` of the writer at any point a reader sees either the old or the new document, never
half of one (the rename is atomic, and a dead process's written pages stay in the page cache).
The agent's restart contract rests on this.

Why no fsync: the contract is about the *process* dying, not the machine. These files live under
``/run`` (Cilium's ``/var/run/cilium`` likewise), which a boot starts empty, so surviving a power
loss buys nothing; an fsync of the file and of its directory cost a disk flush each where ``/run``
is not a tmpfs (as on these machines), about two thirds of the agent's time per CNI ADD, which
writes the endpoint record at each state change.
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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
