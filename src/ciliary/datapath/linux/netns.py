"""Named network namespaces (``/run/netns/<name>``, what ``ip netns`` manages).

The lab creates node and pod namespaces with these; the agent only ever receives a pod
namespace's path (as a container runtime passes ``CNI_NETNS``). ``enter`` switches the calling
*process* at start-up (the agent does it before it starts any thread, so every thread it creates
later inherits the node namespace); ``entered`` moves one thread for a block (a socket made there
stays in that namespace for its life: how a process in one netns listens in another).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as _netns

from ciliary.datapath.linux.errors import LinkError, NetnsNotFoundError
from ciliary.datapath.linux.link import set_up_loopback

NETNS_RUN_DIR = Path("/run/netns")

T = TypeVar("T")


def path_of(name_or_path: str) -> Path:
    """``/run/netns/<name>`` for a bare name, the path itself otherwise."""
    return Path(name_or_path) if "/" in name_or_path else NETNS_RUN_DIR / name_or_path


def exists(name_or_path: str) -> bool:
    return path_of(name_or_path).exists()


def create(name: str) -> Path:
    """Create the named netns with its loopback up; EEXIST is an error (names are unique)."""
    if exists(name):
        raise LinkError(f"network namespace {name} already exists")
    try:
        _netns.create(name)
    except OSError as err:
        raise LinkError(f"cannot create network namespace {name}: {err.strerror}") from err
    set_up_loopback(str(path_of(name)))
    return path_of(name)


def remove(name_or_path: str) -> bool:
    """Unmount and delete a named netns; False when it did not exist. Devices inside go with it."""
    path = path_of(name_or_path)
    if not path.exists():
        return False
    try:
        _netns.remove(str(path))
    except OSError as err:
        if err.errno == 2:
            return False
        raise LinkError(f"cannot remove network namespace {path}: {err.strerror}") from err
    return True


def list_names(prefix: str = "") -> list[str]:
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir() if p.name.startswith(prefix))


def enter(name_or_path: str) -> None:
    """Move the calling thread (at start-up: the whole process) into the namespace."""
    path = path_of(name_or_path)
    if not path.exists():
        raise NetnsNotFoundError(f"network namespace {path} does not exist")
    try:
        _netns.setns(str(path), flags=0)
    except OSError as err:
        raise LinkError(f"cannot enter network namespace {path}: {err.strerror}") from err


@contextlib.contextmanager
def entered(name_or_path: str) -> Iterator[None]:
    """The calling *thread* inside the namespace for the block, back in its own namespace after
    it (``setns`` moves only the caller). Sockets created in the block belong to the namespace for
    their whole life, wherever they are used later. Use a thread of its own (not a pool's shared
    worker, which other code would find in the wrong namespace if the way back failed)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(name_or_path)
        try:
            yield
        finally:
            _netns.setns(own, flags=0)
    finally:
        os.close(own)


def call_in(name_or_path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in a thread made for it inside the namespace (the caller's threads stay where
    they are); its result, or its exception raised here. Blocks until ``fn`` returns."""
    result: list[T] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            with entered(name_or_path):
                result.append(fn())
        except BaseException as err:
            failed.append(err)

    thread = threading.Thread(target=work, name=f"in netns {name_or_path}", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return result[0]


def inode_of(name_or_path: str) -> int | None:
    """Inode of the namespace (identity check: a path may be reused by a new netns)."""
    with contextlib.suppress(OSError):
        return os.stat(path_of(name_or_path)).st_ino
    return None
