"""``GET pods/<name>/log``: a container's output, read from the kubelet role's log files.

kube-apiserver proxies this to the pod's kubelet, which reads its ``/var/log/pods`` files; here
the API server reads the same layout itself from ``--pod-log-dir`` (the path rule is
:mod:`ciliary.k8s.podlogs`, shared with the writer), so it never needs the lab. The answer is
``text/plain``; ``follow=true`` streams it chunked, sending what the container writes later,
until the container's run ends (a newer run's file appears), the pod's logs go away, or the
client leaves. Parameters as kubelet's: ``container`` (may be left out when the pod has one),
``tailLines``, ``limitBytes``, ``previous`` (the run before the current one).
``timestamps`` and ``sinceSeconds``/``sinceTime`` are refused (400): the files hold raw output
without per-line times, and answering them with the whole log would be a silent lie. The
refusals use kube's words (``a container name must be specified for pod p, choose one of: [a
b]``, ``container "c" in pod "p" is waiting to start: ContainerCreating``, ``previous terminated
container "c" in pod "p" not found``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from ciliary.apiserver import errors
from ciliary.apiserver.storage import Obj
from ciliary.k8s import podlogs

FOLLOW_POLL = 0.1
CHUNK = 64 * 1024


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _count(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise errors.bad_request(f'{name}: Invalid value: "{raw}": must be an integer') from None
    if value < 0 or (name == "limitBytes" and value == 0):
        raise errors.bad_request(f"{name}: Invalid value: {value}: must be greater than 0")
    return value


def _container(pod: Obj, wanted: str | None) -> str:
    name = pod["metadata"]["name"]
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in spec.get("containers") or []]
    init = [c.get("name") for c in spec.get("initContainers") or []]
    if not wanted:
        if len(names) == 1:
            return str(names[0])
        raise errors.bad_request(
            f"a container name must be specified for pod {name}, choose one of: "
            f"[{' '.join(str(n) for n in names)}]"
        )
    if wanted not in names and wanted not in init:
        raise errors.bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


def _runs(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in map(podlogs.run_number, names) if n is not None)


def tail_offset(path: Path, lines: int) -> int:
    """The byte offset where the last ``lines`` lines of ``path`` start (a last line without
    its newline counts as one)."""
    if lines == 0:
        return path.stat().st_size
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos, seen = end, 0
        last_byte_skipped = False
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            for i in range(len(block) - 1, -1, -1):
                if block[i] != 0x0A:
                    continue
                if pos + i == end - 1 and not last_byte_skipped:
                    last_byte_skipped = True  # the final newline ends the last line
                    continue
                seen += 1
                if seen == lines:
                    return pos + i + 1
        return 0


async def serve(request: web.Request, pod: Obj, root: Path | None) -> web.StreamResponse:
    q = request.query
    for unsupported in ("timestamps", "sinceSeconds", "sinceTime"):
        if unsupported == "timestamps" and not _flag(q.get(unsupported)):
            continue
        if unsupported != "timestamps" and not q.get(unsupported):
            continue
        raise errors.bad_request(
            f"{unsupported} is not supported: the lab's container logs carry no per-line times"
        )
    tail = _count(q, "tailLines")
    limit = _count(q, "limitBytes")
    follow, previous = _flag(q.get("follow")), _flag(q.get("previous"))
    meta = pod["metadata"]
    container = _container(pod, q.get("container"))
    if root is None:
        raise errors.bad_request(
            "pod logs are not served: the API server was started without --pod-log-dir"
        )
    directory = podlogs.container_log_dir(
        root, meta["namespace"], meta["name"], meta["uid"], container
    )
    runs = _runs(directory)
    if previous:
        if len(runs) < 2:
            raise errors.bad_request(
                f'previous terminated container "{container}" in pod "{meta["name"]}" not found'
            )
        run = runs[-2]
    elif runs:
        run = runs[-1]
    else:
        raise errors.bad_request(
            f'container "{container}" in pod "{meta["name"]}" is waiting to start:'
            " ContainerCreating"
        )
    path = directory / f"{run}{podlogs.LOG_SUFFIX}"
    start = tail_offset(path, tail) if tail is not None else 0
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    if follow and not previous:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    sent = 0
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            want = CHUNK if limit is None else min(CHUNK, limit - sent)
            data = f.read(want) if want > 0 else b""
            if data:
                await resp.write(data)
                sent += len(data)
                continue
            if not follow or previous or (limit is not None and sent >= limit):
                break
            # at the end of what was written so far: wait for more, unless the run is over
            if any(r > run for r in _runs(directory)) or not directory.is_dir():
                if f.tell() >= os.fstat(f.fileno()).st_size:
                    break
                continue
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(FOLLOW_POLL)
    await resp.write_eof()
    return resp
