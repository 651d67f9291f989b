"""Watch responses: a chunked stream of ``{"type": …, "object": …}`` lines, one flush each.

Ordering contract: events leave in etcd revision order, each object's ``resourceVersion`` being
its change's revision, so a client that reconnects with the last one it saw misses and repeats
nothing. Without a resourceVersion (or with "0") the stream starts with an ADDED per current
object, read at one revision, and continues from that revision. Selectors are applied to both
sides of a change, as kube-apiserver's watch cache does: an object that starts matching is
ADDED, one that stops matching is DELETED. Bookmarks carry a revision up to which etcd confirmed
(by a progress request on the same etcd stream) every change was sent. A compacted start is a
410 before the stream starts; compaction or an etcd failure mid-stream is an ERROR event, then
the end of the stream (clients relist).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from aiohttp import web

from ciliary.apiserver import errors
from ciliary.apiserver.storage import Change, Obj, Storage
from ciliary.k8s.resources import ResourceType


def _event_line(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def classify(change: Change, match: Callable[[Obj], bool] | None) -> tuple[str, Obj] | None:
    """The watch event a change is for a watcher with ``match`` (None: not its business)."""
    old_in = change.old is not None and (match is None or match(change.old))
    new_in = change.new is not None and (match is None or match(change.new))
    if change.new is None:
        return ("DELETED", change.old) if old_in and change.old is not None else None
    if new_in and old_in:
        return "MODIFIED", change.new
    if new_in:
        return "ADDED", change.new
    if old_in:
        return "DELETED", change.new
    return None


async def serve_watch(
    request: web.Request,
    storage: Storage,
    rt: ResourceType,
    namespace: str | None,
    *,
    match: Callable[[Obj], bool] | None,
    resource_version: int | None,
    bookmarks: bool,
    timeout: float | None,
    bookmark_interval: float,
    render: Callable[[str, Obj], Obj],
) -> web.StreamResponse:
    """``render(type, object)`` turns an event's object into what the client asked for (the
    object itself, or a one-row Table)."""
    initial: list[Obj] = []
    if resource_version in (None, 0):
        page = await storage.list(rt, namespace, match=match)
        initial = page.items
        since = page.revision
    else:
        assert resource_version is not None
        since = resource_version
    watch = storage.watch(rt, namespace, since)
    await watch.__aenter__()  # 410 here is still an HTTP error response
    try:
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for obj in initial:
            await resp.write(_event_line("ADDED", render("ADDED", obj)))

        async def ticker() -> None:
            while True:
                await asyncio.sleep(bookmark_interval)
                await watch.request_progress()

        async def pump() -> None:
            async for item in watch.changes():
                if isinstance(item, int):
                    if bookmarks:
                        bookmark = {
                            "kind": rt.kind,
                            "apiVersion": rt.api_version,
                            "metadata": {"resourceVersion": str(item)},
                        }
                        await resp.write(_event_line("BOOKMARK", bookmark))
                    continue
                event = classify(item, match)
                if event is not None:
                    await resp.write(_event_line(event[0], render(*event)))

        tick = asyncio.ensure_future(ticker()) if bookmarks else None
        try:
            async with asyncio.timeout(timeout):
                await pump()
        except TimeoutError:
            pass
        except errors.StatusError as err:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write(_event_line("ERROR", err.status()))
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            if tick is not None:
                tick.cancel()
                with contextlib.suppress(asyncio.CancelledError, errors.StatusError):
                    await tick
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp
    finally:
        await watch.__aexit__(None, None, None)


def parse_bool(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def timeout_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = int(value)
    except ValueError:
        raise errors.bad_request(f'invalid timeoutSeconds "{value}"') from None
    return float(seconds) if seconds > 0 else None
