"""Directory-backed store: ``<root>/<kind>/<quoted name>.json``, writes atomic (temp + fsync +
rename), read-modify-write sequences serialized across processes by ``flock(<root>/.lock)``.

Contract: every mutation a caller relies on for correctness across agents (an IPAM block claim,
an IP allocation) happens inside ``transaction()``; plain ``get``/``list`` may see the state just
before or just after a concurrent transaction, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ciliary.kvstore import atomic

JSONObject = dict[str, Any]


class StoreError(Exception):
    """The store could not be read or written (message names the resource)."""


class Transaction:
    """Reads and writes while holding the store's exclusive lock."""

    def __init__(self, store: FileStore) -> None:
        self._store = store

    def get(self, kind: str, name: str) -> JSONObject | None:
        return self._store.get(kind, name)

    def list(self, kind: str) -> dict[str, JSONObject]:
        return self._store.list(kind)

    def put(self, kind: str, name: str, obj: JSONObject) -> None:
        self._store._write(kind, name, obj)

    def delete(self, kind: str, name: str) -> bool:
        return self._store._remove(kind, name)


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, kind: str, name: str) -> Path:
        if not kind.isidentifier():
            raise StoreError(f"invalid resource kind {kind!r}")
        return self.root / kind / (urllib.parse.quote(name, safe="") + ".json")

    def get(self, kind: str, name: str) -> JSONObject | None:
        path = self._path(kind, name)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise StoreError(f"cannot read {kind}/{name}: {err}") from err
        if not isinstance(data, dict):
            raise StoreError(f"{kind}/{name} is not a JSON object")
        return data

    def list(self, kind: str) -> dict[str, JSONObject]:
        folder = self.root / kind
        out: dict[str, JSONObject] = {}
        if not folder.is_dir():
            return out
        for path in sorted(folder.glob("*.json")):
            name = urllib.parse.unquote(path.name[: -len(".json")])
            obj = self.get(kind, name)
            if obj is not None:
                out[name] = obj
        return out

    def put(self, kind: str, name: str, obj: JSONObject) -> None:
        with self.transaction() as txn:
            txn.put(kind, name, obj)

    def delete(self, kind: str, name: str) -> bool:
        with self.transaction() as txn:
            return txn.delete(kind, name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield Transaction(self)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, kind: str, name: str, obj: JSONObject) -> None:
        atomic.write_json(self._path(kind, name), obj)

    def _remove(self, kind: str, name: str) -> bool:
        try:
            self._path(kind, name).unlink()
        except FileNotFoundError:
            return False
        return True
