"""``http-get``: fetch a URL and report status, size and time; the HTTP half of connectivity checks.

Exit status is the verdict a test needs: 0 when every request got the expected status (any 2xx
by default, or ``--expect-status``), 1 with a one-line reason otherwise (refused, timed out, reset,
wrong status). Proxies from the environment are ignored: the request must go where the URL says.
"""

from __future__ import annotations

import argparse
import http.client
import time
import urllib.error
import urllib.request

from ciliary.workload.common import describe_error, fail, say

_PROG = "http-get"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("http-get", help="GET a URL, print status, size and time")
    parser.add_argument("url", help="http://host:port/path (IPv6 literals in brackets)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request (2)")
    parser.add_argument("--count", type=int, default=1, help="requests to make, in turn (1)")
    parser.add_argument(
        "--expect-status", type=int, help="status every request must get (default: any 2xx)"
    )
    parser.set_defaults(run=run)


def _fetch(opener: urllib.request.OpenerDirector, url: str, timeout: float) -> tuple[int, int]:
    """(status, body size) of one GET, the whole exchange bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "ciliary-workload"})
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        response = exc  # a status outside 2xx is still an answer
    with response:
        size = 0
        while chunk := response.read(65536):
            size += len(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError
        status = response.status if response.status is not None else 0
        return status, size


def run(args: argparse.Namespace) -> int:
    if args.count < 1 or args.timeout <= 0:
        return fail(_PROG, "--count must be at least 1 and --timeout positive")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for attempt in range(1, args.count + 1):
        where = f"{args.url}" + (f" (request {attempt}/{args.count})" if args.count > 1 else "")
        start = time.monotonic()
        try:
            status, size = _fetch(opener, args.url, args.timeout)
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = describe_error(reason, args.timeout) if isinstance(reason, OSError) else reason
            return fail(_PROG, f"{where}: {why}")
        except (OSError, http.client.HTTPException) as exc:
            return fail(_PROG, f"{where}: {describe_error(exc, args.timeout)}")
        except ValueError as exc:
            return fail(_PROG, f"{where}: invalid URL: {exc}")
        elapsed_ms = (time.monotonic() - start) * 1000
        say(f"HTTP {status} {size} bytes in {elapsed_ms:.1f} ms")
        if args.expect_status is not None and status != args.expect_status:
            return fail(_PROG, f"{where}: expected status {args.expect_status}, got {status}")
        if args.expect_status is None and not 200 <= status <= 299:
            return fail(_PROG, f"{where}: expected a 2xx status, got {status}")
    return 0
